"""RouterCore remembers flows that went to the TUN: the same decisions, fewer checks, bounded memory."""

from __future__ import annotations

from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6

from sixbed4.core.router import DROP, REPLY, TUN

from .test_router_core import A, A_ADDR, NOW, buf, make_core


def test_flow_to_tun_remembered_per_origin():
    """The second packet of a flow takes the remembered decision; another origin is checked anew."""
    core = make_core()
    raw = buf(IPv6(src=A_ADDR, dst="2001:db8:aaaa::1") / UDP(sport=1, dport=2))
    for _ in range(2):
        assert core.from_udp(bytearray(raw), A, NOW) == (TUN, None, None)
    other = ("198.51.100.7", 40001)  # A's address from another port: a NAT rebinding or a spoof
    assert core.from_udp(bytearray(raw), other, NOW)[0] in (DROP, REPLY)
    assert core.from_udp(bytearray(raw), A, NOW) == (TUN, None, None)
    assert core.counters.to_tun == 3 and core.counters.drops["bad_source"] == 1


def test_flow_memory_bounded():
    core = make_core()
    for i in range(3 * 4096):
        flow = buf(IPv6(src=A_ADDR, dst=f"2001:db8:aaaa::{i:x}") / UDP(sport=1, dport=2))
        assert core.from_udp(flow, A, NOW) == (TUN, None, None)
    assert 0 < len(core._tun_flows) <= 4096
