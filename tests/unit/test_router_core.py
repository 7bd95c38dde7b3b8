"""RouterCore decisions (PROTOCOL.md section 4), fed with packets that scapy builds.

Replies and edited packets are dissected by scapy, never by our own parsers.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
)
from scapy.packet import Raw

from sixbed4.core import addr, icmp6
from sixbed4.core.ratelimit import Rate
from sixbed4.core.router import DROP, REPLY, SEND, TUN, Limits, MasqRule, RouterConfig, RouterCore
from sixbed4.core.stats import DROP_REASONS

ROUTER_V4 = "192.0.2.1"
PREFIX_TEXT = "2001:db8:9:10::"
PREFIX = ipaddress.IPv6Address(PREFIX_TEXT).packed[:8]
ROUTER_GLOBAL = "2001:db8:9:10:c000:201:64be:0"
ROUTER_LLADDR = "be:64:c0:00:02:01"

A = ("198.51.100.7", 40000)  # the worked example's peer
B = ("203.0.113.9", 50001)
NOW = 1000.0


def peer(origin, lanid=1, prefix=PREFIX) -> str:
    ip, port = origin
    return str(ipaddress.IPv6Address(addr.encode(prefix, ipaddress.IPv4Address(ip).packed, port, lanid)))


def p114(origin) -> str:
    return peer(origin, 0)


def fe80(origin, lanid=1) -> str:
    return peer(origin, lanid, bytes.fromhex("fe80000000000000"))


A_ADDR = peer(A)  # 2001:db8:9:10:c433:6407:9c40:8001
A_114 = p114(A)  # 2001:db8:9:10:c433:6407:9c40:8000
B_ADDR = peer(B)
MASQ_HOST = "2001:db8:9:10::22"  # a port-0 address: the router host itself


def make_core(**kw) -> RouterCore:
    config = RouterConfig(prefix=PREFIX, ipv4=ipaddress.IPv4Address(ROUTER_V4).packed, **kw)
    return RouterCore(config)


@pytest.fixture
def core() -> RouterCore:
    return make_core()


def buf(pkt) -> bytearray:
    return bytearray(bytes(pkt))


def counts(core: RouterCore) -> dict[str, int]:
    return {k: v for k, v in core.counters.snapshot().items() if v and not k.endswith("_bytes")}


def only_drop(core: RouterCore, reason: str) -> None:
    drops = {k: v for k, v in core.counters.drops.items() if v}
    assert drops == {reason: 1}


def no_drops(core: RouterCore) -> None:
    assert not any(core.counters.drops.values())


def checksum_ok(raw: bytes) -> bool:
    """scapy recomputes the transport checksum and must find what the packet carries."""
    pkt = IPv6(bytes(raw))
    layer = pkt.payload
    name = "chksum" if isinstance(layer, (TCP, UDP)) else "cksum"
    carried = getattr(layer, name)
    delattr(layer, name)
    return getattr(IPv6(bytes(pkt)).payload, name) == carried


def pios(pkt) -> list:
    found = []
    layer = pkt.getlayer(ICMPv6NDOptPrefixInfo)
    while layer is not None:
        found.append(layer)
        layer = layer.payload.getlayer(ICMPv6NDOptPrefixInfo)
    return found


def assert_ra(raw: bytes, dst: str) -> IPv6:
    pkt = IPv6(raw)
    assert pkt.src == "fe80::"
    assert pkt.dst == dst
    assert pkt.hlim == 255
    ra = pkt[ICMPv6ND_RA]
    assert ra.chlim == 0 and ra.M == 0 and ra.O == 0
    assert bytes(raw)[45] == 0  # no other flags (the C router's 0x18 is not copied)
    assert ra.routerlifetime == 0xFFFF
    assert ra.reachabletime == 0 and ra.retranstimer == 0
    if pkt.haslayer(ICMPv6NDOptMTU):
        assert pkt[ICMPv6NDOptMTU].mtu == 1280
    assert checksum_ok(raw)
    return pkt


# --- not IPv6 / keepalive -----------------------------------------------------------------


def test_keepalive_counted_not_answered(core):
    assert core.from_udp(bytearray(), A, NOW) == (DROP, None, None)
    assert core.counters.keepalives == 1
    no_drops(core)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (bytearray(b"\x60" + bytes(38)), "too_short"),
        (bytearray(b"\x60"), "too_short"),
        (buf(IP(src="1.2.3.4", dst="5.6.7.8") / UDP() / Raw(b"x" * 40)), "not_ipv6"),
        (bytearray(b"\x00" * 48), "not_ipv6"),
        (buf(IPv6(src="2001:db8:9:10:c433:6407:9c40:8001", dst="2001:db8::1") / UDP() / Raw(b"x" * 1233)),
         "too_long"),
        (buf(IPv6(src="2001:db8:9:10:c433:6407:9c40:8001", dst="2001:db8::1", plen=100) / UDP() / Raw(b"x" * 10)),
         "bad_length"),
        (buf(IPv6(src="2001:db8:9:10:c433:6407:9c40:8001", dst="2001:db8::1", plen=10) / UDP() / Raw(b"x" * 10)),
         "bad_length"),
    ],
)
def test_not_ipv6_dropped(core, raw, reason):
    assert core.from_udp(raw, A, NOW)[0] == DROP
    only_drop(core, reason)
    assert core.counters.to_tun == 0 and core.counters.relayed == 0


def test_exactly_1280_is_accepted(core):
    raw = buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP() / Raw(b"x" * 1232))
    assert len(raw) == 1280
    assert core.from_udp(raw, A, NOW) == (TUN, None, None)


# --- Router Solicitation -> Router Advertisement ------------------------------------------


def c_peer_rs() -> bytearray:
    raw = buf(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr="00:00:00:00:00:01"))
    assert len(raw) == 56 and raw[48:] == bytes.fromhex("0101000000000001")
    return raw


RS_VARIANTS = {
    "c_peer_56": c_peer_rs,
    "plain_48": lambda: buf(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS()),
    "extra_options": lambda: buf(
        IPv6(src="::", dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr="40:9c:c6:33:64:07")
        / Raw(bytes((200, 2)) + bytes(14))  # an unknown, well-formed 16-byte option
        / ICMPv6NDOptMTU(mtu=1280)
    ),
}


@pytest.mark.parametrize("variant", sorted(RS_VARIANTS))
@pytest.mark.parametrize("origin", [A, B, ("1.2.3.4", 1), ("223.255.255.254", 65535)])
def test_rs_gets_ra_with_origin_114(variant, origin):
    core = make_core()
    kind, data, to = core.from_udp(RS_VARIANTS[variant](), origin, NOW)
    assert kind == REPLY and to == origin
    pkt = assert_ra(data, "ff02::1")
    [pio] = pios(pkt)
    assert pio.prefixlen == 114 and pio.L == 1 and pio.A == 1
    assert pio.validlifetime == 0xFFFFFFFF and pio.preferredlifetime == 0xFFFFFFFF
    assert pio.prefix == p114(origin)
    assert core.counters.rs_received == 1 and core.counters.ra_sent == 1
    no_drops(core)


def test_ra_for_worked_example(core):
    kind, data, to = core.from_udp(c_peer_rs(), A, NOW)
    assert pios(IPv6(data))[0].prefix == "2001:db8:9:10:c433:6407:9c40:8000"
    assert bytes(data)[56:60] == bytes.fromhex("030472c0")


@pytest.mark.parametrize("source", [fe80(A), A_ADDR, fe80(B)])
def test_ra_goes_to_rs_source_if_not_unspecified(core, source):
    rs = buf(IPv6(src=source, dst="ff02::2", hlim=255) / ICMPv6ND_RS())
    kind, data, to = core.from_udp(rs, A, NOW)
    assert kind == REPLY and to == A
    pkt = assert_ra(data, source)
    assert pios(pkt)[0].prefix == A_114


def test_ra_carries_extra_routes():
    routes = ((ipaddress.IPv6Address("2001:db8:ffff::").packed[:6], 48),
              (ipaddress.IPv6Address("2001:db8:eeee::1").packed, 128))
    core = make_core(routes=routes)
    kind, data, to = core.from_udp(c_peer_rs(), A, NOW)
    found = pios(assert_ra(data, "ff02::1"))
    assert [(p.prefix, p.prefixlen, p.L, p.A) for p in found] == [
        (A_114, 114, 1, 1),
        ("2001:db8:ffff::", 48, 0, 0),
        ("2001:db8:eeee::1", 128, 0, 0),
    ]


def rs_with(**kw) -> bytearray:
    extra = kw.pop("options", None)
    pkt = IPv6(src="::", dst="ff02::2", hlim=kw.pop("hlim", 255)) / ICMPv6ND_RS(**kw)
    if extra is not None:
        pkt = pkt / Raw(extra)
    return buf(pkt)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (rs_with(cksum=0xBEEF), "nd_bad_checksum"),
        (rs_with(hlim=254), "nd_bad_hoplimit"),
        (rs_with(hlim=64), "nd_bad_hoplimit"),
        (rs_with(options=bytes.fromhex("0100000000000000")), "nd_malformed"),
        (rs_with(options=bytes.fromhex("0101000000000001") + bytes.fromhex("0300")), "nd_malformed"),
        (rs_with(options=bytes.fromhex("0102000000000001")), "nd_malformed"),
        (rs_with(code=1), "nd_malformed"),
    ],
)
def test_bad_rs_dropped(core, raw, reason):
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, reason)
    assert core.counters.ra_sent == 0


def test_rs_corrupted_after_checksum(core):
    raw = c_peer_rs()
    raw[-1] ^= 1
    assert core.from_udp(raw, A, NOW)[0] == DROP
    only_drop(core, "nd_bad_checksum")


@pytest.mark.parametrize("origin", [("0.0.0.0", 40000), ("127.0.0.1", 40000), ("224.0.0.5", 40000),
                                    ("255.255.255.255", 40000), ("198.51.100.7", 0), ("not-an-ip", 1)])
def test_rs_from_unanswerable_endpoint(core, origin):
    assert core.from_udp(c_peer_rs(), origin, NOW)[0] == DROP
    only_drop(core, "bad_endpoint")


def test_rs_rate_limited_per_source(core):
    burst = int(Limits().ra_per_endpoint.burst)
    for _ in range(burst):
        assert core.from_udp(c_peer_rs(), A, NOW)[0] == REPLY
    assert core.from_udp(c_peer_rs(), A, NOW)[0] == DROP
    only_drop(core, "rate_limited")
    # another source is not affected (the buckets are keyed through hash(): B's differ from A's here)
    assert core.from_udp(c_peer_rs(), B, NOW)[0] == REPLY
    assert core.from_udp(c_peer_rs(), A, NOW + 5)[0] == REPLY  # tokens come back


def test_rs_flood_rotating_ports_gets_one_ipv4_share_and_a_real_peer_its_ra(core):
    """One host, a new source port per RS, for 10 s: it gets its IPv4's rate, the real peer all its RAs."""
    attacker_ra = peer_ra = 0
    limits = Limits()
    rs = bytes(c_peer_rs())
    for tick in range(10_000):  # 1000 RS/s from the attacker
        now = NOW + tick / 1000
        attacker_ra += core.from_udp(bytearray(rs), ("203.0.113.66", 1024 + tick), now)[0] == REPLY
        if tick % 1000 == 0:  # the real peer asks once a second
            peer_ra += core.from_udp(bytearray(rs), A, now)[0] == REPLY
    assert peer_ra == 10
    assert attacker_ra <= limits.ra_per_ipv4.burst + 10 * limits.ra_per_ipv4.per_second


def test_corrective_ras_aimed_at_one_ipv4_are_bounded(core):
    """Rotating ports at a victim IPv4 (forged sources) yield no more corrective RAs than that IPv4's share."""
    sent = 0
    for port in range(1024, 3024):
        stale = peer(("203.0.113.66", port + 1))  # an address from "before the NAT rebinding"
        packet = buf(IPv6(src=stale, dst=B_ADDR) / UDP())
        sent += core.from_udp(packet, ("203.0.113.66", port), NOW + (port - 1024) / 1000)[0] == REPLY
    limits = Limits()
    assert sent <= limits.corrective_per_ipv4.burst + 2 * limits.corrective_per_ipv4.per_second


# --- Neighbor Solicitation -> Neighbor Advertisement --------------------------------------


def ns(source: str, target: str, dst: str | None = None, hlim: int = 255, lladdr: bool = True) -> bytearray:
    pkt = IPv6(src=source, dst=dst or "fe80::", hlim=hlim) / ICMPv6ND_NS(tgt=target)
    if lladdr:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr="40:9c:c6:33:64:07")
    return buf(pkt)


ROUTER_IID_FE80 = "fe80::c000:201:64be:0"


@pytest.mark.parametrize("target", ["fe80::", ROUTER_IID_FE80, ROUTER_GLOBAL])
@pytest.mark.parametrize("source", [A_ADDR, fe80(A), peer(A, 7), fe80(A, 0x3FFF)])
def test_ns_for_router_gets_na(target, source):
    core = make_core()
    kind, data, to = core.from_udp(ns(source, target), A, NOW)
    assert kind == REPLY and to == A
    pkt = IPv6(data)
    assert pkt.src == "fe80::" and pkt.dst == source and pkt.hlim == 255
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O) == (1, 1, 1)
    assert na.tgt == ROUTER_GLOBAL
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == ROUTER_LLADDR
    assert checksum_ok(data)
    assert core.counters.na_sent == 1
    no_drops(core)


def test_ns_without_option_and_to_global(core):
    kind, data, to = core.from_udp(ns(A_ADDR, ROUTER_GLOBAL, dst=ROUTER_GLOBAL, lladdr=False), A, NOW)
    assert kind == REPLY
    assert IPv6(data)[ICMPv6ND_NA].tgt == ROUTER_GLOBAL


@pytest.mark.parametrize(
    "source",
    [
        B_ADDR,  # another peer's address
        peer(("198.51.100.7", 40001)),  # same IPv4, other port
        peer(("199.51.100.7", 40000)),  # bits in the low two bits of the first octet differ
        "::",
        "2001:db8:ffff:ffff:c433:6407:9c40:8001",  # right IID, wrong prefix
    ],
)
def test_ns_from_invalid_originator_dropped(core, source):
    assert core.from_udp(ns(source, ROUTER_GLOBAL), A, NOW) == (DROP, None, None)
    only_drop(core, "ns_bad_source")
    assert core.counters.na_sent == 0


@pytest.mark.parametrize("target", [B_ADDR, A_ADDR, "fe80::1", "2001:db8:9:10::1", "fe80::c000:201:64be:1"])
def test_ns_for_other_targets_dropped(core, target):
    assert core.from_udp(ns(A_ADDR, target), A, NOW)[0] == DROP
    only_drop(core, "ns_not_for_router")


def test_ns_bad_hop_limit_dropped(core):
    assert core.from_udp(ns(A_ADDR, ROUTER_GLOBAL, hlim=64), A, NOW)[0] == DROP
    only_drop(core, "nd_bad_hoplimit")


@pytest.mark.parametrize(
    "message",
    [
        ICMPv6ND_RA(routerlifetime=0xFFFF),
        ICMPv6ND_NA(tgt=A_ADDR, R=0, S=1, O=1),
        ICMPv6ND_Redirect(tgt=A_ADDR, dst=B_ADDR),
    ],
)
def test_ra_na_redirect_from_udp_dropped(core, message):
    raw = buf(IPv6(src=A_ADDR, dst="fe80::", hlim=255) / message)
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "nd_unexpected")


# --- source validation and the corrective RA ----------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "2001:db8:ffff:ffff:c433:6407:9c40:8001",  # right IID, other prefix
        "fe80::1",  # link-local, wrong IID
        fe80(B),  # link-local of another peer
        "::1",
        peer(("198.51.100.7", 0)),  # port 0: a host address, not a peer
    ],
)
def test_spoofed_source_dropped_without_reply(core, source):
    raw = buf(IPv6(src=source, dst="2001:db8:aaaa::1") / UDP(sport=1, dport=2))
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "bad_source")
    assert core.counters.corrective_ra_sent == 0


def test_spoofed_source_in_prefix_is_never_forwarded(core):
    raw = buf(IPv6(src=B_ADDR, dst="2001:db8:aaaa::1") / UDP(sport=1, dport=2))
    kind, data, to = core.from_udp(raw, A, NOW)
    assert kind in (DROP, REPLY)
    assert core.counters.drops["bad_source"] == 1
    assert core.counters.to_tun == 0 and core.counters.relayed == 0
    if kind == REPLY:  # it may only be a corrective RA to the sender, about the sender's own /114
        assert to == A
        assert [p.prefix for p in pios(IPv6(data))][-1] == A_114


@pytest.mark.parametrize("origin", [("0.0.0.0", 40000), ("127.0.0.1", 40000), ("198.51.100.7", 0),
                                    ("203.0.113.50", 25790), (ROUTER_V4, 40000)])
def test_data_from_an_endpoint_that_is_no_peer_dropped(core, origin):
    """Port 25790 is a router's, never a peer's (RFC 6324); the router's own host is no peer either."""
    raw = buf(IPv6(src=peer(origin), dst="2001:db8:aaaa::1") / UDP(sport=1, dport=2))
    assert core.from_udp(raw, origin, NOW) == (DROP, None, None)
    only_drop(core, "bad_endpoint")


def test_nat_rebinding_gets_corrective_ra(core):
    new_origin = ("198.51.100.7", 40001)  # the NAT gave the peer another port
    raw = buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP(sport=1, dport=2) / Raw(b"data"))
    kind, data, to = core.from_udp(raw, new_origin, NOW)
    assert kind == REPLY and to == new_origin
    pkt = assert_ra(data, "ff02::1")
    found = pios(pkt)
    assert [(p.prefix, p.prefixlen, p.L, p.A, p.validlifetime, p.preferredlifetime) for p in found] == [
        (A_114, 114, 1, 1, 0, 0),  # the old /114 first, with zero lifetimes
        (p114(new_origin), 114, 1, 1, 0xFFFFFFFF, 0xFFFFFFFF),  # the new one last
    ]
    assert core.counters.corrective_ra_sent == 1
    assert core.counters.drops["bad_source"] == 1
    assert core.counters.to_tun == 0

    # a second one right after: no RA, counted as rate limited
    assert core.from_udp(buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP()), new_origin, NOW + 0.01) \
        == (DROP, None, None)
    assert core.counters.drops["rate_limited"] == 1
    assert core.counters.corrective_ra_sent == 1
    # much later, allowed again
    assert core.from_udp(buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP()), new_origin, NOW + 60)[0] == REPLY


def test_nat_rebinding_new_ipv4_top_bits(core):
    """The old /114 keeps the top two bits of byte 14 (low bits of the old IPv4's first octet)."""
    old = ("199.51.100.7", 40000)  # 199 = 0xc7: low bits 11
    new = ("198.51.100.7", 40000)
    raw = buf(IPv6(src=peer(old, 5), dst="2001:db8:aaaa::1") / UDP())
    kind, data, to = core.from_udp(raw, new, NOW)
    assert kind == REPLY
    assert [p.prefix for p in pios(IPv6(data))] == [p114(old), p114(new)]


def test_corrective_ra_includes_routes():
    core = make_core(routes=((ipaddress.IPv6Address("2001:db8:ffff::").packed, 48),))
    raw = buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP())
    kind, data, to = core.from_udp(raw, B, NOW)
    found = pios(IPv6(data))
    assert [(p.prefix, p.L, p.A) for p in found][:2] == [(A_114, 1, 1), (p114(B), 1, 1)]
    assert (found[2].prefix, found[2].prefixlen, found[2].L, found[2].A) == ("2001:db8:ffff::", 48, 0, 0)


# --- destinations --------------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["ff02::1", "ff0e::101", "ff05::1:3", "ff02::1:ff00:1"])
def test_multicast_destination_dropped(core, dst):
    raw = buf(IPv6(src=A_ADDR, dst=dst) / UDP(sport=1, dport=2))
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "multicast")


@pytest.mark.parametrize(
    "dst",
    [
        "2001:db8:aaaa:1:100::1",  # byte 8 = 0x01: the C code's "multicast" bug
        "2001:db8:aaaa:1:300::1",  # byte 8 = 0x03
        "2a00:1450:4001:82a::200e",
        "2001:db8:9:11:c433:6407:9c40:8001",  # a 6bed4-looking address in another /64
        "fe80::1",
    ],
)
@pytest.mark.parametrize("src", [A_ADDR, fe80(A), peer(A, 0x1234)])
def test_native_destination_to_tun_unchanged(core, dst, src):
    raw = buf(IPv6(src=src, dst=dst, hlim=17) / TCP(sport=1234, dport=443) / Raw(b"payload"))
    original = bytes(raw)
    assert core.from_udp(raw, A, NOW) == (TUN, None, None)
    assert bytes(raw) == original  # hop limit not touched
    assert core.counters.to_tun == 1
    no_drops(core)


def test_flow_to_tun_remembered_per_origin_and_bounded(core):
    """The second packet of a flow takes the remembered decision; another origin is checked anew."""
    raw = buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP(sport=1, dport=2))
    for _ in range(2):
        assert core.from_udp(bytearray(raw), A, NOW) == (TUN, None, None)
    assert core.from_udp(bytearray(raw), B, NOW)[0] in (DROP, REPLY)  # B may not use A's address
    assert core.counters.to_tun == 2 and core.counters.drops["bad_source"] == 1
    assert core.from_udp(bytearray(raw), A, NOW) == (TUN, None, None)
    for i in range(3 * 4096):  # many flows: the memory stays bounded
        flow = bytearray(raw)
        flow[38:40] = i.to_bytes(2, "big")  # to 2001:db8:aaaa::i (the core does not read the UDP checksum)
        assert core.from_udp(flow, A, NOW) == (TUN, None, None)
    assert len(core._tun_flows) <= 4096


@pytest.mark.parametrize("iid", ["c433:6407:0:1", "0:0:0:1", "ffff:ffff:0:ffff", "c000:201:0:0"])
def test_port0_destination_in_prefix_goes_to_tun(core, iid):
    raw = buf(IPv6(src=A_ADDR, dst=f"2001:db8:9:10:{iid}", hlim=1) / UDP(sport=1, dport=2))
    original = bytes(raw)
    assert core.from_udp(raw, A, NOW) == (TUN, None, None)
    assert bytes(raw) == original
    no_drops(core)


def test_router_global_address_goes_to_tun(core):
    raw = buf(IPv6(src=A_ADDR, dst=ROUTER_GLOBAL) / TCP(dport=22))
    assert core.from_udp(raw, A, NOW) == (TUN, None, None)


# --- relay between peers ---------------------------------------------------------------------


@pytest.mark.parametrize("hlim", [2, 64, 255])
@pytest.mark.parametrize("src", [A_ADDR, peer(A, 0x3FFF)])
@pytest.mark.parametrize("dst", [B_ADDR, peer(B, 0), peer(B, 0x2000), peer(("223.1.2.3", 1), 1)])
def test_relay_decrements_hop_limit_once(hlim, src, dst):
    core = make_core()
    raw = buf(IPv6(src=src, dst=dst, hlim=hlim) / UDP(sport=7, dport=9) / Raw(b"hello"))
    before = bytes(raw)
    kind, data, to = core.from_udp(raw, A, NOW)
    target = addr.decode(ipaddress.IPv6Address(dst).packed)
    assert kind == SEND and data is None
    assert to == (target.ipv4_text, target.port)
    pkt = IPv6(bytes(raw))
    assert pkt.hlim == hlim - 1
    assert bytes(raw[:7]) == before[:7] and bytes(raw[8:]) == before[8:]
    assert checksum_ok(raw)
    assert core.counters.relayed == 1
    no_drops(core)


def test_relay_within_fc64():
    prefix = addr.complete_prefix(None, ipaddress.IPv4Address(ROUTER_V4).packed)
    core = RouterCore(RouterConfig(prefix=prefix, ipv4=ipaddress.IPv4Address(ROUTER_V4).packed))
    raw = buf(IPv6(src=peer(A, prefix=prefix), dst=peer(B, prefix=prefix), hlim=5) / UDP())
    assert core.from_udp(raw, A, NOW) == (SEND, None, B)
    assert raw[7] == 4


def test_relay_to_other_fc64_prefix():
    """Section 4.8: a destination in fc64::/16 is relayed even when a native /64 is served."""
    core = make_core()
    other = bytes.fromhex("fc640bedc6336408")
    raw = buf(IPv6(src=A_ADDR, dst=peer(B, prefix=other), hlim=5) / UDP())
    assert core.from_udp(raw, A, NOW) == (SEND, None, B)
    assert raw[7] == 4


@pytest.mark.parametrize("hlim", [1, 0])
def test_relay_hop_limit_exhausted_gives_time_exceeded(core, hlim):
    raw = buf(IPv6(src=A_ADDR, dst=B_ADDR, hlim=hlim) / UDP(sport=7, dport=9) / Raw(b"hello"))
    original = bytes(raw)
    kind, data, to = core.from_udp(raw, A, NOW)
    assert kind == REPLY and to == A
    pkt = IPv6(data)
    assert pkt.dst == A_ADDR
    assert pkt[ICMPv6TimeExceeded].code == 0
    assert bytes(pkt[IPerror6]) == original
    assert checksum_ok(data)
    assert core.counters.relayed == 0
    assert core.counters.drops["hop_limit"] == 1
    assert core.counters.icmp_errors_sent == 1


def test_time_exceeded_rate_limited():
    core = make_core(limits=Limits(icmp_errors_per_ipv4=Rate(1.0, 2.0)))
    results = [core.from_udp(buf(IPv6(src=A_ADDR, dst=B_ADDR, hlim=1) / UDP()), A, NOW)[0] for _ in range(4)]
    assert results == [REPLY, REPLY, DROP, DROP]
    assert core.counters.drops["rate_limited"] == 2
    assert core.counters.drops["hop_limit"] == 4
    assert core.counters.icmp_errors_sent == 2
    assert core.from_udp(buf(IPv6(src=A_ADDR, dst=B_ADDR, hlim=1) / UDP()), A, NOW + 10)[0] == REPLY


def test_time_exceeded_default_rate_limit(core):
    kinds = [core.from_udp(buf(IPv6(src=A_ADDR, dst=B_ADDR, hlim=1) / UDP()), A, NOW)[0] for _ in range(500)]
    assert kinds.count(REPLY) <= Limits().icmp_errors_per_ipv4.burst
    assert kinds.count(REPLY) >= 1
    assert core.counters.drops["rate_limited"] == kinds.count(DROP)


@pytest.mark.parametrize(
    "target",
    [("0.0.0.0", 4000), ("0.1.2.3", 4000), ("127.0.0.1", 4000), ("127.9.9.9", 4000), ("224.0.0.1", 4000),
     ("239.1.1.1", 4000), ("240.0.0.1", 4000), ("255.255.255.255", 4000)],
)
@pytest.mark.parametrize("prefix", [PREFIX, bytes.fromhex("fc640bedc0000201")])
def test_relay_to_forbidden_ipv4_dropped(core, target, prefix):
    raw = buf(IPv6(src=A_ADDR, dst=peer(target, prefix=prefix), hlim=64) / UDP())
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "relay_forbidden")


def test_relay_to_port0_in_fc64_dropped(core):
    raw = buf(IPv6(src=A_ADDR, dst=peer(("203.0.113.9", 0), prefix=bytes.fromhex("fc640bedc0000201"))) / UDP())
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "relay_forbidden")


@pytest.mark.parametrize("lanid", [1, 5, 0x3FFF])
def test_relay_into_the_routers_own_114_dropped(core, lanid):
    """Its IPv4:port is the router's own socket: relaying there would send datagrams to itself."""
    raw = buf(IPv6(src=A_ADDR, dst=peer((ROUTER_V4, 25790), lanid), hlim=64) / UDP())
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "relay_forbidden")


@pytest.mark.parametrize("error", [ICMPv6DestUnreach(), ICMPv6TimeExceeded(), ICMPv6PacketTooBig(mtu=1280)])
def test_no_time_exceeded_for_an_icmp_error(core, error):
    """RFC 4443 2.4(e): an ICMPv6 error never answers an ICMPv6 error."""
    quoted = IPv6(src=B_ADDR, dst=A_ADDR) / UDP()
    raw = buf(IPv6(src=A_ADDR, dst=B_ADDR, hlim=1) / error / quoted)
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "hop_limit")
    assert core.counters.icmp_errors_sent == 0


def test_hop_limit_check_never_sends_to_forbidden(core):
    """Forbidden destinations are dropped before the hop limit: no Time Exceeded either."""
    raw = buf(IPv6(src=A_ADDR, dst=peer(("127.0.0.1", 4000)), hlim=1) / UDP())
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    assert core.counters.icmp_errors_sent == 0


# --- the router as the peer sees it: echo and masquerading ---------------------------------


@pytest.mark.parametrize("src,dst", [(A_ADDR, A_114), (peer(A, 0x3FFF), A_114), (fe80(A), fe80(A, 0))])
def test_echo_to_own_114_lanid0(core, src, dst):
    raw = buf(IPv6(src=src, dst=dst, hlim=3) / ICMPv6EchoRequest(id=42, seq=7, data=b"are you there"))
    kind, data, to = core.from_udp(raw, A, NOW)
    assert kind == REPLY and to == A
    pkt = IPv6(data)
    assert pkt.src == dst and pkt.dst == src
    reply = pkt[ICMPv6EchoReply]
    assert (reply.id, reply.seq, reply.data) == (42, 7, b"are you there")
    assert checksum_ok(data)
    assert core.counters.echo_replies == 1
    no_drops(core)


def test_echo_to_other_peers_114_is_relayed(core):
    raw = buf(IPv6(src=A_ADDR, dst=p114(B), hlim=5) / ICMPv6EchoRequest())
    assert core.from_udp(raw, A, NOW) == (SEND, None, B)


@pytest.mark.parametrize(
    "payload",
    [TCP(dport=22), UDP(dport=53), ICMPv6EchoReply()],
)
def test_to_router_without_service_dropped(core, payload):
    raw = buf(IPv6(src=A_ADDR, dst=A_114) / payload)
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "no_service")


def masq_core() -> RouterCore:
    host = ipaddress.IPv6Address(MASQ_HOST).packed
    return make_core(masquerade=(
        MasqRule(6, 22, 22, host),
        MasqRule(17, 5000, 5010, host),
        MasqRule(58, 0, 0, host),
    ))


@pytest.mark.parametrize(
    "payload",
    [
        TCP(sport=33333, dport=22, flags="S", seq=1) / Raw(b"ssh"),
        UDP(sport=33333, dport=5000) / Raw(b"first"),
        UDP(sport=33333, dport=5010) / Raw(b"last"),
        ICMPv6EchoRequest(id=1, seq=2, data=b"masq ping"),
    ],
)
@pytest.mark.parametrize("src", [A_ADDR, peer(A, 9), peer(A, 0x3ABC)])
def test_masquerade_to_host_and_back(src, payload):
    core = masq_core()
    raw = buf(IPv6(src=src, dst=A_114, hlim=40) / payload)
    kind, data, to = core.from_udp(raw, A, NOW)
    assert kind == TUN
    pkt = IPv6(bytes(raw))
    assert pkt.dst == MASQ_HOST and pkt.src == src and pkt.hlim == 40
    assert checksum_ok(raw)
    assert core.counters.masqueraded == 1

    # the host answers; the kernel routes the reply into the TUN
    if isinstance(payload, TCP):
        answer = TCP(sport=22, dport=33333, flags="SA") / Raw(b"reply")
    elif isinstance(payload, UDP):
        answer = UDP(sport=payload.dport, dport=33333) / Raw(b"reply")
    else:
        answer = ICMPv6EchoReply(id=1, seq=2, data=b"masq ping")
    back = buf(IPv6(src=MASQ_HOST, dst=src, hlim=63) / answer)
    kind, data, to = core.from_tun(back)
    assert kind == SEND and to == A
    pkt = IPv6(bytes(back))
    assert pkt.src == A_114 and pkt.dst == src and pkt.hlim == 63
    assert checksum_ok(back)
    assert core.counters.masqueraded == 2


@pytest.mark.parametrize("payload", [TCP(dport=23), TCP(dport=21), UDP(dport=4999), UDP(dport=5011), ICMPv6EchoReply()])
def test_masquerade_other_ports_not_taken(payload):
    core = masq_core()
    raw = buf(IPv6(src=A_ADDR, dst=A_114) / payload)
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "no_service")


def test_masquerade_requires_valid_originator():
    core = masq_core()
    raw = buf(IPv6(src="2001:db8:ffff:ffff:c433:6407:9c40:8001", dst="2001:db8:ffff:ffff:c433:6407:9c40:8000")
              / TCP(dport=22))
    assert core.from_udp(raw, A, NOW)[0] == DROP
    assert core.counters.masqueraded == 0
    raw = buf(IPv6(src=B_ADDR, dst=p114(B)) / TCP(dport=22))
    assert core.from_udp(raw, A, NOW)[0] != TUN
    assert core.counters.masqueraded == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 65535), st.binary(max_size=200), st.sampled_from([A, B, ("1.2.3.4", 65535)]))
def test_masquerade_udp_checksum_property(sport, data, origin):
    core = masq_core()
    raw = buf(IPv6(src=peer(origin), dst=p114(origin)) / UDP(sport=sport, dport=5005) / Raw(data))
    assert core.from_udp(raw, origin, NOW)[0] == TUN
    assert checksum_ok(raw)
    back = buf(IPv6(src=MASQ_HOST, dst=peer(origin)) / UDP(sport=5005, dport=sport) / Raw(data))
    assert core.from_tun(back) == (SEND, None, origin)
    assert checksum_ok(back)
    assert IPv6(bytes(back)).src == p114(origin)


# --- from TUN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,reason",
    [
        (buf(IP(src="1.2.3.4", dst="5.6.7.8") / UDP() / Raw(b"x" * 40)), "tun_not_ipv6"),
        (bytearray(b"\x60" + bytes(30)), "tun_not_ipv6"),
        (bytearray(), "tun_not_ipv6"),
        (buf(IPv6(src="2001:db8::1", dst=A_ADDR) / UDP() / Raw(b"x" * 1300)), "tun_too_long"),
        (buf(IPv6(src="fe80::1", dst=A_ADDR, hlim=255) / ICMPv6ND_NS(tgt=A_ADDR)), "tun_nd"),
        (buf(IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA()), "tun_nd"),
        (buf(IPv6(src="2001:db8::1", dst="ff02::1") / UDP()), "tun_multicast"),
        (buf(IPv6(src="2001:db8::1", dst="ff0e::1") / UDP()), "tun_multicast"),
        (buf(IPv6(src="2001:db8::1", dst="2001:db8:9:11:c433:6407:9c40:8001") / UDP()), "tun_not_ours"),
        (buf(IPv6(src="2001:db8::1", dst="fe80::c433:6407:9c40:8001") / UDP()), "tun_not_ours"),
        (buf(IPv6(src="2001:db8::1", dst="2001:db8:9:10:c433:6407:0:8001") / UDP()), "tun_port0"),
        (buf(IPv6(src="2001:db8::1", dst=peer(("0.0.0.0", 4000))) / UDP()), "tun_forbidden"),
        (buf(IPv6(src="2001:db8::1", dst=peer(("127.0.0.1", 4000))) / UDP()), "tun_forbidden"),
        (buf(IPv6(src="2001:db8::1", dst=peer(("224.0.0.1", 4000))) / UDP()), "tun_forbidden"),
        (buf(IPv6(src="2001:db8::1", dst=peer(("255.255.255.255", 4000))) / UDP()), "tun_forbidden"),
        (buf(IPv6(src="2001:db8::1", dst=ROUTER_GLOBAL) / UDP()), "tun_forbidden"),
        (buf(IPv6(src="2001:db8::1", dst=peer((ROUTER_V4, 25790), 5)) / UDP()), "tun_forbidden"),
        (buf(IPv6(src="2001:db8::1", dst=peer(("203.0.113.50", 25790))) / UDP()), "tun_forbidden"),  # a router
        (buf(IPv6(src="2001:db8::1", dst="2001:db8:9:10:c233:6407:9c40:8001") / UDP()), "tun_forbidden"),  # U/L
        (buf(IPv6(src="2001:db8::1", dst=peer((ROUTER_V4, 5353))) / UDP()), "tun_to_self"),
        (buf(IPv6(src=B_ADDR, dst=A_ADDR) / UDP()), "tun_spoofed_source"),
        (buf(IPv6(src=peer(B, 0), dst=A_ADDR) / UDP()), "tun_spoofed_source"),
    ],
)
def test_from_tun_dropped(core, raw, reason):
    assert core.from_tun(raw) == (DROP, None, None)
    only_drop(core, reason)
    assert core.counters.to_udp == 0


@pytest.mark.parametrize("dst,origin", [(A_ADDR, A), (A_114, A), (peer(B, 0x3FFF), B), (peer(("1.0.0.1", 1)), ("1.0.0.1", 1))])
@pytest.mark.parametrize("hlim", [1, 63, 255])
def test_from_tun_sent_to_encoded_endpoint(core, dst, origin, hlim):
    raw = buf(IPv6(src="2a00:1450:4001:82a::200e", dst=dst, hlim=hlim) / TCP(sport=443, dport=5555) / Raw(b"data"))
    original = bytes(raw)
    assert core.from_tun(raw) == (SEND, None, origin)
    assert bytes(raw) == original  # hop limit unchanged, nothing rewritten
    assert core.counters.to_udp == 1
    no_drops(core)


def test_from_tun_echo_reply_and_icmp_errors_forwarded(core):
    raw = buf(IPv6(src="2a00:1450:4001:82a::200e", dst=A_ADDR) / ICMPv6EchoReply())
    assert core.from_tun(raw) == (SEND, None, A)


def test_from_tun_without_masquerade_source_untouched(core):
    raw = buf(IPv6(src=MASQ_HOST, dst=A_ADDR) / UDP(sport=5005, dport=1))
    original = bytes(raw)
    assert core.from_tun(raw) == (SEND, None, A)
    assert bytes(raw) == original


# --- fuzz: nothing raises, and the core keeps working -----------------------------------------


def valid_packets() -> list[bytes]:
    return [
        bytes(c_peer_rs()),
        bytes(ns(A_ADDR, ROUTER_GLOBAL)),
        bytes(IPv6(src=A_ADDR, dst=B_ADDR, hlim=3) / UDP(sport=1, dport=2) / Raw(b"relay me")),
        bytes(IPv6(src=A_ADDR, dst=A_114) / ICMPv6EchoRequest(data=b"ping")),
        bytes(IPv6(src=A_ADDR, dst=A_114) / TCP(dport=22)),
        bytes(IPv6(src=A_ADDR, dst=A_114) / UDP(dport=5003)),
        bytes(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / TCP(dport=80)),
        bytes(IPv6(src=MASQ_HOST, dst=A_ADDR) / UDP(sport=5003, dport=9)),
        bytes(IPv6(src="2001:db8::1", dst=B_ADDR, hlim=1) / ICMPv6EchoRequest()),
        bytes(IPv6(src=A_ADDR, dst="fe80::", hlim=255) / ICMPv6ND_RA()),
    ]


def mutate(data: bytes, edits) -> bytearray:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return out


origins = st.sampled_from([A, B, ("0.0.0.0", 0), ("127.0.0.1", 1), ("255.255.255.255", 65535), ("1.2.3.4", 0)])
inputs = st.one_of(
    st.binary(max_size=1400).map(bytearray),
    st.binary(min_size=40, max_size=200).map(lambda b: bytearray(b"\x60" + b[1:])),
    st.tuples(
        st.sampled_from(valid_packets()),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
        st.integers(0, 60),
    ).map(lambda t: mutate(t[0], t[1])[: len(t[0]) - t[2] if t[2] else None]),
    st.tuples(
        st.sampled_from(valid_packets()),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
    ).map(lambda t: mutate(t[0], t[1])),
)


def check_action(action) -> None:
    kind, data, to = action
    assert kind in (DROP, TUN, SEND, REPLY)
    if kind == SEND or kind == REPLY:
        ip, port = to
        assert 1 <= port <= 65535
        assert addr.is_sendable_ipv4(ipaddress.IPv4Address(ip).packed)
    if kind == REPLY:
        assert isinstance(data, (bytes, bytearray)) and 40 <= len(data) <= 1280
        assert data[0] >> 4 == 6
        assert icmp6.checksum_is_valid(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(inputs, origins, st.booleans()), min_size=1, max_size=8))
def test_fuzz_never_raises_and_keeps_working(items):
    core = masq_core()
    now = NOW
    for packet, origin, via_tun in items:
        now += 0.1
        action = core.from_tun(packet) if via_tun else core.from_udp(packet, origin, now)
        check_action(action)
        if action[0] == SEND:
            assert len(packet) <= 1280
    assert set(core.counters.drops) == set(DROP_REASONS)
    # afterwards, a valid relay is still forwarded and a valid RS still answered
    raw = buf(IPv6(src=A_ADDR, dst=B_ADDR, hlim=9) / UDP(sport=1, dport=2))
    assert core.from_udp(raw, A, now + 100) == (SEND, None, B)
    assert raw[7] == 8
    assert core.from_udp(c_peer_rs(), B, now + 100)[0] == REPLY
    back = buf(IPv6(src="2001:db8::1", dst=A_ADDR) / UDP())
    assert core.from_tun(back) == (SEND, None, A)


def test_fuzz_with_memoryview_input():
    """The IO layer may hand in a memoryview of a receive buffer; that works the same."""
    core = masq_core()
    rng = random.Random(4)
    for packet in valid_packets():
        for _ in range(50):
            edited = mutate(packet, [(rng.randrange(len(packet)), rng.randrange(256)) for _ in range(2)])
            check_action(core.from_udp(memoryview(edited), A, NOW))
            check_action(core.from_tun(memoryview(edited)))
    backing = bytearray(2048)
    raw = bytes(IPv6(src=A_ADDR, dst=B_ADDR, hlim=9) / UDP(sport=1, dport=2))
    backing[: len(raw)] = raw
    view = memoryview(backing)[: len(raw)]
    assert core.from_udp(view, A, NOW + 100) == (SEND, None, B)
    assert backing[7] == 8


@pytest.mark.parametrize("src,dst", [(fe80(A), A_114), (A_ADDR, fe80(A, 0))])
def test_echo_to_router_across_link_local_and_global(core, src, dst):
    """Section 4.6: the peer's own /114 with lanid 0 is the router, whichever of its addresses the peer uses."""
    raw = buf(IPv6(src=src, dst=dst, hlim=3) / ICMPv6EchoRequest(id=5, seq=6, data=b"x"))
    kind, data, to = core.from_udp(raw, A, NOW)
    assert kind == REPLY and to == A
    pkt = IPv6(data)
    assert pkt.src == dst and pkt.dst == src
    assert pkt[ICMPv6EchoReply].id == 5
    assert checksum_ok(data)


def udp_payload_summing_to_zero(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 2-byte UDP payload that makes the one's complement checksum come out as 0 for src -> dst."""
    from scapy.layers.inet6 import in6_chksum

    pkt = IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport, chksum=0) / Raw(b"\0\0")
    partial = ~in6_chksum(17, pkt, bytes(pkt[UDP])) & 0xFFFF  # the sum without the payload word
    word = 0xFFFF - partial
    return word.to_bytes(2, "big")


def test_masquerade_udp_zero_checksum_sent_as_ffff():
    """RFC 8200: a UDP checksum that computes to 0 is sent as 0xffff (0 means 'none', invalid in IPv6)."""
    core = masq_core()
    data = udp_payload_summing_to_zero(A_ADDR, MASQ_HOST, 4444, 5001)
    raw = buf(IPv6(src=A_ADDR, dst=A_114) / UDP(sport=4444, dport=5001) / Raw(data))
    assert core.from_udp(raw, A, NOW)[0] == TUN
    assert IPv6(bytes(raw)).dst == MASQ_HOST
    assert bytes(raw[46:48]) == b"\xff\xff"
    assert checksum_ok(raw)

    data = udp_payload_summing_to_zero(A_114, A_ADDR, 5001, 4444)
    back = buf(IPv6(src=MASQ_HOST, dst=A_ADDR) / UDP(sport=5001, dport=4444) / Raw(data))
    assert core.from_tun(back) == (SEND, None, A)
    assert IPv6(bytes(back)).src == A_114
    assert bytes(back[46:48]) == b"\xff\xff"
    assert checksum_ok(back)
