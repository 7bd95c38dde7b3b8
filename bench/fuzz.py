#!/usr/bin/env python3
"""Long fuzz run of the sans-IO cores: random and mutated datagrams and TUN packets.

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed N]

Feeds the router core and the peer core with a mix of valid
packets of every kind, mutations of them (bit flips, truncation, extension,
length-field lies, option lengths 0 and huge, every ICMPv6 type, bad
checksums) and pure random bytes, from random origins.  Any exception is a
failure (printed with the input, exit 1).  Every 10,000 inputs a known-good
packet must still be forwarded.  Prints counts per outcome and drop reason.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sixbed4.core import addr, icmp6  # noqa: E402
from sixbed4.core.peer import PeerConfig, PeerCore  # noqa: E402
from sixbed4.core.router import DROP, REPLY, SEND, TUN, RouterConfig, RouterCore  # noqa: E402

PREFIX = bytes.fromhex("20010db800090010")
ROUTER_V4 = bytes((192, 0, 2, 1))
PEER = ("198.51.100.7", 40000)
ROUTER = ("192.0.2.1", 25790)
PEER_ADDR = addr.encode(PREFIX, bytes((198, 51, 100, 7)), 40000, 1)
PEER_PREFIX114 = PEER_ADDR[:14] + bytes((PEER_ADDR[14] & 0xC0, 0))
OTHER_ADDR = addr.encode(PREFIX, bytes((203, 0, 113, 9)), 5000, 1)
NATIVE = bytes.fromhex("20010db8ffff") + bytes(9) + b"\x02"
HOST_V4 = bytes((10, 0, 0, 5))  # a second address of the router's host
HOST_ADDR = addr.encode(PREFIX, HOST_V4, 5353, 1)  # never sent to


def seeds() -> list[bytes]:
    """Valid packets of every kind the cores handle."""
    echo = lambda src, dst: icmp6.icmp6_packet(src, dst, icmp6.ECHO_REQUEST, 0, b"\x00\x01\x00\x01fuzz")  # noqa: E731
    slla = bytes((1, 1, 0, 0, 0, 0, 0, 1))
    rs_c = icmp6.icmp6_packet(icmp6.UNSPECIFIED, icmp6.ALL_ROUTERS, icmp6.ROUTER_SOLICIT, 0, bytes(4) + slla)
    router_addr = addr.encode(PREFIX, ROUTER_V4, 25790, 0)
    packets = [
        icmp6.router_solicit(), rs_c,
        icmp6.neighbor_solicit(PEER_ADDR, router_addr, router_addr, addr.lladdr(bytes((198, 51, 100, 7)), 40000)),
        icmp6.router_advert(icmp6.ALL_NODES, [icmp6.PrefixInfo(PEER_PREFIX114, 114)]),
        icmp6.neighbor_advert(PEER_ADDR, router_addr, PEER_ADDR, 0xE0, bytes(6)),
        echo(PEER_ADDR, NATIVE), echo(PEER_ADDR, OTHER_ADDR), echo(PEER_ADDR, PEER_ADDR[:15] + b"\x00"),
        echo(NATIVE, PEER_ADDR), echo(PEER_ADDR, icmp6.ALL_NODES),
        icmp6.ipv6_packet(PEER_ADDR, NATIVE, 17, b"\x30\x39\x00\x35\x00\x0c\x00\x00abcd", 64),
        icmp6.ipv6_packet(PEER_ADDR, NATIVE, 6, bytes(20), 64),
        # native packets, as the kernel routes them into the TUN
        icmp6.ipv6_packet(NATIVE, PEER_ADDR, 17, b"\x00\x35\x30\x39\x00\x0c\x00\x00abcd", 63),
        icmp6.ipv6_packet(NATIVE, OTHER_ADDR, 6, bytes(20), 63),
        icmp6.ipv6_packet(NATIVE, HOST_ADDR, 17, b"\x00\x35\x14\xe9\x00\x0c\x00\x00abcd", 63),
        icmp6.ipv6_packet(PEER_ADDR, HOST_ADDR, 17, b"\x00\x35\x14\xe9\x00\x0c\x00\x00abcd", 63),
    ]
    packets += [icmp6.icmp6_packet(PEER_ADDR, NATIVE, kind, 0, bytes(20)) for kind in range(0, 256, 7)]
    return packets


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    choice = rng.randrange(9)
    if choice == 0 and data:  # bit flips
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data) + 1):]
    elif choice == 2:  # extend
        data += rng.randbytes(rng.randrange(1, 1500))
    elif choice == 3 and len(data) >= 6:  # lie in the payload length
        data[4:6] = rng.randrange(65536).to_bytes(2, "big")
    elif choice == 4 and len(data) > 49:  # option length 0 or huge
        data[49 if rng.random() < 0.5 else len(data) - 7] = rng.choice((0, 1, 255))
    elif choice == 5 and len(data) > 41:  # every ICMPv6 type, any code
        data[40], data[41] = rng.randrange(256), rng.randrange(256)
    elif choice == 6 and len(data) > 43:  # bad checksum
        data[42] ^= 0xFF
    elif choice == 7 and len(data) >= 8:  # hop limit
        data[7] = rng.choice((0, 1, 254, 255))
    else:  # pure random
        data = bytearray(rng.randbytes(rng.randrange(0, 2000)))
    return bytes(data)


def random_origin(rng: random.Random, usual: tuple[str, int]) -> tuple[str, int]:
    if rng.random() < 0.7:
        return usual
    return (".".join(str(rng.randrange(256)) for _ in range(4)), rng.randrange(65536))


@dataclass
class Target:
    """A core under fuzz, the origin most inputs come from, and a packet it must still forward.

    `setup` comes first from `origin` before each check: a mutated RA that is still valid
    legitimately moves the peer to another /114, and the real router's next RA moves it back.
    """

    name: str
    core: object
    origin: tuple[str, int]
    good: bytes
    setup: bytes = b""


def targets() -> list[Target]:
    good_out = icmp6.icmp6_packet(PEER_ADDR, NATIVE, icmp6.ECHO_REQUEST, 0, b"\x00\x01\x00\x01good")
    good_in = icmp6.icmp6_packet(NATIVE, PEER_ADDR, icmp6.ECHO_REQUEST, 0, b"\x00\x01\x00\x01good")
    peer = PeerCore(PeerConfig(*ROUTER))
    peer.on_tick(0.0)  # the first RS
    lease = icmp6.router_advert(icmp6.ALL_NODES, [icmp6.PrefixInfo(PEER_PREFIX114, 114)])
    assert peer.from_udp(bytearray(lease), ROUTER, 0.0)[0] == DROP and peer.lease is not None
    router = RouterCore(RouterConfig(PREFIX, ROUTER_V4))
    router.set_host_ipv4s([HOST_V4])
    return [
        Target("router", router, PEER, good_out),
        Target("peer", peer, ROUTER, good_in, setup=lease),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = seeds()
    failures = 0
    for target in targets():
        name, core = target.name, target.core
        outcomes: Counter = Counter()
        start = time.monotonic()
        for i in range(args.inputs):
            packet = mutate(rng, rng.choice(base))
            now = i / 1000.0
            try:
                if rng.random() < 0.6:
                    action = core.from_udp(bytearray(packet), random_origin(rng, target.origin), now)
                else:
                    action = core.from_tun(bytearray(packet))
                outcomes[action[0]] += 1
                if i % 1000 == 0 and name == "peer":
                    core.on_tick(now)
            except Exception as exc:  # noqa: BLE001 - any exception is the finding
                failures += 1
                print(f"{name}: {type(exc).__name__}: {exc} on input {packet.hex()}")
                if failures > 20:
                    return 1
            if i % 10_000 == 0 and target.setup:
                core.from_udp(bytearray(target.setup), target.origin, now)
            if i % 10_000 == 0 and core.from_udp(bytearray(target.good), target.origin, now)[0] != TUN:
                failures += 1
                print(f"{name}: a valid packet was not forwarded after {i} inputs")
        seconds = time.monotonic() - start
        labels = {DROP: "drop", TUN: "tun", SEND: "send", REPLY: "reply"}
        print(f"{name}: {args.inputs} inputs in {seconds:.1f}s, exceptions: {failures}")
        print("  outcomes: " + ", ".join(f"{labels.get(k, k)}={v}" for k, v in sorted(outcomes.items())))
        drops = {k: v for k, v in core.counters.drops.items() if v}
        print("  drops: " + ", ".join(f"{k}={v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
