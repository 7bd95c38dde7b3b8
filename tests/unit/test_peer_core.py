"""The peer core against RAs built by scapy (ours and the C router's format), and its timers."""

from __future__ import annotations

import ipaddress
import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    IPv6,
)

from sixbed4.core import addr, icmp6
from sixbed4.core.peer import (
    Configure,
    Datagram,
    Lease,
    Notice,
    PeerConfig,
    PeerCore,
    Unconfigure,
)
from sixbed4.core.router import DROP, SEND, TUN, RouterConfig, RouterCore
from sixbed4.core.stats import DROP_REASONS

ROUTER = ("192.0.2.1", 25790)
PREFIX = "2001:db8:9:10:c433:6407:9c40:8000"  # PROTOCOL.md's example peer: 198.51.100.7:40000
ADDRESS = "2001:db8:9:10:c433:6407:9c40:8001"
NEW_PREFIX = "2001:db8:9:10:c433:6407:1f90:8000"  # the same peer after the NAT chose port 8080
NEW_ADDRESS = "2001:db8:9:10:c433:6407:1f90:8001"


def packed(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def pio(prefix: str = PREFIX, length: int = 114, L: int = 1, A: int = 1, lifetime: int = 0xFFFFFFFF):
    return ICMPv6NDOptPrefixInfo(prefixlen=length, L=L, A=A, validlifetime=lifetime, preferredlifetime=lifetime,
                                 prefix=prefix)


def ra(*pios, src: str = "fe80::", dst: str = "ff02::1", hlim: int = 255, **fields) -> bytearray:
    """An RA as our router sends it (timers 0), or with other `fields` (e.g. the C router's)."""
    options = pios or (pio(),)
    packet = IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_RA(routerlifetime=0xFFFF, **fields)
    for option in options:
        packet = packet / option
    return bytearray(bytes(packet))


def c_router_ra(prefix: str = PREFIX, dst: str = "ff02::1") -> bytearray:
    """The C router's RA: flags byte 0x18, reachable and retrans 0xffffffff (PROTOCOL.md section 3)."""
    wire = ra(pio(prefix), ICMPv6NDOptMTU(mtu=1280), dst=dst, prf=3, reachabletime=0xFFFFFFFF,
              retranstimer=0xFFFFFFFF)
    assert wire[45] == 0x18 and wire[48:56] == b"\xff" * 8
    assert bytes(wire[56:60]) == bytes.fromhex("030472c0")
    return wire


def make(**config) -> PeerCore:
    return PeerCore(PeerConfig(*ROUTER, **config))


def events(core: PeerCore, now: float, kind=None) -> list:
    found = core.on_tick(now)
    return [e for e in found if kind is None or isinstance(e, kind)]


def configured(core: PeerCore | None = None, now: float = 0.0) -> PeerCore:
    core = core or make()
    core.on_tick(now)  # the first RS
    assert core.from_udp(ra(), ROUTER, now) == (DROP, None, None)
    (change,) = events(core, now, Configure)
    assert change.lease.address == packed(ADDRESS)
    return core


# --- Router Advertisements --------------------------------------------------------


def test_good_ra_configures_address_and_offers():
    core = make()
    assert core.lease is None
    core.from_udp(ra(pio(), pio("2001:db8:77::", 48, L=0, A=0)), ROUTER, 1.0)
    (change,) = events(core, 1.0, Configure)
    lease = change.lease
    assert change.old is None
    assert lease.prefix114 == packed(PREFIX)
    assert lease.address == packed(ADDRESS)
    assert lease.router_address == packed(PREFIX)
    assert lease.prefix64 == packed("2001:db8:9:10::")
    assert lease.offer_range == (packed("2001:db8:9:10:c433:6407:9c40:8002"), packed("2001:db8:9:10:c433:6407:9c40:bfff"))
    assert lease.routes == ((packed("2001:db8:77::"), 48),)
    assert core.ra_received == 1
    assert core.lease == lease


def test_ra_from_our_router_core_is_understood():
    """The RA our own router builds (checked by scapy in test_icmp6) configures the encoded address."""
    router = RouterCore(RouterConfig(prefix=packed("2001:db8:9:10::")[:8], ipv4=bytes((192, 0, 2, 1))))
    rs = bytearray(icmp6.router_solicit())
    kind, reply, origin = router.from_udp(rs, ("198.51.100.7", 40000), 0.0)
    core = make()
    core.from_udp(bytearray(reply), ROUTER, 0.0)
    (change,) = events(core, 0.0, Configure)
    assert change.lease.address == packed(ADDRESS)


def test_c_router_ra_format_is_accepted():
    core = make()
    core.from_udp(c_router_ra(dst="fe80::1"), ROUTER, 0.0)
    (change,) = events(core, 0.0, Configure)
    assert change.lease.address == packed(ADDRESS)


def test_same_ra_again_changes_nothing():
    core = configured()
    core.from_udp(ra(), ROUTER, 5.0)
    assert events(core, 5.0, Configure) == []
    assert core.ra_received == 2


def test_corrective_ra_replaces_the_lease():
    """Old /114 with zero lifetimes first, the new one after it, sent to the old global address."""
    core = configured()
    old = core.lease
    corrective = ra(pio(PREFIX, lifetime=0), pio(NEW_PREFIX), dst=ADDRESS)
    core.from_udp(corrective, ROUTER, 10.0)
    (change,) = events(core, 10.0, Configure)
    assert change.old == old
    assert change.lease.address == packed(NEW_ADDRESS)
    assert core.readdressed == 1
    # traffic for the new address now goes in, for the old one no longer
    assert core.from_udp(echo(NEW_ADDRESS), ROUTER, 10.0) == (TUN, None, None)
    assert core.from_udp(echo(ADDRESS), ROUTER, 10.0) == (DROP, None, None)
    assert core.counters.drops["peer_not_for_us"] == 1


def test_withdrawal_without_new_prefix_unconfigures_and_solicits_at_once():
    core = configured()
    old = core.lease
    core.from_udp(ra(pio(PREFIX, lifetime=0)), ROUTER, 12.0)
    found = events(core, 12.0)
    assert Unconfigure(old) in found
    assert any(isinstance(e, Datagram) and e.kind == "rs" for e in found)
    assert core.lease is None


def test_route_change_keeps_address():
    core = configured()
    core.from_udp(ra(pio(), pio("2001:db8:77::", 48, L=0, A=0)), ROUTER, 3.0)
    (change,) = events(core, 3.0, Configure)
    assert change.old.prefix114 == change.lease.prefix114 and change.lease.routes
    assert core.readdressed == 0


def test_routes_shorter_than_16_multicast_or_link_local_are_not_installed_and_logged_once_per_reason():
    """Only -r makes the tunnel the default route: an RA's ::/0 (or any route the router's -R could not
    announce) is left out of the lease, as are routes that would capture multicast or link-local traffic."""
    core = configured()
    refused = [("::", 0), ("2000::", 3), ("2001::", 15), ("ff0e::", 16), ("fe80::", 64), ("febf::", 16)]
    wire = ra(pio(), *(pio(prefix, length, L=0, A=0) for prefix, length in refused),
              pio("2001:db8:77::", 48, L=0, A=0), pio("2001:db8:78::1", 128, L=0, A=0), pio("2001::", 16, L=0, A=0))
    for now in (1.0, 2.0):
        core.from_udp(bytearray(wire), ROUTER, now)
    found = events(core, 2.0)
    (change,) = [e for e in found if isinstance(e, Configure)]
    assert change.lease.routes == ((packed("2001::"), 16), (packed("2001:db8:77::"), 48),
                                   (packed("2001:db8:78::1"), 128))
    notices = [e.message for e in found if isinstance(e, Notice)]
    assert len(notices) == 3 and all(e.level == logging.WARNING for e in found if isinstance(e, Notice))
    assert "route ::/0" in notices[0] and "only -r" in notices[0]
    assert "ff0e::/16" in notices[1] and "multicast" in notices[1]
    assert "fe80::/64" in notices[2] and "link-local" in notices[2]
    core.from_udp(ra(pio(), pio("::", 0, L=0, A=0)), ROUTER, 3.0)  # once per reason, not per RA
    assert not events(core, 3.0, Notice)
    assert core.ra_received == 4  # the rest of each RA is used (the first configured the peer)


@pytest.mark.parametrize(
    "wire, reason",
    [
        (lambda: ra(hlim=64), "nd_bad_hoplimit"),
        (lambda: ra(src="fe80::1"), "ra_bad_source"),
        (lambda: ra(src=ADDRESS), "ra_bad_source"),
        (lambda: ra(pio(length=64)), "ra_bad_prefix"),
        (lambda: ra(pio(), pio("2001:db8:9:10::", 64)), "ra_bad_prefix"),
        (lambda: ra(pio("fe80::", 114)), "ra_bad_prefix"),
        (lambda: ra(pio("2001:db8:9:10:c433:6407:9c40:8001")), "ra_bad_prefix"),  # lanid bits set
        (lambda: ra(pio(L=0, A=0)), "ra_no_prefix"),
    ],
)
def test_bad_ra_is_ignored_and_logged_once(wire, reason):
    core = make()
    for now in (1.0, 2.0, 3.0):
        assert core.from_udp(wire(), ROUTER, now) == (DROP, None, None)
    found = events(core, 3.0)
    assert not [e for e in found if isinstance(e, Configure)]
    notices = [e for e in found if isinstance(e, Notice)]
    assert len(notices) == 1 and notices[0].level == logging.WARNING
    assert core.counters.drops[reason] == 3
    assert core.lease is None and core.ra_received == 0


def test_ra_with_bad_checksum_is_ignored():
    wire = ra()
    wire[42] ^= 0x55
    core = make()
    core.from_udp(wire, ROUTER, 0.0)
    assert core.counters.drops["nd_bad_checksum"] == 1
    assert not events(core, 0.0, Configure)


def test_ra_not_from_router_endpoint_is_ignored():
    core = make()
    for origin in (("192.0.2.1", 25791), ("192.0.2.2", 25790), ("198.51.100.7", 40000)):
        assert core.from_udp(ra(), origin, 0.0) == (DROP, None, None)
    assert core.counters.drops["not_from_router"] == 3
    assert core.lease is None


def test_other_nd_from_router_is_dropped():
    core = configured()
    wire = bytearray(bytes(IPv6(src="fe80::", dst=ADDRESS, hlim=255) / ICMPv6ND_NS(tgt=ADDRESS)))
    assert core.from_udp(wire, ROUTER, 1.0) == (DROP, None, None)
    assert core.counters.drops["peer_nd_unexpected"] == 1


# --- data from the router -------------------------------------------------------------


def echo(dst: str, src: str = "2001:db8:ff::2", hlim: int = 60) -> bytearray:
    return bytearray(bytes(IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6EchoRequest(seq=1, data=b"x" * 20)))


def test_data_from_router_goes_to_tun_unchanged():
    core = configured()
    packet = echo(ADDRESS)
    before = bytes(packet)
    assert core.from_udp(packet, ROUTER, 1.0) == (TUN, None, None)
    assert bytes(packet) == before  # hop limit not decremented
    # any lanid of our /114 (the range handed on) comes in too
    assert core.from_udp(echo("2001:db8:9:10:c433:6407:9c40:8123"), ROUTER, 1.0) == (TUN, None, None)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "too_short"),
        (b"\x60" + bytes(30), "too_short"),
        (b"\x45" + bytes(59), "not_ipv6"),
        (bytes(echo(ADDRESS)) + b"junk", "bad_length"),
        (bytes(IPv6(dst=ADDRESS, src="2001:db8:ff::2") / UDP() / (b"x" * 1300)), "too_long"),
        (bytes(echo("2001:db8:9:10:c433:6407:9c41:8001")), "peer_not_for_us"),  # another port
        (bytes(echo("2001:db8:9:10:c433:6407:9c40:4001")), "peer_not_for_us"),  # other top bits of byte 14
        (bytes(echo("2001:db8:ff::2")), "peer_not_for_us"),
    ],
)
def test_bad_data_from_router_is_dropped(data, reason):
    core = configured()
    assert core.from_udp(bytearray(data), ROUTER, 1.0) == (DROP, None, None)
    assert core.counters.drops[reason] == 1


def test_data_before_an_address_is_dropped():
    core = make()
    assert core.from_udp(echo(ADDRESS), ROUTER, 0.0) == (DROP, None, None)
    assert core.counters.drops["peer_no_address"] == 1
    assert core.from_udp(echo(ADDRESS), ("203.0.113.9", 4000), 0.0) == (DROP, None, None)
    assert core.counters.drops["not_from_router"] == 1


# --- from the TUN device ----------------------------------------------------------------


def test_tun_packet_goes_to_router_without_hop_limit_change():
    core = configured()
    packet = echo("2001:db8:ff::2", src=ADDRESS, hlim=1)
    before = bytes(packet)
    assert core.from_tun(packet) == (SEND, None, ROUTER)
    assert bytes(packet) == before
    assert core.counters.to_udp == 1


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x45" + bytes(59), "tun_not_ipv6"),
        (b"\x60" + bytes(10), "tun_not_ipv6"),
        (bytes(IPv6(src=ADDRESS, dst="2001:db8:ff::2") / UDP() / (b"x" * 1300)), "tun_too_long"),
        (bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS()), "tun_nd"),
        (bytes(IPv6(src=ADDRESS, dst="ff02::16", hlim=1) / ICMPv6MLReport2()), "tun_multicast"),
        (bytes(IPv6(src=ADDRESS, dst="ff0e::1") / UDP()), "tun_multicast"),
        (bytes(echo("2001:db8:ff::2", src="2001:db8:9:10:c433:6407:9c41:8001")), "tun_bad_source"),
        (bytes(echo("2001:db8:ff::2", src="2001:db8:9:10:c433:6407:9c40:4001")), "tun_bad_source"),
        (bytes(echo("2001:db8:ff::2", src="fe80::1")), "tun_bad_source"),
    ],
)
def test_bad_tun_packets_are_dropped(data, reason):
    core = configured()
    assert core.from_tun(bytearray(data)) == (DROP, None, None)
    assert core.counters.drops[reason] == 1


def test_tun_packet_before_address_is_dropped():
    core = make()
    assert core.from_tun(echo("2001:db8:ff::2", src=ADDRESS)) == (DROP, None, None)
    assert core.counters.drops["tun_bad_source"] == 1


# --- timers -----------------------------------------------------------------------------


def rs_times(core: PeerCore, until: float, step: float = 0.25) -> list[float]:
    times = []
    now = 0.0
    while now <= until:
        for event in core.on_tick(now):
            if isinstance(event, Datagram) and event.kind == "rs":
                assert IPv6(event.data)[ICMPv6ND_RS]  # a real RS, checked by scapy
                assert event.ttl is None
                times.append(now)
        now += step
    return times


def test_rs_backoff_until_an_ra():
    core = make()
    assert rs_times(core, 90) == [0, 1, 4, 11, 26, 56, 86]


def test_rs_is_well_formed():
    (rs,) = events(make(), 0.0, Datagram)
    packet = IPv6(rs.data)
    assert packet.src == "::" and packet.dst == "ff02::2" and packet.hlim == 255
    wire = packet.copy()
    del wire[ICMPv6ND_RS].cksum
    assert IPv6(bytes(wire))[ICMPv6ND_RS].cksum == packet[ICMPv6ND_RS].cksum


def test_soliciting_logs_progress():
    core = make()
    notices = []
    for now in (0, 1, 4, 11):
        notices += events(core, now, Notice)
    assert len(notices) == 3 and "no RA from 192.0.2.1:25790" in notices[0].message


def test_keepalives_and_resolicitation_after_ra():
    core = configured(make(keepalive=5.0, keepalive_ttl=3), now=0.0)
    sent = []
    now = 0.0
    while now <= 20.0:
        sent += [(now, e.kind, e.data, e.ttl) for e in events(core, now, Datagram)]
        core.from_udp(ra(), ROUTER, now)  # the router answers every RS
        now += 0.5
    keepalives = [(t, d, ttl) for t, kind, d, ttl in sent if kind == "keepalive"]
    assert keepalives == [(5.0, b"", 3), (10.0, b"", 3), (15.0, b"", 3), (20.0, b"", 3)]
    assert [t for t, kind, _, _ in sent if kind == "rs"] == [5.0, 10.0, 15.0, 20.0]


def test_silent_router_is_reported_once_and_again_when_back():
    core = configured(make(keepalive=5.0))
    notices = []
    now = 0.0
    while now < 60:
        notices += events(core, now, Notice)
        now += 1.0
    assert len(notices) == 1 and "has not answered" in notices[0].message
    assert core.lease is not None  # the address stays
    core.from_udp(ra(), ROUTER, 60.0)
    (back,) = events(core, 60.0, Notice)
    assert "answers again" in back.message


# --- robustness ---------------------------------------------------------------------------


def test_no_exception_for_any_bytes():
    rng = random.Random(6)
    core = configured()
    good = [bytes(ra(pio(), pio("2001:db8:77::", 48, L=0, A=0))), bytes(c_router_ra()), bytes(echo(ADDRESS)),
            bytes(echo("2001:db8:ff::2", src=ADDRESS))]
    for i in range(20000):
        base = bytearray(rng.choice(good))
        if i % 3 == 0:
            base = bytearray(rng.randbytes(rng.randrange(0, 200)))
            if base:
                base[0] = 0x60 | (base[0] & 0x0F)
        else:
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            if i % 2:
                del base[rng.randrange(len(base)):]
        packet = base
        kind, _, _ = core.from_udp(bytearray(packet), ROUTER, float(i))
        assert kind in (DROP, TUN)
        kind, _, _ = core.from_tun(bytearray(packet))
        assert kind in (DROP, SEND)
        core.on_tick(float(i))
    assert set(core.counters.drops) == set(DROP_REASONS)


def _edited(packet: bytes, edits, cut: int) -> bytearray:
    out = bytearray(packet)
    for position, value in edits:
        out[position % len(out)] = value
    return out[: len(out) - cut] if cut else out


_SEEDS = [bytes(ra(pio(), pio("2001:db8:77::", 48, L=0, A=0))), bytes(c_router_ra()), bytes(echo(ADDRESS)),
          bytes(echo("2001:db8:ff::2", src=ADDRESS)), bytes(ra(pio(NEW_PREFIX), dst=ADDRESS))]
_fuzz_inputs = st.one_of(
    st.binary(max_size=1400).map(bytearray),
    st.tuples(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
              st.integers(0, 60)).map(lambda t: _edited(*t)),
)
_fuzz_origins = st.sampled_from([ROUTER, ROUTER, ("192.0.2.1", 1), ("198.51.100.7", 40000), ("0.0.0.0", 0)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_fuzz_inputs, _fuzz_origins, st.sampled_from(["udp", "tun", "tick"])), max_size=10))
def test_fuzz_never_raises_and_the_peer_keeps_working(items):
    core = configured()
    now = 1.0
    for packet, origin, where in items:
        now += 0.5
        if where == "udp":
            assert core.from_udp(packet, origin, now)[0] in (DROP, TUN)
        elif where == "tun":
            assert core.from_tun(packet)[0] in (DROP, SEND)
        else:
            core.on_tick(now)
    assert set(core.counters.drops) == set(DROP_REASONS)
    # the router's next RA puts the peer back on its /114, and traffic flows both ways
    core.from_udp(ra(), ROUTER, now + 1)
    assert core.lease is not None and core.lease.address == packed(ADDRESS)
    assert core.from_udp(echo(ADDRESS), ROUTER, now + 1) == (TUN, None, None)
    assert core.from_tun(echo("2001:db8:ff::2", src=ADDRESS)) == (SEND, None, ROUTER)


def test_lease_describe():
    lease = Lease(packed(PREFIX), ((packed("2001:db8:77::"), 48),))
    assert lease.describe() == f"{ADDRESS} in {PREFIX}/114, routes 2001:db8:77::/48"
    assert addr.decode(lease.address).port == 40000
