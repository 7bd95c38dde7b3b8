"""6bed4 addresses: the codec between IPv6 addresses and (prefix, IPv4, port, lanid).

A 6bed4 address is a /64 prefix followed by 64 bits that say where the peer is
reachable over IPv4, as the router saw it after NAT (PROTOCOL.md section 1):

    bytes 0-7    the /64 prefix
    byte  8      first IPv4 octet with its two low bits (U/L, I/G) cleared
    bytes 9-11   IPv4 octets 2-4
    bytes 12-13  UDP port, big-endian
    byte  14     (first IPv4 octet & 3) << 6  |  lanid >> 8
    byte  15     lanid & 0xff

Port 0 never occurs in a 6bed4 address; such addresses inside the /64 belong to
the router host itself.  Everything here is pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

PORT_6BED4 = 25790
LANID_MAX = 0x3FFF
DEFAULT_NETID = 0x0BED
FC64_PREFIX = bytes.fromhex("fc64")
LINK_LOCAL_64 = bytes.fromhex("fe80000000000000")


class AddressError(ValueError):
    """A value that cannot be a 6bed4 address, prefix or endpoint; str() is the message."""


@dataclass(frozen=True)
class Endpoint:
    """What the bottom half of a 6bed4 address says: where and which lanid."""

    prefix: bytes  # 8 bytes, the /64
    ipv4: bytes  # 4 bytes, network order
    port: int
    lanid: int

    @property
    def ipv4_text(self) -> str:
        return format_ipv4(self.ipv4)


def encode(prefix: bytes, ipv4: bytes, port: int, lanid: int = 0) -> bytes:
    """Build the 16-byte 6bed4 address for a peer seen at ipv4:port."""
    if len(prefix) != 8 or len(ipv4) != 4:
        raise AddressError("prefix must be 8 bytes and IPv4 4 bytes")
    if not 0 <= port <= 0xFFFF:
        raise AddressError(f"port {port} out of range 0..65535")
    if not 0 <= lanid <= LANID_MAX:
        raise AddressError(f"lanid {lanid} out of range 0..{LANID_MAX:#x}")
    a0 = ipv4[0]
    return prefix + bytes(
        (
            a0 & 0xFC,
            ipv4[1],
            ipv4[2],
            ipv4[3],
            port >> 8,
            port & 0xFF,
            ((a0 & 0x03) << 6) | (lanid >> 8),
            lanid & 0xFF,
        )
    )


def decode(address: bytes) -> Endpoint:
    """Split a 16-byte 6bed4 address into its parts (never fails on 16 bytes)."""
    if len(address) != 16:
        raise AddressError("an IPv6 address has 16 bytes")
    b = address
    return Endpoint(
        prefix=bytes(b[0:8]),
        ipv4=bytes(((b[8] & 0xFC) | (b[14] >> 6), b[9], b[10], b[11])),
        port=(b[12] << 8) | b[13],
        lanid=((b[14] & 0x3F) << 8) | b[15],
    )


def ipv4_of(address) -> bytes:
    """The IPv4 address encoded in a 6bed4 address (bytes 8..15 of `address`)."""
    return bytes(((address[8] & 0xFC) | (address[14] >> 6), address[9], address[10], address[11]))


def port_of(address) -> int:
    """The UDP port encoded in a 6bed4 address."""
    return (address[12] << 8) | address[13]


def prefix114(address: bytes) -> bytes:
    """The /114 of a 6bed4 address: the address with lanid 0."""
    return bytes(address[:14]) + bytes((address[14] & 0xC0, 0))


def lladdr(ipv4: bytes, port: int) -> bytes:
    """The 6-byte link-layer form used in ND options: port little-endian, then IPv4."""
    return bytes((port & 0xFF, port >> 8)) + bytes(ipv4)


def parse_lladdr(value: bytes) -> tuple[bytes, int]:
    """Inverse of lladdr(): (ipv4, port)."""
    if len(value) != 6:
        raise AddressError("a 6bed4 link-layer address has 6 bytes")
    return bytes(value[2:6]), value[0] | (value[1] << 8)


def is_sendable_ipv4(ipv4) -> bool:
    """False for IPv4 destinations a router must never send to.

    0.0.0.0/8 (this network), 127/8 (loopback), 224/4 (multicast) and 240/4
    (reserved, including the limited broadcast 255.255.255.255).
    """
    a0 = ipv4[0]
    return a0 != 0 and a0 != 127 and a0 < 224


def peer_endpoint(address) -> tuple[bytes, int] | None:
    """The (IPv4, port) a 6bed4 peer address encodes, or None if no peer can have it.

    Only the interface identifier (bytes 8..15) is read.  None for an identifier
    that is not in the canonical form (the U/L and I/G bits of byte 8 set: EUI-64
    and most random identifiers), port 0 (the host's own addresses), port 25790
    (a 6bed4 router, never a peer: RFC 6324's loop between two routers runs
    through such addresses), and IPv4 addresses no router may send to.  A router
    refuses its own host's addresses on top of this (RouterCore).
    """
    if address[8] & 0x03:
        return None
    port = (address[12] << 8) | address[13]
    if port == 0 or port == PORT_6BED4:
        return None
    ipv4 = bytes(((address[8] & 0xFC) | (address[14] >> 6), address[9], address[10], address[11]))
    return (ipv4, port) if is_sendable_ipv4(ipv4) else None


# --- prefixes (-L, -n) ------------------------------------------------------


def parse_ipv4(text: str, what: str = "IPv4 address") -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise AddressError(f"{what} {text!r} is not a valid IPv4 address") from None


def parse_netid(text: str) -> int:
    """-n: a 16-bit network id in hex (as the C router)."""
    try:
        value = int(text, 16)
    except ValueError:
        raise AddressError(f"netid {text!r} is not a hexadecimal number") from None
    if not 0 <= value <= 0xFFFF:
        raise AddressError(f"netid {text!r} does not fit in 16 bits")
    return value


def _parse_network(text: str, option: str) -> ipaddress.IPv6Network:
    if "/" not in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise AddressError(f"{option} {text!r} is not an IPv6 prefix") from None
        raise AddressError(f"{option} {text!r}: give a prefix length, e.g. 2001:db8:9:10::/64")
    try:
        return ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise AddressError(f"{option} {text!r}: bits are set beyond the prefix length") from None
        raise AddressError(f"{option} {text!r} is not an IPv6 prefix") from None


def complete_prefix(text: str | None, router_ipv4: bytes, netid: int = DEFAULT_NETID) -> bytes:
    """Complete the -L prefix to the 8-byte /64 that the router serves.

    None -> fc64::/16; /16 gets the netid, /32 the router's IPv4, /48 the netid,
    /64 is used as is.  An fd00::/8 prefix shorter than /64 (a ULA) is filled with
    pseudo-random bits derived from the prefix and router address, so restarts
    with the same options give the same /64.
    """
    net = _parse_network(text if text is not None else "fc64::/16", "-L")
    length = net.prefixlen
    value = int(net.network_address) >> 64 if length <= 64 else None
    if value is None:
        raise AddressError(f"-L {text!r}: a 6bed4 prefix is at most /64, not /{length}")
    if net.network_address.packed[0] == 0xFD and 8 <= length < 64:
        seed = b"6bed4 ULA fill\0" + net.network_address.packed + bytes((length,)) + router_ipv4
        fill = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") & ((1 << (64 - length)) - 1)
        return (value | fill).to_bytes(8, "big")
    if length not in (16, 32, 48, 64):
        raise AddressError(
            f"-L {text!r}: /{length} is not supported; use /16, /32, /48 or /64 "
            "(or an fd00::/8 prefix of at least /8)"
        )
    if length == 16:
        value |= netid << 32
        length = 32
    if length == 32:
        value |= int.from_bytes(router_ipv4, "big")
    elif length == 48:
        value |= netid
    return value.to_bytes(8, "big")


def parse_prefix64(text: str, option: str = "--prefix") -> bytes:
    """A /64 prefix given as text, as the 8 bytes that start every address in it."""
    net = _parse_network(text, option)
    if net.prefixlen != 64:
        raise AddressError(f"{option} {text!r}: give the served /64")
    return net.network_address.packed[:8]


def parse_route(text: str) -> tuple[bytes, int]:
    """-R prefix/len (16..128): an extra route announced to peers."""
    net = _parse_network(text, "-R")
    if not 16 <= net.prefixlen <= 128:
        raise AddressError(f"-R {text!r}: the length must be between /16 and /128")
    return net.network_address.packed, net.prefixlen


def format_address(address: bytes) -> str:
    return str(ipaddress.IPv6Address(bytes(address)))


def format_ipv4(ipv4: bytes) -> str:
    """Dotted quad, as sockets and recvfrom() spell IPv4 addresses."""
    return "%d.%d.%d.%d" % tuple(ipv4)


def parse_address(text: str, what: str = "") -> bytes:
    try:
        return ipaddress.IPv6Address(text).packed
    except ValueError:
        raise AddressError(f"{what} {text!r} is not an IPv6 address".lstrip()) from None
