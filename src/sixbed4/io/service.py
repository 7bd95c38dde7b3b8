"""Service integration: signals, systemd notifications and its watchdog, dropping privileges.

After the daemon has its TUN device and sockets, it no longer needs root: it
switches to an unprivileged user and keeps only CAP_NET_ADMIN (to change
addresses and routes, e.g. when a peer's NAT mapping changes) in its
effective, permitted and ambient sets; a LAN gateway also keeps what its
DHCPv6 server needs when it (re)starts it (CAP_NET_BIND_SERVICE, CAP_NET_RAW).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import faulthandler
import logging
import os
import pwd
import signal
import socket
import threading
from typing import Iterator

from ..core.watchdog import FEEDS_PER_INTERVAL, STALL_LIMIT, Feeder, watchdog_interval
from .metrics import serve_metrics

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


# What the daemons take from their environment (the man pages' ENVIRONMENT section is made from this table).
ENVIRONMENT = {
    "NOTIFY_SOCKET": "systemd's notification socket (Type=notify): READY=1, RELOADING=1 around a reload, STATUS= "
                     "lines, and WATCHDOG=1; without it nothing is sent",
    "WATCHDOG_USEC": f"systemd's WatchdogSec= in microseconds: WATCHDOG=1 goes to NOTIFY_SOCKET "
                     f"{FEEDS_PER_INTERVAL} times as often while the data path's loop turns (it does so at least "
                     f"once a second), and none once it has not turned for {STALL_LIMIT:g} s; systemd then kills the "
                     "daemon (SIGABRT) and starts it again.  Not passed on to the programs the daemon runs",
    "WATCHDOG_PID": "the process systemd's watchdog expects WATCHDOG=1 from: when it is another one, "
                    "WATCHDOG_USEC is not for this one",
}


class PrivilegeError(OSError):
    """Dropping privileges failed; str() is the one-line explanation."""


def handle_signals(table: dict, stop, reload=None) -> None:
    """Install the handlers that a daemon's SIGNALS table names: "stop" calls stop(), "reload" asks `reload`.

    The handlers only set flags (the datapath's epoll wakes up for them); the
    reload itself runs from the datapath's timer (see reloading()).
    """

    def on_stop(signum, _frame):
        log.info("%s received, shutting down", signal.Signals(signum).name)
        stop()

    def on_reload(signum, _frame):
        if reload is None:
            log.info("%s received: no configuration to reload", signal.Signals(signum).name)
        else:
            reload.request()

    handlers = {"stop": on_stop, "reload": on_reload}
    for signum, (kind, _what) in table.items():
        if kind is not None:
            signal.signal(signum, handlers[kind])


def reloading(reload, settings, on_tick, live: frozenset[str] = frozenset(), apply=None, ready=lambda: True):
    """A datapath on_tick that first carries out a requested reload, then calls on_tick.

    `live` names the settings the daemon changes while running, through
    apply(new settings); the others keep their value until the next start (and
    are reported again by the next reload while they differ).  systemd hears
    RELOADING=1 and then READY=1, the latter only if ready() (a peer that has no
    address yet is not ready after a reload either).
    """
    if reload is None:
        return on_tick
    running = settings

    def tick(now: float) -> None:
        nonlocal running
        if reload.due():
            notify("RELOADING=1")
            new = reload.check(running, live)
            if new is not None:
                running = dataclasses.replace(running, **{name: getattr(new, name) for name in live})
                if apply is not None:
                    apply(running)
            if ready():
                notify("READY=1")
        on_tick(now)

    return tick


def notify(state: str) -> bool:
    """sd_notify(): tell systemd e.g. READY=1 or STOPPING=1; False when not under systemd."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), target)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def feeding_watchdog(datapath, environ=os.environ) -> Iterator[None]:
    """systemd's watchdog (WatchdogSec=): WATCHDOG=1 from a thread of its own while `datapath` turns.

    Without $WATCHDOG_USEC for this process (not under systemd, or no
    WatchdogSec=) no thread is started.  The variables are taken out of the
    environment either way, as sd_watchdog_enabled(1) does: the programs the
    daemon runs (hooks, dnsmasq) are not the ones systemd watches.  systemd
    kills with SIGABRT; faulthandler then writes every thread's traceback to
    stderr (the journal) first, which shows where the data path was stuck
    (also for a `kill -ABRT` by hand).  It reads the frames of threads that
    go on running meanwhile: should that fault, the process ends by SIGSEGV
    after the same first line; systemd's result is "watchdog" either way.
    """
    faulthandler.enable()
    interval = watchdog_interval(environ, os.getpid())
    environ.pop("WATCHDOG_USEC", None)
    environ.pop("WATCHDOG_PID", None)
    if interval is None:
        yield
        return
    feeder = Feeder(interval)
    done = threading.Event()

    def feed() -> None:
        while not done.wait(feeder.period):
            alive, news = feeder.check(datapath.clock(), datapath.turned)
            if news:
                log.log(logging.INFO if alive else logging.WARNING, "%s", news)
            if alive:
                notify("WATCHDOG=1")

    thread = threading.Thread(target=feed, name="watchdog", daemon=True)
    thread.start()
    log.info("systemd's watchdog: WATCHDOG=1 every %.2f s while the data path turns (WatchdogSec %g s)",
             feeder.period, interval)
    try:
        yield
    finally:
        done.set()
        thread.join()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded once, before any fork: children use it between fork and exec


def switch_user(uid: int, gid: int, keep: tuple[int, ...]) -> None:
    """Become uid:gid keeping only the capabilities in `keep` (also in the ambient set, for children).

    System calls only, no lookups: safe between fork and exec (a child's preexec_fn).
    """
    libc = _LIBC
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS) failed")
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except PermissionError:
        raise PrivilegeError(1, "cannot switch user (not running as root?)") from None
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, mask), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise PrivilegeError(ctypes.get_errno(), "capset() failed")
    PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
    for cap in keep:  # so that the programs it runs (hook scripts, the DHCPv6 server) keep them too
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)


def drop_privileges(user: str, keep: tuple[int, ...] = (CAP_NET_ADMIN,)) -> None:
    """Become `user` (and its primary group), keeping only the capabilities in `keep`.

    glibc switches the user of every thread, but capset() and the ambient set
    apply to the calling thread only: threads started before this call keep no
    capabilities, threads started after it inherit `keep`.  So call it before
    starting threads, or make all privileged changes from the calling thread.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(0, f"--user {user}: no such user") from None
    try:
        switch_user(entry.pw_uid, entry.pw_gid, keep)
    except PrivilegeError as exc:
        raise PrivilegeError(exc.errno, f"--user {user}: {exc.strerror}") from None
    os.environ["HOME"] = entry.pw_dir


def die_with_parent() -> None:
    """For a child (preexec_fn, after any switch_user): SIGTERM when the thread that started it ends.

    Also when that is by SIGKILL.  A change of user clears the setting, so it comes last.
    """
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def serve_then_drop(metrics: tuple[str, int] | None, collectors, user: str | None,
                    cleanup: contextlib.ExitStack, keep: tuple[int, ...] = (CAP_NET_ADMIN,), ready=None) -> None:
    """The daemons' last setup step: the metrics exporter, then the switch to `user`, keeping `keep`.

    In this order because the exporter's thread imports modules lazily, which an
    unprivileged user may not be able to read; it needs no capabilities itself.
    `ready` is the readiness for /ready (see metrics.serve_metrics).
    Raises MetricsError or PrivilegeError, whose str() is the one-line message.
    """
    if metrics:
        server = serve_metrics(metrics, *collectors, ready=ready)
        cleanup.callback(server.shutdown)
    if user:
        drop_privileges(user, keep)
        log.info("running as user %s with %s only", user, ", ".join(CAP_NAMES[cap] for cap in keep))


def capabilities() -> dict[str, str]:
    """The Cap* lines of /proc/self/status (for logs and tests)."""
    with open("/proc/self/status") as status:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in status if line.startswith("Cap"))}
