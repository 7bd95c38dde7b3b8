"""Counters shared by the cores and exported as metrics.

Every dropped packet is counted under a named reason; the names below are the
metric labels and the vocabulary of the logs.  Cores increment plain ints and
dict entries (cheap on the hot path); the IO side reads them.
"""

from __future__ import annotations

DROP_REASONS: dict[str, str] = {
    # from UDP (the 6bed4 side)
    "too_short": "datagram shorter than an IPv6 header",
    "not_ipv6": "first nibble is not 6",
    "too_long": "datagram longer than the 1280-byte link MTU",
    "bad_length": "IPv6 payload length does not match the datagram",
    "nd_bad_hoplimit": "Neighbor Discovery with hop limit other than 255",
    "nd_bad_checksum": "Neighbor Discovery with a bad ICMPv6 checksum",
    "nd_malformed": "Neighbor Discovery message too short, bad code or bad options",
    "nd_unexpected": "RA, NA or Redirect sent to the router",
    "ns_not_for_router": "Neighbor Solicitation for a target that is not the router",
    "ns_bad_source": "Neighbor Solicitation from a source that does not match its UDP origin",
    "bad_endpoint": "UDP source that is no peer: port 0 or 25790 (a router), an IPv4 address of the router's host, 0/8, 127/8, multicast, ...",
    "bad_source": "inner IPv6 source does not match the outer IPv4:port",
    "multicast": "multicast IPv6 destination",
    "hop_limit": "relay with hop limit 1 or 0",
    "relay_forbidden": "relay to an address no peer can have: port 0 or 25790, an IPv4 address of the router's host, 0/8, 127/8, multicast, broadcast, non-canonical interface identifier",
    "no_service": "packet for the router itself that no service or masquerading rule takes",
    "truncated": "transport header cut short",
    "rate_limited": "reply suppressed by a rate limit",
    # from the TUN device (the native side)
    "tun_not_ipv6": "TUN packet that is not IPv6 or too short",
    "tun_too_long": "TUN packet longer than 1280 bytes",
    "tun_nd": "Neighbor Discovery from the kernel (6bed4 does ND itself)",
    "tun_multicast": "multicast destination from the kernel",
    "tun_not_ours": "destination outside the served prefix",
    "tun_port0": "destination with port 0 (the host's own addresses)",
    "tun_forbidden": "destination no peer can have: port 25790 or the router's port, 0/8, 127/8, multicast, broadcast, non-canonical interface identifier",
    "tun_to_self": "destination encodes an IPv4 address of the router's own host (it would be sent to the host itself)",
    "tun_spoofed_source": "native packet whose source claims to be a 6bed4 peer of this router (forged)",
    # the proxy Neighbor Discovery responder on the uplink (6bed4 proxy-nd, 6bed4router --proxy-nd)
    "proxy_not_ns": "frame on the uplink that is not an IPv6 Neighbor Solicitation",
    "proxy_other_host": "Neighbor Solicitation sent to another host's MAC address",
    "proxy_bad_dst": "Neighbor Solicitation to neither the target nor its solicited-node group",
    "proxy_not_ours": "Neighbor Solicitation for a target outside the served /64",
    "proxy_kernel_answers": "Neighbor Solicitation for an address on the uplink (the kernel answers)",
    "proxy_port0": "Neighbor Solicitation for a port-0 address that is not the host's",
    "proxy_forbidden": "Neighbor Solicitation for an address no 6bed4 peer can have (port 25790, non-unicast IPv4, non-canonical interface identifier such as EUI-64)",
    "proxy_dad": "Duplicate Address Detection probe: another host is taking the address (never answered)",
    "proxy_claimed": "Neighbor Solicitation for an address another host on the uplink has claimed",
    "proxy_na": "Neighbor Advertisement from another host (its target is that host's: never answered for)",
    # the peer (6bed4peer)
    "not_from_router": "datagram from another IPv4:port than the router's (direct peering is not done)",
    "ra_bad_source": "Router Advertisement not from fe80::",
    "ra_bad_prefix": "Router Advertisement with an autoconfiguration prefix that is not a usable /114",
    "ra_no_prefix": "Router Advertisement without an autoconfiguration prefix",
    "peer_nd_unexpected": "Neighbor Discovery other than a Router Advertisement sent to the peer",
    "peer_no_address": "packet from the router before an RA gave the peer its address",
    "peer_not_for_us": "packet from the router for a destination outside the peer's /114",
    "tun_bad_source": "packet from the kernel with a source outside the peer's /114 (or no address yet)",
    # IO
    "send_error": "the kernel refused to send (buffer full, unreachable)",
    "tun_down": "packet for the TUN device while it is down (ip link set DEV down); it is kept, not closed",
}


class Counters:
    """Packet counters of one daemon: named events plus drops by reason."""

    EVENTS = (
        "udp_in",
        "udp_in_bytes",
        "tun_in",
        "tun_in_bytes",
        "to_tun",
        "to_udp",
        "relayed",
        "keepalives",
        "rs_received",
        "ra_sent",
        "corrective_ra_sent",
        "ns_received",
        "na_sent",
        "echo_replies",
        "icmp_errors_sent",
        "masqueraded",
    )

    def __init__(self) -> None:
        for name in self.EVENTS:
            setattr(self, name, 0)
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def udp_to_tun(self, count: int, size: int) -> None:
        """`count` datagrams of `size` bytes that went to the TUN as a repeat of a verdict (see io.datapath)."""
        self.udp_in += count
        self.udp_in_bytes += count * size
        self.to_tun += count

    def tun_to_udp(self, count: int, size: int) -> None:
        """`count` packets of `size` bytes from the TUN sent on as a repeat of a verdict (see io.datapath)."""
        self.tun_in += count
        self.tun_in_bytes += count * size
        self.to_udp += count

    def snapshot(self) -> dict[str, int]:
        values = {name: getattr(self, name) for name in self.EVENTS}
        values.update({f"drop_{reason}": count for reason, count in self.drops.items()})
        return values
