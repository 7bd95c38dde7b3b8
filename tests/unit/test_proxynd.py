"""The proxy ND core: scapy-built Neighbor Solicitations in, our answers dissected by scapy."""

from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    in6_getnsma,
)
from scapy.layers.l2 import Ether

from sixbed4.core import addr, proxynd
from sixbed4.core.ratelimit import Budget, Rate
from sixbed4.core.stats import DROP_REASONS

PREFIX = ipaddress.IPv6Address("2001:db8:9:10::").packed[:8]
MAC = "a8:bb:cc:00:11:22"
UPSTREAM_MAC = "a8:bb:cc:dd:ee:ff"
LINK_LOCAL = "fe80::aabb:ccff:fe00:1122"
UPSTREAM_LL = "fe80::aabb:ccff:fedd:eeff"
PEER = "2001:db8:9:10:c433:6407:9c40:8001"  # 198.51.100.7:40000 lanid 1
ROUTER = "2001:db8:9:10:c000:201:64be:0"
OWN = "2001:db8:9:10::11"  # moved to lo / a dummy interface
UPSTREAM_HOST_MAC = "02:00:00:00:00:77"  # another host on the uplink's link
ON_UPLINK = "2001:db8:9:10::30"  # /128 on the uplink: the kernel answers


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def snma(target: str) -> str:
    return str(ipaddress.IPv6Address(in6_getnsma(v6(target))))


def snma_mac(target: str) -> str:
    return "33:33:" + ":".join(f"{b:02x}" for b in v6(snma(target))[12:])


@pytest.fixture
def core():
    # the router's own address sits on its TUN device: one of the host's own addresses off the uplink
    config = proxynd.ProxyConfig(PREFIX, proxynd.parse_mac(MAC), v6(LINK_LOCAL), frozenset({v6(OWN), v6(ROUTER)}),
                                 frozenset({v6(ON_UPLINK)}))
    return proxynd.ProxyCore(config)


def ns_frame(target: str, src: str = UPSTREAM_LL, dst: str | None = None, slla: str | None = UPSTREAM_MAC,
             eth_dst: str | None = None, hlim: int = 255, **ns_fields) -> bytes:
    dst = dst or snma(target)
    packet = IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=target, **ns_fields)
    if slla:
        packet = packet / ICMPv6NDOptSrcLLAddr(lladdr=slla)
    return bytes(Ether(src=UPSTREAM_MAC, dst=eth_dst or (snma_mac(target) if dst.startswith("ff") else MAC))
                 / packet)


def answer(core, frame, now: float = 1.0) -> Ether:
    reply = core.handle_frame(frame, now)
    assert reply is not None, core.counters.drops
    return Ether(reply)


def flags(na) -> tuple[int, int, int]:
    return na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O


def test_peer_address_answered_with_uplink_mac_and_proxy_flags(core):
    reply = answer(core, ns_frame(PEER))
    assert reply.src == MAC and reply.dst == UPSTREAM_MAC and reply.type == 0x86DD
    ip = reply[IPv6]
    assert (ip.src, ip.dst, ip.hlim) == (LINK_LOCAL, UPSTREAM_LL, 255)
    na = reply[ICMPv6ND_NA]
    assert na.tgt == PEER
    assert flags(reply) == (1, 1, 0)  # router, solicited, no override: a proxied address
    assert reply[ICMPv6NDOptDstLLAddr].lladdr == MAC
    # the checksum on the wire is the one scapy computes
    wire = reply[IPv6].copy()
    del wire[ICMPv6ND_NA].cksum
    assert IPv6(bytes(wire))[ICMPv6ND_NA].cksum == na.cksum
    assert core.counters.na_sent == 1 and core.counters.ns_received == 1


def test_router_address_answered_as_own(core):
    reply = answer(core, ns_frame(ROUTER))
    assert reply[ICMPv6ND_NA].tgt == ROUTER and flags(reply) == (1, 1, 1)


def test_own_moved_address_answered_with_override(core):
    reply = answer(core, ns_frame(OWN))
    assert reply[ICMPv6ND_NA].tgt == OWN
    assert flags(reply) == (1, 1, 1)


def test_unicast_nud_probe_without_slla_goes_to_frame_source(core):
    reply = answer(core, ns_frame(PEER, dst=PEER, slla=None, eth_dst=MAC))
    assert reply.dst == UPSTREAM_MAC and reply[IPv6].dst == UPSTREAM_LL


def test_dad_probe_for_a_peer_address_never_answered(core):
    """Another host is about to take the address: the proxy lets it, and from then on leaves it to that host."""
    assert core.handle_frame(ns_frame(PEER, src="::", slla=None), 1.0) is None
    assert core.counters.drops["proxy_dad"] == 1
    assert core.handle_frame(ns_frame(PEER), 2.0) is None
    assert core.counters.drops["proxy_claimed"] == 1
    assert core.counters.na_sent == 0


def test_dad_probe_for_an_own_address_is_defended_unsolicited(core):
    """The host's own (moved) addresses are the host's: answered as their owner would, to all nodes."""
    reply = answer(core, ns_frame(OWN, src="::", slla=None))
    assert reply.dst == "33:33:00:00:00:01" and reply[IPv6].dst == "ff02::1"
    assert flags(reply) == (1, 0, 1)


def test_address_resolution_from_an_address_claims_it(core):
    """An NS from a global source tells that its sender owns the source address."""
    host_address = addr.format_address(addr.encode(PREFIX, bytes((198, 51, 100, 8)), 40000, 1))
    assert core.handle_frame(ns_frame(PEER, src=host_address, slla=UPSTREAM_HOST_MAC), 1.0) is not None
    assert core.handle_frame(ns_frame(host_address), 2.0) is None
    assert core.counters.drops["proxy_claimed"] == 1


def test_advertisement_from_another_host_claims_its_target(core):
    na = bytes(Ether(src=UPSTREAM_HOST_MAC, dst="33:33:00:00:00:01")
               / IPv6(src="fe80::77", dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=PEER, R=0, S=0, O=1))
    assert core.handle_frame(na, 1.0) is None
    assert core.counters.drops["proxy_na"] == 1
    assert core.handle_frame(ns_frame(PEER), 2.0) is None
    assert core.counters.drops["proxy_claimed"] == 1
    # an own address stays the host's whatever others say
    na_own = bytes(Ether(src=UPSTREAM_HOST_MAC, dst="33:33:00:00:00:01")
                   / IPv6(src="fe80::77", dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=OWN, R=0, S=0, O=1))
    core.handle_frame(na_own, 3.0)
    assert answer(core, ns_frame(OWN), 4.0)[ICMPv6ND_NA].tgt == OWN


def test_claims_are_bounded_oldest_forgotten_first(core):
    for n in range(proxynd.CLAIMS_LIMIT + 1):
        target = addr.format_address(addr.encode(PREFIX, bytes((198, 51, 100, 9)), 1024 + n, 1))
        core.handle_frame(ns_frame(target, src="::", slla=None), 1.0)
    assert len(core.claimed) == proxynd.CLAIMS_LIMIT
    first = addr.format_address(addr.encode(PREFIX, bytes((198, 51, 100, 9)), 1024, 1))
    assert core.handle_frame(ns_frame(first), 2.0) is not None  # forgotten: a peer's address again


def test_upstream_addresses_are_mostly_never_claimable():
    """EUI-64 identifiers never look like a 6bed4 peer; random ones only when byte 8's low bits are 0."""
    rng = random.Random(6324)
    config = proxynd.ProxyConfig(PREFIX, proxynd.parse_mac(MAC))
    eui64 = [PREFIX + bytes((rng.randrange(256) | 0x02,)) + rng.randbytes(2) + b"\xff\xfe" + rng.randbytes(3)
             for _ in range(1000)]
    assert all(proxynd.classify(config, target) != proxynd.PEER for target in eui64)
    randoms = [PREFIX + rng.randbytes(8) for _ in range(4000)]
    answered = sum(proxynd.classify(config, target) == proxynd.PEER for target in randoms)
    assert answered < 0.27 * len(randoms)  # 1/4 canonical, less the forbidden IPv4s and ports


def test_no_link_local_known_answers_from_target():
    config = proxynd.ProxyConfig(PREFIX, proxynd.parse_mac(MAC))
    reply = Ether(proxynd.ProxyCore(config).handle_frame(ns_frame(PEER), 1.0))
    assert reply[IPv6].src == PEER


@pytest.mark.parametrize("target, reason", [
    ("2001:db8:9:11:c433:6407:9c40:8001", "proxy_not_ours"),  # another /64
    ("fe80::1", "proxy_not_ours"),
    (ON_UPLINK, "proxy_kernel_answers"),
    ("2001:db8:9:10::99", "proxy_port0"),  # port 0, not the host's
    ("2001:db8:9:10::1:99", "proxy_forbidden"),  # port 1 at 0.0.0.0
    ("2001:db8:9:10:c000:202:64be:1", "proxy_forbidden"),  # port 25790: another 6bed4 router, never a peer
    ("2001:db8:9:10:c233:6407:9c40:8001", "proxy_forbidden"),  # U/L bit set: not a 6bed4 identifier
    ("2001:db8:9:10:c133:6407:9c40:8001", "proxy_forbidden"),  # I/G bit set
    (addr.format_address(addr.encode(PREFIX, bytes((127, 0, 0, 1)), 5000, 1)), "proxy_forbidden"),
    (addr.format_address(addr.encode(PREFIX, bytes((224, 0, 0, 9)), 5000, 1)), "proxy_forbidden"),
    (addr.format_address(addr.encode(PREFIX, bytes((255, 255, 255, 255)), 5000, 1)), "proxy_forbidden"),
])
def test_never_answers_for_other_addresses(core, target, reason):
    assert core.handle_frame(ns_frame(target), 1.0) is None
    assert core.counters.drops[reason] == 1
    assert core.counters.na_sent == 0


def test_bad_hop_limit_checksum_and_options_dropped(core):
    assert core.handle_frame(ns_frame(PEER, hlim=64), 1.0) is None
    assert core.counters.drops["nd_bad_hoplimit"] == 1
    frame = bytearray(ns_frame(PEER))
    frame[14 + 40 + 2] ^= 0xFF  # checksum
    assert core.handle_frame(bytes(frame), 1.0) is None
    assert core.counters.drops["nd_bad_checksum"] == 1
    bad_option = bytes(Ether(src=UPSTREAM_MAC, dst=snma_mac(PEER)) / IPv6(src=UPSTREAM_LL, dst=snma(PEER), hlim=255)
                       / ICMPv6ND_NS(tgt=PEER) / ICMPv6NDOptSrcLLAddr(len=0, lladdr=UPSTREAM_MAC))
    assert core.handle_frame(bad_option, 1.0) is None
    assert core.counters.drops["nd_malformed"] == 1
    assert core.handle_frame(ns_frame(PEER, code=1), 1.0) is None
    assert core.counters.drops["nd_malformed"] == 2


def test_dad_probe_with_slla_or_to_wrong_group_is_malformed(core):
    assert core.handle_frame(ns_frame(PEER, src="::"), 1.0) is None
    assert core.handle_frame(ns_frame(PEER, src="::", slla=None, dst="ff02::1"), 1.0) is None
    assert core.counters.drops["nd_malformed"] == 2


def test_ns_to_unrelated_destination_dropped(core):
    assert core.handle_frame(ns_frame(PEER, dst="ff02::1"), 1.0) is None
    assert core.handle_frame(ns_frame(PEER, dst=snma(OWN)), 1.0) is None
    assert core.counters.drops["proxy_bad_dst"] == 2


def test_frames_that_are_not_ns(core):
    na = bytes(Ether(src=UPSTREAM_MAC, dst=MAC) / IPv6(src=UPSTREAM_LL, dst=LINK_LOCAL, hlim=255)
               / ICMPv6ND_NA(tgt=PEER))
    arp_like = bytes(Ether(src=UPSTREAM_MAC, dst=MAC, type=0x0806)) + bytes(60)
    short = ns_frame(PEER)[:50]
    for frame in (na, arp_like, short, b""):
        assert core.handle_frame(frame, 1.0) is None
    assert core.counters.drops["proxy_na"] == 1
    assert core.counters.drops["proxy_not_ns"] == 3


def test_frames_for_another_host_or_from_ourselves_ignored(core):
    assert core.handle_frame(ns_frame(PEER, dst=PEER, eth_dst="02:00:00:00:00:99"), 1.0) is None
    assert core.counters.drops["proxy_other_host"] == 1
    own = bytearray(ns_frame(PEER))
    own[6:12] = proxynd.parse_mac(MAC)
    assert core.handle_frame(bytes(own), 1.0) is None


def test_ethernet_padding_is_ignored(core):
    assert core.handle_frame(ns_frame(PEER) + bytes(20), 1.0) is not None


def test_rate_limited_per_target_and_counted():
    config = proxynd.ProxyConfig(PREFIX, proxynd.parse_mac(MAC), v6(LINK_LOCAL))
    core = proxynd.ProxyCore(config, limiter=Budget(Rate(1000.0, 1000.0), Rate(1.0, 3.0)))
    answers = [core.handle_frame(ns_frame(PEER), 10.0) for _ in range(10)]
    assert sum(a is not None for a in answers) == 3
    assert core.counters.drops["rate_limited"] == 7
    # another target has its own bucket; time refills the first
    other_peer = addr.format_address(addr.encode(PREFIX, bytes((203, 0, 113, 9)), 50001, 1))
    assert core.handle_frame(ns_frame(other_peer), 10.0) is not None
    assert core.handle_frame(ns_frame(PEER), 12.0) is not None


def test_total_rate_limit_caps_a_scan():
    config = proxynd.ProxyConfig(PREFIX, proxynd.parse_mac(MAC), v6(LINK_LOCAL))
    core = proxynd.ProxyCore(config)  # defaults: 500/s in total, burst 200
    sent = 0
    for port in range(1, 1001):
        target = addr.format_address(addr.encode(PREFIX, bytes((198, 51, 100, 7)), port, 1))
        sent += core.handle_frame(ns_frame(target), 5.0) is not None
    assert sent == 200
    assert core.counters.drops["rate_limited"] == 800


def test_ipv6_packet_interface_and_reasons_are_known(core):
    packet = ns_frame(PEER)[14:]
    result = core.handle_packet(packet, 1.0, proxynd.parse_mac(UPSTREAM_MAC))
    assert result.kind == proxynd.PEER and result.eth_dst == proxynd.parse_mac(UPSTREAM_MAC)
    for reason in ("proxy_not_ns", "proxy_other_host", "proxy_bad_dst", "proxy_not_ours",
                   "proxy_kernel_answers", "proxy_port0", "proxy_forbidden"):
        assert reason in DROP_REASONS


def test_classify():
    config = proxynd.ProxyConfig(PREFIX, proxynd.parse_mac(MAC), own=frozenset({v6(OWN)}))
    assert proxynd.classify(config, v6(PEER)) == proxynd.PEER
    assert proxynd.classify(config, v6(OWN)) == proxynd.OWN
    assert proxynd.classify(config, v6("2001:db8:9:10::12")) == "proxy_port0"


def test_solicited_node_and_mac_helpers():
    assert proxynd.solicited_node(v6("2001:db8::1234:5678")) == v6("ff02::1:ff34:5678")
    assert proxynd.multicast_mac(v6("ff02::1:ff34:5678")) == bytes.fromhex("3333ff345678")
    with pytest.raises(ValueError):
        proxynd.parse_mac("aa:bb")


def test_if_inet6_parsing(tmp_path):
    from sixbed4.io.proxynd import read_if_inet6

    table = tmp_path / "if_inet6"
    table.write_text(
        "20010db8000900100000000000000011 01 80 00 80       lo\n"
        "fe80000000000000aabbccfffe001122 02 40 20 80     eth0\n"
        "garbage\n"
    )
    assert read_if_inet6(str(table)) == [(v6(OWN), "lo", 0), (v6(LINK_LOCAL), "eth0", 0x20)]
