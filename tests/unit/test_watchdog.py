"""systemd's watchdog fed only while the data path turns (core.watchdog, io.service.feeding_watchdog),
and /ready while it stalls (anycast.health)."""

from __future__ import annotations

import socket
import time

import pytest

from sixbed4.anycast import health
from sixbed4.core.watchdog import STALL_LIMIT, Feeder, stalled, watchdog_interval
from sixbed4.io import service


@pytest.mark.parametrize("environ, interval", [
    ({"WATCHDOG_USEC": "5000000"}, 5.0),  # no WATCHDOG_PID: for whoever reads it (sd_watchdog_enabled)
    ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "4242"}, 5.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4243"}, None),  # a child that inherited its parent's
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "many"}, None),
    ({}, None),  # not under systemd, or no WatchdogSec=
    ({"WATCHDOG_PID": "4242"}, None),
    ({"WATCHDOG_USEC": "0", "WATCHDOG_PID": "4242"}, None),
    ({"WATCHDOG_USEC": "-5", "WATCHDOG_PID": "4242"}, None),
    ({"WATCHDOG_USEC": "5s", "WATCHDOG_PID": "4242"}, None),
])
def test_the_watchdog_is_ours_only_if_systemd_set_it_for_our_pid(environ, interval):
    assert watchdog_interval(environ, 4242) == interval


class FakeLoop:
    """A data path's clock and turns, moved by hand."""

    def __init__(self):
        self.now = 1000.0
        self.turned = self.now

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float, turning: bool = True) -> None:
        self.now += seconds
        if turning:
            self.turned = self.now


def test_feeds_while_the_loop_turns_stops_when_it_stalls_and_resumes_when_it_turns_again():
    loop = FakeLoop()
    feeder = Feeder(interval=5.0)
    assert feeder.period == 1.25
    for _ in range(10):  # idle: the loop turns once per tick
        loop.advance(feeder.period)
        assert feeder.check(loop.now, loop.turned) == (True, None)
    loop.advance(feeder.period, turning=False)  # a stall shorter than the limit is not one yet
    assert feeder.check(loop.now, loop.turned) == (True, None)
    loop.advance(feeder.period, turning=False)
    alive, news = feeder.check(loop.now, loop.turned)
    assert not alive and news == "data path stalled for 2.5 s: no longer feeding systemd's watchdog (WatchdogSec 5 s)"
    for _ in range(8):  # said once; no WATCHDOG=1 however long it lasts
        loop.advance(feeder.period, turning=False)
        assert feeder.check(loop.now, loop.turned) == (False, None)
    loop.advance(feeder.period)
    assert feeder.check(loop.now, loop.turned) == (True, "data path turning again after 13.8 s: "
                                                             "feeding systemd's watchdog")
    loop.advance(feeder.period)
    assert feeder.check(loop.now, loop.turned) == (True, None)


def test_a_second_stall_is_told_again():
    loop = FakeLoop()
    feeder = Feeder(interval=1.0)
    loop.advance(3, turning=False)
    assert feeder.check(loop.now, loop.turned)[0] is False
    loop.advance(0.1)
    assert feeder.check(loop.now, loop.turned)[0] is True
    loop.advance(3, turning=False)
    alive, news = feeder.check(loop.now, loop.turned)
    assert not alive and news.startswith("data path stalled for 3.0 s")


def test_stalled_says_for_how_long_once_past_the_limit():
    assert stalled(100.0, 100.0 + STALL_LIMIT) is None
    assert stalled(100.0, 103.25) == "data path stalled for 3.2 s"


# --- the thread that feeds it: a real notify socket, a fake data path ----------------------------


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    messages, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            pass
    return messages


class TurningLoop:
    clock = staticmethod(time.monotonic)

    def __init__(self):
        self.turned = time.monotonic()
        self.stuck = False

    def turn(self) -> None:
        if not self.stuck:
            self.turned = time.monotonic()


def test_the_thread_feeds_systemd_while_the_loop_turns_and_not_while_it_stalls(notify_socket):
    import os

    loop = TurningLoop()
    environ = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    with service.feeding_watchdog(loop, environ):
        assert environ == {}  # not passed on to the programs the daemon runs
        feeds = []
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            loop.turn()
            feeds += received(notify_socket, 0.02)
        assert [text for _, text in feeds] == ["WATCHDOG=1"] * len(feeds) and len(feeds) >= 4
        loop.stuck = True
        later = received(notify_socket, STALL_LIMIT + 0.6)
        # fed until the stall passed the limit, then nothing
        assert later and later[-1][0] - loop.turned <= STALL_LIMIT + 0.2
        assert received(notify_socket, 0.5) == []
        loop.stuck = False
        loop.turn()
        assert received(notify_socket, 0.4), "fed again once the loop turns"
    received(notify_socket, 0.05)  # what it sent before it ended
    assert received(notify_socket, 0.3) == []  # the thread ended with the daemon's data path


def test_nothing_is_fed_for_another_process(notify_socket):
    environ = {"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    with service.feeding_watchdog(TurningLoop(), environ):
        assert environ == {} and received(notify_socket, 0.3) == []


# --- /ready ------------------------------------------------------------------------


def test_ready_says_503_while_the_data_path_stalls():
    loop = FakeLoop()
    h = health.Health({}, {1: "the TUN device 6bed4"}, lambda index: True)
    h.update()
    h.follow(loop)
    loop.advance(1.0)
    assert h.report()[0] is True and h.report()[1]["state"] == "serving"
    loop.advance(3.0, turning=False)
    ready, details = h.report()
    assert not ready and details["state"] == "data path stalled for 3.0 s"
    loop.advance(0.1)
    assert h.report()[0] is True
