"""The LAN gateway's decisions (core.lan): plans, renumbering, RAs (checked with scapy), dnsmasq, nftables, ULA."""

from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
)

from sixbed4.core import icmp6, lan
from sixbed4.core.lan import Advertiser, Changes, Fact, LanConfig, plan
from sixbed4.core.peer import Lease

PREFIX = "2001:db8:9:10:c433:6407:9c40:8000"  # PROTOCOL.md's example peer: 198.51.100.7:40000
NEW_PREFIX = "2001:db8:9:10:c433:6407:1f90:8000"  # the same peer after its NAT chose port 8080
ULA = "fd12:3456:789a::"
MAC = bytes.fromhex("a8bbcc000001")
LINK_LOCAL = "fe80::1234"


def packed(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


LEASE = Lease(packed(PREFIX))
NEW_LEASE = Lease(packed(NEW_PREFIX))


def config(mode: str = lan.BOTH, dns: tuple[str, ...] = ()) -> LanConfig:
    return LanConfig("lan0", mode, packed(ULA), MAC, "6bed4", dns=dns)


def kinds(facts) -> set[tuple[str, str, int]]:
    return {(f.kind, f.address, f.prefixlen) for f in facts}


def rs(src_lladdr: bool = True) -> bytes:
    """An RS as a raw ICMPv6 socket delivers it (no IPv6 header)."""
    message = ICMPv6ND_RS()
    if src_lladdr:
        message = message / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:99")
    return bytes(message)


def parse_ra(message: bytes) -> ICMPv6ND_RA:
    advert = ICMPv6ND_RA(message)
    assert advert.type == 134 and advert.code == 0
    return advert


def options(advert, kind) -> list:
    """The advert's options of scapy class `kind`, in order."""
    found = []
    option = advert.payload
    while option and not isinstance(option, bytes):
        if isinstance(option, kind):
            found.append(option)
        option = option.payload
    return found


def pios(advert) -> list[tuple[str, int, int, int, int, int]]:
    """(prefix, length, L, A, valid, preferred) of each Prefix Information option, in order."""
    return [(o.prefix, o.prefixlen, o.L, o.A, o.validlifetime, o.preferredlifetime)
            for o in options(advert, ICMPv6NDOptPrefixInfo)]


def rdnss(advert) -> list[tuple[list[str], int]]:
    """(resolvers, lifetime) of each RDNSS option, in order."""
    return [(list(o.dns), o.lifetime) for o in options(advert, ICMPv6NDOptRDNSS)]


# --- plans ---------------------------------------------------------------------------------


def test_routed_plan_hands_out_lanids_and_keeps_lanid0_in_the_tunnel():
    p = plan(config(lan.ROUTED), LEASE)
    assert kinds(p.facts) == {
        ("address", "2001:db8:9:10:c433:6407:9c40:8001", 114),  # lanid 1 on the LAN: the /114 is on-link there
        ("no-anycast", PREFIX, 128),  # its Subnet-Router anycast would be lanid 0, which is the router's
        ("tunnel-route", PREFIX, 128),  # lanid 0 is the router, through the tunnel
        ("proxy", PREFIX, 128),  # and LAN hosts reach it through the gateway
    }
    assert p.dhcp_range == ("2001:db8:9:10:c433:6407:9c40:8002", "2001:db8:9:10:c433:6407:9c40:bfff")
    assert [(q.prefix, q.length, q.flags) for q in p.prefixes] == [(packed(PREFIX), 114, icmp6.PIO_ONLINK)]
    assert p.managed and p.default_router


def test_nat66_plan_advertises_the_ula_and_makes_the_rest_of_the_114_unreachable():
    p = plan(config(lan.NAT66), LEASE)
    assert kinds(p.facts) == {
        ("address", "fd12:3456:789a::1", 64),
        ("tunnel-route", PREFIX, 128),
        ("unreachable", PREFIX, 114),  # no loop through the router for lanids nobody holds
    }
    assert p.dhcp_range is None and not p.managed and p.default_router
    assert [(q.prefix, q.length, q.flags) for q in p.prefixes] == [
        (packed(ULA), 64, icmp6.PIO_ONLINK | icmp6.PIO_AUTONOMOUS)]


def test_both_plan_is_the_two_together():
    p = plan(config(lan.BOTH), LEASE)
    assert kinds(p.facts) == kinds(plan(config(lan.ROUTED), LEASE).facts) | {("address", "fd12:3456:789a::1", 64)}
    assert p.dhcp_range == plan(config(lan.ROUTED), LEASE).dhcp_range
    assert [q.length for q in p.prefixes] == [114, 64] and p.managed


@pytest.mark.parametrize("mode", lan.MODES)
def test_without_a_lease_the_gateway_is_no_default_router_and_hands_out_nothing(mode):
    p = plan(config(mode), None)
    assert not p.default_router and not p.managed and p.dhcp_range is None
    expected = {("address", "fd12:3456:789a::1", 64)} if lan.translates(mode) else set()
    assert kinds(p.facts) == expected


def test_modes_that_translate_need_a_ula_and_unknown_modes_are_refused():
    with pytest.raises(ValueError):
        LanConfig("lan0", lan.NAT66)
    with pytest.raises(ValueError):
        LanConfig("lan0", "bridged", packed(ULA))
    assert LanConfig("lan0", lan.ROUTED).ula is None


# --- renumbering ---------------------------------------------------------------------------


def test_renumbering_replaces_the_114_everywhere_and_restarts_the_server():
    old, new = plan(config(), LEASE), plan(config(), NEW_LEASE)
    changes = Changes.between(old, new)
    assert kinds(changes.remove) == {
        ("address", "2001:db8:9:10:c433:6407:9c40:8001", 114),
        ("no-anycast", PREFIX, 128),
        ("tunnel-route", PREFIX, 128),
        ("proxy", PREFIX, 128),
    }
    assert kinds(changes.add) == {
        ("address", "2001:db8:9:10:c433:6407:1f90:8001", 114),
        ("no-anycast", NEW_PREFIX, 128),
        ("tunnel-route", NEW_PREFIX, 128),
        ("proxy", NEW_PREFIX, 128),
    }
    assert changes.restart_server
    # the ULA stays: SLAAC hosts keep their addresses, only the translation's target moves
    assert not any(f.address.startswith("fd") for f in changes.remove + changes.add)
    # the address (and its prefix route) comes first when adding, goes last when removing
    assert changes.add[0].kind == "address" and changes.remove[-1].kind == "address"


def test_a_lease_that_keeps_its_114_changes_nothing():
    with_route = Lease(packed(PREFIX), ((packed("2001:db8:77::"), 48),))  # the router announced a route
    changes = Changes.between(plan(config(), LEASE), plan(config(), with_route))
    assert changes == Changes((), (), False)


def test_losing_the_lease_takes_the_114_away_and_stops_the_server():
    changes = Changes.between(plan(config(), LEASE), plan(config(), None))
    assert changes.restart_server and not changes.add
    assert {f.kind for f in changes.remove} == {"address", "no-anycast", "tunnel-route", "proxy"}


def test_facts_print_readably():
    assert str(Fact(0, "address", "fd12::1", 64)) == "address fd12::1/64"


# --- Router Advertisements -----------------------------------------------------------------


def advertiser(p=None, now: float = 0.0) -> Advertiser:
    a = Advertiser(MAC, random.Random(1))
    a.update(p if p is not None else plan(config(), LEASE), now)
    return a


def test_ra_says_managed_on_link_114_slaac_ula_mtu_and_link_layer_address():
    a = advertiser()
    ((destination, message),) = a.due(0.0)
    assert destination == icmp6.ALL_NODES
    advert = parse_ra(message)
    assert advert.M == 1 and advert.O == 0 and advert.routerlifetime == lan.ROUTER_LIFETIME
    assert advert.chlim == 0 and advert.reachabletime == 0 and advert.retranstimer == 0
    assert pios(advert) == [
        (PREFIX, 114, 1, 0, lan.PREFIX_LIFETIME, lan.PREFIX_LIFETIME),
        (ULA, 64, 1, 1, lan.PREFIX_LIFETIME, lan.PREFIX_LIFETIME),
    ]
    assert advert[ICMPv6NDOptMTU].mtu == 1280
    assert advert[ICMPv6NDOptSrcLLAddr].lladdr == "a8:bb:cc:00:00:01"
    assert message[2:4] == b"\0\0"  # the kernel fills in the checksum


def test_ra_without_a_lease_offers_the_ula_but_not_a_default_route():
    a = advertiser(plan(config(), None))
    advert = parse_ra(a.due(0.0)[0][1])
    assert advert.routerlifetime == 0 and advert.M == 0
    assert [p[:2] for p in pios(advert)] == [(ULA, 64)]


def test_no_ra_until_there_is_something_to_say():
    a = advertiser(plan(config(lan.ROUTED), None))
    a.solicited(rs(), 255, packed(LINK_LOCAL), 0.0)
    assert a.due(0.0) == [] and a.due(100.0) == []
    a.update(plan(config(lan.ROUTED), LEASE), 101.0)
    assert [d for d, _ in a.due(101.0)] == [icmp6.ALL_NODES]
    a.update(plan(config(lan.ROUTED), None), 200.0)  # the lease went: that has to be said
    advert = parse_ra(a.due(200.0)[0][1])
    assert advert.routerlifetime == 0 and pios(advert) == [(PREFIX, 114, 1, 0, 0, 0)]


def test_three_fast_ras_after_a_change_then_the_regular_interval():
    a = advertiser()
    sent = [t for t in [x * 0.2 for x in range(0, 100)] if a.due(t)]
    assert sent[:3] == pytest.approx([0.0, lan.FAST_INTERVAL, 2 * lan.FAST_INTERVAL])
    assert len(sent) == 3  # the next one waits RA_INTERVAL
    later = [t for t in range(10, 700) if a.due(float(t))]
    assert len(later) >= 1 and lan.RA_INTERVAL[0] <= later[0] - 2 * lan.FAST_INTERVAL <= lan.RA_INTERVAL[1] + 1


def test_renumbering_withdraws_the_old_114_with_zero_lifetimes_before_the_new_one():
    a = advertiser()
    a.due(0.0)
    a.update(plan(config(), NEW_LEASE), 100.0)
    ((_, message),) = a.due(100.0)
    assert pios(parse_ra(message)) == [
        (PREFIX, 114, 1, 0, 0, 0),
        (NEW_PREFIX, 114, 1, 0, lan.PREFIX_LIFETIME, lan.PREFIX_LIFETIME),
        (ULA, 64, 1, 1, lan.PREFIX_LIFETIME, lan.PREFIX_LIFETIME),
    ]
    # still withdrawn in later RAs (hosts that missed the first ones), until their lifetime is over anyway
    assert pios(parse_ra(a.advert(100.0 + lan.PREFIX_LIFETIME - 1)))[0] == (PREFIX, 114, 1, 0, 0, 0)
    assert len(pios(parse_ra(a.advert(100.0 + lan.PREFIX_LIFETIME)))) == 2


def test_a_114_that_comes_back_is_no_longer_withdrawn_and_few_are_kept():
    a = advertiser()
    a.update(plan(config(), NEW_LEASE), 1.0)
    a.update(plan(config(), LEASE), 2.0)
    assert [p[:2] + p[4:] for p in pios(parse_ra(a.advert(2.0)))] == [
        (NEW_PREFIX, 114, 0, 0), (PREFIX, 114, lan.PREFIX_LIFETIME, lan.PREFIX_LIFETIME),
        (ULA, 64, lan.PREFIX_LIFETIME, lan.PREFIX_LIFETIME)]
    for port in range(10):  # a NAT that rebinds again and again
        a.update(plan(config(), Lease(packed(f"2001:db8:9:10:c433:6407:{port + 1:x}:8000"))), 3.0 + port)
    zero = [p for p in pios(parse_ra(a.advert(20.0))) if p[4] == 0]
    assert len(zero) == lan.MAX_WITHDRAWN


def test_final_ra_ends_the_routership_and_every_prefix():
    a = advertiser()
    a.update(plan(config(), NEW_LEASE), 1.0)
    advert = parse_ra(a.final())
    assert advert.routerlifetime == 0 and advert.M == 0
    assert {(p[0], p[4], p[5]) for p in pios(advert)} == {(PREFIX, 0, 0), (NEW_PREFIX, 0, 0), (ULA, 0, 0)}


def test_rs_from_a_link_local_address_gets_a_unicast_answer_at_the_next_tick():
    a = advertiser()
    a.due(0.0)
    a.solicited(rs(), 255, packed(LINK_LOCAL), 1.0)
    a.solicited(rs(), 255, packed(LINK_LOCAL), 1.1)  # the same host again: one answer
    assert [d for d, _ in a.due(1.2)] == [packed(LINK_LOCAL)]
    assert a.counters.rs_received == 2 and a.counters.ra_sent == 2


def test_rs_from_the_unspecified_address_gets_a_multicast_answer_no_sooner_than_allowed():
    a = advertiser()
    a.due(0.0)
    a.due(lan.FAST_INTERVAL)
    a.due(2 * lan.FAST_INTERVAL)  # fast RAs done: the next is minutes away
    a.solicited(rs(src_lladdr=False), 255, bytes(16), 9.0)
    assert a.due(9.0) == []  # only 1 s after the last multicast RA
    assert [d for d, _ in a.due(11.0)] == [icmp6.ALL_NODES]


def test_an_rs_flood_from_many_hosts_is_folded_into_multicast():
    a = advertiser()
    a.due(0.0)
    for host in range(100):
        a.solicited(rs(), 255, packed(f"fe80::{host + 1:x}"), 1.0)
    out = a.due(1.0)
    assert len(out) == lan.MAX_UNICAST_PENDING  # the others wait for the multicast RA
    assert [d for d, _ in a.due(3.0)] == [icmp6.ALL_NODES]


@pytest.mark.parametrize("message, hop_limit, source, reason", [
    (rs(), 64, packed(LINK_LOCAL), "nd_bad_hoplimit"),
    (rs(), None, packed(LINK_LOCAL), "nd_bad_hoplimit"),
    (rs()[:6], 255, packed(LINK_LOCAL), "nd_malformed"),
    (bytes([133, 1]) + rs()[2:], 255, packed(LINK_LOCAL), "nd_malformed"),
    (rs() + bytes([1, 0]), 255, packed(LINK_LOCAL), "nd_malformed"),  # an option of length 0
    (rs(), 255, bytes(16), "nd_malformed"),  # RFC 4861 6.1.1: from :: without a link-layer address
    (bytes(ICMPv6ND_RA()), 255, packed(LINK_LOCAL), "nd_malformed"),
])
def test_bad_solicitations_are_counted_and_not_answered(message, hop_limit, source, reason):
    a = advertiser()
    a.due(0.0)
    a.solicited(message, hop_limit, source, 1.0)
    assert a.counters.drops[reason] == 1 and a.counters.rs_received == 0
    assert a.due(1.0) == []


# --- DNS resolvers (--lan-dns) -----------------------------------------------------------


RESOLVER = "2001:db8:53::53"
GATEWAY_ULA = "fd12:3456:789a::1"
GATEWAY_114 = "2001:db8:9:10:c433:6407:9c40:8001"  # lanid 1 of LEASE


@pytest.mark.parametrize("text, resolvers", [
    ("self", ("self",)),
    (" 2001:DB8:53:0::53 , self", (RESOLVER, "self")),
    ("fd00::53,2001:db8::1,self", ("fd00::53", "2001:db8::1", "self")),
])
def test_lan_dns_takes_addresses_and_self(text, resolvers):
    assert lan.parse_resolvers(text) == resolvers


@pytest.mark.parametrize("text, why", [
    ("", "an empty item"), ("self,", "an empty item"), ("8.8.8.8", "neither an IPv6 address nor self"),
    ("fe80::1", "not an address LAN devices can send to"), ("ff02::1", "not an address"), ("::", "not an address"),
    ("::1", "not an address"), ("::ffff:192.0.2.1", "not an address"), ("self,self", "given twice"),
    ("2001:db8::1,2001:db8::2,2001:db8::3,self", "at most 3"),
])
def test_lan_dns_refuses_what_devices_cannot_use(text, why):
    with pytest.raises(ValueError, match=why):
        lan.parse_resolvers(text)


@pytest.mark.parametrize("mode, lease, expected", [
    (lan.BOTH, LEASE, [GATEWAY_ULA, RESOLVER]),  # the stable ULA ::1, where the mode has one
    (lan.NAT66, None, [GATEWAY_ULA, RESOLVER]),
    (lan.ROUTED, LEASE, [GATEWAY_114, RESOLVER]),  # else lanid 1, which moves with the /114
    (lan.ROUTED, None, [RESOLVER]),  # no address of its own yet
])
def test_self_is_the_gateways_own_lan_address(mode, lease, expected):
    p = plan(config(mode, dns=("self", RESOLVER)), lease)
    assert [str(ipaddress.IPv6Address(r)) for r in p.resolvers] == expected
    assert "DNS " + " ".join(expected) in p.describe()
    assert plan(config(mode), lease).resolvers == ()


def test_ras_announce_the_resolvers_and_withdraw_one_that_moved():
    a = advertiser(plan(config(lan.ROUTED, dns=("self", RESOLVER)), LEASE))
    assert rdnss(parse_ra(a.due(0.0)[0][1])) == [([GATEWAY_114, RESOLVER], lan.RESOLVER_LIFETIME)]
    a.update(plan(config(lan.ROUTED, dns=("self", RESOLVER)), NEW_LEASE), 100.0)  # lanid 1 moved
    moved = str(ipaddress.IPv6Address(NEW_LEASE.address))
    assert rdnss(parse_ra(a.due(100.0)[0][1])) == [([GATEWAY_114], 0), ([moved, RESOLVER], lan.RESOLVER_LIFETIME)]
    assert rdnss(parse_ra(a.advert(100.0 + lan.RESOLVER_LIFETIME))) == [([moved, RESOLVER], lan.RESOLVER_LIFETIME)]
    assert rdnss(parse_ra(a.final())) == [([moved, RESOLVER], 0)]
    assert rdnss(parse_ra(advertiser().advert(0.0))) == []  # none given, none announced


def test_new_resolvers_restart_the_dhcpv6_server_that_hands_them_out():
    old = plan(config(lan.ROUTED, dns=("self",)), LEASE)
    assert Changes.between(plan(config(lan.ROUTED), LEASE), old).restart_server
    assert not Changes.between(old, plan(config(lan.ROUTED, dns=("self",)), LEASE)).restart_server
    argv = lan.dnsmasq_argv("dnsmasq", "lan0", old.dhcp_range, "f", resolvers=old.resolvers + (packed(RESOLVER),))
    assert f"--dhcp-option=option6:dns-server,[{GATEWAY_114}],[{RESOLVER}]" in argv
    assert not [a for a in lan.dnsmasq_argv("dnsmasq", "lan0", old.dhcp_range, "f") if "dns-server" in a]


# --- dnsmasq and nftables -----------------------------------------------------------------


def test_dnsmasq_serves_dhcpv6_only_for_the_range():
    argv = lan.dnsmasq_argv("/usr/sbin/dnsmasq", "lan0", plan(config(), LEASE).dhcp_range, "/state/lan0.leases",
                            user="nobody")
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert "--port=0" in argv  # no DNS
    assert "--interface=lan0" in argv and "--bind-interfaces" in argv
    assert "--dhcp-range=2001:db8:9:10:c433:6407:9c40:8002,2001:db8:9:10:c433:6407:9c40:bfff,114,120" in argv
    assert "--dhcp-leasefile=/state/lan0.leases" in argv  # kept across restarts: see renumbering
    assert "--pid-file" in argv and "--conf-file=/dev/null" in argv
    assert "--keep-in-foreground" in argv and "--log-facility=-" in argv and "--user=nobody" in argv
    assert not [a for a in argv if "enable-ra" in a]  # the RAs are ours
    assert "--log-dhcp" in lan.dnsmasq_argv("dnsmasq", "lan0", ("a", "b"), "f", verbose=True)


def test_nft_masquerades_the_ula_leaving_through_the_tunnel_in_its_own_table():
    text = lan.nft_replace(config(lan.NAT66))
    assert text.startswith("table ip6 sixbed4_lan_lan0\ndelete table ip6 sixbed4_lan_lan0\n")
    assert "type nat hook postrouting priority srcnat" in text
    assert 'oifname "6bed4" ip6 saddr fd12:3456:789a::/64 masquerade' in text
    assert "forward" not in text  # nothing on the LAN has a global address to protect


@pytest.mark.parametrize("mode", [lan.ROUTED, lan.BOTH])
def test_nft_lets_into_a_closed_lan_only_replies_and_the_icmpv6_that_must_pass(mode):
    text = lan.nft_ruleset(config(mode))
    inbound = 'iifname "6bed4" oifname "lan0"'
    assert "type filter hook forward priority filter; policy accept;" in text
    rules = [line.strip() for line in text.splitlines() if line.strip().startswith(inbound)]
    assert rules == [f"{inbound} ct state established,related accept",
                     f"{inbound} icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, "
                     "parameter-problem, echo-request } accept",
                     f'{inbound} counter drop comment "unsolicited, --lan-inbound closed"']
    assert ("masquerade" in text) == (mode == lan.BOTH)
    assert lan.uses_nft(mode, lan.CLOSED)


def test_an_open_routed_lan_needs_no_nft_table():
    assert not lan.uses_nft(lan.ROUTED, lan.OPEN) and lan.uses_nft(lan.BOTH, lan.OPEN)
    assert "forward" not in lan.nft_ruleset(LanConfig("lan0", lan.BOTH, packed(ULA), MAC, "6bed4", lan.OPEN))
    with pytest.raises(ValueError, match="inbound"):
        LanConfig("lan0", lan.ROUTED, inbound="ajar")
    assert lan.nft_delete(config()) == "delete table ip6 sixbed4_lan_lan0\n"
    assert lan.nft_table("br-lan.10") == "sixbed4_lan_br_lan_10"


@pytest.mark.parametrize("name, ok", [("6bed4", True), ("br-lan.10", True), ('a"b', False), ("a b", False),
                                      ("x" * 16, False)])
def test_interface_names_that_nft_cannot_take_are_refused(name, ok):
    assert (lan.nft_name_problem(name) is None) == ok


# --- the ULA prefix ------------------------------------------------------------------------


def test_ula_follows_rfc4193_and_is_a_pure_function_of_time_and_eui64():
    eui = lan.eui64(MAC)
    assert eui == bytes.fromhex("aabbccfffe000001")  # U/L bit flipped, ff:fe inserted
    first = lan.ula_prefix(lan.ntp_timestamp(1_700_000_000.25), eui)
    assert first == lan.ula_prefix(lan.ntp_timestamp(1_700_000_000.25), eui)
    assert first != lan.ula_prefix(lan.ntp_timestamp(1_700_000_000.5), eui)
    assert first[0] == 0xFD and first[6:] == bytes(10)  # fd00::/8, subnet 0, a /64
    assert ipaddress.IPv6Network((first, 64)).subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert lan.ntp_timestamp(0.5) == (lan.NTP_EPOCH_OFFSET << 32) | (1 << 31)


def test_kept_ula_round_trips_and_bad_files_are_explained():
    text = lan.ula_file_text(packed(ULA), "lan0")
    assert text.startswith("#") and lan.parse_ula(text) == packed(ULA)
    assert lan.parse_ula("fd00:1:2:3::/64\n") == packed("fd00:1:2:3::")
    for bad, words in [("", "no prefix"), ("# only a comment\n", "no prefix"), ("fd00::/48", "not a ULA /64"),
                       ("2001:db8::/64", "not a ULA /64"), ("fd00::1/64", "not an IPv6 prefix"),
                       ("hello", "not an IPv6 prefix")]:
        with pytest.raises(lan.UlaError, match=words):
            lan.parse_ula(bad)
