"""A live router under attack: forged datagrams, floods, and what it emits meanwhile.

An attacker namespace sends each kind of hostile datagram; tcpdump in the IPv4
core records everything the router sends; a good client keeps pinging through
the router the whole time.  Expected: each attack raises its drop counter,
nothing goes to a forbidden target, the RA budget holds, good traffic flows.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import subprocess
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_RS, IPv6
from scapy.utils import rdpcap

from sixbed4.core import addr
from tests.integration import topology
from tests.integration.sixclient import ROUTER, SixClient
from tests.netlab import Lab

PREFIX64 = ipaddress.IPv6Network(topology.PREFIX).network_address.packed[:8]
ATTACKER = ("198.18.1.66", 4444)
METRICS = "http://127.0.0.1:9641/metrics"
FLOOD = 50_000


def sixbed4(ipv4: str, port: int, lanid: int = 1) -> str:
    return addr.format_address(addr.encode(PREFIX64, addr.parse_ipv4(ipv4), port, lanid))


def forbidden(ip: str, port: int) -> bool:
    a = ipaddress.IPv4Address(ip)
    return port == 0 or a.is_unspecified or a.is_loopback or a.is_multicast or ip == "255.255.255.255" or a.is_reserved


@pytest.fixture(scope="module")
def attacked(fast_path):
    with Lab("ha") as lab:
        topo = topology.build(lab, ("mob", "atk"), fast_path)
        for ns in (topo.core, topo.router):
            lab.sh(ns, "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done")
        router = topo.start_router("--metrics", "127.0.0.1:9641")
        yield topo, router


def drops(lab: Lab, ns: str) -> dict[str, float]:
    """Samples by drop reason (drops) or by name (other counters)."""
    return {dict(labels).get("reason", name): value for (name, labels), value in lab.metrics(ns, METRICS).items()}


def raw_udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """IPv4+UDP with any source (IP_HDRINCL); the kernel fills the IPv4 checksum."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp


def test_hostile_datagrams_are_dropped_counted_and_never_reach_forbidden_targets(attacked):
    topo, router = attacked
    lab = topo.lab
    pcap = str(lab.scratch_file("router.pcap"))
    dump = subprocess.Popen(["ip", "netns", "exec", topo.core, "tcpdump", "-i", "r0", "-w", pcap, "-U", "-s", "128",
                             "udp and src host 192.0.2.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.processes.append(dump)
    loopback_trap = lab.socket(topo.router)
    loopback_trap.bind(("127.0.0.1", 5555))
    loopback_trap.setblocking(False)
    time.sleep(1)  # tcpdump ready

    good = SixClient(lab, topo.clients["mob"].ns)
    good.solicit()
    answered = []
    stop = threading.Event()

    def keep_pinging():
        seq = 0
        while not stop.is_set():
            seq += 1
            good.ping(topology.INET6, seq=seq)
            try:
                reply = good.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply), timeout=0.5)
                answered.append(reply[ICMPv6EchoReply].seq)
            except TimeoutError:
                pass
            time.sleep(0.02)

    pinger = threading.Thread(target=keep_pinging)
    pinger.start()
    before = drops(lab, topo.router)

    attacker = lab.socket(topo.clients["atk"].ns)
    attacker.bind(ATTACKER)
    me = sixbed4(*ATTACKER)
    victim = good.address

    def send(packet) -> None:
        attacker.sendto(bytes(packet), ROUTER)

    try:
        send(IPv6(src=sixbed4("198.18.1.66", 9999), dst=topology.INET6) / ICMPv6EchoRequest())  # spoofed port
        send(IPv6(src=sixbed4("203.0.113.5", 4444), dst=topology.INET6) / ICMPv6EchoRequest())  # spoofed IPv4
        for target in (("0.0.0.0", 5555), ("127.0.0.1", 5555), ("224.0.0.1", 5555), ("255.255.255.255", 5555),
                       ("240.1.2.3", 5555)):
            send(IPv6(src=me, dst=sixbed4(*target)) / ICMPv6EchoRequest())
        fc64_port0 = "fc64:bed:c000:201:c633:6407:0:1"
        send(IPv6(src=me, dst=fc64_port0) / ICMPv6EchoRequest())
        send(IPv6(src=me, dst=topology.INET6) / ICMPv6EchoRequest(data=b"x" * 1300))  # over 1280
        big = bytes(IPv6(src=me, dst=topology.INET6) / ICMPv6EchoRequest(data=b"x" * 1000))
        attacker.sendto(big + b"y" * 64000, ROUTER)  # far longer than the MTU, length field lies too
        send(IPv6(src="::", dst="ff02::2", hlim=254) / ICMPv6ND_RS())  # ND with hop limit != 255
        send(IPv6(src=me, dst=victim, hlim=1) / ICMPv6EchoRequest(seq=4242))
        send(IPv6(src=me, dst=victim, hlim=0) / ICMPv6EchoRequest(seq=4243))
        send(IPv6(src=me, dst="ff02::1") / ICMPv6EchoRequest())

        # RS flood from many forged sources, as fast as we can, FLOOD packets
        rs = bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
        rng = random.Random(6)
        forged = [raw_udp(f"100.{rng.randrange(64, 128)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                          rng.randrange(1024, 65535), topology.ROUTER_V4, 25790, rs) for _ in range(2000)]
        raw = lab.socket(topo.clients["atk"].ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        flood_start = time.monotonic()
        for i in range(FLOOD):
            try:
                raw.sendto(forged[i % len(forged)], (topology.ROUTER_V4, 0))
            except BlockingIOError:
                pass
        flood_seconds = time.monotonic() - flood_start
        raw.close()
        time.sleep(1.5)
    finally:
        stop.set()
        pinger.join()
    after = drops(lab, topo.router)
    rise = {key: after[key] - before.get(key, 0) for key in after}

    assert rise["bad_source"] >= 2
    assert rise["relay_forbidden"] >= 6
    assert rise["too_long"] >= 2
    assert rise["nd_bad_hoplimit"] >= 1
    assert rise["hop_limit"] >= 2
    assert rise["multicast"] >= 1
    # the victim never saw the expired packets
    with pytest.raises(TimeoutError):
        good.recv_matching(lambda p: p.haslayer(ICMPv6EchoRequest) and p[ICMPv6EchoRequest].seq in (4242, 4243),
                           timeout=0.5)
    with pytest.raises(BlockingIOError):
        loopback_trap.recv(2048)

    # the RA budget: burst + rate x time, however many sources the flood had
    received_rs = rise["sixbed4_router_rs_received_total"]
    print(f"flood: {FLOOD} RS in {flood_seconds:.2f}s, router took {received_rs:.0f}, "
          f"sent {rise['sixbed4_router_ra_sent_total']:.0f} RAs")
    assert received_rs > FLOOD * 0.2, f"the flood did not arrive ({received_rs} of {FLOOD})"
    budget = 100 + 200 * (flood_seconds + 2)
    assert rise["sixbed4_router_ra_sent_total"] <= budget
    assert rise["rate_limited"] >= received_rs - budget

    # good traffic kept flowing during the attack
    assert len(answered) >= 10, f"only {len(answered)} pings answered during the attack"

    Lab.stop(dump)
    for packet in rdpcap(pcap):
        if packet.haslayer(UDP):
            assert not forbidden(packet[IP].dst, packet[UDP].dport), packet.summary()
    good.close()
    attacker.close()
    loopback_trap.close()
