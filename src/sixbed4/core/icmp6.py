"""IPv6 and ICMPv6 / Neighbor Discovery: building and parsing, on bytes only.

Only what 6bed4 needs: RS, RA (with Prefix Information and MTU options), NS, NA,
Echo Reply and the two ICMPv6 errors a router sends (Time Exceeded, Destination
Unreachable).  Parsers never raise anything but NdError, whose `reason` is the
label of the drop counter the caller should increment.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

IPV6_HEADER = 40
MIN_MTU = 1280
PROTO_ICMPV6 = 58
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132

DEST_UNREACHABLE = 1
TIME_EXCEEDED = 3
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICIT = 133
ROUTER_ADVERT = 134
NEIGHBOR_SOLICIT = 135
NEIGHBOR_ADVERT = 136
REDIRECT = 137

OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25  # Recursive DNS Server (RFC 8106)

PIO_ONLINK = 0x80
PIO_AUTONOMOUS = 0x40
RA_MANAGED = 0x80  # addresses by DHCPv6
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

UNSPECIFIED = bytes(16)
LINK_LOCAL_ROUTER = bytes.fromhex("fe80") + bytes(14)  # fe80::, the 6bed4 router on the link
ALL_NODES = bytes.fromhex("ff02") + bytes(13) + b"\x01"
ALL_ROUTERS = bytes.fromhex("ff02") + bytes(13) + b"\x02"
INFINITE = 0xFFFFFFFF

_LITTLE_ENDIAN = sys.byteorder == "little"


class NdError(ValueError):
    """A packet that must be dropped; `reason` names the drop counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


# --- checksums ----------------------------------------------------------------


def ones_complement_sum(data) -> int:
    """The 16-bit one's complement sum of `data` (RFC 1071), big-endian value."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = sum(memoryview(data).cast("B").cast("H"))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    if _LITTLE_ENDIAN:
        total = ((total & 0xFF) << 8) | (total >> 8)
    return total


def upper_layer_checksum(src, dst, next_header: int, payload) -> int:
    """Checksum over the IPv6 pseudo-header and `payload` (its checksum field zeroed or not)."""
    pseudo = bytes(src) + bytes(dst) + struct.pack("!IxxxB", len(payload), next_header)
    return ~ones_complement_sum(pseudo + bytes(payload)) & 0xFFFF


def checksum_is_valid(packet) -> bool:
    """True if the upper-layer checksum of a whole IPv6 packet (no ext. headers) sums to 0."""
    return upper_layer_checksum(packet[8:24], packet[24:40], packet[6], packet[40:]) == 0


def adjust_checksum(checksum: int, old, new) -> int:
    """Incremental update (RFC 1624 eq. 3) when `old` bytes become `new` (even lengths)."""
    total = (~checksum & 0xFFFF) + (~ones_complement_sum(old) & 0xFFFF) + ones_complement_sum(new)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- building -----------------------------------------------------------------


def ipv6_packet(src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(payload), next_header, hop_limit) + src + dst + payload


def icmp6_packet(src: bytes, dst: bytes, icmp_type: int, code: int, body: bytes, hop_limit: int = 255) -> bytes:
    """An IPv6 packet carrying one ICMPv6 message with a correct checksum."""
    message = bytearray(struct.pack("!BBH", icmp_type, code, 0) + body)
    struct.pack_into("!H", message, 2, upper_layer_checksum(src, dst, PROTO_ICMPV6, message))
    return ipv6_packet(src, dst, PROTO_ICMPV6, bytes(message), hop_limit)


@dataclass(frozen=True)
class PrefixInfo:
    """A Prefix Information option."""

    SIZE = 32  # bytes on the wire (not a field: no annotation)

    prefix: bytes  # 16 bytes
    length: int
    flags: int = PIO_ONLINK | PIO_AUTONOMOUS
    valid: int = INFINITE
    preferred: int = INFINITE

    def pack(self) -> bytes:
        return struct.pack(
            "!BBBBIII16s", OPT_PREFIX_INFO, 4, self.length, self.flags, self.valid, self.preferred, 0, self.prefix
        )


@dataclass(frozen=True)
class RdnssInfo:
    """A Recursive DNS Server option: these resolvers, for `lifetime` seconds (0: no longer)."""

    servers: tuple[bytes, ...]  # 16 bytes each, at least one
    lifetime: int

    def pack(self) -> bytes:
        return struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(self.servers), 0, self.lifetime) + b"".join(self.servers)


def router_advert_body(prefixes, *, flags: int = 0, lifetime: int = 0xFFFF, mtu: int | None = MIN_MTU,
                       source_lladdr: bytes | None = None, resolvers=()) -> bytes:
    """An RA after its type, code and checksum: cur hop limit 0 and both timers 0 (unspecified), then options.

    `resolvers`: RdnssInfo options, after the prefixes.
    """
    body = struct.pack("!BBHII", 0, flags, lifetime, 0, 0)
    if source_lladdr is not None:
        body += bytes((OPT_SOURCE_LLADDR, 1)) + source_lladdr
    body += b"".join(p.pack() for p in prefixes)
    body += b"".join(r.pack() for r in resolvers)
    if mtu is not None:
        body += struct.pack("!BBHI", OPT_MTU, 1, 0, mtu)
    return body


def router_advert(dst: bytes, prefixes: list[PrefixInfo], mtu: int | None = MIN_MTU) -> bytes:
    """The 6bed4 RA: from fe80::, cur hop limit 0, M=O=0, lifetime 0xffff, timers unspecified."""
    return icmp6_packet(LINK_LOCAL_ROUTER, dst, ROUTER_ADVERT, 0, router_advert_body(prefixes, mtu=mtu))


def router_solicit(src: bytes = UNSPECIFIED) -> bytes:
    """An RS to all-routers; from :: it carries no options (RFC 4861 section 4.1)."""
    return icmp6_packet(src, ALL_ROUTERS, ROUTER_SOLICIT, 0, bytes(4))


def neighbor_advert(src: bytes, dst: bytes, target: bytes, flags: int, target_lladdr: bytes) -> bytes:
    body = struct.pack("!B3x16s", flags, target) + bytes((OPT_TARGET_LLADDR, 1)) + target_lladdr
    return icmp6_packet(src, dst, NEIGHBOR_ADVERT, 0, body)


def neighbor_solicit(src: bytes, dst: bytes, target: bytes, source_lladdr: bytes | None) -> bytes:
    body = struct.pack("!4x16s", target)
    if source_lladdr is not None:
        body += bytes((OPT_SOURCE_LLADDR, 1)) + source_lladdr
    return icmp6_packet(src, dst, NEIGHBOR_SOLICIT, 0, body)


def echo_reply(request, src: bytes) -> bytes:
    """Answer an Echo Request packet (whole IPv6 packet) from address `src`."""
    return icmp6_packet(src, bytes(request[8:24]), ECHO_REPLY, 0, bytes(request[44:]), hop_limit=64)


def icmp6_error(src: bytes, icmp_type: int, code: int, offending, word: int = 0) -> bytes:
    """An ICMPv6 error quoting as much of `offending` as fits in 1280 bytes (RFC 4443 2.4c)."""
    quoted = bytes(offending[: MIN_MTU - IPV6_HEADER - 8])
    return icmp6_packet(src, bytes(offending[8:24]), icmp_type, code, struct.pack("!I", word) + quoted, hop_limit=64)


# --- parsing ------------------------------------------------------------------


_JUDGED = struct.Struct("B5xB17xB")  # first byte (version), next header, destination's first byte


def tun_packet_problem(packet, n: int) -> str | None:
    """The drop reason for a packet from the kernel that no 6bed4 node forwards, or None.

    Router and peer both refuse, first thing: not IPv6, over the 1280-byte link
    MTU, Neighbor Discovery (6bed4 does its own) and multicast destinations.
    """
    if n < 40:
        return "tun_not_ipv6"
    first, next_header, destination_first = _JUDGED.unpack_from(packet)
    if first >> 4 != 6:
        return "tun_not_ipv6"
    if n > MIN_MTU:
        return "tun_too_long"
    if next_header == 58 and n > 40 and ROUTER_SOLICIT <= packet[40] <= REDIRECT:
        return "tun_nd"
    if destination_first == 0xFF:
        return "tun_multicast"
    return None


def nd_options(message, offset: int) -> list[tuple[int, bytes]]:
    """Split the options of an ND message (ICMPv6 part) starting at `offset`.

    Raises NdError for a zero-length option or one that runs past the end.
    """
    options = []
    end = len(message)
    while offset < end:
        if offset + 2 > end:
            raise NdError("nd_malformed", "truncated option header")
        length = message[offset + 1] * 8
        if length == 0 or offset + length > end:
            raise NdError("nd_malformed", "option of length 0 or past the end")
        options.append((message[offset], bytes(message[offset + 2 : offset + length])))
        offset += length
    return options


def check_nd(packet, min_body: int) -> memoryview:
    """Common validation of an ND packet; returns the ICMPv6 message.

    Hop limit 255, code 0, long enough, valid checksum (RFC 4861 6.1, 7.1).
    """
    message = memoryview(packet)[IPV6_HEADER:]
    if len(message) < min_body:
        raise NdError("nd_malformed", "too short")
    if packet[7] != 255:
        raise NdError("nd_bad_hoplimit", "hop limit is not 255")
    if message[1] != 0:
        raise NdError("nd_malformed", "code is not 0")
    if not checksum_is_valid(packet):
        raise NdError("nd_bad_checksum", "bad ICMPv6 checksum")
    return message


def parse_router_solicit(packet) -> None:
    """Validate an RS; any well-formed RS is fine (the C peer's 56-byte one too)."""
    message = check_nd(packet, 8)
    nd_options(message, 8)


def parse_neighbor_solicit(packet) -> bytes:
    """Validate an NS and return its target address."""
    message = check_nd(packet, 24)
    nd_options(message, 24)
    target = bytes(message[8:24])
    if target[0] == 0xFF:
        raise NdError("nd_malformed", "multicast target")
    return target


@dataclass
class RouterAdvert:
    """What a peer needs from an RA."""

    prefixes: list[PrefixInfo] = field(default_factory=list)
    mtu: int | None = None
    router_lifetime: int = 0

    @property
    def autoconf(self) -> list[PrefixInfo]:
        return [p for p in self.prefixes if p.flags & PIO_ONLINK and p.flags & PIO_AUTONOMOUS]

    @property
    def routes(self) -> list[PrefixInfo]:
        return [p for p in self.prefixes if not p.flags & PIO_ONLINK]


def parse_router_advert(packet) -> RouterAdvert:
    """Validate an RA (hop limit 255, checksum, options) and return its contents."""
    message = check_nd(packet, 16)
    if packet[8:24] != LINK_LOCAL_ROUTER:
        raise NdError("ra_bad_source", "RA not from fe80::")
    advert = RouterAdvert(router_lifetime=struct.unpack_from("!H", message, 6)[0])
    for kind, value in nd_options(message, 16):
        if kind == OPT_PREFIX_INFO:
            if len(value) != 30:
                raise NdError("nd_malformed", "prefix option of wrong size")
            length, flags, valid, preferred, prefix = struct.unpack("!BBII4x16s", value)
            if length > 128:
                raise NdError("nd_malformed", "prefix length over 128")
            advert.prefixes.append(PrefixInfo(prefix, length, flags, valid, preferred))
        elif kind == OPT_MTU and len(value) == 6:
            advert.mtu = struct.unpack_from("!I", value, 2)[0]
    return advert
