"""The 6bed4 peer's decisions, sans IO (PROTOCOL.md section 5).

`PeerCore.from_udp()` takes one datagram and its UDP origin, `PeerCore.from_tun()`
one packet the kernel routed into the 6bed4 device.  Both return the action
tuples of the router core:

    (TUN,   None, None)        write the input packet to the TUN device
    (SEND,  None, (ip, port))  send the input packet, unchanged, to the router
    (DROP,  None, None)        nothing to do (the reason is already counted)

Timers live in `on_tick(now)`: it returns what the daemon must do now, as a list
of `Datagram` (an RS or a keepalive for the router, with the IP TTL to use),
`Configure` / `Unconfigure` (the lease: address, /114 and routes, to apply with
netlink and the extension hook) and `Notice` (a line for the log).  Router
Advertisements handled by from_udp() queue their events for the next tick.

Everything in the peer goes through the router: direct peering is not done
(yet), so only datagrams from the router's IPv4:port are accepted.  Nothing
here raises on any input.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from . import addr, icmp6
from .router import DROP, SEND, TUN
from .stats import Counters

_DROPPED = (DROP, None, None)
_TO_TUN = (TUN, None, None)
_MTU = icmp6.MIN_MTU
_ND_FIRST, _ND_LAST = icmp6.ROUTER_SOLICIT, icmp6.REDIRECT
_SOURCE_PREFIX = struct.Struct("8x14sB")  # source bytes 0..13, byte 14: what the /114 fixes

LANID_PEER = 1
LANID_OFFER_FIRST = 2
RS_BACKOFF = (1.0, 3.0, 7.0, 15.0, 30.0)  # seconds between solicitations until an RA arrives
DEFAULT_KEEPALIVE = 30.0
DEFAULT_KEEPALIVE_TTL = 3
SILENCE_PERIODS = 3  # keepalive periods without any RA before the log says so
ROUTE_MIN_LENGTH = 16  # as the router's -R: a shorter route (::/0 above all) is for -r alone to make


@dataclass(frozen=True)
class PeerConfig:
    router_ipv4: str  # dotted quad, as recvfrom() reports origins
    router_port: int = addr.PORT_6BED4
    keepalive: float = DEFAULT_KEEPALIVE
    keepalive_ttl: int = DEFAULT_KEEPALIVE_TTL
    default_route: bool = False

    @property
    def router(self) -> tuple[str, int]:
        return (self.router_ipv4, self.router_port)


@dataclass(frozen=True)
class Lease:
    """What an RA gave: the peer's /114 and the extra routes (L=0 PIOs)."""

    prefix114: bytes  # 16 bytes, lanid 0
    routes: tuple[tuple[bytes, int], ...] = ()  # (16-byte prefix, length)

    @property
    def address(self) -> bytes:
        """The peer's own address: the /114 with lanid 1."""
        return self.lanid(LANID_PEER)

    @property
    def router_address(self) -> bytes:
        """The router as this peer sees it: its /114 with lanid 0."""
        return self.prefix114

    @property
    def prefix64(self) -> bytes:
        return self.prefix114[:8] + bytes(8)

    def lanid(self, lanid: int) -> bytes:
        return self.prefix114[:14] + bytes((self.prefix114[14] | (lanid >> 8), lanid & 0xFF))

    @property
    def offer_range(self) -> tuple[bytes, bytes]:
        """The addresses the peer may hand on: lanids 2..0x3fff of its /114."""
        return self.lanid(LANID_OFFER_FIRST), self.lanid(addr.LANID_MAX)

    def describe(self) -> str:
        text = f"{addr.format_address(self.address)} in {addr.format_address(self.prefix114)}/114"
        if self.routes:
            text += ", routes " + ", ".join(f"{addr.format_address(p)}/{n}" for p, n in self.routes)
        return text


@dataclass(frozen=True)
class Datagram:
    """Send `data` to the router; ttl None means the socket's default."""

    data: bytes
    ttl: int | None
    kind: str  # "rs" or "keepalive"


@dataclass(frozen=True)
class Configure:
    """Apply `lease` (replacing `old`, if any: remove what it added first)."""

    lease: Lease
    old: Lease | None


@dataclass(frozen=True)
class Unconfigure:
    """The router withdrew the lease (zero lifetimes) without a new one."""

    old: Lease


@dataclass(frozen=True)
class Notice:
    level: int  # a logging level
    message: str


def route_problem(prefix: bytes, length: int) -> tuple[str, str] | None:
    """Why the peer does not install a route an RA offers (an L=0 PIO): (kind, explanation), or None."""
    if length < ROUTE_MIN_LENGTH:
        return "short", f"shorter than /{ROUTE_MIN_LENGTH}: only -r makes the tunnel the default route"
    if prefix[0] == 0xFF:
        return "multicast", "multicast addresses are not routed into the tunnel"
    if prefix[0] == 0xFE and prefix[1] & 0xC0 == 0x80:
        return "link-local", "link-local addresses are not routed into the tunnel"
    return None


def _masked(prefix: bytes, length: int) -> bytes:
    value = int.from_bytes(prefix, "big")
    if length < 128:
        value &= ~((1 << (128 - length)) - 1) & ((1 << 128) - 1)
    return value.to_bytes(16, "big")


class PeerCore:
    """The peer's state machine: soliciting until an RA, then configured."""

    def __init__(self, config: PeerConfig, counters: Counters | None = None):
        self.config = config
        self.counters = counters or Counters()
        self.router = config.router
        self._to_router = (SEND, None, config.router)  # one object: the data path joins runs by identity
        self.lease: Lease | None = None
        self._prefix14 = b""  # bytes 0..13 of the /114, b"" when there is none
        self._prefix_bits = 0  # top two bits of byte 14
        self._pending: list = []
        self._logged: set[str] = set()
        # timers
        self._started: float | None = None
        self._next_rs = 0.0
        self._backoff = 0
        self._next_keepalive = 0.0
        self._last_ra: float | None = None
        self._silence_reported = False
        # peer events, for logs and metrics
        self.rs_sent = 0
        self.keepalives_sent = 0
        self.ra_received = 0
        self.readdressed = 0

    # --- from UDP (the router) ---------------------------------------------

    def from_udp(self, packet, origin: tuple[str, int], now: float):
        counters = self.counters
        n = len(packet)
        counters.udp_in += 1
        counters.udp_in_bytes += n
        if origin != self.router:
            counters.drop("not_from_router")
            return _DROPPED
        if n < 40:
            counters.drop("too_short")
            return _DROPPED
        if packet[0] >> 4 != 6:
            counters.drop("not_ipv6")
            return _DROPPED
        if n > _MTU:
            counters.drop("too_long")
            return _DROPPED
        if (packet[4] << 8) | packet[5] != n - 40:
            counters.drop("bad_length")
            return _DROPPED
        if packet[6] == 58 and n > 40 and _ND_FIRST <= packet[40] <= _ND_LAST:
            if packet[40] == icmp6.ROUTER_ADVERT:
                self._router_advert(packet, now)
            else:
                counters.drop("peer_nd_unexpected")
            return _DROPPED
        prefix14 = self._prefix14
        if not prefix14:
            counters.drop("peer_no_address")
            return _DROPPED
        if packet[24:38] != prefix14 or packet[38] & 0xC0 != self._prefix_bits:
            counters.drop("peer_not_for_us")
            return _DROPPED
        counters.to_tun += 1
        return _TO_TUN

    # --- Router Advertisements ---------------------------------------------

    def _ignore(self, reason: str, detail: str) -> None:
        self.counters.drop(reason)
        if reason not in self._logged:  # once per reason, never per packet
            self._logged.add(reason)
            self._pending.append(Notice(logging.WARNING, f"ignoring RA from the router: {detail} "
                                                         "(logged once; see the drop counters)"))

    def _routes(self, advert: icmp6.RouterAdvert) -> tuple[tuple[bytes, int], ...]:
        """The RA's routes (L=0 PIOs) this peer installs; those it refuses are logged once per kind."""
        routes = set()
        for pio in advert.routes:
            if not pio.valid:
                continue
            prefix = _masked(pio.prefix, pio.length)
            problem = route_problem(prefix, pio.length)
            if problem is None:
                routes.add((prefix, pio.length))
            elif f"route {problem[0]}" not in self._logged:  # a bounded set, whatever the RAs hold
                self._logged.add(f"route {problem[0]}")
                self._pending.append(Notice(logging.WARNING, f"ignoring route {addr.format_address(prefix)}/"
                                                             f"{pio.length} in the router's RA: {problem[1]} "
                                                             "(logged once)"))
        return tuple(sorted(routes))

    def _router_advert(self, packet, now: float) -> None:
        try:
            advert = icmp6.parse_router_advert(packet)
        except icmp6.NdError as error:
            self._ignore(error.reason, str(error))
            return
        autoconf = advert.autoconf
        for pio in autoconf:
            if pio.length != 114:
                self._ignore("ra_bad_prefix", f"autoconfiguration prefix of length /{pio.length}, not /114")
                return
            first = pio.prefix[0]
            if first == 0xFF or (first == 0xFE and pio.prefix[1] & 0xC0 == 0x80) or pio.prefix[14] & 0x3F or pio.prefix[15]:
                self._ignore("ra_bad_prefix", f"unusable /114 prefix {addr.format_address(pio.prefix)}")
                return
        if not autoconf:
            self._ignore("ra_no_prefix", "no /114 prefix in it")
            return
        self.ra_received += 1
        self._last_ra = now
        if self._silence_reported:
            self._silence_reported = False
            self._pending.append(Notice(logging.INFO, "the router answers again"))
        # the C peer configures the last /114 it sees; the corrective RA puts the dead one first
        live = [p for p in autoconf if p.valid]
        routes = self._routes(advert)
        old = self.lease
        if not live:
            dead = {p.prefix for p in autoconf}
            if old is not None and old.prefix114 in dead:
                self._set_lease(None)
                self._pending.append(Unconfigure(old))
                self._next_rs = now  # ask for a new one at once
                self._backoff = 0
            return
        lease = Lease(live[-1].prefix, routes)
        if lease == old:
            return
        if old is not None and old.prefix114 != lease.prefix114:
            self.readdressed += 1
        self._set_lease(lease)
        self._pending.append(Configure(lease, old))
        if old is None:
            self._next_keepalive = now + self.config.keepalive
            self._next_rs = now + self.config.keepalive

    def _set_lease(self, lease: Lease | None) -> None:
        self.lease = lease
        if lease is None:
            self._prefix14, self._prefix_bits = b"", 0
        else:
            self._prefix14, self._prefix_bits = lease.prefix114[:14], lease.prefix114[14] & 0xC0

    # --- from the TUN device (the kernel) ------------------------------------

    def from_tun(self, packet):
        counters = self.counters
        n = len(packet)
        counters.tun_in += 1
        counters.tun_in_bytes += n
        problem = icmp6.tun_packet_problem(packet, n)
        if problem is not None:
            counters.drop(problem)
            return _DROPPED
        source14, source_byte14 = _SOURCE_PREFIX.unpack_from(packet)
        if source14 != self._prefix14 or source_byte14 & 0xC0 != self._prefix_bits:  # also: no lease (b"")
            counters.drop("tun_bad_source")
            return _DROPPED
        counters.to_udp += 1
        return self._to_router

    # --- timers ----------------------------------------------------------------

    def on_tick(self, now: float) -> list:
        """What to do now: datagrams to send, lease changes, log lines (in this order of need)."""
        out = self._pending
        self._pending = []
        config = self.config
        if self._started is None:
            self._started = now
            self._next_rs = now
        if now >= self._next_rs:
            out.append(Datagram(icmp6.router_solicit(), None, "rs"))
            self.rs_sent += 1
            if self.lease is None:
                delay = RS_BACKOFF[min(self._backoff, len(RS_BACKOFF) - 1)]
                self._backoff += 1
                waited = now - (self._last_ra if self._last_ra is not None else self._started)
                if self._backoff > 1:
                    out.append(Notice(logging.INFO, f"no RA from {config.router_ipv4}:{config.router_port} "
                                                    f"after {waited:.0f}s; soliciting again (next in {delay:.0f}s)"))
            else:
                delay = config.keepalive  # re-solicit: a changed NAT mapping shows as a new /114
            self._next_rs = now + delay
        if self.lease is not None:
            if now >= self._next_keepalive:
                out.append(Datagram(b"", config.keepalive_ttl, "keepalive"))
                self.keepalives_sent += 1
                self._next_keepalive = now + config.keepalive
            silent = now - self._last_ra  # set whenever there is a lease
            if not self._silence_reported and silent > SILENCE_PERIODS * config.keepalive:
                self._silence_reported = True
                out.append(Notice(logging.WARNING, f"the router has not answered solicitations for {silent:.0f}s; "
                                                   "keeping the address and trying on"))
        return out


__all__ = [
    "PeerCore", "PeerConfig", "Lease", "Datagram", "Configure", "Unconfigure", "Notice",
    "DROP", "TUN", "SEND",
]
