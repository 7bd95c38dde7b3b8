"""The peer's fast path against PeerCore, packet by packet (BPF_PROG_TEST_RUN).

As tests/integration/test_fastpath_diff.py does for the router: every packet
of the peer core's unit tests, and more than 100,000 generated, mutated and
hostile ones, go through the loaded programs and through `PeerCore` in the
same state (no lease yet, or a /114 from an RA).  The program must hand a
frame on unchanged, or produce exactly what the core's action means: for
TUN, the IPv6 packet without the outer headers; for SEND, the datagram the
peer's socket would send to the router.

The peer's uplink `up0` (10.0.1.2, behind a NAT as in a home network) lives
in a namespace of the test's own.
"""

from __future__ import annotations

import functools
import struct

import pytest

from sixbed4.core import addr
from sixbed4.core.peer import PeerConfig, PeerCore
from sixbed4.core.router import SEND, TUN
from sixbed4.fastpath.loader import PeerFastPath
from tests.fastpath_harness import KERNELS, TTL, PacketMaker, Tally, datagram, loaded, recorded_packets, routed
from tests.unit.test_peer_core import pio, ra

LOCAL_V4, LOCAL_PORT = addr.parse_ipv4("10.0.1.2"), 40000
ROUTER_V4 = addr.parse_ipv4("192.0.2.1")
PREFIXES = (bytes.fromhex("20010db800090010c43364079c408000"),  # PROTOCOL.md's example peer
            bytes.fromhex("20010db800090010c43364071f908000"),  # the same after a NAT rebinding
            bytes.fromhex("fc640bedc0000201c633640a3f014000"))  # a /114 whose byte 14 carries address bits
CONFIGS = (PeerConfig("192.0.2.1"), PeerConfig("192.0.2.1", router_port=4000))
FUZZ_CASES = 120_000


@functools.cache
def lease_ra(prefix114: bytes) -> bytes:
    """The RA that gives the peer this /114 (built once: a fresh core gets it for every recorded packet)."""
    return bytes(ra(pio(addr.format_address(prefix114))))


@pytest.fixture(scope="module", params=KERNELS, ids=[f"programs-for-{k}" for k in KERNELS])
def fastpath(request):
    with loaded(PeerFastPath, "pfd", "10.0.1.2/24", request.param) as (fast, uplink_index):
        yield PeerDifferential(fast, uplink_index)


class PeerDifferential:
    def __init__(self, fast: PeerFastPath, uplink_index: int):
        self.fast, self.uplink_index = fast, uplink_index
        self.config: PeerConfig | None = None
        self.core: PeerCore | None = None
        self.now = 1000.0

    def use(self, config: PeerConfig, prefix114: bytes | None) -> None:
        """The core and the programs in the same state: `config`, and the /114 an RA gave (None: no RA yet)."""
        if config != self.config:
            self.config = config
            self.fast.configure((addr.parse_ipv4(config.router_ipv4), config.router_port), LOCAL_PORT,
                                tun_ifindex=99, ttl=TTL, l2_len=14)
            self.fast.set_route(LOCAL_V4, self.uplink_index)
        self.core = PeerCore(config)
        if prefix114 is not None:
            self.core.from_udp(bytearray(lease_ra(prefix114)), config.router, self.now)
            assert self.core.lease.prefix114 == prefix114
        self.fast.set_lease(prefix114)

    def from_udp(self, tally: Tally, frame: bytes, deliverable: bool) -> None:
        """`frame` reaches the uplink; `deliverable`: it is exactly a datagram for the peer's socket."""
        out = tally.taken(self.fast, self.fast.uplink_in, frame, "udp", self.uplink_index)
        if out is None:
            return
        if not deliverable:
            tally.mismatch("took a datagram the socket would not get", frame)
            return
        origin = (addr.format_ipv4(frame[26:30]), struct.unpack_from("!H", frame, 34)[0])
        self.now += 0.001
        action = tally.core_action(self.core.counters,
                                   lambda: self.core.from_udp(bytearray(frame[42:]), origin, self.now))
        if action[0] == TUN:
            tally.outcomes["to_tun"] += 1
            if out[14:] != frame[42:]:
                tally.mismatch("to the TUN", frame, f"got {out[14:].hex()}")
        else:
            tally.mismatch(f"took it, the core says {action}", frame)

    def from_tun(self, tally: Tally, packet: bytes) -> None:
        if len(packet) < 40:
            return  # the kernel routes no such packet (BPF_PROG_TEST_RUN refuses to build it)
        frame = routed(packet)
        out = tally.taken(self.fast, self.fast.tun_out, frame, "tun")
        if out is None:
            return
        action = tally.core_action(self.core.counters, lambda: self.core.from_tun(bytearray(packet)))
        if action[0] == SEND:
            tally.outcomes["to_udp"] += 1
            ip, port = action[2]
            expected = datagram(LOCAL_V4, LOCAL_PORT, addr.parse_ipv4(ip), port, packet)[14:]
            if out[14:] != expected:
                tally.mismatch("datagram to the router", frame, f"got {out[14:].hex()} want {expected.hex()}")
        else:
            tally.mismatch(f"took it, the core says {action}", frame)


def test_the_core_unit_tests_packets_give_the_same_result(fastpath, tmp_path):
    records = recorded_packets(tmp_path, "test_peer_core.py")
    tally = Tally()
    start = fastpath.fast.counters()
    for config, kind, packet, origin, prefix114 in records:
        if not isinstance(config, PeerConfig):
            continue
        fastpath.use(config, prefix114)
        if kind == "udp":
            ip, port = origin
            try:
                source = addr.parse_ipv4(ip)
            except addr.AddressError:
                continue
            if not 0 < port < 65536 or len(packet) > 1472:
                continue
            fastpath.from_udp(tally, datagram(source, port, LOCAL_V4, LOCAL_PORT, packet), True)
        else:
            fastpath.from_tun(tally, packet)
    assert tally.cases > 50
    assert tally.mismatches == []
    assert tally.counters_match(fastpath.fast, start) == []
    assert tally.outcomes["to_tun"] and tally.outcomes["to_udp"], tally.outcomes


class Generator(PacketMaker):
    """Datagrams to the peer and packets routed to its TUN device: mostly right, some broken, some hostile."""

    def address(self, prefix114: bytes) -> bytes:
        """An address in, near or far from the /114."""
        r = self.rng
        choice = r.randrange(10)
        if choice < 5:  # in the /114: the peer's own (lanid 1) or a LAN host's
            lanid = r.choice((1, 1, 1, 2, 0x3FFF, r.randrange(0x4000)))
            return prefix114[:14] + bytes(((prefix114[14] & 0xC0) | lanid >> 8, lanid & 0xFF))
        if choice == 5:  # one bit off the /114
            near = bytearray(prefix114)
            near[r.randrange(15)] ^= 1 << r.randrange(8)
            return bytes(near)
        if choice == 6:
            return r.choice((b"\xff\x02" + bytes(13) + b"\x01", b"\xfe\x80" + bytes(13) + b"\x01"))
        return bytes.fromhex("20010db800ff0000") + r.randbytes(8)

    def from_router(self, config: PeerConfig, prefix114: bytes) -> tuple[bytes, bool]:
        """A frame to the peer's uplink, and whether the kernel would deliver it to the peer's socket."""
        r = self.rng
        router = addr.parse_ipv4(config.router_ipv4)
        source, sport = r.choice(((router, config.router_port),) * 8 + (
            (router, r.choice((25790, 4000, 53))), (addr.parse_ipv4("198.51.100.9"), config.router_port)))
        packet = self.ipv6(self.address(prefix114), self.address(prefix114))
        if r.random() < 0.25:
            packet = self.mutate(packet)
        if r.random() < 0.05:
            packet = bytearray()  # a keepalive's echo, or nothing
        packet = bytes(packet[:1472])
        outer = r.random()
        if outer < 0.85:
            return datagram(source, sport, LOCAL_V4, LOCAL_PORT, packet), True
        if outer < 0.87:
            return self.without_checksum(datagram(source, sport, LOCAL_V4, LOCAL_PORT, packet)), True
        if outer < 0.91:  # to another socket of the host
            port_to = r.choice((LOCAL_PORT, LOCAL_PORT + 1, 53))
            destination = r.choice((LOCAL_V4, addr.parse_ipv4("10.0.1.3")))
            return datagram(source, sport, destination, port_to, packet), (destination, port_to) == (
                LOCAL_V4, LOCAL_PORT)
        return self.damaged(source, sport, LOCAL_V4, LOCAL_PORT, packet), False

    def from_kernel(self, prefix114: bytes) -> bytes:
        """A packet the kernel routes into the TUN device: from the peer, its LAN, or anywhere."""
        r = self.rng
        packet = self.ipv6(self.address(prefix114), self.address(prefix114) if r.random() < 0.3 else
                           bytes.fromhex("20010db800ff0000") + r.randbytes(8))
        if r.random() < 0.2:
            packet = self.mutate(packet)
        return bytes(packet[:1400])


def test_generated_and_hostile_packets_give_the_same_result(fastpath):
    generator = Generator(seed=15)
    tally = Tally()
    start = fastpath.fast.counters()
    states = [(config, prefix) for config in CONFIGS for prefix in (None, *PREFIXES)]
    per_state = FUZZ_CASES // len(states)
    for config, prefix in states:
        fastpath.use(config, prefix)
        for _ in range(per_state // 2):
            frame, deliverable = generator.from_router(config, prefix or PREFIXES[0])
            fastpath.from_udp(tally, frame, deliverable)
            fastpath.from_tun(tally, generator.from_kernel(prefix or PREFIXES[0]))
    assert tally.cases >= 100_000
    assert tally.mismatches == []
    assert tally.counters_match(fastpath.fast, start) == []
    for outcome in ("to_tun", "to_udp", "udp passed", "tun passed"):
        assert tally.outcomes[outcome] > 2000, tally.outcomes
