"""Batching in the router's data path, seen from outside: what arrives, and in how many kernel packets.

The router is stopped (SIGSTOP) while a burst is queued, so that it finds the
whole burst at once, as under load.  Packets must arrive complete, in order and
with correct checksums (captured on a link without offloads, so the checksums
on the wire are final, and checked by scapy); nftables counters in the router
host show that runs crossed its kernel as fewer, larger GSO packets.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import socket
import struct

import pytest
from scapy.layers.inet import TCP
from scapy.layers.inet6 import UDP, ICMPv6EchoRequest, IPv6

from sixbed4.io.tun import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, TUNSETIFF, TUNSETOFFLOAD, Tun
from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.netlab import Lab

pytestmark = pytest.mark.alone  # how the data path joins packets depends on what else runs

FLOW_A, FLOW_B, FLOW_TCP = 5000, 5001, 6000
SO_RCVBUFFORCE = 33
METRICS_PORT = 9641


@pytest.fixture(scope="module")
def net():
    with Lab("bt") as lab:
        topo = topology.build(lab, ("cl1",))
        # The uplink behaves like a NIC without offloads: GSO packets are split and
        # checksummed in software before they leave, so a capture sees the wire.
        lab.sh(topo.router, "ethtool -K up6 tx-udp-segmentation off tx-checksumming off")
        lab.sh(topo.router, "nft add table inet bt"
                            " && nft add chain inet bt forwarded '{ type filter hook forward priority 0; }'"
                            " && nft add chain inet bt sent '{ type filter hook output priority 0; }'"
                            f" && nft add rule inet bt forwarded iifname '\"6bed4\"' udp dport {FLOW_A} counter"
                            " && nft add chain inet bt forwarded_tcp '{ type filter hook forward priority 0; }'"
                            f" && nft add rule inet bt forwarded_tcp iifname '\"6bed4\"' tcp dport {FLOW_TCP} counter"
                            " && nft add rule inet bt sent udp sport 25790 counter")
        topo.start_router("--metrics", f"127.0.0.1:{METRICS_PORT}")
        yield topo


@pytest.fixture
def client(net):
    one = SixClient(net.lab, net.clients["cl1"].ns)
    one.solicit()
    yield one
    one.close()


def nft_packets(net, chain: str) -> int:
    out = net.lab.sh(net.router, f"nft list chain inet bt {chain}").stdout
    return int(out.split("counter packets ")[1].split()[0])


class RouterPaused:
    """SIGSTOP the router for the block: everything sent meanwhile waits in its queues."""

    def __init__(self, net):
        self.pid = net.router_proc.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


def router_counters(net) -> dict[str, float]:
    samples = net.lab.metrics(net.router, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    names = ("udp_in", "udp_in_bytes", "to_tun", "tun_in", "tun_in_bytes", "to_udp")
    return {name: samples[(f"sixbed4_router_{name}_total", ())] for name in names}


def assert_counted(net, before: dict[str, float], sent: list[IPv6]) -> None:
    """Every datagram counted, also those the data path judged as repeats of the one before."""
    after = router_counters(net)
    assert after["udp_in"] - before["udp_in"] == len(sent)
    assert after["udp_in_bytes"] - before["udp_in_bytes"] == sum(len(bytes(p)) for p in sent)
    assert after["to_tun"] - before["to_tun"] == len(sent)


def through_paused_router(net, client, sent: list[IPv6], also: dict[int, IPv6] | None = None) -> list[IPv6]:
    """Send `sent` (and `also`, inserted before those indexes) from the client while the router is
    stopped; what the Internet host's link carries from the client's address."""
    sniffer = net.lab.socket(net.inet, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86DD))
    sniffer.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # the whole burst arrives at once
    sniffer.settimeout(5)
    source = socket.inet_pton(socket.AF_INET6, client.address)
    try:
        with RouterPaused(net):
            for i, packet in enumerate(sent):
                if also and i in also:
                    client.send(also[i])
                client.send(packet)
        received = []
        while len(received) < len(sent):  # dissected after the burst: scapy is slow
            data = sniffer.recv(65536)
            if data[8:24] == source:
                received.append(data)
    finally:
        sniffer.close()
    return [IPv6(data) for data in received]


def assert_forwarded_unchanged(sent: list[IPv6], got: list[IPv6], layer) -> None:
    """Every byte as sent but the hop limit (forwarded once), in order; checksums as scapy computes them."""
    assert all(p.hlim == 63 for p in got)
    assert [bytes(p)[:7] + b"\x40" + bytes(p)[8:] for p in got] == [bytes(p) for p in sent]
    for packet in got:
        recomputed = packet.copy()
        del recomputed[layer].chksum, recomputed.plen
        assert IPv6(bytes(recomputed))[layer].chksum == packet[layer].chksum


def test_udp_runs_to_the_tun_arrive_intact_in_order_as_fewer_kernel_packets(net, client):
    sent: list[IPv6] = []
    for i in range(120):
        size = 1000 if i < 110 else 400  # a run, then a shorter tail
        sent.append(IPv6(src=client.address, dst=topology.INET6) / UDP(sport=4000, dport=FLOW_A)
                    / f"A{i:04d}".encode().ljust(size, b"a"))
        if i % 25 == 24:  # other traffic in between breaks the run
            sent.append(IPv6(src=client.address, dst=topology.INET6) / UDP(sport=4000, dport=FLOW_B)
                        / f"B{i:04d}".encode().ljust(300, b"b"))
            sent.append(IPv6(src=client.address, dst=topology.INET6) / ICMPv6EchoRequest(seq=i))
    before, counted = nft_packets(net, "forwarded"), router_counters(net)
    received = through_paused_router(net, client, sent)
    assert_counted(net, counted, sent)
    for flow in (FLOW_A, FLOW_B):
        assert_forwarded_unchanged([p for p in sent if p.haslayer(UDP) and p[UDP].dport == flow],
                                   [p for p in received if p.haslayer(UDP) and p[UDP].dport == flow], UDP)
    assert sum(p.haslayer(ICMPv6EchoRequest) for p in received) == 4
    forwarded = nft_packets(net, "forwarded") - before
    assert 1 < forwarded <= 120 // 10, f"{forwarded} kernel packets for 120 datagrams of one flow"


def test_a_datagram_that_differs_from_a_run_only_in_its_source_is_judged_anew(net, client):
    # Same peer, same size, same everything but another port in the source address:
    # the data path must not take it for a repeat of the run's verdict.
    def datagram(source: str, i: int) -> IPv6:
        return (IPv6(src=source, dst=topology.INET6) / UDP(sport=4000, dport=FLOW_A)
                / f"S{i:04d}".encode().ljust(800, b"s"))

    spoofed = str(ipaddress.IPv6Address(client.address) + 0x10000)
    sent = [datagram(client.address, i) for i in range(20)]
    before = net.lab.metrics(net.router, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    received = through_paused_router(net, client, sent, also={10: datagram(spoofed, 99)})
    after = net.lab.metrics(net.router, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    assert [bytes(p[UDP].payload)[:5] for p in received] == [f"S{i:04d}".encode() for i in range(20)]
    bad_source = ("sixbed4_router_drops_total", (("reason", "bad_source"),))
    assert after[bad_source] - before[bad_source] == 1


def test_tcp_segments_in_sequence_arrive_intact_in_order_as_fewer_kernel_packets(net, client):
    options = [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))]
    sent = []
    for i in range(100):
        flags = "PA" if i % 40 == 39 else "A"  # PSH ends a run
        sent.append(IPv6(src=client.address, dst=topology.INET6)
                    / TCP(sport=4000, dport=FLOW_TCP, seq=10_000 + 1000 * i, ack=1, flags=flags, window=500,
                          options=options) / f"T{i:04d}".encode().ljust(1000, b"t"))
    before, counted = nft_packets(net, "forwarded_tcp"), router_counters(net)
    received = through_paused_router(net, client, sent)
    assert_counted(net, counted, sent)
    assert_forwarded_unchanged(sent, [p for p in received if p.haslayer(TCP)], TCP)
    forwarded = nft_packets(net, "forwarded_tcp") - before
    assert 1 < forwarded <= 100 // 10, f"{forwarded} kernel packets for 100 segments of one connection"


def test_packets_from_the_tun_for_one_peer_leave_as_fewer_udp_sends(net, client):
    # 150 packets: more than the read ring's 65 slots, so runs cross its end
    client.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    sender = net.lab.socket(net.inet, socket.AF_INET6)
    payloads = [f"T{i:04d}".encode().ljust(1000, b"t") for i in range(150)]
    before, counted = nft_packets(net, "sent"), router_counters(net)
    try:
        with RouterPaused(net):
            for payload in payloads:
                sender.sendto(payload, (client.address, 7000))
    finally:
        sender.close()
    got = []
    while len(got) < len(payloads):
        packet, origin = client.recv()
        assert origin == (topology.ROUTER_V4, 25790)
        if packet.haslayer(UDP) and packet[UDP].dport == 7000:
            got.append(packet)
    assert [bytes(p[UDP].payload) for p in got] == payloads
    assert all(p.src == topology.INET6 and p.dst == client.address for p in got)
    sends = nft_packets(net, "sent") - before
    assert 1 <= sends <= 150 // 10, f"{sends} UDP sends for 150 packets to one peer"
    after = router_counters(net)  # every packet counted, also those judged as repeats
    assert after["to_udp"] - counted["to_udp"] == 150
    assert after["tun_in_bytes"] - counted["tun_in_bytes"] >= 150 * (48 + 1000)


def test_tun_queue_holds_as_much_as_the_socket_buffer(net):
    # the kernel's default of 500 packets overflows in a 2 ms scheduling hiccup at full rate
    link = net.lab.sh(net.router, "ip link show dev 6bed4").stdout
    assert "mtu 1280" in link and "qlen 2000" in link, link


def test_a_turn_for_many_peers_reaches_each_one_in_order(net):
    # 16 peers (one namespace, 16 NAT mappings); datagrams for them interleaved, plus a
    # run for the first: all are read in one turn, each must reach its own peer.
    peers = [SixClient(net.lab, net.clients["cl1"].ns) for _ in range(16)]
    sender = net.lab.socket(net.inet, socket.AF_INET6)
    try:
        for peer in peers:
            peer.solicit()
        assert len({peer.address for peer in peers}) == 16
        plan = [(0, f"run{i}".encode().ljust(700, b"r")) for i in range(5)]
        plan += [(p, f"p{p}-{i}".encode().ljust(200 + p, b"x")) for i in range(3) for p in range(16)]
        with RouterPaused(net):
            for p, payload in plan:
                sender.sendto(payload, (peers[p].address, 7001))
        for p, peer in enumerate(peers):
            expected = [payload for q, payload in plan if q == p]
            got = []
            while len(got) < len(expected):
                packet, _ = peer.recv()
                if packet.haslayer(UDP) and packet[UDP].dport == 7001:
                    assert packet.dst == peer.address
                    got.append(bytes(packet[UDP].payload))
            assert got == expected
    finally:
        sender.close()
        for peer in peers:
            peer.close()


def test_offloads_an_earlier_user_left_on_an_existing_device_are_turned_off():
    # With offloads on, the kernel would hand over GSO super-packets and packets whose
    # checksum is still to be computed; the daemons read finished packets only.
    tunsetpersist, tun_f_csum, tun_f_tso6 = 0x400454CB, 0x01, 0x04
    with Lab("bo") as lab:
        ns = lab.ns("dev")
        with lab.inside(ns):
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"6bed4p", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
            fcntl.ioctl(fd, TUNSETOFFLOAD, tun_f_csum | tun_f_tso6)
            fcntl.ioctl(fd, tunsetpersist, 1)
            os.close(fd)

        def offloads() -> str:
            return lab.sh(ns, "ethtool -k 6bed4p | grep -E '^(tx-checksumming|tcp-segmentation-offload):'").stdout

        assert offloads().count(": on") == 2, offloads()
        with lab.inside(ns):
            tun = Tun.open("6bed4p", create=False)
        try:
            assert offloads().count(": off") == 2, offloads()
        finally:
            tun.close()
