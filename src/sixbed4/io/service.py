"""Service integration: signals, systemd notifications and dropping privileges.

After the daemon has its TUN device and sockets, it no longer needs root: it
switches to an unprivileged user and keeps only CAP_NET_ADMIN (to change
addresses and routes, e.g. when a peer's NAT mapping changes) in its
effective, permitted and ambient sets.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import pwd
import signal
import socket

from .metrics import serve_metrics

log = logging.getLogger(__name__)

PR_SET_KEEPCAPS = 8
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


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


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


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
    libc = _libc()
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS) failed")
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise PrivilegeError(1, f"--user {user}: cannot switch user (not running as root?)") from None
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, mask), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise PrivilegeError(ctypes.get_errno(), "capset() failed")
    PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
    for cap in keep:  # so that hook scripts the peer runs keep them too
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    os.environ["HOME"] = entry.pw_dir


def serve_then_drop(metrics: tuple[str, int] | None, collectors, user: str | None,
                    cleanup: contextlib.ExitStack, ready=None) -> None:
    """The daemons' last setup step: the metrics exporter, then the switch to `user`.

    In this order because the exporter's thread imports modules lazily, which an
    unprivileged user may not be able to read; it needs no capabilities itself.
    `ready` is the readiness for /ready (see metrics.serve_metrics).
    Raises MetricsError or PrivilegeError, whose str() is the one-line message.
    """
    if metrics:
        server = serve_metrics(metrics, *collectors, ready=ready)
        cleanup.callback(server.shutdown)
    if user:
        drop_privileges(user)
        log.info("running as user %s with CAP_NET_ADMIN only", user)


def capabilities() -> dict[str, str]:
    """The Cap* lines of /proc/self/status (for logs and tests)."""
    with open("/proc/self/status") as status:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in status if line.startswith("Cap"))}
