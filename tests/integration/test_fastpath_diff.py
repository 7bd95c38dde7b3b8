"""The fast path against RouterCore, packet by packet (BPF_PROG_TEST_RUN).

Every packet of the router core's unit tests, and a corpus of more than
100,000 generated, mutated and hostile ones, goes through the loaded eBPF
program and through `RouterCore`.  For each, the program must either hand the
frame on unchanged (the slow path decides) or produce exactly what the core's
action means: for TUN, the same IPv6 packet without the outer headers; for
SEND, a UDP/IPv4 datagram from the router's address and port to the core's
target, carrying the packet as the core left it, with the headers and
checksums the router's socket would give it.  The programs' counters must add
up to what the core counted for the packets they took.

Runs in a namespace of its own, where the uplink `up0` has the router's
address (BPF_PROG_TEST_RUN takes the frames as if they arrived there).
"""

from __future__ import annotations

import os
import pickle
import random
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from sixbed4.core import addr, icmp6
from sixbed4.core.router import SEND, TUN, MasqRule, RouterConfig, RouterCore
from sixbed4.fastpath.loader import RouterFastPath
from tests.netlab import ROOT

ROUTER_V4 = addr.parse_ipv4("192.0.2.1")
OTHER_HOST_V4 = addr.parse_ipv4("198.51.100.200")  # another address of the router host
UPLINK_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("02000000aa01")
TTL = 64
NEXT, REDIRECT = -1, 7
FUZZ_CASES = 120_000


@pytest.fixture(scope="module")
def fastpath():
    from tests.netlab import Lab

    with Lab("fpd") as lab:
        ns = lab.ns("rtr")
        lab.sh(ns, "ip link add up0 type veth peer name up1 && ip link set up0 address 02:00:00:00:00:01"
                   " && ip link set up0 up && ip link set up1 up && ip addr add 192.0.2.1/24 dev up0")
        with lab.inside(ns):
            fast = RouterFastPath.load()
            try:
                yield Differential(fast, lab.sh(ns, "cat /sys/class/net/up0/ifindex").stdout.strip(), lab, ns)
            finally:
                fast.close()


# --- frames ------------------------------------------------------------------------


def ipv4_header(src: bytes, dst: bytes, payload: int, *, ttl=TTL, ident=0, flags=0x4000, ihl=5, options=b"") -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + payload, ident, flags, ttl, 17, 0, src, dst)
    header += options
    checksum = ~icmp6.ones_complement_sum(header) & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:]


def udp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(segment))
    value = ~icmp6.ones_complement_sum(pseudo + segment) & 0xFFFF
    return value or 0xFFFF


def datagram(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, **ip) -> bytes:
    """An Ethernet frame with a UDP/IPv4 datagram, as the uplink receives it."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    udp = udp[:6] + struct.pack("!H", udp_checksum(src, dst, udp)) + udp[8:]
    return UPLINK_MAC + PEER_MAC + b"\x08\x00" + ipv4_header(src, dst, len(udp), **ip) + udp


@dataclass
class Tally:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    mismatches: list = field(default_factory=list)
    expected: Counter = field(default_factory=Counter)  # what the core counted for the packets taken

    def mismatch(self, what: str, frame: bytes, detail: str = "") -> None:
        if len(self.mismatches) < 10:
            self.mismatches.append(f"{what}: {detail} frame={frame.hex()}")


class Differential:
    def __init__(self, fast: RouterFastPath, uplink_index: str, lab, ns):
        self.fast, self.uplink_index, self.lab, self.ns = fast, int(uplink_index), lab, ns
        self.config: RouterConfig | None = None
        self.core: RouterCore | None = None
        self.now = 1000.0

    def use(self, config: RouterConfig) -> None:
        if config != self.config:
            self.config = config
            self.fast.configure(config, ROUTER_V4, ROUTER_V4, tun_ifindex=99, uplink_ifindex=self.uplink_index,
                                ttl=TTL, l2_len=14)
            self.fast.set_host_ipv4s([ROUTER_V4, OTHER_HOST_V4])
        self.core = RouterCore(config)
        self.core.set_host_ipv4s([ROUTER_V4, OTHER_HOST_V4])

    # --- the two directions ---------------------------------------------------------

    def taken(self, tally: Tally, program: int, frame: bytes, direction: str, ifindex: int = 0) -> bytes | None:
        """The frame as the program left it when it took the packet; None when it handed it on (unchanged)."""
        tally.cases += 1
        verdict, out = self.fast.test_run(program, frame, ifindex)
        if verdict == NEXT:
            tally.outcomes[f"{direction} passed"] += 1
            if out != frame:
                tally.mismatch("passed but changed", frame, out.hex())
            return None
        if verdict != REDIRECT:
            tally.mismatch(f"verdict {verdict}", frame)
            return None
        return out

    def core_action(self, tally: Tally, decide):
        """The core's action, its counters' increments added to what the fast path must have counted."""
        before = self.core.counters.snapshot()
        action = decide()
        after = self.core.counters.snapshot()
        tally.expected.update({k: after[k] - before[k] for k in after if after[k] != before[k]})
        return action

    def from_udp(self, tally: Tally, frame: bytes, deliverable: bool) -> None:
        """`frame` reaches the uplink; `deliverable`: it is exactly a datagram for the router's socket."""
        out = self.taken(tally, self.fast.uplink_in, frame, "udp", self.uplink_index)
        if out is None:
            return
        if not deliverable:
            tally.mismatch("took a datagram the socket would not get", frame)
            return
        origin = (addr.format_ipv4(frame[26:30]), struct.unpack_from("!H", frame, 34)[0])
        packet = bytearray(frame[42:])
        self.now += 0.001
        action = self.core_action(tally, lambda: self.core.from_udp(packet, origin, self.now))
        if action[0] == TUN:
            tally.outcomes["to_tun"] += 1
            if out[14:] != frame[42:]:
                tally.mismatch("to the TUN", frame, f"got {out[14:].hex()}")
        elif action[0] == SEND and action[1] is None:
            tally.outcomes["relayed"] += 1
            self.check_datagram(tally, frame, out, frame[30:34], action[2], bytes(packet))
        else:
            tally.mismatch(f"took it, the core says {action}", frame)

    def from_tun(self, tally: Tally, packet: bytes) -> None:
        if len(packet) < 40:
            return  # the kernel routes no such packet (BPF_PROG_TEST_RUN refuses to build it)
        frame = bytes(12) + b"\x86\xdd" + packet  # BPF_PROG_TEST_RUN wants an Ethernet header (l2_len 14)
        out = self.taken(tally, self.fast.tun_out, frame, "tun")
        if out is None:
            return
        edited = bytearray(packet)
        action = self.core_action(tally, lambda: self.core.from_tun(edited))
        if action[0] == SEND and action[1] is None:
            tally.outcomes["to_udp"] += 1
            self.check_datagram(tally, frame, out, self.config.ipv4, action[2], bytes(edited))
        else:
            tally.mismatch(f"took it, the core says {action}", frame)

    def check_datagram(self, tally, frame, out, source: bytes, target, packet: bytes) -> None:
        """`out` must be the datagram the router's socket would send `packet` to `target` with.

        (Its Ethernet header is the kernel's to fill in, from its neighbour table.)
        """
        ip, port = target
        expected = datagram(source, self.config.port, addr.parse_ipv4(ip), port, packet)[14:]
        out = out[14:]
        if out != expected:
            tally.mismatch(f"datagram to {target}", frame, f"got {out.hex()} want {expected.hex()}")

    def counters_match(self, tally: Tally, start: dict) -> list[str]:
        now = self.fast.counters()
        got = {k: now[k] - start[k] for k in ("udp_in", "udp_in_bytes", "to_tun", "relayed", "tun_in",
                                             "tun_in_bytes", "to_udp")}
        want = {k: tally.expected.get(k, 0) for k in got}
        return [] if got == want else [f"fast path counted {got}, the core {want}"]


# --- the core's unit-test packets ---------------------------------------------------


def recorded_packets(tmp_path) -> list:
    """Every input the router core's unit tests give RouterCore (tests/core_recorder.py)."""
    path = tmp_path / "packets.pickle"
    env = dict(os.environ, SIXBED4_RECORD_CORE=str(path), PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.core_recorder",
                             str(ROOT / "tests" / "unit" / "test_router_core.py")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    return pickle.loads(path.read_bytes())


def test_the_core_unit_tests_packets_give_the_same_result(fastpath, tmp_path):
    records = recorded_packets(tmp_path)
    assert len(records) > 200
    tally = Tally()
    start = fastpath.fast.counters()
    for config, kind, packet, origin in records:
        fastpath.use(config)
        if kind == "udp":
            ip, port = origin
            try:
                source = addr.parse_ipv4(ip)
            except addr.AddressError:
                continue
            if not 0 < port < 65536 or len(packet) > 1472:
                continue
            fastpath.from_udp(tally, datagram(source, port, ROUTER_V4, config.port, packet), True)
        else:
            fastpath.from_tun(tally, packet)
    assert tally.mismatches == []
    assert fastpath.counters_match(tally, start) == []
    # the unit tests forward valid packets in both directions: the fast path must take some of each
    assert tally.outcomes["to_tun"] and tally.outcomes["relayed"] and tally.outcomes["to_udp"], tally.outcomes


# --- generated and hostile packets ------------------------------------------------------


PREFIX = bytes.fromhex("20010db800090010")
CONFIGS = (
    RouterConfig(prefix=PREFIX, ipv4=ROUTER_V4),
    RouterConfig(prefix=bytes.fromhex("fc640bedc0000201"), ipv4=ROUTER_V4, port=4000),
    RouterConfig(prefix=PREFIX, ipv4=ROUTER_V4, masquerade=(
        MasqRule(icmp6.PROTO_TCP, 80, 80, bytes.fromhex("20010db8000900100000000000000022")),)),
)


class Generator:
    """Packets near the edges of every rule: mostly well-formed, some broken, some hostile."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def ipv4(self) -> bytes:
        r = self.rng
        if r.random() < 0.7:
            return bytes((r.choice((198, 203, 9, 85)), r.randrange(256), r.randrange(256), r.randrange(1, 255)))
        first = r.choice((r.randrange(1, 224), 0, 127, 224, 239, 240, 255, r.randrange(256)))
        if r.random() < 0.2:
            return r.choice((ROUTER_V4, OTHER_HOST_V4))
        return bytes((first, r.randrange(256), r.randrange(256), r.randrange(256)))

    def port(self, config) -> int:
        r = self.rng
        if r.random() < 0.85:
            return r.randrange(1024, 65536)
        return r.choice((0, 1, 25790, config.port, 65535, r.randrange(65536)))

    def address(self, config, ipv4: bytes, port: int, lanid: int | None = None) -> bytes:
        r = self.rng
        lanid = r.choice((1, 1, 1, 2, 0x3FFF, r.randrange(0x4000))) if lanid is None else lanid
        address = bytearray(addr.encode(config.prefix, ipv4, port, lanid))
        if r.random() < 0.05:
            address[8] |= r.randrange(1, 4)  # not canonical
        return bytes(address)

    def destination(self, config, source: bytes) -> bytes:
        r = self.rng
        choice = r.randrange(12)
        if choice < 4:
            return bytes.fromhex("20010db800ff0000") + bytes(r.randrange(256) for _ in range(8))  # native
        if choice < 7:
            return self.address(config, self.ipv4(), self.port(config))  # another peer
        if choice == 7:
            return b"\xfc\x64" + bytes(r.randrange(256) for _ in range(6)) + self.address(config, self.ipv4(),
                                                                                       self.port(config))[8:]
        if choice == 8:
            return config.prefix + bytes(4) + bytes(2) + bytes((0, r.randrange(256)))  # port 0: the host's own
        if choice == 9:
            return r.choice((config.address, source[:14] + bytes((source[14] & 0xC0, 0)),
                             addr.encode(config.prefix, config.ipv4, config.port, r.randrange(1, 9))))
        if choice == 10:
            return r.choice((b"\xff\x02" + bytes(13) + b"\x01", b"\xfe\x80" + bytes(14), b"\xfe\xbf" + bytes(14),
                             bytes.fromhex("fe80000000000000") + source[8:14] + bytes((source[14] & 0xC0, 0))))
        return bytes(r.randrange(256) for _ in range(16))

    def ipv6(self, source: bytes, destination: bytes) -> bytearray:
        r = self.rng
        length = r.choice((0, 8, 20, r.randrange(0, 100), r.randrange(0, 1241), 1240, 1232))
        next_header = r.choice((17, 17, 6, 58, 58, 59, 0, 44, r.randrange(256)))
        payload = bytearray(r.randbytes(length))
        if next_header == 58 and length:
            payload[0] = r.choice((128, 129, 1, 3, 133, 134, 135, 136, 137, r.randrange(256)))
        hop_limit = r.choice((0, 1, 2, 64, 255, r.randrange(256)))
        header = struct.pack("!IHBB16s16s", 0x60000000 | r.choice((0, r.randrange(1 << 28))), length,
                             next_header, hop_limit, source, destination)
        packet = bytearray(header) + payload
        if next_header in (6, 17, 58) and length >= 8 and r.random() < 0.8:  # a right transport checksum
            at = {6: 16, 17: 6, 58: 2}[next_header]
            if length >= at + 2:
                packet[40 + at: 42 + at] = b"\0\0"
                checksum = icmp6.upper_layer_checksum(source, destination, next_header, packet[40:])
                packet[40 + at: 42 + at] = struct.pack("!H", checksum)
        return packet

    def mutate(self, packet: bytearray) -> bytearray:
        r = self.rng
        for _ in range(r.randrange(1, 4)):
            what = r.randrange(6)
            if what < 3 and packet:
                packet[r.randrange(min(len(packet), 48))] ^= 1 << r.randrange(8)
            elif what == 3:
                del packet[r.randrange(len(packet) + 1):]
            elif what == 4:
                packet += r.randbytes(r.randrange(1, 64))
            else:
                packet[4:6] = struct.pack("!H", r.randrange(65536))
        return packet

    def from_peer(self, config) -> tuple[bytes, bool]:
        """A frame to the router's uplink, and whether the kernel would deliver it to the router's socket."""
        r = self.rng
        ipv4, port = self.ipv4(), self.port(config)
        source = self.address(config, ipv4, port) if r.random() < 0.85 else self.address(
            config, self.ipv4(), self.port(config))
        packet = self.ipv6(source, self.destination(config, source))
        if r.random() < 0.25:
            packet = self.mutate(packet)
        if r.random() < 0.05:
            packet = bytearray()  # a keepalive
        packet = bytes(packet[:1472])
        outer = r.random()
        if outer < 0.88:
            return datagram(ipv4, port, ROUTER_V4, config.port, packet), True
        frame = bytearray(datagram(ipv4, port, ROUTER_V4, config.port, packet))
        if outer < 0.895:  # no UDP checksum: allowed in IPv4
            frame[40:42] = b"\0\0"
            return bytes(frame), True
        if outer < 0.91:  # maybe another datagram of the host (another port or address)
            destination = r.choice((ROUTER_V4, OTHER_HOST_V4, b"\x0a\0\0\x01"))
            port_to = r.choice((config.port, config.port + 1, 53))
            return datagram(ipv4, port, destination, port_to, packet), (destination, port_to) == (
                ROUTER_V4, config.port)
        if outer < 0.93:
            frame[40] ^= 0x10  # a wrong UDP checksum
        elif outer < 0.94:
            frame[24] ^= 0x01  # a wrong IPv4 header checksum
        elif outer < 0.95:
            frame[20:22] = struct.pack("!H", r.choice((0x2000, 0x0001, 0x2010)))  # a fragment
            frame[24:26] = b"\0\0"
            frame[24:26] = struct.pack("!H", ~icmp6.ones_complement_sum(frame[14:34]) & 0xFFFF)
        elif outer < 0.96:
            return datagram(ipv4, port, ROUTER_V4, config.port, packet, ihl=6, options=b"\x01\x01\x01\x00"), False
        elif outer < 0.97:
            frame += bytes(r.randrange(1, 8))  # Ethernet padding / trailing bytes
        elif outer < 0.98:
            frame[38:40] = struct.pack("!H", r.randrange(65536))  # UDP length
        else:
            frame[0] ^= 0x02  # to another host's MAC address
        return bytes(frame), False

    def from_kernel(self, config) -> bytes:
        """A packet the kernel routes into the TUN device."""
        r = self.rng
        source = r.choice((
            lambda: bytes.fromhex("20010db800ff0000") + r.randbytes(8),
            lambda: config.prefix + bytes(6) + r.randbytes(2),  # the host's own (port 0)
            lambda: config.address,
            lambda: self.address(config, self.ipv4(), self.port(config)),  # forged: one of our peers
            lambda: bytes.fromhex("20010db8000900100000000000000022"),
            lambda: r.randbytes(16),
        ))()
        destination = self.address(config, self.ipv4(), self.port(config)) if r.random() < 0.7 else \
            self.destination(config, source)
        packet = self.ipv6(source, destination)
        if r.random() < 0.2:
            packet = self.mutate(packet)
        return bytes(packet[:1400])


def test_generated_and_hostile_packets_give_the_same_result(fastpath):
    generator = Generator(seed=15)
    tally = Tally()
    start = fastpath.fast.counters()
    per_config = FUZZ_CASES // len(CONFIGS)
    for config in CONFIGS:
        fastpath.use(config)
        for _ in range(per_config // 2):
            frame, deliverable = generator.from_peer(config)
            fastpath.from_udp(tally, frame, deliverable)
            fastpath.from_tun(tally, generator.from_kernel(config))
    assert tally.cases >= 100_000
    assert tally.mismatches == []
    assert fastpath.counters_match(tally, start) == []
    # the corpus reaches every kind of outcome, each many times
    for outcome in ("to_tun", "relayed", "to_udp", "udp passed", "tun passed"):
        assert tally.outcomes[outcome] > 2000, tally.outcomes
