"""The 6bed4 router's decisions, sans IO (PROTOCOL.md section 4).

`RouterCore.from_udp()` takes one datagram and its UDP origin, and
`RouterCore.from_tun()` one packet the kernel routed into the 6bed4 device.
Each returns an action tuple `(kind, data, address)`:

    (TUN,   None, None)        write the input packet to the TUN device
    (SEND,  None, (ip, port))  send the input packet (maybe edited in place) by UDP
    (REPLY, bytes, (ip, port)) send a packet the router built by UDP
    (DROP,  None, None)        nothing to do (the reason is already counted)

The input is a writable buffer (bytearray or memoryview of one) holding exactly
one packet; relays and masquerading edit it in place, so the data path copies
nothing.  Nothing here raises on any input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import addr, icmp6
from .ratelimit import KeyedLimiter, TokenBucket
from .stats import Counters

DROP, TUN, SEND, REPLY = 0, 1, 2, 3
_DROPPED = (DROP, None, None)
_TO_TUN = (TUN, None, None)

_MTU = icmp6.MIN_MTU
_ND_FIRST, _ND_LAST = icmp6.ROUTER_SOLICIT, icmp6.REDIRECT
_FE80 = addr.LINK_LOCAL_64
_FC64 = addr.FC64_PREFIX
_CACHE_LIMIT = 4096  # bounded: memory must not grow with the number of peers
_HEADER = struct.Struct("!B3xHBx32s")  # version nibble, payload length, next header, source + destination
_DESTINATION = struct.Struct("24x16s")


@dataclass(frozen=True)
class MasqRule:
    """Forward ports lo..hi of a protocol, sent to the router, to `host`."""

    proto: int
    lo: int
    hi: int
    host: bytes


@dataclass(frozen=True)
class Limits:
    """Rate limits (per second, burst): documented defaults, see the README."""

    ra_per_source: float = 1.0
    ra_per_source_burst: float = 3.0
    ra_total: float = 200.0
    ra_total_burst: float = 100.0
    corrective_per_source: float = 0.2
    corrective_total: float = 50.0
    icmp_errors: float = 100.0
    icmp_errors_burst: float = 50.0


@dataclass(frozen=True)
class RouterConfig:
    prefix: bytes  # the served /64, 8 bytes
    ipv4: bytes  # the router's public IPv4 (-l), 4 bytes
    port: int = addr.PORT_6BED4
    routes: tuple[tuple[bytes, int], ...] = ()  # -R, announced with L=0 A=0
    masquerade: tuple[MasqRule, ...] = ()
    limits: Limits = field(default_factory=Limits)

    @property
    def address(self) -> bytes:
        """The router's global address: the /64, its IPv4 and port, lanid 0."""
        return addr.encode(self.prefix, self.ipv4, self.port, 0)


def _transport_checksum_offset(packet, proto: int) -> int:
    """Where the checksum of the transport header sits, or 0 if none to fix / too short."""
    if proto == icmp6.PROTO_TCP:
        offset = 56
    elif proto == icmp6.PROTO_UDP:
        offset = 46
    elif proto == icmp6.PROTO_ICMPV6:
        offset = 42
    else:
        return 0
    return offset if len(packet) >= offset + 2 else 0


def rewrite_address(packet, at: int, new: bytes) -> None:
    """Replace the 16-byte address at `at` (8 = source, 24 = destination), fixing the checksum."""
    proto = packet[6]
    where = _transport_checksum_offset(packet, proto)
    if where:
        old_sum = (packet[where] << 8) | packet[where + 1]
        new_sum = icmp6.adjust_checksum(old_sum, packet[at : at + 16], new)
        if new_sum == 0 and proto == icmp6.PROTO_UDP:
            new_sum = 0xFFFF
        packet[where] = new_sum >> 8
        packet[where + 1] = new_sum & 0xFF
    packet[at : at + 16] = new


class RouterCore:
    """Stateless 6bed4 router logic; only counters, bounded caches and rate limits inside."""

    def __init__(self, config: RouterConfig, counters: Counters | None = None):
        self.config = config
        self.counters = counters or Counters()
        self.prefix = config.prefix
        self.address = config.address
        self.iid = self.address[8:]
        self.lladdr = addr.lladdr(config.ipv4, config.port)
        # where the router's own /114 points: never a relay or TUN target (datagrams to itself)
        self.endpoint = (addr.format_ipv4(config.ipv4), config.port)
        self.nd_targets = frozenset((icmp6.LINK_LOCAL_ROUTER, _FE80 + self.iid, self.address))
        self.extra_pios = [icmp6.PrefixInfo(p + bytes(16 - len(p)), n, 0) for p, n in config.routes]
        self._masq_rules = config.masquerade
        self._masq_hosts = frozenset(rule.host for rule in config.masquerade)
        limits = config.limits
        self._ra_limit = KeyedLimiter(
            limits.ra_per_source, limits.ra_per_source_burst, limits.ra_total, limits.ra_total_burst
        )
        self._corrective_limit = KeyedLimiter(limits.corrective_per_source, 1.0, limits.corrective_total, 10.0)
        self._icmp_error_limit = TokenBucket(limits.icmp_errors, limits.icmp_errors_burst)
        self._origin_cache: dict[tuple[str, int], bytes | None] = {}
        self._target_cache: dict[bytes, tuple[str, int] | None] = {}
        self._tun_flows: dict[bytes, tuple[str, int]] = {}  # source + destination -> origin
        self._tun_verdicts: dict[bytes, tuple | str] = {}  # destination -> SEND action or drop reason
        self.rate_limit_hits = 0

    # --- helpers -----------------------------------------------------------

    def _origin_iid(self, origin: tuple[str, int]) -> bytes | None:
        """Bytes 8..13 plus the top bits of byte 14 that a packet from `origin` must carry."""
        cache = self._origin_cache
        iid = cache.get(origin, False)
        if iid is False:
            ip, port = origin
            try:
                ipv4 = addr.parse_ipv4(ip)
            except addr.AddressError:
                ipv4 = None
            iid = addr.encode(bytes(8), ipv4, port)[8:15] if ipv4 and port and addr.is_sendable_ipv4(ipv4) else None
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[origin] = iid
        return iid

    def _target(self, iid: bytes) -> tuple[str, int] | None:
        """The UDP destination that an interface identifier encodes, or None if forbidden."""
        cache = self._target_cache
        target = cache.get(iid, False)
        if target is False:
            ipv4 = ((iid[0] & 0xFC) | (iid[6] >> 6), iid[1], iid[2], iid[3])
            port = (iid[4] << 8) | iid[5]
            target = None if port == 0 or not addr.is_sendable_ipv4(ipv4) else ("%d.%d.%d.%d" % ipv4, port)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[iid] = target
        return target

    def _pio(self, origin_iid: bytes, lifetime: int) -> icmp6.PrefixInfo:
        prefix = self.prefix + origin_iid[:6] + bytes((origin_iid[6] & 0xC0, 0))
        return icmp6.PrefixInfo(prefix, 114, icmp6.PIO_ONLINK | icmp6.PIO_AUTONOMOUS, lifetime, lifetime)

    def _limited(self, limiter, key, now: float) -> bool:
        if limiter.allow(key, now):
            return False
        self.counters.drop("rate_limited")
        self.rate_limit_hits += 1
        return True

    # --- from UDP ------------------------------------------------------------

    def from_udp(self, packet, origin: tuple[str, int], now: float):
        counters = self.counters
        n = len(packet)
        counters.udp_in += 1
        counters.udp_in_bytes += n
        if n < 40:
            if n == 0:
                counters.keepalives += 1
            else:
                counters.drop("too_short")
            return _DROPPED
        first, payload_length, next_header, addresses = _HEADER.unpack_from(packet)
        if first >> 4 != 6:
            counters.drop("not_ipv6")
            return _DROPPED
        if n > _MTU:
            counters.drop("too_long")
            return _DROPPED
        if payload_length != n - 40:
            counters.drop("bad_length")
            return _DROPPED
        if next_header == 58 and n > 40 and _ND_FIRST <= packet[40] <= _ND_LAST:
            return self._neighbor_discovery(packet, origin, now)
        # The decision below depends only on the addresses and the origin: a pair seen
        # going to the TUN from this origin goes there again, without the checks.
        if self._tun_flows.get(addresses) == origin:
            counters.to_tun += 1
            return _TO_TUN
        return self._route(packet, origin, addresses, now)

    def _route(self, packet, origin, addresses: bytes, now: float):
        """Check the source against the origin, then decide by the destination."""
        counters = self.counters
        source, destination = addresses[:16], addresses[16:]
        expected = self._origin_cache.get(origin, False)
        if expected is False:
            expected = self._origin_iid(origin)
        source_prefix = source[:8]
        prefix = self.prefix
        if (
            expected is None
            or source[8:14] != expected[:6]
            or source[14] & 0xC0 != expected[6]
            or (source_prefix != prefix and source_prefix != _FE80)
        ):
            return self._bad_source(packet, origin, expected, now)

        if destination[0] == 0xFF:
            counters.drop("multicast")
            return _DROPPED
        destination_prefix = destination[:8]
        if (destination_prefix == prefix or destination_prefix == _FE80) and destination[8:14] == source[8:14]:
            if destination[14] == (source[14] & 0xC0) and destination[15] == 0:
                return self._to_router(packet, origin)
        if destination_prefix == prefix:
            if destination[12] == 0 and destination[13] == 0:
                return self._to_tun(addresses, origin)  # port 0: the host's own addresses
            if destination[8:] == self.iid:
                return self._to_tun(addresses, origin)  # the router's global address lives on the TUN
            return self._relay(packet, origin, now)
        if destination[0] == 0xFC and destination[1] == 0x64:
            return self._relay(packet, origin, now)
        return self._to_tun(addresses, origin)

    def _to_tun(self, addresses: bytes, origin):
        """To the TUN as it is; remembered, so that the next packet of this flow skips the checks."""
        flows = self._tun_flows
        if len(flows) >= _CACHE_LIMIT:
            flows.clear()
        flows[addresses] = origin
        self.counters.to_tun += 1
        return _TO_TUN

    def _relay(self, packet, origin, now: float):
        counters = self.counters
        target = self._target(bytes(packet[32:40]))
        if target is None or target == self.endpoint:
            counters.drop("relay_forbidden")
            return _DROPPED
        hop_limit = packet[7]
        if hop_limit <= 1:
            counters.drop("hop_limit")
            if packet[6] == 58 and len(packet) > 40 and packet[40] < 128:
                return _DROPPED  # RFC 4443 2.4(e): no ICMPv6 error about an ICMPv6 error
            if not self._icmp_error_limit.allow(now):
                counters.drop("rate_limited")
                self.rate_limit_hits += 1
                return _DROPPED
            counters.icmp_errors_sent += 1
            return (REPLY, icmp6.icmp6_error(self.address, icmp6.TIME_EXCEEDED, 0, packet), origin)
        packet[7] = hop_limit - 1
        counters.relayed += 1
        return (SEND, None, target)

    def _bad_source(self, packet, origin, expected, now: float):
        """A source that does not match its origin: maybe the NAT mapping changed."""
        counters = self.counters
        counters.drop("bad_source")
        if expected is None or packet[8:16] != self.prefix or (packet[20] == 0 and packet[21] == 0):
            return _DROPPED
        if self._limited(self._corrective_limit, origin, now):
            return _DROPPED
        old = self._pio(bytes(packet[16:23]), 0)
        pios = [old, self._pio(expected, icmp6.INFINITE), *self.extra_pios]
        counters.corrective_ra_sent += 1
        return (REPLY, icmp6.router_advert(icmp6.ALL_NODES, pios), origin)

    def _to_router(self, packet, origin):
        """Traffic for the router as the peer sees it (its /114, lanid 0)."""
        counters = self.counters
        proto = packet[6]
        if proto == icmp6.PROTO_ICMPV6 or proto == icmp6.PROTO_TCP or proto == icmp6.PROTO_UDP or proto == icmp6.PROTO_SCTP:
            host = self._masquerade_host(packet, proto)
            if host is not None:
                rewrite_address(packet, 24, host)
                counters.masqueraded += 1
                counters.to_tun += 1
                return _TO_TUN
            if proto == icmp6.PROTO_ICMPV6 and len(packet) >= 48 and packet[40] == icmp6.ECHO_REQUEST:
                counters.echo_replies += 1
                return (REPLY, icmp6.echo_reply(packet, bytes(packet[24:40])), origin)
        counters.drop("no_service")
        return _DROPPED

    def _masquerade_host(self, packet, proto: int) -> bytes | None:
        if not self._masq_rules:
            return None
        if proto == icmp6.PROTO_ICMPV6:
            port = 0 if len(packet) > 40 and packet[40] == icmp6.ECHO_REQUEST else -1
        elif len(packet) >= 44:
            port = (packet[42] << 8) | packet[43]
        else:
            return None
        for rule in self._masq_rules:
            if rule.proto == proto and rule.lo <= port <= rule.hi:
                return rule.host
        return None

    def _neighbor_discovery(self, packet, origin, now: float):
        counters = self.counters
        kind = packet[40]
        try:
            if kind == icmp6.ROUTER_SOLICIT:
                counters.rs_received += 1
                icmp6.parse_router_solicit(packet)
                return self._router_advert(packet, origin, now)
            if kind == icmp6.NEIGHBOR_SOLICIT:
                counters.ns_received += 1
                return self._neighbor_advert(packet, origin)
        except icmp6.NdError as error:
            counters.drop(error.reason)
            return _DROPPED
        counters.drop("nd_unexpected")
        return _DROPPED

    def _router_advert(self, packet, origin, now: float):
        expected = self._origin_iid(origin)
        if expected is None:
            self.counters.drop("bad_endpoint")
            return _DROPPED
        if self._limited(self._ra_limit, origin, now):
            return _DROPPED
        source = bytes(packet[8:24])
        destination = icmp6.ALL_NODES if source == icmp6.UNSPECIFIED else source
        pios = [self._pio(expected, icmp6.INFINITE), *self.extra_pios]
        self.counters.ra_sent += 1
        return (REPLY, icmp6.router_advert(destination, pios), origin)

    def _neighbor_advert(self, packet, origin):
        target = icmp6.parse_neighbor_solicit(packet)
        expected = self._origin_iid(origin)
        source = packet[8:24]
        if (
            expected is None
            or source[8:14] != expected[:6]
            or source[14] & 0xC0 != expected[6]
            or (source[:8] != self.prefix and source[:8] != _FE80)
        ):
            raise icmp6.NdError("ns_bad_source")
        if target not in self.nd_targets:
            raise icmp6.NdError("ns_not_for_router")
        flags = icmp6.NA_ROUTER | icmp6.NA_SOLICITED | icmp6.NA_OVERRIDE
        self.counters.na_sent += 1
        reply = icmp6.neighbor_advert(icmp6.LINK_LOCAL_ROUTER, bytes(source), self.address, flags, self.lladdr)
        return (REPLY, reply, origin)

    # --- from the TUN device -------------------------------------------------

    def from_tun(self, packet):
        counters = self.counters
        n = len(packet)
        counters.tun_in += 1
        counters.tun_in_bytes += n
        problem = icmp6.tun_packet_problem(packet, n)
        if problem is not None:
            counters.drop(problem)
            return _DROPPED
        destination = _DESTINATION.unpack_from(packet)[0]
        verdict = self._tun_verdicts.get(destination)
        if verdict is None:
            verdict = self._tun_verdict(destination)
        if verdict.__class__ is str:
            counters.drop(verdict)
            return _DROPPED
        if self._masq_hosts and bytes(packet[8:24]) in self._masq_hosts:
            rewrite_address(packet, 8, destination[:14] + bytes((destination[14] & 0xC0, 0)))
            counters.masqueraded += 1
        counters.to_udp += 1
        return verdict

    def _tun_verdict(self, destination: bytes):
        """Where a packet from the kernel to `destination` goes: a SEND action or a drop reason; remembered."""
        iid = destination[8:]
        if destination[:8] != self.prefix:
            verdict = "tun_not_ours"
        elif iid[4] == 0 and iid[5] == 0:
            verdict = "tun_port0"
        else:
            target = self._target(iid)
            if target is None:
                verdict = "tun_forbidden"
            elif target == self.endpoint:
                verdict = "tun_to_self"
            else:
                verdict = (SEND, None, target)
        verdicts = self._tun_verdicts
        if len(verdicts) >= _CACHE_LIMIT:
            verdicts.clear()
        verdicts[destination] = verdict
        return verdict


__all__ = ["RouterCore", "RouterConfig", "MasqRule", "Limits", "DROP", "TUN", "SEND", "REPLY", "rewrite_address"]
