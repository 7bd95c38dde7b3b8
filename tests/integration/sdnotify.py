"""systemd's side of sd_notify for the tests: a notify socket, and a watchdog that kills as systemd's does.

A daemon started through under_systemd() gets NOTIFY_SOCKET (a unix datagram
socket the test binds), WATCHDOG_USEC and WATCHDOG_PID (its own PID: the
shell execs it), as systemd starts a unit with WatchdogSec=.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import threading
import time
from pathlib import Path


class Notifications:
    """Every message on the notify socket, with the time it came (time.monotonic())."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self.closed = False
        self.killed_at: float | None = None
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed:
            try:
                text = self.sock.recv(4096).decode()
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), text))

    def close(self) -> None:
        self.closed = True
        self.thread.join()
        self.sock.close()

    def feeds(self, start: float, end: float | None = None) -> list[float]:
        """When WATCHDOG=1 came, between start and end."""
        return [at for at, text in list(self.messages)
                if "WATCHDOG=1" in text.split("\n") and at >= start and (end is None or at <= end)]

    def first(self, line: str) -> float | None:
        return next((at for at, text in list(self.messages) if line in text.split("\n")), None)

    def kill_when_silent(self, pid: int, interval: float) -> None:
        """systemd's watchdog: once fed, SIGABRT (and SIGCONT, for a stopped process) after `interval` without
        WATCHDOG=1; self.killed_at says when."""

        def watch() -> None:
            while not self.closed:
                time.sleep(0.01)
                fed = self.feeds(0)
                if fed and time.monotonic() - fed[-1] > interval:
                    self.killed_at = time.monotonic()
                    for sig in (signal.SIGABRT, signal.SIGCONT):
                        os.kill(pid, sig)
                    return

        threading.Thread(target=watch, daemon=True).start()


def under_systemd(notify: Notifications, argv: list[str], watchdog_usec: int) -> list[str]:
    """argv as systemd starts it with WatchdogSec=: WATCHDOG_PID is the daemon's own PID (exec keeps it)."""
    return ["sh", "-c", f"export NOTIFY_SOCKET={notify.path} WATCHDOG_USEC={watchdog_usec} WATCHDOG_PID=$$; "
                        f"exec {shlex.join(argv)}"]


def unit_watchdog_sec(unit: Path) -> float:
    """WatchdogSec= of a unit file, in seconds (as the units write it: 5s)."""
    for line in unit.read_text().splitlines():
        if line.startswith("WatchdogSec="):
            return float(line.split("=", 1)[1].removesuffix("s"))
    raise AssertionError(f"{unit} has no WatchdogSec=")


def assert_ended_by_watchdog_abort(returncode: int, log: str) -> None:
    """faulthandler's answer to systemd's SIGABRT: "Fatal Python error: Aborted", every thread's traceback,
    then the end by SIGABRT.  Its dump reads the frames of threads that go on running meanwhile (the others
    of a stalled daemon, all of them after the SIGCONT to a stopped one); a fault while it reads ends the
    process by SIGSEGV after that same first line instead (a -11 was seen once in ~30 runs of
    test_anycast).  systemd's result is "watchdog" either way."""
    fatal = re.findall(r"Fatal Python error: (\w[\w ]*)", log)
    assert fatal[:1] == ["Aborted"], log[-3000:]
    assert returncode == -signal.SIGABRT or (returncode == -signal.SIGSEGV
                                              and fatal[1:2] == ["Segmentation fault"]), (returncode, log[-3000:])
