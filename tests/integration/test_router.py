"""The router in network namespaces: NAT'd clients, an IPv6 Internet host, the real kernel."""

from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess

import pytest
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, IPv6

from sixbed4.core import addr
from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.netlab import Lab


@pytest.fixture(scope="module")
def net(fast_path):
    with Lab("rt") as lab:
        topo = topology.build(lab, ("cl1", "cl2", "mob"), fast_path)
        topo.start_router()
        yield topo


@pytest.fixture
def clients(net):
    made = []

    def make(role: str) -> SixClient:
        client = SixClient(net.lab, net.clients[role].ns)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def nat_public_port(net, role: str, local_port: int) -> int:
    """The public port the NAT chose for a client's socket, from its conntrack table."""
    client = net.clients[role]
    out = net.lab.sh(client.nat, f"conntrack -L -p udp --orig-port-src {local_port} 2>/dev/null").stdout
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        # the reply direction fields come last: dport there is the mapped port
        ports = [f.split("=", 1)[1] for f in line.split() if f.startswith("dport=")]
        if ports and fields:
            return int(ports[-1])
    raise AssertionError(f"no conntrack entry for port {local_port}: {out!r}")


def test_rs_behind_nat_gets_ra_with_public_mapping(net, clients):
    client = clients("cl1")
    ra = client.solicit()
    assert ra[IPv6].src == "fe80::" and ra[IPv6].hlim == 255
    assert ra[ICMPv6ND_RA].routerlifetime == 0xFFFF
    pio = ra[ICMPv6NDOptPrefixInfo]
    assert (pio.prefixlen, pio.L, pio.A) == (114, 1, 1)
    assert pio.validlifetime == pio.preferredlifetime == 0xFFFFFFFF
    # the checksum scapy computes must equal the one on the wire
    wire = ra.copy()
    del wire[ICMPv6ND_RA].cksum
    assert IPv6(bytes(wire))[ICMPv6ND_RA].cksum == ra[ICMPv6ND_RA].cksum

    parts = addr.decode(ipaddress.IPv6Address(pio.prefix).packed)
    assert parts.ipv4_text == "198.51.100.7"
    local_port = client.sock.getsockname()[1]
    assert parts.port == nat_public_port(net, "cl1", local_port)
    assert parts.prefix == ipaddress.IPv6Network(topology.PREFIX).network_address.packed[:8]


def test_client_reaches_internet_host_and_back(net, clients):
    client = clients("cl1")
    client.solicit()
    client.ping(topology.INET6, seq=7)
    reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))
    assert reply.src == topology.INET6 and reply.dst == client.address
    assert reply[ICMPv6EchoReply].seq == 7 and reply[ICMPv6EchoReply].data == b"6bed4"

    # and the Internet host reaches the client with the real ping tool
    ping = subprocess.Popen(
        ["ip", "netns", "exec", net.inet, "ping", "-6", "-c", "1", "-W", "3", client.address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    request = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoRequest))
    assert request.src == topology.INET6 and request.dst == client.address
    echo = request[ICMPv6EchoRequest]
    client.send(IPv6(src=client.address, dst=topology.INET6) / ICMPv6EchoReply(id=echo.id, seq=echo.seq, data=echo.data))
    output, _ = ping.communicate(timeout=10)
    assert ping.returncode == 0, output


def test_two_clients_behind_two_nats_reach_each_other(net, clients):
    one, two = clients("cl1"), clients("cl2")
    one.solicit()
    two.solicit()
    # cl2 must open its NAT towards the router first: a keepalive does that
    two.sock.sendto(b"", ("192.0.2.1", 25790))
    one.ping(two.address, seq=3, hlim=64)
    request = two.recv_matching(lambda p: p.haslayer(ICMPv6EchoRequest))
    assert request.src == one.address and request.dst == two.address
    assert request.hlim == 63  # decremented once by the relay, not twice as the C router does
    echo = request[ICMPv6EchoRequest]
    two.send(IPv6(src=two.address, dst=one.address) / ICMPv6EchoReply(id=echo.id, seq=echo.seq, data=echo.data))
    reply = one.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))
    assert reply.src == two.address and reply[ICMPv6EchoReply].seq == 3


def test_client_reaches_port0_server_on_router_host(net, clients):
    client = clients("mob")
    ra = client.solicit()
    parts = addr.decode(ipaddress.IPv6Address(ra[ICMPv6NDOptPrefixInfo].prefix).packed)
    assert parts.ipv4_text == "198.18.0.50" and parts.port == client.sock.getsockname()[1]
    client.ping(topology.HOST_SERVER, seq=11)
    reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))
    assert reply.src == topology.HOST_SERVER and reply[ICMPv6EchoReply].seq == 11


def test_spoofed_source_is_not_forwarded(net, clients):
    client = clients("mob")
    client.solicit()
    spoofed = str(ipaddress.IPv6Address(client.address) + 0x10000)  # another port in the address
    listener = net.lab.socket(net.inet, socket.AF_INET6, socket.SOCK_RAW, 58)
    listener.settimeout(1)
    try:
        client.send(IPv6(src=spoofed, dst=topology.INET6) / ICMPv6EchoRequest(seq=99))
        with pytest.raises(TimeoutError):
            while True:
                data, _ = listener.recvfrom(2048)
                if data[0] == 128 and data[6:8] == b"\x00\x63":  # our echo request, seq 99
                    break
    finally:
        listener.close()
    # and the client was told its mapping: a corrective RA (old /114 dead, new one alive)
    ra = client.recv_matching(lambda p: p.haslayer(ICMPv6ND_RA))
    assert ra.dst == "ff02::1"
    pios = [ra[ICMPv6NDOptPrefixInfo:i] for i in range(1, 3)]
    assert pios[0].validlifetime == 0 and pios[1].prefix == client.prefix114


def test_sigterm_removes_tun_and_exits_zero():
    with Lab("rx") as lab:
        topo = topology.build(lab, ())
        proc = topo.start_router(name="router2")
        assert lab.has_link(topo.router, "6bed4")
        assert Lab.stop(proc, signal.SIGTERM) == 0
        assert not lab.has_link(topo.router, "6bed4")
        routes = lab.sh(topo.router, "ip -6 route").stdout
        assert "2001:db8:9:10::/64" not in routes


def test_port_in_use_exits_2_and_leaves_nothing(net):
    proc = net.lab.python(net.router, "sixbed4.router.cli", "-l", topology.ROUTER_V4, "-L", topology.PREFIX,
                          "--tun-name", "6bed4b", name="dup")
    assert proc.wait(10) == 2
    log = net.lab.log("dup")
    assert "cannot bind UDP 192.0.2.1:25790" in log and "already in use" in log
    assert len(log.strip().splitlines()) == 1
    assert not net.lab.has_link(net.router, "6bed4b")
