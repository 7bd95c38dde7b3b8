"""systemd's watchdog, fed only while the data path turns: the decisions, on a clock given to them.

A daemon whose data path is stuck (a deadlock, a blocking call that never
returns, a stopped process) keeps its TUN device, its routes and, with
--anycast-table, its announcement: it looks alive to everything that only
asks the kernel.  So the data path marks each turn of its loop
(Datapath.turned), which it makes at least once per timer tick even when no
packet comes, and a thread of its own (io.service.feeding_watchdog) tells systemd
WATCHDOG=1 only while the last turn is recent.  When it is not, systemd
(WatchdogSec=) kills the process and starts it again (Restart=on-failure); the
kernel deletes the TUN device with it, and with it the announcement.  The same
measure makes the router's /ready say 503.
"""

from __future__ import annotations

from collections.abc import Mapping

STALL_LIMIT = 2.0  # s without a turn: stalled.  The loop turns at least once per tick (router 1 s, peer 0.2 s).
FEEDS_PER_INTERVAL = 4  # WATCHDOG=1 every WATCHDOG_USEC / 4: a late one or two do not get the daemon killed


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """sd_watchdog_enabled(): systemd's WatchdogSec= in seconds if it expects this process to feed it, else None.

    systemd sets WATCHDOG_USEC and WATCHDOG_PID for the main process; a child
    that inherited them (a hook script) finds another PID there and leaves them.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID")
    if usec <= 0 or (owner is not None and owner.strip() != str(pid)):
        return None
    return usec / 1_000_000


def stalled(turned: float, now: float, limit: float = STALL_LIMIT) -> str | None:
    """Why the data path does not serve, if its loop has not turned for longer than `limit`; None if it turns."""
    if now - turned <= limit:
        return None
    return f"data path stalled for {now - turned:.1f} s"


class Feeder:
    """When to say WATCHDOG=1: every `period` seconds, as long as the data path turns.

    check() is called every `period` seconds; it returns whether to feed now
    and a line for the log when the data path stalls or turns again.
    """

    def __init__(self, interval: float, limit: float = STALL_LIMIT):
        self.interval = interval
        self.period = interval / FEEDS_PER_INTERVAL
        self.limit = limit
        self.stalled_since: float | None = None  # the last turn before a stall

    def check(self, now: float, turned: float) -> tuple[bool, str | None]:
        stall = stalled(turned, now, self.limit)
        if stall is not None:
            if self.stalled_since == turned:
                return False, None
            self.stalled_since = turned
            return False, f"{stall}: no longer feeding systemd's watchdog (WatchdogSec {self.interval:g} s)"
        if self.stalled_since is not None:
            since, self.stalled_since = self.stalled_since, None
            return True, f"data path turning again after {turned - since:.1f} s: feeding systemd's watchdog"
        return True, None
