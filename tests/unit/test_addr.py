"""The 6bed4 address codec and prefix completion, against PROTOCOL.md sections 1 and 2."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sixbed4.core import addr

ROUTER_V4 = ipaddress.IPv4Address("192.0.2.1").packed
PEER_V4 = ipaddress.IPv4Address("198.51.100.7").packed
PREFIX = ipaddress.IPv6Address("2001:db8:9:10::").packed[:8]


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def text(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


ipv4s = st.integers(0, 0xFFFFFFFF).map(lambda n: n.to_bytes(4, "big"))
ports = st.integers(1, 65535)
lanids = st.integers(0, 0x3FFF)
prefixes = st.binary(min_size=8, max_size=8)


# --- the worked example of PROTOCOL.md section 1 ------------------------------------


def test_worked_example_peer_address():
    assert text(addr.encode(PREFIX, PEER_V4, 40000, 1)) == "2001:db8:9:10:c433:6407:9c40:8001"


def test_worked_example_decode():
    parts = addr.decode(v6("2001:db8:9:10:c433:6407:9c40:8001"))
    assert parts.prefix == PREFIX
    assert parts.ipv4 == PEER_V4
    assert parts.ipv4_text == "198.51.100.7"
    assert parts.port == 40000
    assert parts.lanid == 1
    assert addr.ipv4_of(v6("2001:db8:9:10:c433:6407:9c40:8001")) == PEER_V4
    assert addr.port_of(v6("2001:db8:9:10:c433:6407:9c40:8001")) == 40000


def test_worked_example_prefix114():
    peer = v6("2001:db8:9:10:c433:6407:9c40:8001")
    assert text(addr.prefix114(peer)) == "2001:db8:9:10:c433:6407:9c40:8000"
    net = ipaddress.IPv6Network("2001:db8:9:10:c433:6407:9c40:8000/114")
    assert ipaddress.IPv6Address(peer) in net


def test_worked_example_hand_on_range():
    first = addr.encode(PREFIX, PEER_V4, 40000, 2)
    last = addr.encode(PREFIX, PEER_V4, 40000, addr.LANID_MAX)
    assert text(first) == "2001:db8:9:10:c433:6407:9c40:8002"
    assert text(last) == "2001:db8:9:10:c433:6407:9c40:bfff"
    # one past the top of the range leaves the /114
    net = ipaddress.IPv6Network("2001:db8:9:10:c433:6407:9c40:8000/114")
    assert ipaddress.IPv6Address(last) == net[-1]
    with pytest.raises(addr.AddressError):
        addr.encode(PREFIX, PEER_V4, 40000, addr.LANID_MAX + 1)


def test_worked_example_router_global_address():
    assert text(addr.encode(PREFIX, ROUTER_V4, addr.PORT_6BED4, 0)) == "2001:db8:9:10:c000:201:64be:0"


def test_worked_example_default_prefix_fc64():
    prefix = addr.complete_prefix(None, ROUTER_V4)
    assert text(prefix + bytes(8)) == "fc64:bed:c000:201::"
    assert text(addr.encode(prefix, PEER_V4, 40000, 1)) == "fc64:bed:c000:201:c433:6407:9c40:8001"


def test_worked_example_lladdr():
    assert addr.lladdr(ROUTER_V4, 25790) == bytes.fromhex("be64c0000201")
    assert addr.parse_lladdr(bytes.fromhex("be64c0000201")) == (ROUTER_V4, 25790)


# --- properties ----------------------------------------------------------------------


@given(prefixes, ipv4s, ports, lanids)
def test_round_trip(prefix, ipv4, port, lanid):
    packed = addr.encode(prefix, ipv4, port, lanid)
    assert len(packed) == 16
    assert packed[:8] == prefix
    parts = addr.decode(packed)
    assert (parts.prefix, parts.ipv4, parts.port, parts.lanid) == (prefix, ipv4, port, lanid)
    assert addr.ipv4_of(packed) == ipv4
    assert addr.port_of(packed) == port


@given(prefixes, ipv4s, ports, lanids)
def test_layout_matches_the_table(prefix, ipv4, port, lanid):
    b = addr.encode(prefix, ipv4, port, lanid)
    assert b[8] == ipv4[0] & 0xFC
    assert b[9:12] == ipv4[1:]
    assert b[12:14] == port.to_bytes(2, "big")
    assert b[14] == ((ipv4[0] & 3) << 6) | (lanid >> 8)
    assert b[15] == lanid & 0xFF


@given(prefixes, ipv4s, ports, lanids)
def test_ul_and_ig_bits_are_zero(prefix, ipv4, port, lanid):
    b = addr.encode(prefix, ipv4, port, lanid)
    assert b[8] & 0x02 == 0  # U/L
    assert b[8] & 0x01 == 0  # I/G


@given(prefixes, ipv4s, ports, lanids)
def test_prefix114_zeroes_exactly_the_lanid(prefix, ipv4, port, lanid):
    packed = addr.encode(prefix, ipv4, port, lanid)
    p114 = addr.prefix114(packed)
    assert p114 == addr.encode(prefix, ipv4, port, 0)
    as_int = int.from_bytes(packed, "big")
    assert int.from_bytes(p114, "big") == as_int & ~0x3FFF
    assert as_int - int.from_bytes(p114, "big") == lanid


@given(ipv4s, ports)
def test_lladdr_round_trip(ipv4, port):
    ll = addr.lladdr(ipv4, port)
    assert ll[:2] == port.to_bytes(2, "little")
    assert ll[2:] == ipv4
    assert addr.parse_lladdr(ll) == (ipv4, port)


def test_encode_rejects_bad_values():
    with pytest.raises(addr.AddressError):
        addr.encode(PREFIX, PEER_V4, 65536, 1)
    with pytest.raises(addr.AddressError):
        addr.encode(PREFIX, PEER_V4, 40000, -1)
    with pytest.raises(addr.AddressError):
        addr.encode(PREFIX[:7], PEER_V4, 40000, 1)
    with pytest.raises(addr.AddressError):
        addr.decode(bytes(15))


@pytest.mark.parametrize(
    "ipv4,ok",
    [
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("127.0.0.1", False),
        ("127.255.255.255", False),
        ("224.0.0.1", False),
        ("239.255.255.255", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("1.0.0.0", True),
        ("192.0.2.1", True),
        ("126.255.255.255", True),
        ("128.0.0.0", True),
        ("223.255.255.255", True),
    ],
)
def test_is_sendable_ipv4(ipv4, ok):
    assert addr.is_sendable_ipv4(ipaddress.IPv4Address(ipv4).packed) is ok


# --- prefix completion (-L, -n) --------------------------------------------------------


@pytest.mark.parametrize(
    "given_prefix,netid,expected",
    [
        (None, addr.DEFAULT_NETID, "fc64:bed:c000:201::"),
        (None, 0x1234, "fc64:1234:c000:201::"),
        ("2001::/16", addr.DEFAULT_NETID, "2001:bed:c000:201::"),
        ("2001::/16", 0xABCD, "2001:abcd:c000:201::"),
        ("2001:db8::/32", addr.DEFAULT_NETID, "2001:db8:c000:201::"),
        ("2001:db8:9::/48", addr.DEFAULT_NETID, "2001:db8:9:bed::"),
        ("2001:db8:9::/48", 0x77, "2001:db8:9:77::"),
        ("2001:db8:9:10::/64", addr.DEFAULT_NETID, "2001:db8:9:10::"),
        ("2001:db8:9:10::/64", 0x77, "2001:db8:9:10::"),
    ],
)
def test_complete_prefix(given_prefix, netid, expected):
    prefix = addr.complete_prefix(given_prefix, ROUTER_V4, netid)
    assert len(prefix) == 8
    assert text(prefix + bytes(8)) == expected


def test_parse_netid():
    assert addr.parse_netid("bed") == 0xBED
    assert addr.parse_netid("FFFF") == 0xFFFF
    for bad in ("xyz", "10000", ""):
        with pytest.raises(addr.AddressError):
            addr.parse_netid(bad)


@pytest.mark.parametrize("length", [8, 16, 24, 32, 40, 48, 56, 63])
def test_ula_fill_is_deterministic_and_inside(length):
    value = 0xFD12345678ABCDEF >> (64 - length) << (64 - length)
    net = ipaddress.IPv6Network((value << 64, length))
    given_text = str(net)
    first = addr.complete_prefix(given_text, ROUTER_V4)
    second = addr.complete_prefix(given_text, ROUTER_V4)
    assert first == second
    assert len(first) == 8
    assert ipaddress.IPv6Address(first + bytes(8)) in net


def test_ula_fill_is_pseudo_random():
    # the fill is not simply zeros or the netid/IPv4 of the plain completion
    fills = {addr.complete_prefix("fd00::/8", bytes((10, 0, 0, n)))[1:] for n in range(1, 20)}
    assert len(fills) > 1  # depends on the router's IPv4
    assert bytes(7) not in fills
    # and differs for different ULA prefixes
    a = addr.complete_prefix("fd11::/16", ROUTER_V4)
    b = addr.complete_prefix("fd22::/16", ROUTER_V4)
    assert a[:2] == bytes.fromhex("fd11") and b[:2] == bytes.fromhex("fd22")
    assert a[2:] != b[2:]


def test_ula_fill_survives_a_restart():
    """Same inputs in a separate interpreter give the same /64 (no per-process hash seed)."""
    import subprocess
    import sys

    code = (
        "from sixbed4.core import addr;"
        "print(addr.complete_prefix('fd00::/8', bytes((192, 0, 2, 1))).hex())"
    )
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
           for _ in range(2)}
    assert out == {addr.complete_prefix("fd00::/8", ROUTER_V4).hex() + "\n"}


def test_ula_64_is_used_as_is():
    assert addr.complete_prefix("fd12:3456:789a:bcde::/64", ROUTER_V4) == bytes.fromhex("fd123456789abcde")


@settings(max_examples=200)
@given(st.integers(8, 63), st.integers(0, (1 << 56) - 1), ipv4s)
def test_ula_fill_property(length, bits, ipv4):
    value = ((0xFD << 56) | bits) >> (64 - length) << (64 - length)
    net = ipaddress.IPv6Network((value << 64, length))
    result = addr.complete_prefix(str(net), ipv4)
    assert result == addr.complete_prefix(str(net), ipv4)
    assert ipaddress.IPv6Address(result + bytes(8)) in net


@pytest.mark.parametrize(
    "bad,words",
    [
        ("2001:db8::1/32", ["beyond"]),
        ("2001:db8:9:10::1/64", ["beyond"]),
        ("2001:db8::/40", ["/40"]),
        ("2001:db8:9:10::/65", ["/65"]),
        ("2001:db8::/128", ["/128"]),
        ("fc00::/8", ["/8"]),
        ("garbage/64", ["garbage", "not"]),
        ("garbage", ["garbage", "not an IPv6 prefix"]),
        ("2001:db8:9:10::", ["length"]),
        ("2001:db8::/abc", ["2001:db8::/abc"]),
        ("192.0.2.0/24", ["192.0.2.0/24"]),
        ("fd00::/7", ["fd00::/7"]),
    ],
)
def test_bad_prefix_gives_one_clear_line(bad, words):
    with pytest.raises(addr.AddressError) as info:
        addr.complete_prefix(bad, ROUTER_V4)
    message = str(info.value)
    assert message and "\n" not in message
    assert "-L" in message
    for word in words:
        assert word in message


def test_parse_prefix64():
    assert addr.parse_prefix64("2001:db8:9:10::/64") == PREFIX
    for bad in ("2001:db8:9::/48", "2001:db8:9:10::1/64", "2001:db8:9:10::"):
        with pytest.raises(addr.AddressError):
            addr.parse_prefix64(bad)


def test_parse_route():
    assert addr.parse_route("2001:db8:ffff::/48") == (v6("2001:db8:ffff::"), 48)
    assert addr.parse_route("2001:db8::1/128") == (v6("2001:db8::1"), 128)
    for bad in ("2001::/15", "2001:db8::1/64", "nonsense/64"):
        with pytest.raises(addr.AddressError) as info:
            addr.parse_route(bad)
        assert "-R" in str(info.value)


def test_parse_ipv4_and_address():
    assert addr.parse_ipv4("192.0.2.1") == ROUTER_V4
    with pytest.raises(addr.AddressError) as info:
        addr.parse_ipv4("300.1.1.1", "-l")
    assert "-l" in str(info.value) and "300.1.1.1" in str(info.value)
    with pytest.raises(addr.AddressError):
        addr.parse_address("2001:db8::g")
    assert addr.format_address(v6("2001:db8::1")) == "2001:db8::1"
