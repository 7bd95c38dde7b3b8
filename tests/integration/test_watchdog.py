"""systemd's watchdog, with the real daemons and a notify socket of the test's own (as systemd's).

Each daemon runs with NOTIFY_SOCKET pointing to a unix datagram socket the test
binds, WATCHDOG_USEC=1000000 and WATCHDOG_PID set to its own PID, as systemd
starts it with WatchdogSec=1s.  It must say READY=1, then WATCHDOG=1 at least
every 0.5 s while its data path turns, and nothing while it is stopped
(SIGSTOP) or while its data path is stuck in a call that does not return and
the rest of the process runs on: for the router, a SIGHUP reload that reads a
--config FIFO nobody writes (a config file on a hung file system); for the
peer, an exthook that waits.  Then the router's /ready says 503 "data path
stalled", and SIGABRT (what systemd's watchdog sends) ends it with every
thread's traceback and its TUN device gone, so an anycast router is withdrawn.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration import topology
from tests.integration.sdnotify import Notifications, assert_ended_by_watchdog_abort, under_systemd
from tests.netlab import Lab

pytestmark = pytest.mark.alone  # the watchdog's deadlines are a second: a busy machine must not be what misses them

WATCHDOG_USEC = 1_000_000
MAX_GAP = 0.5  # between two WATCHDOG=1 while the data path turns
METRICS = "127.0.0.1:9640"


def feed_gaps_while(notify: Notifications, seconds: float) -> list[float]:
    """Watch for `seconds`: the gaps between WATCHDOG=1 (from the start of the watch to its end)."""
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    marks = [start, *notify.feeds(start, end), end]
    return [b - a for a, b in zip(marks, marks[1:])]


def assert_fed_regularly(notify: Notifications, seconds: float = 2.0) -> None:
    gaps = feed_gaps_while(notify, seconds)
    assert len(gaps) >= seconds / MAX_GAP and max(gaps) <= MAX_GAP, f"gaps between WATCHDOG=1: {gaps}"


def assert_stopping_stops_the_feeding(notify: Notifications, pid: int) -> None:
    """SIGSTOP: no WATCHDOG=1 for more than a second; SIGCONT: fed again."""
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        time.sleep(1.2)
        assert notify.feeds(stopped + 0.05) == []
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_fed_regularly(notify, 1.5)


def release(fifo: Path, text: str = "", timeout: float = 15) -> None:
    """Open `fifo` for writing once its reader waits, write `text`, close: the reader gets it and EOF."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def ready(lab: Lab, ns: str) -> tuple[int, dict]:
    return lab.ready(ns, f"http://{METRICS}/ready")


@pytest.fixture
def notify(tmp_path):
    notifications = Notifications(tmp_path / "notify")
    yield notifications
    notifications.close()


def test_router_feeds_the_watchdog_only_while_its_data_path_turns(notify, tmp_path):
    config = tmp_path / "router.toml"
    os.mkfifo(config)
    settings = f'v4listen = "{topology.ROUTER_V4}"\nv6prefix = "{topology.PREFIX}"\nmetrics = "{METRICS}"\n'
    with Lab("wd") as lab:
        net = topology.build(lab, ("mob",))
        router = lab.start(net.router, under_systemd(notify, [sys.executable, "-m", "sixbed4.router.cli", "--config",
                                                              str(config), "--fast-path", "off"], WATCHDOG_USEC),
                           "router")
        release(config, settings)  # the router reads its config at start
        lab.wait_for(lambda: notify.first("READY=1"), 20, "READY=1")
        assert_fed_regularly(notify)
        assert notify.feeds(0)[0] > notify.first("READY=1")  # it only feeds once it serves
        assert ready(lab, net.router)[0] == 200
        assert_stopping_stops_the_feeding(notify, router.pid)

        # Stuck in a call that does not return: the reload reads the FIFO, which nobody writes.
        # Only the data path's thread waits; the watchdog's and the metrics' run on.
        router.send_signal(signal.SIGHUP)
        code, document = lab.wait_for(lambda: (r := ready(lab, net.router))[0] == 503 and r, 10, "/ready 503")
        assert document["state"].startswith("data path stalled for ") and document["ready"] is False
        quiet = time.monotonic()
        time.sleep(1.2)
        assert notify.feeds(quiet) == [] and router.poll() is None
        assert "no longer feeding systemd's watchdog" in lab.log("router")
        check = lab.sh(net.router, f"{sys.executable} -m sixbed4.cli anycast check http://{METRICS}", check=False)
        assert check.returncode == 1 and "not serving (data path stalled for " in check.stdout, check.stdout

        release(config, settings)  # the call returns: the data path turns, and says so
        lab.wait_for(lambda: ready(lab, net.router)[0] == 200, 5, "/ready 200 again")
        assert_fed_regularly(notify, 1.5)
        assert "data path turning again after " in lab.log("router")

        # Stuck again; systemd's watchdog sends SIGABRT: every thread's traceback, and the TUN device is gone
        router.send_signal(signal.SIGHUP)
        lab.wait_for(lambda: ready(lab, net.router)[0] == 503, 10, "/ready 503")
        router.send_signal(signal.SIGABRT)
        returncode = router.wait(10)
        log = lab.log("router")
        assert_ended_by_watchdog_abort(returncode, log)
        assert "in read_file" in log and 'Thread 0x' in log
        assert not lab.has_link(net.router, "6bed4")


def test_peer_feeds_the_watchdog_only_while_its_data_path_turns(notify, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    hook = tmp_path / "hook"  # waits at its first offer until the test opens the gate
    hook.write_text(f'#!/bin/sh\n[ "$2" = add-range-offer ] && cat {gate} >/dev/null\nexit 0\n')
    hook.chmod(0o755)
    with Lab("wd") as lab:
        net = topology.build(lab, ("mob",))
        net.start_router()
        argv = [sys.executable, "-m", "sixbed4.peer.cli", "-s", topology.ROUTER_V4, "-x", str(hook)]
        peer = lab.start(net.clients["mob"].ns, under_systemd(notify, argv, WATCHDOG_USEC), "peer")
        # the address came, and the hook holds the data path's thread: no READY=1, and the feeding stops
        lab.wait_for(lambda: "assigned" in lab.log("peer"), 20, "peer address")
        lab.wait_for(lambda: "no longer feeding systemd's watchdog" in lab.log("peer"), 10, "the stall noticed")
        quiet = time.monotonic()
        time.sleep(1.2)
        assert notify.feeds(quiet) == [] and notify.first("READY=1") is None and peer.poll() is None

        release(gate)
        lab.wait_for(lambda: notify.first("READY=1"), 10, "READY=1")
        assert_fed_regularly(notify)
        assert "data path turning again after " in lab.log("peer")
        assert_stopping_stops_the_feeding(notify, peer.pid)
        assert lab.stop(peer) == 0
