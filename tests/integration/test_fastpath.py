"""The kernel fast path in network namespaces: what it takes, what it leaves, its life cycle.

The router's other namespace tests run with the fast path on and off (the
`fast_path` fixture); these check what only the fast path has: the kernel's
own counters, the hop limit through the kernel, checksums of datagrams it
built, hooks that go with the process or are taken back after a kill, two
routers on one host, and `--fast-path on/auto` where it cannot be used.

Each runs twice: as on Linux 6.6+ (tcx links, the programs for 6.6) and as on
5.14-6.5, Debian 12's 6.1 among them (clsact filters, the COMPAT_5_10 build).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPv6

from sixbed4.core import addr
from sixbed4.fastpath.loader import KERNEL_OVERRIDE
from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.integration.test_peer import address, launch_peer, ping, wait_for_address
from tests.netlab import ROOT, Lab

METRICS = "http://127.0.0.1:9642/metrics"


@pytest.fixture(scope="module", autouse=True, params=["6.6", "5.14"], ids=["tcx", "clsact"])
def kernel(request):
    """The kernel the daemons started in these tests take this one for (KERNEL_OVERRIDE)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KERNEL_OVERRIDE, request.param)
        yield request.param


@pytest.fixture(scope="module")
def net(kernel):
    with Lab("fp") as lab:
        topo = topology.build(lab, ("cl1", "cl2", "mob"), "on")
        topo.start_router("--metrics", "127.0.0.1:9642")
        yield topo


@pytest.fixture
def clients(net):
    made = []

    def make(role: str, **kw) -> SixClient:
        client = SixClient(net.lab, net.clients[role].ns, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def kernel_counters(net) -> dict[str, float]:
    """The fast path's counters, from the router's metrics."""
    samples = net.lab.metrics(net.router, METRICS)
    return {dict(labels)["event"]: value for (name, labels), value in samples.items()
            if name == "sixbed4_router_fastpath_total"}


def delta(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def hooks_of(lab: Lab, ns: str, log: str) -> set[str]:
    """The hooks the router's log says it attached, as far as they are still there: for tcx, the
    ids of the links; for clsact, the names of the filters (program name and id)."""
    tcx = re.findall(r"tcx links ([\d, ]+)", log)
    if tcx:
        links = tcx[-1].split(", ")
        return {link for link in links if lab.sh(ns, f"bpftool link show id {link}", check=False).returncode == 0}
    assert "tc filters (clsact) pref" in log, log
    return filters(lab, ns)


def filters(lab: Lab, ns: str) -> set[str]:
    """The names of the BPF filters on the uplink's ingress and the TUN device's egress."""
    shown = lab.sh(ns, "tc filter show dev eth1 ingress; tc filter show dev 6bed4 egress 2>/dev/null", check=False)
    return set(re.findall(r"\b(\w+:\[\d+\])", shown.stdout))


def test_both_directions_go_through_the_kernel_with_one_hop_limit_decrement(net, clients):
    client = clients("mob")
    client.solicit()
    before = kernel_counters(net)
    client.ping(topology.INET6, seq=1, hlim=64)
    reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))
    assert reply.hlim == 63  # the Internet host's 64, one decrement by the router host's kernel
    client.ping(topology.INET6, seq=2, hlim=2)  # a second decrement would have made it expire
    reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply) or p.haslayer(ICMPv6TimeExceeded))
    assert reply.haslayer(ICMPv6EchoReply) and reply[ICMPv6EchoReply].seq == 2
    taken = delta(before, kernel_counters(net))
    assert taken["to_tun"] == 2 and taken["udp_in"] == 2 and taken["to_udp"] == 2, taken

    # hop limit 1: not the fast path's; the kernel answers Time Exceeded after the TUN write
    client.ping(topology.INET6, seq=3, hlim=1)
    reply = client.recv_matching(lambda p: p.haslayer(ICMPv6TimeExceeded))
    assert reply.src == topology.ROUTER_UPLINK6 or reply.src.startswith("2001:db8:9:10:")
    assert delta(before, kernel_counters(net))["udp_passed"] >= 1


def test_relay_between_peers_is_taken_and_decrements_once(net, clients):
    one, two = clients("cl1"), clients("cl2")
    one.solicit()
    two.solicit()
    two.sock.sendto(b"", two.router)  # open cl2's NAT towards the router
    before = kernel_counters(net)
    one.ping(two.address, seq=5, hlim=64)
    request = two.recv_matching(lambda p: p.haslayer(ICMPv6EchoRequest))
    assert request.src == one.address and request.hlim == 63
    assert delta(before, kernel_counters(net)).get("relayed") == 1


def test_datagrams_to_peers_carry_finished_checksums(net, clients):
    """A packet the kernel has finished goes through the kernel; one whose checksum a local sender
    left to the device (checksum offload on the Internet host's veth) through the Python path."""
    client = clients("mob")
    client.solicit()
    sender = net.lab.socket(net.inet, socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        before = kernel_counters(net)
        for size in (1, 100, 1000, 1231):  # odd and even lengths, up to the 1280-byte MTU
            payload = (bytes(range(256)) * 5)[:size]
            sender.sendto(payload, (client.address, 9000))
            packet = client.recv_matching(lambda p: p.haslayer(UDP) and p[UDP].dport == 9000)
            assert bytes(packet[UDP].payload) == payload
            checksum = packet[UDP].chksum
            del packet[UDP].chksum
            assert IPv6(bytes(packet))[UDP].chksum == checksum  # finished before it was put into UDP
        taken = delta(before, kernel_counters(net))
        assert taken.get("tun_passed", 0) >= 4 and "to_udp" not in taken, taken
        before = kernel_counters(net)
        for size in (1, 100, 1000, 1232):  # ping: the kernel finishes ICMPv6 checksums itself
            net.lab.sh(net.inet, f"ping -6 -c 1 -s {size} -W 0.1 {client.address}", check=False)
            request = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoRequest))
            checksum = request[ICMPv6EchoRequest].cksum
            del request[ICMPv6EchoRequest].cksum
            assert IPv6(bytes(request))[ICMPv6EchoRequest].cksum == checksum
        # their outer checksums: the client's kernel checked them (eth1 has no checksum offload)
        assert delta(before, kernel_counters(net)).get("to_udp") == 4
    finally:
        sender.close()


def test_our_peer_works_through_the_fast_path(net):
    lab = net.lab
    procs = [launch_peer(net, role, "-r", name=f"peer-{role}") for role in ("cl1", "cl2")]
    try:
        one, two = (wait_for_address(net, role, proc) for role, proc in zip(("cl1", "cl2"), procs))
        before = kernel_counters(net)
        assert ping(lab, net.clients["cl1"].ns, two, count=2)
        assert ping(lab, net.clients["cl2"].ns, topology.INET6, count=2)
        assert ping(lab, net.inet, one, count=2)
        taken = delta(before, kernel_counters(net))
        assert taken.get("relayed", 0) >= 4 and taken.get("to_tun", 0) >= 2 and taken.get("to_udp", 0) >= 2, taken
    finally:
        for proc in procs:
            Lab.stop(proc)


def test_after_sigkill_nothing_stale_stays_attached_and_a_restart_takes_over(net, clients, kernel):
    lab = net.lab
    old = hooks_of(lab, net.router, lab.log("router"))
    assert len(old) == 2, old
    Lab.stop(net.router_proc, signal.SIGKILL)
    left = hooks_of(lab, net.router, lab.log("router"))
    if kernel == "6.6":
        assert not left  # the links went with the process
    else:  # the TUN device went with the process, and its filter; the uplink's stays, in the record
        assert left == {name for name in old if name.startswith("uplink_in:")}, (old, left)
    net.start_router("--metrics", "127.0.0.1:9642", name="router-restarted")
    new = hooks_of(lab, net.router, lab.log("router-restarted"))
    assert len(new) == 2 and not new & old, (old, new)  # the old filter was taken back before
    if kernel != "6.6":
        assert "took back 2 change(s) that a killed router" in lab.log("router-restarted")  # filter, clsact
    client = clients("mob")
    client.solicit()
    client.ping(topology.INET6, seq=9)
    assert client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))[ICMPv6EchoReply].seq == 9
    assert kernel_counters(net)["to_tun"] == 1  # one new router, one kernel path: each packet handled once

    Lab.stop(net.router_proc)  # SIGTERM: detached on the way out
    assert not hooks_of(lab, net.router, lab.log("router-restarted")) and not filters(lab, net.router)
    assert "clsact" not in lab.sh(net.router, "tc qdisc show dev eth1").stdout  # added by the router, removed
    assert "fast path detached; the kernel took " in lab.log("router-restarted")
    net.start_router("--metrics", "127.0.0.1:9642", name="router-again")


def test_two_routers_on_one_host_each_take_their_own(lab):
    topo = topology.build(lab, ("mob",), "on")
    lab.sh(topo.router, "ip addr add 192.0.2.2/24 dev eth1")
    first = topo.start_router("--metrics", "127.0.0.1:9642", name="first")
    second = lab.python(topo.router, "sixbed4.router.cli", "-l", "192.0.2.2", "-L", "2001:db8:9:20::/64",
                        "--tun-name", "6bed4b", "--fast-path", "on", "--metrics", "127.0.0.1:9643", name="second")
    lab.wait_for(lambda: "serving" in lab.log("second") or second.poll() is not None, what="second router")
    assert second.poll() is None, lab.log("second")
    a = SixClient(lab, topo.clients["mob"].ns)
    b = SixClient(lab, topo.clients["mob"].ns, router=("192.0.2.2", 25790))
    try:
        for n, client in enumerate((a, b, a, b)):
            if client.address is None:
                client.solicit()
            client.ping(topology.INET6, seq=n)
            reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))
            assert reply.dst == client.address and reply[ICMPv6EchoReply].seq == n
    finally:
        a.close()
        b.close()
    assert b.address.startswith("2001:db8:9:20:") and a.address.startswith("2001:db8:9:10:")
    for port in (9642, 9643):
        samples = lab.metrics(topo.router, f"http://127.0.0.1:{port}/metrics")
        taken = {dict(labels)["event"]: v for (name, labels), v in samples.items()
                 if name == "sixbed4_router_fastpath_total"}
        assert taken["to_tun"] == 2 and taken["to_udp"] == 2, (port, taken)
    Lab.stop(first)
    Lab.stop(second)


@pytest.mark.parametrize("options, message", [
    (["--uplink", "lo"], "uplink lo is not an Ethernet device"),
    (["-x", "4000"], "bound to 127.0.0.1 (-x)"),
    (["--uplink", "nosuch0"], "no device nosuch0"),
])
def test_on_that_cannot_be_used_is_an_error_and_auto_says_why(lab, options, message):
    topo = topology.build(lab, ())
    cmd = [sys.executable, "-m", "sixbed4.router.cli", "-l", topology.ROUTER_V4, "--fast-path", "on", *options]
    result = subprocess.run(["ip", "netns", "exec", topo.router, *cmd], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert not lab.has_link(topo.router, "6bed4")  # nothing left behind

    topo.fast_path = "auto"
    proc = topo.start_router(*options, name="auto")
    log = lab.log("auto")
    assert "fast path not used: " in log and message in log and "Python path" in log
    Lab.stop(proc)



def test_a_new_address_of_the_host_is_never_a_relay_target(lab):
    """The programs learn the host's IPv4 addresses as they come (here after dropping to nobody)."""
    topo = topology.build(lab, ("mob",), "on")
    topo.start_router("--user", "nobody", "--metrics", "127.0.0.1:9642")
    client = SixClient(lab, topo.clients["mob"].ns)
    try:
        client.solicit()
        prefix = ipaddress.IPv6Network(topology.PREFIX).network_address.packed[:8]
        target = addr.format_address(addr.encode(prefix, addr.parse_ipv4("198.18.0.99"), 5000, 1))
        lab.sh(topo.router, "ip addr add 198.18.0.99/32 dev lo")
        lab.wait_for(lambda: "198.18.0.99" in lab.sh(topo.router, "ip -4 addr show dev lo").stdout, what="address")
        samples = {}

        def refused() -> bool:
            nonlocal samples
            client.ping(target, seq=1)
            samples = lab.metrics(topo.router, METRICS)
            return samples[("sixbed4_router_drops_total", (("reason", "relay_forbidden"),))] >= 1

        lab.wait_for(refused, timeout=5, what="the relay to the host's new address refused")
        assert samples[("sixbed4_router_fastpath_total", (("event", "relayed"),))] == 0
    finally:
        client.close()
