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
from .ratelimit import Budget, Rate
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
_TUN_ADDRESSES = struct.Struct("8x8s4x2s2x16s")  # source /64, source port, destination
_PORT_0 = bytes(2)
# An RA carries a /114 PIO per peer plus one PIO per -R route; a corrective RA
# carries two /114 PIOs (the old and the new).  Both must fit the 1280-byte MTU.
_RA_FIXED = len(icmp6.router_advert(icmp6.ALL_NODES, []))
MAX_ROUTES = (_MTU - _RA_FIXED) // icmp6.PrefixInfo.SIZE - 2


@dataclass(frozen=True)
class MasqRule:
    """Forward ports lo..hi of a protocol, sent to the router, to `host`."""

    proto: int
    lo: int
    hi: int
    host: bytes


@dataclass(frozen=True)
class Limits:
    """Rate limits of the router's replies; the defaults are documented in the README (Security).

    Each reply is counted per peer endpoint (IPv4:port), per IPv4 address and in
    total: one host rotating its source port gets no more than its IPv4's share,
    and no more than that share can be aimed at one victim address.
    """

    ra_per_endpoint: Rate = Rate(1.0, 3.0)
    ra_per_ipv4: Rate = Rate(20.0, 40.0)  # room for many peers behind one carrier-grade NAT address
    ra_total: Rate = Rate(200.0, 100.0)
    corrective_per_endpoint: Rate = Rate(0.2, 1.0)
    corrective_per_ipv4: Rate = Rate(5.0, 10.0)
    corrective_total: Rate = Rate(50.0, 10.0)
    icmp_errors_per_ipv4: Rate = Rate(10.0, 10.0)
    icmp_errors_total: Rate = Rate(100.0, 50.0)


@dataclass(frozen=True)
class RouterConfig:
    prefix: bytes  # the served /64, 8 bytes
    ipv4: bytes  # the router's public IPv4 (-l), 4 bytes
    port: int = addr.PORT_6BED4
    routes: tuple[tuple[bytes, int], ...] = ()  # -R, announced with L=0 A=0
    masquerade: tuple[MasqRule, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if len(self.routes) > MAX_ROUTES:
            raise addr.AddressError(
                f"{len(self.routes)} routes (-R) do not fit in a Router Advertisement: at most {MAX_ROUTES}"
                f" fit in the {_MTU}-byte MTU together with a corrective RA's two /114 prefixes")

    @property
    def address(self) -> bytes:
        """The router's global address: the /64, its IPv4 and port, lanid 0."""
        return addr.encode(self.prefix, self.ipv4, self.port, 0)

    @property
    def ra_sizes(self) -> tuple[int, int]:
        """Bytes of an RA and of a corrective RA with these routes (the answer to a 48-byte RS)."""
        size = _RA_FIXED + icmp6.PrefixInfo.SIZE * (1 + len(self.routes))
        return size, size + icmp6.PrefixInfo.SIZE


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
    """Stateless 6bed4 router logic; only counters, bounded caches and rate limits inside.

    Where the router may send (PROTOCOL.md section 4, "Never"): only to a *peer
    endpoint*, an IPv4:port that addr.peer_endpoint() allows, that is not the
    router's own port, and whose IPv4 address is not one of the router host's
    own (set_host_ipv4s keeps those current).  Datagrams from anything else are
    not from a peer (bad_endpoint): they get no reply and are not forwarded.
    """

    def __init__(self, config: RouterConfig, counters: Counters | None = None):
        self.config = config
        self.counters = counters or Counters()
        self.prefix = config.prefix
        self.address = config.address
        self.iid = self.address[8:]
        self.lladdr = addr.lladdr(config.ipv4, config.port)
        self._router_ports = frozenset((0, addr.PORT_6BED4, config.port))
        self.host_ipv4s = frozenset((config.ipv4,))
        self.nd_targets = frozenset((icmp6.LINK_LOCAL_ROUTER, _FE80 + self.iid, self.address))
        self.extra_pios = [icmp6.PrefixInfo(p + bytes(16 - len(p)), n, 0) for p, n in config.routes]
        self._masq_rules = config.masquerade
        self._masq_hosts = frozenset(rule.host for rule in config.masquerade)
        limits = config.limits
        self._ra_limit = Budget(limits.ra_total, limits.ra_per_endpoint, limits.ra_per_ipv4)
        self._corrective_limit = Budget(limits.corrective_total, limits.corrective_per_endpoint,
                                        limits.corrective_per_ipv4)
        self._icmp_error_limit = Budget(limits.icmp_errors_total, limits.icmp_errors_per_ipv4)
        self._forget()
        self.rate_limit_hits = 0

    def _forget(self) -> None:
        """Empty the caches (they depend on the host's IPv4 addresses)."""
        self._origin_cache: dict[tuple[str, int], bytes | None] = {}
        self._target_cache: dict[bytes, tuple[str, int] | str] = {}
        self._tun_flows: dict[bytes, tuple[str, int]] = {}  # source + destination -> origin
        self._tun_verdicts: dict[bytes, tuple | str] = {}  # destination -> SEND action or drop reason

    def set_host_ipv4s(self, addresses) -> None:
        """The IPv4 addresses of the router's host (4 bytes each): never sent to, never a peer.

        The router's own -l address is always among them.  Called again whenever
        addresses come and go; fresh caches are swapped in whole, so a data path
        in another thread sees either the old set or the new one.
        """
        host = frozenset(bytes(a) for a in addresses) | {self.config.ipv4}
        if host != self.host_ipv4s:
            self.host_ipv4s = host
            self._forget()

    # --- helpers -----------------------------------------------------------

    def _origin_iid(self, origin: tuple[str, int]) -> bytes | None:
        """Bytes 8..13 plus the top bits of byte 14 that a packet from `origin` must carry.

        None if `origin` is not a peer endpoint.
        """
        cache = self._origin_cache
        iid = cache.get(origin, False)
        if iid is False:
            ip, port = origin
            try:
                ipv4 = addr.parse_ipv4(ip)
            except addr.AddressError:
                ipv4 = None
            iid = None
            if ipv4 is not None and 0 < port <= 0xFFFF:
                address = addr.encode(bytes(8), ipv4, port)
                if self._target(address).__class__ is tuple:
                    iid = address[8:15]
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[origin] = iid
        return iid

    def _target(self, address: bytes):
        """The peer endpoint (ip, port) that a 6bed4 address encodes, or why there is none.

        "forbidden": not a peer address (addr.peer_endpoint) or the router's own
        port; "self": an IPv4 address of the router's own host.
        """
        cache = self._target_cache
        iid = address[8:]
        target = cache.get(iid)
        if target is None:
            endpoint = addr.peer_endpoint(address)
            if endpoint is None or endpoint[1] in self._router_ports:
                target = "forbidden"
            elif endpoint[0] in self.host_ipv4s:
                target = "self"
            else:
                target = (addr.format_ipv4(endpoint[0]), endpoint[1])
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[iid] = target
        return target

    def _pio(self, origin_iid: bytes, lifetime: int) -> icmp6.PrefixInfo:
        prefix = self.prefix + origin_iid[:6] + bytes((origin_iid[6] & 0xC0, 0))
        return icmp6.PrefixInfo(prefix, 114, icmp6.PIO_ONLINK | icmp6.PIO_AUTONOMOUS, lifetime, lifetime)

    def _limited(self, budget: Budget, now: float, *keys) -> bool:
        if budget.allow(now, *keys):
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
        if expected is None:
            counters.drop("bad_endpoint")
            return _DROPPED
        source_prefix = source[:8]
        prefix = self.prefix
        if (
            source[8:14] != expected[:6]
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
        target = self._target(bytes(packet[24:40]))
        if target.__class__ is str:
            counters.drop("relay_forbidden")
            return _DROPPED
        hop_limit = packet[7]
        if hop_limit <= 1:
            counters.drop("hop_limit")
            if packet[6] == 58 and len(packet) > 40 and packet[40] < 128:
                return _DROPPED  # RFC 4443 2.4(e): no ICMPv6 error about an ICMPv6 error
            if self._limited(self._icmp_error_limit, now, origin[0]):
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
        if packet[8:16] != self.prefix or (packet[20] == 0 and packet[21] == 0):
            return _DROPPED
        if self._limited(self._corrective_limit, now, origin, origin[0]):
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
                expected = self._origin_iid(origin)
                if expected is None:
                    raise icmp6.NdError("bad_endpoint")
                return self._router_advert(packet, origin, expected, now)
            if kind == icmp6.NEIGHBOR_SOLICIT:
                counters.ns_received += 1
                target = icmp6.parse_neighbor_solicit(packet)
                expected = self._origin_iid(origin)
                if expected is None:
                    raise icmp6.NdError("bad_endpoint")
                return self._neighbor_advert(packet, origin, expected, target)
        except icmp6.NdError as error:
            counters.drop(error.reason)
            return _DROPPED
        counters.drop("nd_unexpected")
        return _DROPPED

    def _router_advert(self, packet, origin, expected: bytes, now: float):
        if self._limited(self._ra_limit, now, origin, origin[0]):
            return _DROPPED
        source = bytes(packet[8:24])
        destination = icmp6.ALL_NODES if source == icmp6.UNSPECIFIED else source
        pios = [self._pio(expected, icmp6.INFINITE), *self.extra_pios]
        self.counters.ra_sent += 1
        return (REPLY, icmp6.router_advert(destination, pios), origin)

    def _neighbor_advert(self, packet, origin, expected: bytes, target: bytes):
        source = packet[8:24]
        if (
            source[8:14] != expected[:6]
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
        source_prefix, source_port, destination = _TUN_ADDRESSES.unpack_from(packet)
        if source_prefix == self.prefix and source_port != _PORT_0 and packet[16:24] != self.iid:
            counters.drop("tun_spoofed_source")  # a native packet that claims to come from one of our peers
            return _DROPPED
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
        if destination[:8] != self.prefix:
            verdict = "tun_not_ours"
        elif destination[12] == 0 and destination[13] == 0:
            verdict = "tun_port0"
        else:
            target = self._target(destination)
            if target == "forbidden":
                verdict = "tun_forbidden"
            elif target == "self":
                verdict = "tun_to_self"
            else:
                verdict = (SEND, None, target)
        verdicts = self._tun_verdicts
        if len(verdicts) >= _CACHE_LIMIT:
            verdicts.clear()
        verdicts[destination] = verdict
        return verdict


__all__ = ["RouterCore", "RouterConfig", "MasqRule", "Limits", "MAX_ROUTES", "DROP", "TUN", "SEND", "REPLY",
           "rewrite_address"]
