"""The router's rules against forged packets (issue 11; PROTOCOL.md section 4, "Never"; RFC 6324).

Each test builds the attacker's packet with scapy and feeds it to RouterCore.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptPrefixInfo, IPv6

from sixbed4.core import addr
from sixbed4.core.router import DROP, MAX_ROUTES, REPLY, SEND, TUN, RouterConfig, RouterCore

from .test_router_core import A, A_ADDR, NOW, PREFIX, ROUTER_V4, buf, make_core, only_drop, peer

SECOND_V4 = "10.0.0.5"  # another address of the router's host (reachable with --bind 0.0.0.0)


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def router(prefix: str, ipv4: str) -> RouterCore:
    return RouterCore(RouterConfig(prefix=ipaddress.IPv6Address(prefix).packed[:8], ipv4=v4(ipv4)))


def address(core: RouterCore, ipv4: str, port: int, lanid: int = 1) -> str:
    return addr.format_address(addr.encode(core.prefix, v4(ipv4), port, lanid))


# --- RFC 6324: two routers must not bounce one packet between them -------------------------


def ferry(routers: dict[str, RouterCore], first: str, packet: bytearray, limit: int = 300) -> int:
    """Deliver `packet` natively to router `first` and carry every datagram a router sends on.

    `routers` maps each router's IPv4 to its core.  A datagram for another router's
    IPv4:25790 arrives there by UDP from the sender's IPv4:25790; a TUN verdict means
    the kernel forwards the packet natively to the router whose /64 holds the
    destination.  Returns how many datagrams crossed between the routers.
    """
    by_prefix = {core.prefix: name for name, core in routers.items()}
    datagrams = 0
    name, action = first, routers[first].from_tun(packet)
    while datagrams < limit:
        kind, _, target = action
        if kind == SEND and target[0] in routers:
            datagrams += 1
            sender, name = name, target[0]
            action = routers[name].from_udp(packet, (sender, addr.PORT_6BED4), NOW)
        elif kind == TUN and bytes(packet[24:32]) in by_prefix:
            name = by_prefix[bytes(packet[24:32])]
            action = routers[name].from_tun(packet)
        else:
            return datagrams
    return datagrams


@pytest.mark.parametrize("start", ["192.0.2.1", "198.51.100.1"])
def test_forged_packet_between_two_routers_dies_at_the_first(start):
    a = router("2001:db8:a::", "192.0.2.1")
    b = router("2001:db8:b::", "198.51.100.1")
    routers = {"192.0.2.1": a, "198.51.100.1": b}
    # source in B's /64 encoding A:25790, destination in A's /64 encoding B:25790 (and the mirror image)
    first, other = (a, b) if start == "192.0.2.1" else (b, a)
    packet = buf(IPv6(src=address(other, addr.format_ipv4(first.config.ipv4), 25790),
                      dst=address(first, addr.format_ipv4(other.config.ipv4), 25790), hlim=255) / UDP())
    assert ferry(routers, start, packet) == 0
    assert first.counters.drops["tun_forbidden"] == 1


def test_a_router_is_never_a_peer_as_origin():
    """A datagram from some router's service port is not from a peer: no relay, no TUN, no RA."""
    core = make_core()
    other_router = ("198.51.100.1", 25790)
    forged = buf(IPv6(src=peer(other_router), dst="2001:db8:aaaa::1") / UDP())
    assert core.from_udp(forged, other_router, NOW) == (DROP, None, None)
    rs = buf(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
    assert core.from_udp(rs, other_router, NOW) == (DROP, None, None)
    assert core.counters.drops["bad_endpoint"] == 2


def test_relay_to_a_routers_service_port_dropped():
    core = make_core()
    raw = buf(IPv6(src=A_ADDR, dst=peer(("198.51.100.1", 25790)), hlim=64) / UDP())
    assert core.from_udp(raw, A, NOW) == (DROP, None, None)
    only_drop(core, "relay_forbidden")


def test_a_router_on_another_port_treats_both_ports_as_routers():
    core = make_core(port=4000)
    for port in (4000, 25790):
        raw = buf(IPv6(src="2001:db8::1", dst=peer(("198.51.100.1", port))) / UDP())
        assert core.from_tun(raw) == (DROP, None, None)
    assert core.counters.drops["tun_forbidden"] == 2


# --- the router's own host ---------------------------------------------------------------------


def test_never_sends_to_another_address_of_its_host():
    """--bind 0.0.0.0 with a second address: a forged packet must not make the router talk to itself."""
    core = make_core()
    core.set_host_ipv4s([v4(SECOND_V4)])
    for source in (peer((SECOND_V4, 25790), 2), "2001:db8::1"):
        forged = buf(IPv6(src=source, dst=peer((SECOND_V4, 25790))) / UDP())
        assert core.from_tun(forged) == (DROP, None, None)
    assert core.counters.drops["tun_spoofed_source"] == 1
    for port in (5353, 40000):  # any service of the host
        native = buf(IPv6(src="2001:db8::1", dst=peer((SECOND_V4, port))) / UDP(dport=5353))
        assert core.from_tun(native) == (DROP, None, None)
        relay = buf(IPv6(src=A_ADDR, dst=peer((SECOND_V4, port)), hlim=64) / UDP(dport=5353))
        assert core.from_udp(relay, A, NOW) == (DROP, None, None)
    assert core.counters.drops["tun_forbidden"] == 1
    assert core.counters.drops["tun_to_self"] == 2
    assert core.counters.drops["relay_forbidden"] == 2
    assert core.counters.to_udp == core.counters.relayed == 0


def test_native_packet_to_the_routers_ipv4_at_another_port_is_not_delivered():
    """The 6bed4 address of ROUTER_V4:5353 must not become a datagram from the router to its own port 5353."""
    core = make_core()
    raw = buf(IPv6(src="2001:db8::1", dst=peer((ROUTER_V4, 5353))) / UDP(dport=5353))
    assert core.from_tun(raw) == (DROP, None, None)
    only_drop(core, "tun_to_self")


def test_host_addresses_follow_the_host():
    core = make_core()
    native = bytes(buf(IPv6(src="2001:db8::1", dst=peer((SECOND_V4, 5353))) / UDP()))
    assert core.from_tun(bytearray(native)) == (SEND, None, (SECOND_V4, 5353))  # not (yet) ours: a peer
    core.set_host_ipv4s([v4(SECOND_V4)])
    assert core.from_tun(bytearray(native)) == (DROP, None, None)  # the remembered verdict is gone
    core.set_host_ipv4s([])
    assert core.from_tun(bytearray(native)) == (SEND, None, (SECOND_V4, 5353))
    assert v4(ROUTER_V4) in core.host_ipv4s  # -l is always the router's


def test_datagrams_from_the_routers_host_are_not_from_a_peer():
    core = make_core()
    core.set_host_ipv4s([v4(SECOND_V4)])
    origin = (SECOND_V4, 40000)
    raw = buf(IPv6(src=peer(origin), dst="2001:db8:aaaa::1") / UDP())
    assert core.from_udp(raw, origin, NOW) == (DROP, None, None)
    only_drop(core, "bad_endpoint")


# --- native packets that claim to come from our peers ----------------------------------------


def test_native_source_in_our_64_with_a_port_is_forged():
    core = make_core()
    for source in (A_ADDR, peer(("203.0.113.9", 1), 0x3FFF)):
        raw = buf(IPv6(src=source, dst=A_ADDR) / UDP())
        assert core.from_tun(raw) == (DROP, None, None)
    assert core.counters.drops["tun_spoofed_source"] == 2
    # the host's own (port-0) addresses and the router's address do send to peers
    for source in ("2001:db8:9:10::11", addr.format_address(core.address)):
        assert core.from_tun(buf(IPv6(src=source, dst=A_ADDR) / UDP()))[0] == SEND


# --- -R: what fits in one Router Advertisement ----------------------------------------------


def routes(n: int) -> tuple[tuple[bytes, int], ...]:
    return tuple((ipaddress.IPv6Address(f"2001:db8:{i + 1:x}::").packed[:4], 32) for i in range(n))


def test_too_many_routes_refused_naming_the_limit():
    with pytest.raises(addr.AddressError, match=f"at most {MAX_ROUTES}"):
        RouterConfig(prefix=PREFIX, ipv4=v4(ROUTER_V4), routes=routes(MAX_ROUTES + 1))


def test_the_most_routes_still_fit_in_ras_and_corrective_ras():
    core = make_core(routes=routes(MAX_ROUTES))
    rs = buf(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
    kind, data, _ = core.from_udp(rs, A, NOW)
    assert kind == REPLY and len(data) <= 1280
    assert len(IPv6(data)[ICMPv6ND_RA].getlayer(ICMPv6NDOptPrefixInfo, MAX_ROUTES + 1)) > 0
    rebound = (A[0], A[1] + 1)
    kind, data, _ = core.from_udp(buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP()), rebound, NOW)
    assert kind == REPLY and len(data) <= 1280
    assert core.config.ra_sizes == (len(core.from_udp(rs, A, NOW + 10)[1]), len(data))
