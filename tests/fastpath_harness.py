"""What the fast paths' differential tests share: frames, the programs' verdicts, tallies.

A program run by BPF_PROG_TEST_RUN either hands a frame on unchanged
(TCX_NEXT: the Python path decides) or redirects it (the fast path took it);
`Tally` counts the outcomes and keeps the first mismatches with the core.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

import pytest

from sixbed4.core import icmp6
from tests.netlab import ROOT

TTL = 64
NEXT, REDIRECT = -1, 7
UPLINK_MAC = bytes.fromhex("020000000001")
SENDER_MAC = bytes.fromhex("02000000aa01")
# the counters a program and a core both keep (loader.COUNTER_NAMES less the programs' own)
SHARED_COUNTERS = ("udp_in", "udp_in_bytes", "to_tun", "relayed", "tun_in", "tun_in_bytes", "to_udp")


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
    """An Ethernet frame with a UDP/IPv4 datagram, as the uplink receives it (or a socket sends it)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    udp = udp[:6] + struct.pack("!H", udp_checksum(src, dst, udp)) + udp[8:]
    return UPLINK_MAC + SENDER_MAC + b"\x08\x00" + ipv4_header(src, dst, len(udp), **ip) + udp


def routed(packet: bytes) -> bytes:
    """An IPv6 packet as BPF_PROG_TEST_RUN takes it for the TUN device's egress (an Ethernet header in front)."""
    return bytes(12) + b"\x86\xdd" + packet


@dataclass
class Tally:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    mismatches: list = field(default_factory=list)
    expected: Counter = field(default_factory=Counter)  # what the core counted for the packets taken

    def mismatch(self, what: str, frame: bytes, detail: str = "") -> None:
        if len(self.mismatches) < 10:
            self.mismatches.append(f"{what}: {detail} frame={frame.hex()}")

    def taken(self, fast, program: int, frame: bytes, direction: str, ifindex: int = 0) -> bytes | None:
        """The frame as the program left it when it took the packet; None when it handed it on (unchanged)."""
        self.cases += 1
        verdict, out = fast.test_run(program, frame, ifindex)
        if verdict == NEXT:
            self.outcomes[f"{direction} passed"] += 1
            if out != frame:
                self.mismatch("passed but changed", frame, out.hex())
            return None
        if verdict != REDIRECT:
            self.mismatch(f"verdict {verdict}", frame)
            return None
        return out

    def core_action(self, counters, decide):
        """The core's action; the increments of its `counters` added to what the fast path must have counted."""
        before = counters.snapshot()
        action = decide()
        after = counters.snapshot()
        self.expected.update({k: after[k] - before[k] for k in after if after[k] != before[k]})
        return action

    def counters_match(self, fast, start: dict) -> list[str]:
        now = fast.counters()
        got = {k: now[k] - start[k] for k in SHARED_COUNTERS}
        want = {k: self.expected.get(k, 0) for k in got}
        return [] if got == want else [f"fast path counted {got}, the core {want}"]


def recorded_packets(tmp_path, unit_tests: str) -> list:
    """Every input `unit_tests` (a file of tests/unit) gives RouterCore and PeerCore (tests/core_recorder.py)."""
    path = tmp_path / "packets.pickle"
    env = dict(os.environ, SIXBED4_RECORD_CORE=str(path), PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.core_recorder",
                             str(ROOT / "tests" / "unit" / unit_tests)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    return pickle.loads(path.read_bytes())


class PacketMaker:
    """Random IPv6 packets near the edges of the rules, and datagrams damaged in every way a wire can."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

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

    @staticmethod
    def without_checksum(frame: bytes) -> bytes:
        """The datagram with UDP checksum 0 (none: allowed in IPv4)."""
        return frame[:40] + b"\0\0" + frame[42:]

    def damaged(self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
        """The datagram broken in one way that keeps it from the socket."""
        r = self.rng
        frame = bytearray(datagram(src, sport, dst, dport, payload))
        what = r.randrange(9)
        if what < 2:
            frame[40] ^= 0x10  # a wrong UDP checksum
        elif what == 2:
            frame[24] ^= 0x01  # a wrong IPv4 header checksum
        elif what == 3:
            frame[20:22] = struct.pack("!H", r.choice((0x2000, 0x0001, 0x2010)))  # a fragment
            frame[24:26] = b"\0\0"
            frame[24:26] = struct.pack("!H", ~icmp6.ones_complement_sum(frame[14:34]) & 0xFFFF)
        elif what == 4:
            return datagram(src, sport, dst, dport, payload, ihl=6, options=b"\x01\x01\x01\x00")
        elif what == 5:
            frame += bytes(r.randrange(1, 8))  # Ethernet padding / trailing bytes
        elif what < 8:
            frame[38:40] = struct.pack("!H", r.randrange(65536))  # UDP length
        else:
            frame[0] ^= 0x02  # to another host's MAC address
        return bytes(frame)


# The two builds of the programs: for Linux 6.6+, and for 5.14-6.5 (COMPAT_5_10), which loads here too.
KERNELS = ("6.6", "5.14")


@contextlib.contextmanager
def loaded(fast_path_class, tag: str, ipv4_interface: str, kernel: str):
    """The programs of `fast_path_class` as built for `kernel` (one of KERNELS), loaded in a namespace
    of their own whose uplink up0 has `ipv4_interface` (BPF_PROG_TEST_RUN takes the frames as if they
    arrived there): (fast path, up0's index)."""
    from sixbed4.fastpath.loader import KERNEL_OVERRIDE
    from tests.netlab import Lab

    with Lab(tag) as lab, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KERNEL_OVERRIDE, kernel)
        ns = lab.ns("node")
        lab.sh(ns, "ip link add up0 type veth peer name up1 && ip link set up0 address 02:00:00:00:00:01"
                   f" && ip link set up0 up && ip link set up1 up && ip addr add {ipv4_interface} dev up0")
        with lab.inside(ns):
            fast = fast_path_class.load()
            try:
                yield fast, int(lab.sh(ns, "cat /sys/class/net/up0/ifindex").stdout)
            finally:
                fast.close()
