"""The router's health signal and, with --anycast-table, its announcement.

The router serves when its datapath runs, its TUN device and uplink are up, and
the kernel forwards IPv6 (without it, peers get addresses and reach each other,
but nothing else: a router that answers and forwards nothing must not attract
traffic).
`Health` says so on the metrics server's `/ready` (200 and JSON while serving,
503 otherwise) and, in anycast mode, holds the announcement: one route per
announced prefix through the TUN device, in a kernel table that the BGP daemon
learns and announces.  The routes go in when the router serves, and out when
the uplink or TUN device goes down and on a clean stop (before the drain).  On a
crash nobody needs to act: the kernel deletes the TUN device and every route
through it, and BIRD withdraws them within milliseconds.

The routes carry the fingerprint of the options every router must share as
their metric; the BGP daemon passes it on as a community (see birdconf).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core.router import RouterConfig
from ..core.watchdog import stalled
from ..io import netlink
from .agreement import fingerprint, shared_options
from .options import AnycastSettings

log = logging.getLogger("6bed4router")

IFF_RUNNING = 0x40  # carrier
RTPROT_STATIC = 4


def running(flags: int | None) -> bool:
    """Administratively up and with carrier: what a link must be to carry traffic."""
    return flags is not None and flags & (netlink.IFF_UP | IFF_RUNNING) == netlink.IFF_UP | IFF_RUNNING


def forwarding_problem() -> str | None:
    """Why the kernel does not forward IPv6 (net.ipv6.conf.all.forwarding 0, or unreadable), or None."""
    try:
        value = netlink.read_sysctl("net.ipv6.conf.all.forwarding")
    except OSError as exc:
        return f"cannot read net.ipv6.conf.all.forwarding: {exc.strerror}"
    if value != "1":
        return "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0; see 6bed4 host-setup)"
    return None


def default_route_interface() -> tuple[int, str] | None:
    """(index, name) of the interface of the IPv4 default route: an anycast router host's uplink."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            index = route.get_attr("RTA_OIF")
            if index is None:  # a multipath default route: its first hop
                hops = route.get_attr("RTA_MULTIPATH") or []
                index = hops[0]["oif"] if hops else None
            if index is not None:
                return index, socket.if_indextoname(index)
    return None


class AnnounceError(RuntimeError):
    """The kernel refused the announcement's routes; str() says which and why."""


class KernelTable:
    """The announcement: routes through the TUN device in a table of their own.

    Each call opens its own netlink socket, so that the signal handler can
    withdraw while the datapath's tick is busy with another.
    """

    def __init__(self, table: int, prefixes: tuple[str, ...], oif: int, metric: int):
        self.table = table
        self.routes = []
        for text in prefixes:
            network = ipaddress.ip_network(text)
            family = socket.AF_INET if network.version == 4 else socket.AF_INET6
            self.routes.append(dict(dst=str(network.network_address), dst_len=network.prefixlen, family=family,
                                    oif=oif, table=table, priority=metric, proto=RTPROT_STATIC))

    def add(self) -> None:
        with IPRoute() as ipr:
            for spec in self.routes:
                try:
                    ipr.route("replace", **spec)
                except NetlinkError as exc:
                    reason = exc.args[1] if len(exc.args) > 1 else exc
                    raise AnnounceError(f"announcing {spec['dst']}/{spec['dst_len']} in kernel table {self.table}: "
                                        f"{reason}") from None

    def remove(self) -> None:
        """Delete the routes; those the kernel took with a device that went down are fine."""
        with IPRoute() as ipr:
            for spec in self.routes:
                try:
                    ipr.route("del", **spec)
                except NetlinkError as exc:
                    if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        log.warning("withdrawing %s/%s: %s", spec["dst"], spec["dst_len"], exc)


class Health:
    """Serving or not, why not, and the announcement that follows it."""

    def __init__(self, shared: dict, links: dict[int, str], is_up: Callable[[int], bool],
                 announcement: KernelTable | None = None, prefixes: tuple[str, ...] = (), drain: float = 0.0,
                 forwarding: Callable[[], str | None] = lambda: None):
        self.shared = shared
        self.forwarding = forwarding  # why the kernel does not forward, or None
        self.fingerprint = fingerprint(shared)
        self.links = links  # index -> what it is, e.g. "uplink eth0"; each must be up to serve
        self.announcement = announcement
        self.prefixes = prefixes
        self.drain_time = drain
        self.state = "starting"
        self.announced = False
        self.is_up = is_up
        self.datapath = None  # see follow()

    @classmethod
    def for_router(cls, config: RouterConfig, anycast: AnycastSettings | None, setup: netlink.InterfaceSetup,
                   watch: netlink.LinkWatch) -> "Health":
        """The router's health: its TUN device and uplink; in anycast mode the uplink is the
        default route's interface (the -l address is on lo), and the watch learns of it too."""
        prefixes = anycast.prefixes if anycast else ()
        shared = shared_options(config, prefixes)
        if anycast is not None and watch.uplink is None:
            found = default_route_interface()
            if found is not None:
                watch.uplink = found[1]
                watch.add(found[0], f"uplink {found[1]}",
                          "nothing passes it until it is up again; the announcement is withdrawn meanwhile")
        links = dict(watch.links)  # the TUN device and the uplink, if there is one

        def is_up(index: int) -> bool:
            return running(watch.flags(index))

        if anycast is None:
            return cls(shared, links, is_up, forwarding=forwarding_problem)
        table = KernelTable(anycast.table, anycast.prefixes, setup.index, fingerprint(shared))
        return cls(shared, links, is_up, table, anycast.prefixes, anycast.drain, forwarding_problem)

    # --- the state ------------------------------------------------------------

    def _trouble(self) -> str | None:
        for index, what in self.links.items():
            if not self.is_up(index):
                return f"{what} is down"
        return self.forwarding()

    def update(self) -> None:
        """Serving unless a link is down or forwarding off; announce or withdraw on a change (not while stopping)."""
        if self.state in ("draining", "stopped"):
            return
        state = self._trouble() or "serving"
        if state == self.state:
            return
        was, self.state = self.state, state
        if state == "serving":
            if was != "starting":
                log.info("serving again")
            self._announce()
            if self.state != "serving":  # a signal came while announcing
                self._withdraw()
        else:
            log.warning("not serving: %s", state)
            self._withdraw()

    def guarding(self, on_tick: Callable[[float], None]) -> Callable[[float], None]:
        """A datapath on_tick that first follows the links."""

        def tick(now: float) -> None:
            self.update()
            on_tick(now)

        return tick

    def drain(self, stop: Callable[[], None]) -> None:
        """A clean stop (from the signal handler): withdraw, serve `drain` seconds more, then stop().

        A second signal while draining stops at once.
        """
        if self.state == "draining" or not self.announced or self.drain_time <= 0:
            self.state = "draining"
            self._withdraw()
            stop()
            return
        self.state = "draining"
        self._withdraw()
        log.info("withdrawn; serving %.1f s more while the upstream moves the traffic", self.drain_time)
        timer = threading.Timer(self.drain_time, stop)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self.state = "stopped"
        self._withdraw()

    # --- the announcement ---------------------------------------------------

    def _announce(self) -> None:
        if self.announcement is None:
            return
        self.announcement.add()
        self.announced = True
        log.info("announcing %s in kernel table %d (fingerprint %08x)", ", ".join(self.prefixes),
                 self.announcement.table, self.fingerprint)

    def _withdraw(self) -> None:
        if self.announcement is None or not self.announced:
            return
        self.announced = False
        self.announcement.remove()
        log.info("withdrew %s", ", ".join(self.prefixes))

    # --- the signal ---------------------------------------------------------

    def follow(self, datapath) -> None:
        """Watch the turns of the datapath's loop too: /ready says when it stalls (core.watchdog.stalled).

        Nothing else can follow a stall: the links, the announcement and the
        state change only from the datapath's own tick.  A stalled router is
        withdrawn when systemd's watchdog kills it (see core.watchdog).
        """
        self.datapath = datapath

    def report(self) -> tuple[bool, dict]:
        """(ready, details) for /ready: ready only while serving and the datapath turns."""
        stall = stalled(self.datapath.turned, self.datapath.clock()) if self.datapath else None
        ready = self.state == "serving" and stall is None
        return ready, {
            "ready": ready,
            "state": stall or self.state,
            "announced": list(self.prefixes) if self.announced else [],
            "fingerprint": f"{self.fingerprint:08x}",
            "shared": self.shared,
        }
