"""`--fast-path {auto,on,off}`: start a daemon's fast path, or say why not; keep the peer's current."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from ..core import addr
from ..core.peer import PeerCore
from ..core.router import RouterConfig
from ..io import netlink
from ..io.undo import UndoRecord
from .loader import FastPath, FastPathError, PeerFastPath, RouterFastPath, ifindex

__all__ = ["MODES", "FastPathError", "start", "close_on_exit", "router", "peer", "PeerFollower"]

MODES = ("auto", "on", "off")
ROUTE_CHECK = 1.0  # seconds between the peer's looks at the route to its router


def start(mode: str, attach: Callable[[], FastPath], log: logging.Logger) -> FastPath | None:
    """The fast path `attach()` loads and attaches, or None (mode off, or auto and it cannot be used: logged).

    Raises FastPathError when mode is "on" and it cannot be used.
    """
    if mode == "off":
        return None
    try:
        fast = attach()
    except FastPathError as exc:
        if mode == "on":
            raise
        log.info("fast path not used: %s; all packets take the Python path", exc)
        return None
    log.info("fast path attached: %s", fast.attachment)
    return fast


def close_on_exit(cleanup, fast: FastPath, log: logging.Logger) -> None:
    """On exit (an ExitStack): detach, and log what the kernel took."""
    cleanup.callback(fast.close)
    cleanup.callback(lambda: log.info("fast path detached; the kernel took %s",
                                      " ".join(f"{k}={v}" for k, v in fast.counters().items() if v) or "nothing"))


def _attached(fast: FastPath, configure: Callable[[], None], uplink: str, tun: str) -> FastPath:
    """`fast` configured and attached; closed again if either fails."""
    try:
        configure()
        fast.attach(uplink, tun)
    except OSError as exc:
        fast.close()
        raise FastPathError(str(exc)) from None
    except BaseException:
        fast.close()
        raise
    return fast


# --- the router ---------------------------------------------------------------------


def router(config: RouterConfig, bind: tuple[str, int], tun: str, uplink: str | None,
           host_ipv4s: Callable[[], Iterable[bytes]], record: UndoRecord | None) -> RouterFastPath:
    """The router's fast path, attached.

    `host_ipv4s()` gives the host's IPv4 addresses, which the programs know
    before they are attached (the daemon keeps them current afterwards);
    `record` is the daemon's undo record.
    """
    bind_ipv4 = addr.parse_ipv4(bind[0])
    if bind_ipv4[0] == 127:
        raise FastPathError(f"the socket is bound to {bind[0]} (-x): datagrams come through firewall rules")
    if uplink is None:
        raise FastPathError(f"no interface has or routes {addr.format_ipv4(config.ipv4)}: give --uplink")
    source = bind_ipv4 if any(bind_ipv4) else _uplink_ipv4(uplink)
    fast = RouterFastPath.load(record)

    def configure() -> None:
        fast.configure(config, bind_ipv4, source, ifindex(tun), ifindex(uplink))
        fast.set_host_ipv4s(host_ipv4s())

    return _attached(fast, configure, uplink, tun)


def _uplink_ipv4(uplink: str) -> bytes:
    """The socket bound to 0.0.0.0 sends from the uplink's address (the first one, as the kernel picks)."""
    addresses = netlink.ipv4_addresses(uplink)
    if not addresses:
        raise FastPathError(f"uplink {uplink} has no IPv4 address to send from")
    return addresses[0]


# --- the peer -----------------------------------------------------------------------


def peer(router_endpoint: tuple[str, int], local: tuple[str, int], tun: str,
         record: UndoRecord | None) -> PeerFastPath:
    """The peer's fast path, attached to the uplink of the route to the router (it follows: PeerFollower)."""
    route = netlink.route_to(router_endpoint[0])
    if route is None:
        raise FastPathError(f"no route to the router {router_endpoint[0]} (yet)")
    fast = PeerFastPath.load(record)

    def configure() -> None:
        fast.configure((addr.parse_ipv4(router_endpoint[0]), router_endpoint[1]), local[1], ifindex(tun))

    return _attached(fast, configure, route[0], tun)


class PeerFollower:
    """Keeps the peer's programs current: the lease the core holds, the route to the router.

    Wraps the daemon's timer tick.  The route is looked at every ROUTE_CHECK
    seconds: when it moves to another interface the uplink's program moves
    with it (or, where it cannot, the programs hand everything to Python until
    the route is back); the socket's source address follows the route unless
    it is bound to one (-l).
    """

    def __init__(self, fast: PeerFastPath, core: PeerCore, bound_ipv4: str, log: logging.Logger,
                 route_to: Callable[[str], tuple[str, str] | None] = netlink.route_to):
        self.fast, self.core, self.log, self.route_to = fast, core, log, route_to
        self.bound = None if bound_ipv4 == "0.0.0.0" else bound_ipv4
        self.router_ipv4 = core.config.router_ipv4
        self._next_check = 0.0
        self._problem: str | None = None

    def following(self, on_tick):
        def tick(now: float) -> None:
            on_tick(now)  # the core's timers first: a lease it takes now goes to the kernel at once
            if self.fast.attachment is None:
                return
            lease = self.core.lease
            try:
                self.fast.set_lease(lease.prefix114 if lease else None)
                if now >= self._next_check:
                    self._next_check = now + ROUTE_CHECK
                    self.check_route()
            except OSError as exc:  # the programs would go on with what they knew: take them away
                self.fast.detach()
                self.log.error("fast path detached: cannot update its configuration (%s); all packets take the "
                               "Python path", exc.strerror or exc)

        return tick

    def check_route(self) -> None:
        route = self.route_to(self.router_ipv4)
        problem = None
        if route is None:
            problem = f"no route to the router {self.router_ipv4}"
            self.fast.set_route(None, 0)
        else:
            uplink, source = route
            try:
                self.fast.move_uplink(uplink)
                self.fast.set_route(addr.parse_ipv4(self.bound or source), ifindex(uplink))
            except FastPathError as exc:
                problem = f"the route to the router leaves by {uplink}: {exc}"
                self.fast.set_route(None, 0)
        if problem != self._problem:
            if problem:
                self.log.warning("fast path idle: %s; all packets take the Python path", problem)
            else:
                self.log.info("fast path: datagrams to the router leave by %s from %s", uplink, self.bound or source)
            self._problem = problem
