"""ICMPv6 / ND building and parsing, checked with scapy's independent dissection.

Packets built by icmp6.py are dissected by scapy (never by our own parser);
our parsers are fed with packets that scapy built.  Field values follow
PROTOCOL.md section 3.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    in6_chksum,
)
from scapy.packet import Raw

from sixbed4.core import addr, icmp6

ROUTER_V4 = bytes((192, 0, 2, 1))
PREFIX = ipaddress.IPv6Address("2001:db8:9:10::").packed[:8]
PEER = ipaddress.IPv6Address("2001:db8:9:10:c433:6407:9c40:8001").packed
PEER114 = ipaddress.IPv6Address("2001:db8:9:10:c433:6407:9c40:8000").packed
ROUTER_GLOBAL = ipaddress.IPv6Address("2001:db8:9:10:c000:201:64be:0").packed


def t(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(bytes(packed)))


def scapy_checksum(raw: bytes, layer) -> tuple[int, int]:
    """(checksum in the packet, checksum scapy computes after `del pkt[layer].cksum`)."""
    name = "chksum" if layer in (UDP, TCP) else "cksum"
    pkt = IPv6(raw)
    carried = getattr(pkt[layer], name)
    delattr(pkt[layer], name)
    rebuilt = IPv6(bytes(pkt))
    return carried, getattr(rebuilt[layer], name)


def scapy_pseudo_checksum(raw: bytes) -> int:
    """The upper-layer checksum scapy's in6_chksum computes with the field zeroed."""
    pkt = IPv6(raw)
    nh = raw[6]
    where = {58: 2, 6: 16, 17: 6}[nh]
    payload = bytearray(raw[40:])
    payload[where : where + 2] = b"\0\0"
    return in6_chksum(nh, pkt, bytes(payload))


def assert_checksum_ok(raw: bytes, layer) -> None:
    carried, recomputed = scapy_checksum(raw, layer)
    assert carried == recomputed
    assert carried == scapy_pseudo_checksum(raw)


# --- checksums --------------------------------------------------------------------------


def reference_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=300))
def test_ones_complement_sum_matches_reference(data):
    assert icmp6.ones_complement_sum(data) == reference_sum(data)
    assert icmp6.ones_complement_sum(bytearray(data)) == reference_sum(data)


@pytest.mark.parametrize(
    "build,layer",
    [
        (lambda: IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=53) / Raw(b"hello"), UDP),
        (lambda: IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=53) / Raw(b"odd"), UDP),
        (lambda: IPv6(src="fe80::1", dst="ff02::1") / TCP(sport=1, dport=80, flags="S") / Raw(b"x" * 11), TCP),
        (lambda: IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest(id=7, seq=9, data=b"abc"),
         ICMPv6EchoRequest),
    ],
)
def test_checksum_is_valid_on_scapy_packets(build, layer):
    raw = bytes(build())
    assert icmp6.checksum_is_valid(raw)
    pkt = IPv6(raw)
    carried = getattr(pkt[layer], "chksum", None) if layer in (UDP, TCP) else pkt[layer].cksum
    assert icmp6.upper_layer_checksum(raw[8:24], raw[24:40], raw[6], zero_checksum(raw)) == carried
    for position in (9, 30, 41, len(raw) - 1):
        broken = bytearray(raw)
        broken[position] ^= 0x40
        assert not icmp6.checksum_is_valid(broken)


def zero_checksum(raw: bytes) -> bytes:
    where = {58: 2, 6: 16, 17: 6}[raw[6]]
    payload = bytearray(raw[40:])
    payload[where : where + 2] = b"\0\0"
    return bytes(payload)


@settings(max_examples=300)
@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=8, max_size=200),
    st.data(),
)
def test_adjust_checksum_equals_full_recomputation(src, dst, body, data):
    """Replace an even-length, aligned run of the packet and compare with recomputation."""
    packet = bytearray(src + dst + body)
    before = icmp6.upper_layer_checksum(packet[:16], packet[16:32], 58, packet[32:])
    words = len(packet) // 2
    start = data.draw(st.integers(0, words - 1)) * 2
    length = data.draw(st.integers(1, min(8, words - start // 2))) * 2
    new = data.draw(st.binary(min_size=length, max_size=length))
    old = bytes(packet[start : start + length])
    packet[start : start + length] = new
    after = icmp6.upper_layer_checksum(packet[:16], packet[16:32], 58, packet[32:])
    assert icmp6.adjust_checksum(before, old, new) == after


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_adjust_checksum_address_rewrite_validated_by_scapy(old_dst, new_dst):
    """The masquerading case: rewrite the destination address of a UDP packet."""
    raw = bytearray(bytes(IPv6(src="2001:db8::1", dst=t(old_dst)) / UDP(sport=1000, dport=53) / Raw(b"query")))
    old_sum = (raw[46] << 8) | raw[47]
    new_sum = icmp6.adjust_checksum(old_sum, raw[24:40], new_dst)
    raw[24:40] = new_dst
    raw[46:48] = new_sum.to_bytes(2, "big")
    carried, recomputed = scapy_checksum(bytes(raw), UDP)
    assert carried == recomputed or (carried == 0 and recomputed == 0xFFFF)  # scapy never emits 0 for UDP


# --- building: RS, RA, NS, NA, echo reply, errors -----------------------------------------


def test_router_solicit_from_unspecified():
    raw = icmp6.router_solicit()
    pkt = IPv6(raw)
    assert len(raw) == 48
    assert pkt.src == "::" and pkt.dst == "ff02::2"
    assert pkt.hlim == 255 and pkt.plen == 8 and pkt.nh == 58
    assert pkt.haslayer(ICMPv6ND_RS)
    assert pkt[ICMPv6ND_RS].code == 0
    assert not pkt.haslayer(ICMPv6NDOptSrcLLAddr)
    assert_checksum_ok(raw, ICMPv6ND_RS)


def test_router_advert_fields():
    route = icmp6.PrefixInfo(ipaddress.IPv6Address("2001:db8:ffff::").packed, 48, 0)
    raw = icmp6.router_advert(icmp6.ALL_NODES, [icmp6.PrefixInfo(PEER114, 114), route])
    pkt = IPv6(raw)
    assert pkt.src == "fe80::" and pkt.dst == "ff02::1"
    assert pkt.hlim == 255
    assert pkt.plen == len(raw) - 40
    ra = pkt[ICMPv6ND_RA]
    assert ra.type == 134 and ra.code == 0
    assert ra.chlim == 0
    assert ra.M == 0 and ra.O == 0
    assert ra.H == 0 and ra.prf == 0 and ra.P == 0
    assert raw[45] == 0  # the whole flags byte: not the C router's 0x18
    assert ra.routerlifetime == 0xFFFF
    assert ra.reachabletime == 0 and ra.retranstimer == 0
    assert_checksum_ok(raw, ICMPv6ND_RA)

    pios = []
    layer = pkt.getlayer(ICMPv6NDOptPrefixInfo)
    while layer is not None:
        pios.append(layer)
        layer = layer.payload.getlayer(ICMPv6NDOptPrefixInfo)
    assert len(pios) == 2
    main, extra = pios
    assert main.prefixlen == 114 and main.L == 1 and main.A == 1
    assert main.validlifetime == 0xFFFFFFFF and main.preferredlifetime == 0xFFFFFFFF
    assert main.prefix == "2001:db8:9:10:c433:6407:9c40:8000"
    assert extra.prefixlen == 48 and extra.L == 0 and extra.A == 0
    assert extra.prefix == "2001:db8:ffff::"
    assert pkt[ICMPv6NDOptMTU].mtu == 1280
    # the PIO bytes as in the spec: 03 04 72 c0
    assert raw[56:60] == bytes.fromhex("030472c0")


def test_router_advert_to_unicast_and_without_mtu():
    raw = icmp6.router_advert(PEER, [icmp6.PrefixInfo(PEER114, 114, valid=0, preferred=0)], mtu=None)
    pkt = IPv6(raw)
    assert pkt.dst == t(PEER)
    assert not pkt.haslayer(ICMPv6NDOptMTU)
    pio = pkt[ICMPv6NDOptPrefixInfo]
    assert pio.validlifetime == 0 and pio.preferredlifetime == 0
    assert_checksum_ok(raw, ICMPv6ND_RA)


def test_neighbor_advert_fields():
    flags = icmp6.NA_ROUTER | icmp6.NA_SOLICITED | icmp6.NA_OVERRIDE
    ll = addr.lladdr(ROUTER_V4, 25790)
    raw = icmp6.neighbor_advert(icmp6.LINK_LOCAL_ROUTER, PEER, ROUTER_GLOBAL, flags, ll)
    pkt = IPv6(raw)
    assert pkt.src == "fe80::" and pkt.dst == t(PEER) and pkt.hlim == 255
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O) == (1, 1, 1)
    assert na.tgt == "2001:db8:9:10:c000:201:64be:0"
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == "be:64:c0:00:02:01"
    assert_checksum_ok(raw, ICMPv6ND_NA)


def test_neighbor_solicit_fields():
    ll = addr.lladdr(bytes((198, 51, 100, 7)), 40000)
    raw = icmp6.neighbor_solicit(PEER, icmp6.LINK_LOCAL_ROUTER, ROUTER_GLOBAL, ll)
    pkt = IPv6(raw)
    assert pkt.hlim == 255
    assert pkt[ICMPv6ND_NS].tgt == t(ROUTER_GLOBAL)
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == "40:9c:c6:33:64:07"
    assert_checksum_ok(raw, ICMPv6ND_NS)
    raw = icmp6.neighbor_solicit(PEER, icmp6.LINK_LOCAL_ROUTER, ROUTER_GLOBAL, None)
    assert not IPv6(raw).haslayer(ICMPv6NDOptSrcLLAddr)
    assert_checksum_ok(raw, ICMPv6ND_NS)


def test_echo_reply():
    request = bytes(IPv6(src=t(PEER), dst=t(PEER114), hlim=9) / ICMPv6EchoRequest(id=0x1234, seq=77, data=b"ping!"))
    raw = icmp6.echo_reply(bytearray(request), PEER114)
    pkt = IPv6(raw)
    assert pkt.src == t(PEER114) and pkt.dst == t(PEER)
    reply = pkt[ICMPv6EchoReply]
    assert reply.id == 0x1234 and reply.seq == 77 and reply.data == b"ping!"
    assert 1 <= pkt.hlim <= 255
    assert_checksum_ok(raw, ICMPv6EchoReply)


def test_time_exceeded_quotes_offending_packet():
    offending = bytes(IPv6(src=t(PEER), dst="2001:db8:9:10:c633:6408:1f90:8001", hlim=1)
                      / UDP(sport=1, dport=2) / Raw(b"data"))
    raw = icmp6.icmp6_error(ROUTER_GLOBAL, icmp6.TIME_EXCEEDED, 0, offending)
    pkt = IPv6(raw)
    assert pkt.src == t(ROUTER_GLOBAL) and pkt.dst == t(PEER)
    te = pkt[ICMPv6TimeExceeded]
    assert te.type == 3 and te.code == 0
    assert bytes(pkt[IPerror6]) == offending
    assert raw[48:] == offending
    assert_checksum_ok(raw, ICMPv6TimeExceeded)


def test_error_fits_in_1280():
    offending = bytes(IPv6(src=t(PEER), dst="2001:db8::99") / UDP(sport=1, dport=2) / Raw(b"z" * 1232))
    assert len(offending) == 1280
    raw = icmp6.icmp6_error(ROUTER_GLOBAL, icmp6.DEST_UNREACHABLE, 3, offending)
    assert len(raw) == 1280
    pkt = IPv6(raw)
    assert pkt.plen == 1240
    assert pkt[ICMPv6DestUnreach].code == 3
    assert raw[48:] == offending[:1232]
    assert_checksum_ok(raw, ICMPv6DestUnreach)


# --- parsing scapy-built packets ---------------------------------------------------------


def test_nd_options_split():
    message = bytes(8) + bytes.fromhex("0101000000000001") + bytes.fromhex("0501000000000500")
    message += bytes.fromhex("0302") + bytes(range(14))
    assert icmp6.nd_options(message, 8) == [
        (1, bytes.fromhex("000000000001")),
        (5, bytes.fromhex("000000000500")),
        (3, bytes(range(14))),
    ]
    assert icmp6.nd_options(bytes(8), 8) == []


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a zero-length option must not loop forever)."""

    def expired(signum, frame):
        raise AssertionError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "options",
    [
        bytes.fromhex("0100000000000000"),  # zero-length option
        bytes.fromhex("0101000000000001") + bytes.fromhex("0500"),  # zero-length after a good one
        bytes.fromhex("010200000000"),  # says 16 bytes, has 6
        bytes.fromhex("0101000000"),  # says 8 bytes, has 5
        bytes.fromhex("01"),  # truncated header
    ],
)
def test_nd_options_malformed(options):
    with deadline(2), pytest.raises(icmp6.NdError) as info:
        icmp6.nd_options(bytes(8) + options, 8)
    assert info.value.reason == "nd_malformed"


def c_peer_rs(**ip) -> bytes:
    return bytes(IPv6(src="::", dst="ff02::2", hlim=255, **ip) / ICMPv6ND_RS()
                 / ICMPv6NDOptSrcLLAddr(lladdr="00:00:00:00:00:01"))


def test_parse_router_solicit_accepts_c_peer_rs():
    raw = c_peer_rs()
    assert len(raw) == 56
    assert raw[48:56] == bytes.fromhex("0101000000000001")
    icmp6.parse_router_solicit(bytearray(raw))
    icmp6.parse_router_solicit(bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS()))


@pytest.mark.parametrize(
    "raw,reason",
    [
        (bytes(IPv6(src="::", dst="ff02::2", hlim=254) / ICMPv6ND_RS()), "nd_bad_hoplimit"),
        (bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS(code=1)), "nd_malformed"),
        (bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS(cksum=0x1234)), "nd_bad_checksum"),
        (bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS() / Raw(bytes.fromhex("0100000000000000"))),
         "nd_malformed"),
        (bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS() / Raw(bytes.fromhex("0101000000"))),
         "nd_malformed"),
    ],
)
def test_parse_router_solicit_rejects(raw, reason):
    with pytest.raises(icmp6.NdError) as info:
        icmp6.parse_router_solicit(bytearray(raw))
    assert info.value.reason == reason


def test_parse_neighbor_solicit():
    raw = bytes(IPv6(src=t(PEER), dst="fe80::", hlim=255) / ICMPv6ND_NS(tgt=t(ROUTER_GLOBAL))
                / ICMPv6NDOptSrcLLAddr(lladdr="40:9c:c6:33:64:07"))
    assert icmp6.parse_neighbor_solicit(bytearray(raw)) == ROUTER_GLOBAL
    multicast = bytes(IPv6(src=t(PEER), dst="fe80::", hlim=255) / ICMPv6ND_NS(tgt="ff02::1"))
    with pytest.raises(icmp6.NdError) as info:
        icmp6.parse_neighbor_solicit(bytearray(multicast))
    assert info.value.reason == "nd_malformed"
    short = bytes(IPv6(src=t(PEER), dst="fe80::", hlim=255) / ICMPv6ND_RS())  # 8 bytes: too short for an NS
    with pytest.raises(icmp6.NdError):
        icmp6.parse_neighbor_solicit(bytearray(short))


def test_parse_router_advert_from_scapy():
    raw = bytes(
        IPv6(src="fe80::", dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(chlim=0, M=0, O=0, routerlifetime=0xFFFF)
        / ICMPv6NDOptPrefixInfo(prefixlen=114, L=1, A=1, validlifetime=0, preferredlifetime=0,
                                prefix="2001:db8:9:10:c433:6407:9c40:4000")
        / ICMPv6NDOptPrefixInfo(prefixlen=114, L=1, A=1, validlifetime=0xFFFFFFFF, preferredlifetime=0xFFFFFFFF,
                                prefix=t(PEER114))
        / ICMPv6NDOptPrefixInfo(prefixlen=48, L=0, A=0, prefix="2001:db8:ffff::")
        / ICMPv6NDOptMTU(mtu=1280)
    )
    advert = icmp6.parse_router_advert(bytearray(raw))
    assert advert.router_lifetime == 0xFFFF
    assert advert.mtu == 1280
    assert [p.prefix for p in advert.autoconf] == [
        ipaddress.IPv6Address("2001:db8:9:10:c433:6407:9c40:4000").packed, PEER114]
    assert advert.autoconf[-1].valid == icmp6.INFINITE
    assert [(p.prefix[:6], p.length) for p in advert.routes] == [(bytes.fromhex("20010db8ffff"), 48)]

    not_fe80 = bytearray(raw)
    not_fe80[8:24] = PEER
    struct.pack_into("!H", not_fe80, 42, 0)
    struct.pack_into("!H", not_fe80, 42, icmp6.upper_layer_checksum(not_fe80[8:24], not_fe80[24:40], 58,
                                                                     not_fe80[40:]))
    with pytest.raises(icmp6.NdError) as info:
        icmp6.parse_router_advert(not_fe80)
    assert info.value.reason == "ra_bad_source"
