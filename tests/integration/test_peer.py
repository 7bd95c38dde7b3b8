"""6bed4peer in network namespaces: behind NAT, against our router, with the real kernel."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, IPv6

from sixbed4.core import addr
from tests.integration import topology
from tests.netlab import Lab

EXTRA_ROUTE = "2001:db8:77::/48"  # announced by the router with -R: an L=0 PIO
KEEPALIVE = "5,3"


@pytest.fixture(scope="module")
def net(fast_path):
    with Lab("pe") as lab:
        topo = topology.build(lab, ("cl1", "cl2"), fast_path)
        topo.start_router("-R", EXTRA_ROUTE)
        yield topo


def launch_peer(net, role: str, *extra: str, name: str) -> subprocess.Popen:
    """6bed4peer on a client of the topology `net`, with the tests' keepalive; proc.name is its log."""
    proc = net.lab.python(net.clients[role].ns, "sixbed4.peer.cli", "-s", topology.ROUTER_V4, "-k", KEEPALIVE,
                          "--fast-path", net.fast_path, *extra, name=name)
    proc.name = name
    return proc


def wait_for_address(net, role: str, proc: subprocess.Popen, timeout: float = 10) -> str:
    """The global address the peer configured on its 6bed4 device (fails if it exits instead)."""
    ns = net.clients[role].ns
    net.lab.wait_for(lambda: address(net.lab, ns) or proc.poll() is not None, timeout, f"address of {role}")
    assert proc.poll() is None, net.lab.log(proc.name)
    return address(net.lab, ns)


@pytest.fixture
def peers(net):
    """Start peers; each is stopped (SIGTERM, then SIGKILL) after the test, pass or fail."""
    started = []
    counter = iter(range(1000))

    def start(role: str, *extra: str, wait: bool = True):
        proc = launch_peer(net, role, *extra, name=f"peer-{role}-{next(counter)}")
        started.append(proc)
        if wait:
            wait_for_address(net, role, proc)
        return proc

    yield start
    for proc in started:
        Lab.stop(proc)


def address(lab: Lab, ns: str) -> str | None:
    out = lab.sh(ns, "ip -6 -o addr show dev 6bed4 scope global", check=False).stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else None


def ping(lab: Lab, ns: str, target: str, count: int = 1, wait: int = 2) -> bool:
    return lab.sh(ns, f"ping -6 -c {count} -W {wait} {target}", check=False).returncode == 0


def nat_public_port(lab: Lab, nat_ns: str, local_port: int) -> int:
    out = lab.sh(nat_ns, f"conntrack -L -p udp --orig-port-src {local_port} 2>/dev/null").stdout
    ports = [f.split("=", 1)[1] for line in out.splitlines() for f in line.split() if f.startswith("dport=")]
    assert ports, f"no conntrack entry for local port {local_port}: {out!r}"
    return int(ports[-1])  # the reply direction's destination port is the mapped one


def make_hook(tmp_path) -> tuple[str, object]:
    record = tmp_path / "hook-calls"
    script = tmp_path / "hook"
    script.write_text(f"#!/bin/sh\necho \"$*\" >> {record}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), record


def calls(record) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def lanid_address(address: str, lanid: int) -> str:
    packed = bytearray(ipaddress.IPv6Address(address).packed)
    packed[14] = (packed[14] & 0xC0) | (lanid >> 8)
    packed[15] = lanid & 0xFF
    return str(ipaddress.IPv6Address(bytes(packed)))


# --- the tests -----------------------------------------------------------------------


def test_peer_behind_nat_gets_its_public_mapping_and_traffic_flows(net, peers):
    lab, client = net.lab, net.clients["cl1"]
    proc = peers("cl1", "-r", "-p", "40001")
    mine = address(lab, client.ns)
    parts = addr.decode(ipaddress.IPv6Address(mine).packed)
    assert parts.ipv4_text == client.public_v4 == "198.51.100.7"
    assert parts.port == nat_public_port(lab, client.nat, 40001) and parts.lanid == 1
    assert parts.prefix == ipaddress.IPv6Network(topology.PREFIX).network_address.packed[:8]

    routes = lab.sh(client.ns, "ip -6 route show dev 6bed4").stdout
    assert "default via fe80:: proto static metric 1042" in routes
    assert f"{EXTRA_ROUTE} via fe80:: proto static metric 1052" in routes
    assert "2001:db8:9:10::/64 via fe80::" in routes
    sysctls = lab.sh(client.ns, "cd /proc/sys/net/ipv6/conf/6bed4 && "
                                "cat addr_gen_mode accept_dad autoconf accept_ra forwarding mtu").stdout.split()
    assert sysctls == ["1", "0", "0", "0", "0", "1280"]

    assert ping(lab, client.ns, topology.INET6, count=2)
    assert ping(lab, net.inet, mine, count=2)
    assert ping(lab, client.ns, topology.HOST_SERVER)  # a port-0 address of the router host, via the /64

    server = lab.start(net.inet, ["iperf3", "-s", "--forceflush", "-B", topology.INET6], "iperf3-server")
    try:
        lab.wait_for(lambda: "listening" in lab.log("iperf3-server").lower(), 5, "iperf3 server")
        for direction in ([], ["-R"]):
            run = lab.sh(client.ns, f"iperf3 -6 -c {topology.INET6} -t 2 {' '.join(direction)}", check=False,
                         timeout=20)
            assert run.returncode == 0 and "receiver" in run.stdout, run.stdout + run.stderr
    finally:
        Lab.stop(server)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    log = lab.log(proc.name)
    if net.fast_path == "on":  # the peer's kernel programs carried the traffic, both ways
        assert "fast path attached: tc ingress of eth0 (router -> peer) and tc egress of 6bed4 (peer -> router)" in log
        took = dict(item.split("=") for item in re.search(r"fast path detached; the kernel took (.*)", log)[1].split())
        # in: the TCP downloads and the acknowledgements of the uploads; out: the echo requests and replies
        # (this host's own TCP leaves its checksum to the device: the Python path sends it)
        assert int(took.get("to_tun", 0)) > 1000 and int(took.get("to_udp", 0)) >= 5, took
    else:
        assert "fast path" not in log


def test_two_peers_behind_two_nats_reach_each_other(net, peers, tmp_path):
    lab = net.lab
    peers("cl1")
    settings = tmp_path / "peer.toml"  # the second peer is configured by file, as under systemd
    settings.write_text('v4server = "192.0.2.1"\nkeepalive = "5,3"\nmetrics = "127.0.0.1:9641"\n')
    peers("cl2", "--config", str(settings))
    one, two = address(lab, net.clients["cl1"].ns), address(lab, net.clients["cl2"].ns)
    assert addr.decode(ipaddress.IPv6Address(two).packed).ipv4_text == "203.0.113.9"
    assert ping(lab, net.clients["cl1"].ns, two, count=2)
    assert ping(lab, net.clients["cl2"].ns, one, count=2)

    fetch = f"{sys.executable} -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9641/metrics\").read().decode())'"
    metrics = lab.sh(net.clients["cl2"].ns, fetch).stdout
    assert f'address="{two}"' in metrics and "sixbed4_peer_address_assigned 1.0" in metrics
    assert 'sixbed4_peer_drops_total{reason="not_from_router"}' in metrics


def rebind_nat(net, role: str, proc) -> tuple[str, str]:
    """Flush the client's NAT mappings: the peer (with -r) must take its new address and forward again.

    Returns the old and the new address."""
    lab, client = net.lab, net.clients[role]
    old = address(lab, client.ns)
    assert ping(lab, client.ns, topology.INET6)

    lab.sh(client.nat, "conntrack -F 2>/dev/null")
    flushed = time.monotonic()
    new = lab.wait_for(lambda: (a := address(lab, client.ns)) != old and a, 5 + 5, "a new address")
    assert time.monotonic() - flushed <= 10
    assert addr.decode(ipaddress.IPv6Address(new).packed).port != addr.decode(ipaddress.IPv6Address(old).packed).port
    lab.wait_for(lambda: ping(lab, client.ns, topology.INET6, wait=1), 5, "ping after rebinding")
    assert ping(lab, net.inet, new)
    assert lab.sh(client.ns, "ip -6 -o addr show dev 6bed4 scope global").stdout.count("inet6") == 1
    assert "NAT mapping changed" in lab.log(proc.name)
    return old, new


def test_nat_rebinding_readdresses_and_traffic_flows_again(net, peers, tmp_path):
    hook, record = make_hook(tmp_path)
    proc = peers("cl1", "-r", "-x", hook)
    old, new = rebind_nat(net, "cl1", proc)

    pid = str(proc.pid)
    expected_offers = lambda a: [  # noqa: E731
        f"{pid} add-range-offer {lanid_address(a, 2)} {lanid_address(a, 0x3FFF)}",
        f"{pid} add-route-offer 2001:db8:77:: 48 {lanid_address(a, 0)}",
    ]
    assert calls(record) == [*expected_offers(old), f"{pid} del-offers", *expected_offers(new)]


def test_unprivileged_peer_readdresses_after_nat_rebinding(net, peers):
    """--user nobody: every thread runs as nobody; the main one keeps CAP_NET_ADMIN to re-address."""
    lab = net.lab
    proc = peers("cl1", "-r", "--user", "nobody", "--metrics", "127.0.0.1:9642")
    assert "running as user nobody with CAP_NET_ADMIN only" in lab.log(proc.name)
    threads = {}
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
        threads[int(task.name)] = (int(status["Uid"].split()[0]), int(status["CapEff"], 16))
    assert len(threads) >= 2  # the metrics server's thread, started before the drop
    assert {uid for uid, _ in threads.values()} == {65534}
    assert threads.pop(proc.pid)[1] == 1 << 12  # CAP_NET_ADMIN only
    assert {caps for _, caps in threads.values()} == {0}
    rebind_nat(net, "cl1", proc)
    assert Lab.stop(proc) == 0
    assert not lab.has_link(net.clients["cl1"].ns, "6bed4")


def test_router_restart_keeps_address_and_ping_resumes(net, peers):
    lab, client = net.lab, net.clients["cl1"]
    peers("cl1", "-r")
    before = address(lab, client.ns)
    assert ping(lab, client.ns, topology.INET6)
    assert Lab.stop(net.router_proc) == 0
    assert not ping(lab, client.ns, topology.INET6, wait=1)
    net.start_router("-R", EXTRA_ROUTE, name=f"router-{time.monotonic_ns()}")
    restarted = time.monotonic()
    lab.wait_for(lambda: ping(lab, client.ns, topology.INET6, wait=1), 2, "ping after router restart")
    assert time.monotonic() - restarted <= 2
    assert address(lab, client.ns) == before


def test_hook_calls_sigterm_cleanup_and_second_instance(net, peers, tmp_path):
    lab, client = net.lab, net.clients["cl2"]
    hook, record = make_hook(tmp_path)
    proc = peers("cl2", "-x", hook)
    mine = address(lab, client.ns)
    pid = str(proc.pid)
    lab.wait_for(lambda: len(calls(record)) >= 2, 5, "hook calls")
    assert calls(record) == [
        f"{pid} add-range-offer {lanid_address(mine, 2)} {lanid_address(mine, 0x3FFF)}",
        f"{pid} add-route-offer 2001:db8:77:: 48 {lanid_address(mine, 0)}",
    ]
    routes = lab.sh(client.ns, "ip -6 route show dev 6bed4").stdout
    assert "default" not in routes and "2001:db8:9:10::/64 via fe80::" in routes  # no -r: the /64 only

    second = lab.python(client.ns, "sixbed4.peer.cli", "-s", topology.ROUTER_V4, name="second")
    assert second.wait(10) == 2
    message = lab.log("second").strip()
    assert len(message.splitlines()) == 1
    assert f"another peer (pid {pid}) runs with the TUN device 6bed4 in this network namespace" in message

    assert Lab.stop(proc, signal.SIGTERM) == 0
    assert not lab.has_link(client.ns, "6bed4")
    assert "2001:db8:77::" not in lab.sh(client.ns, "ip -6 route").stdout
    assert calls(record)[-1] == f"{pid} del-offers" and len(calls(record)) == 3
    assert "SIGTERM received" in lab.log(proc.name)


def test_int_also_cleans_up(net, peers):
    proc = peers("cl1")
    assert Lab.stop(proc, signal.SIGINT) == 0
    assert not net.lab.has_link(net.clients["cl1"].ns, "6bed4")


def test_usage_errors_are_one_line_exit_2():
    for args, text in (([], "no router given: use -s"), (["-s", "1.2.3"], "-s '1.2.3'"),
                       (["-s", "224.0.0.1"], "not a unicast"), (["-s", "192.0.2.1", "-k", "5,0"], "TTL")):
        result = subprocess.run([sys.executable, "-m", "sixbed4.peer.cli", *args], capture_output=True, text=True)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and text in result.stderr, result.stderr
        assert result.stderr.startswith("6bed4peer: ")


def test_hook_that_cannot_run_is_a_usage_error(net, tmp_path):
    """Found at start, not at the first lease: exit 2, one line, nothing created."""
    not_executable = tmp_path / "hook"
    not_executable.write_text("#!/bin/sh\n")
    ns = net.clients["cl1"].ns
    for hook in ("/nonexistent/hook", str(not_executable), "no-such-hook-on-path"):
        result = net.lab.sh(ns, f"{sys.executable} -m sixbed4.peer.cli -s {topology.ROUTER_V4} -x {hook}", timeout=10,
                            check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"6bed4peer: -x {hook}: no such executable file\n"
        assert not net.lab.has_link(ns, "6bed4")


def test_keepalive_uses_its_ttl_and_the_socket_keeps_its_default():
    """The daemon's sender, on loopback: the keepalive leaves with TTL 3, an RS after it with the default."""
    from sixbed4.core.peer import Datagram, PeerConfig, PeerCore
    from sixbed4.peer.daemon import Ticker

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVTTL", 12), 1)  # Linux value
        receiver.settimeout(2)
        core = PeerCore(PeerConfig("127.0.0.1", receiver.getsockname()[1], keepalive=5, keepalive_ttl=3))
        ticker = Ticker(core, sender, applier=None)
        ttls = []
        for datagram in (Datagram(b"", 3, "keepalive"), Datagram(b"rs", None, "rs")):
            ticker.send(datagram)
            data, ancillary, _, _ = receiver.recvmsg(100, socket.CMSG_SPACE(4))
            (level, kind, value), = ancillary
            assert (level, kind) == (socket.IPPROTO_IP, socket.IP_TTL)
            ttls.append((data, int.from_bytes(value, sys.byteorder)))
        assert ttls == [(b"", 3), (b"rs", 64)]
    finally:
        receiver.close()
        sender.close()


def test_existing_tun_device_is_used_and_left_in_place(net, peers):
    lab, ns = net.lab, net.clients["cl1"].ns
    lab.sh(ns, "ip tuntap add dev tunx mode tun")
    try:
        proc = peers("cl1", "-d", "tunx", wait=False)
        mine = lab.wait_for(
            lambda: lab.sh(ns, "ip -6 -o addr show dev tunx scope global").stdout.split()[3:4], 10, "address on tunx"
        )[0].split("/")[0]
        assert mine.endswith(":8001") and not lab.has_link(ns, "6bed4")
        assert ping(lab, ns, topology.INET6) is False  # no -r: only the /64 and the -R route go through the tunnel
        assert ping(lab, ns, topology.HOST_SERVER)
        assert Lab.stop(proc) == 0
        assert lab.has_link(ns, "tunx")
        assert lab.sh(ns, "ip -6 -o addr show dev tunx scope global").stdout == ""
        routes = lab.sh(ns, "ip -6 route show dev tunx").stdout  # the kernel's own fe80::/64 may stay
        assert "via fe80::" not in routes and "2001:db8" not in routes, routes
        assert lab.sh(ns, "cat /proc/sys/net/ipv6/conf/tunx/accept_ra").stdout.strip() == "1"  # restored
    finally:
        lab.sh(ns, "ip link del tunx", check=False)


@contextlib.contextmanager
def fake_router(lab: Lab, ns: str, routes: list[tuple[str, int]]):
    """Answers every RS on ROUTER_V4:25790 with an RA built by scapy: the peer's /114 and these route PIOs."""
    sock = lab.socket(ns)
    sock.bind((topology.ROUTER_V4, addr.PORT_6BED4))
    sock.settimeout(0.1)
    prefix64 = ipaddress.IPv6Network(topology.PREFIX).network_address.packed[:8]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, origin = sock.recvfrom(2048)
            except socket.timeout:
                continue
            if len(data) < 41 or data[6] != 58 or data[40] != 133:  # keepalives and anything but an RS
                continue
            mine = addr.encode(prefix64, socket.inet_aton(origin[0]), origin[1])
            advert = IPv6(src="fe80::", dst="ff02::1", hlim=255) / ICMPv6ND_RA(routerlifetime=0) / \
                ICMPv6NDOptPrefixInfo(prefixlen=114, L=1, A=1, prefix=addr.format_address(mine))
            for prefix, length in routes:
                advert = advert / ICMPv6NDOptPrefixInfo(prefixlen=length, L=0, A=0, prefix=prefix)
            sock.sendto(bytes(advert), origin)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_routes_the_kernel_refuses_are_retried_and_an_announced_default_route_is_not_installed(tmp_path):
    """A router announces ::/0 and two /48s; a route of the operator's is in the way of one of them."""
    with Lab("pr") as lab:
        topo = topology.build(lab, ("mob",))
        ns = topo.clients["mob"].ns
        lab.sh(ns, "ip -6 route add blackhole 2001:db8:c::/48 metric 1052")  # the kernel: "File exists"
        hook, record = make_hook(tmp_path)
        with fake_router(lab, topo.router, [("::", 0), ("2001:db8:c::", 48), ("2001:db8:d::", 48)]):
            proc = launch_peer(topo, "mob", "-x", hook, "-k", "2", name="peer")
            mine = wait_for_address(topo, "mob", proc)
            routes = lambda: lab.sh(ns, "ip -6 route show dev 6bed4").stdout  # noqa: E731
            lab.wait_for(lambda: "2001:db8:d::/48 via fe80::" in routes(), 5, "the route that can be installed")
            assert lab.sh(ns, "ip -6 route show default").stdout == ""  # no -r: no default route
            assert "2001:db8:c::/48" not in routes()
            lab.wait_for(lambda: len(calls(record)) == 3, 5, "the hook")
            router = lanid_address(mine, 0)
            assert calls(record)[1:] == [f"{proc.pid} add-route-offer 2001:db8:c:: 48 {router}",
                                         f"{proc.pid} add-route-offer 2001:db8:d:: 48 {router}"]

            lab.sh(ns, "ip -6 route del blackhole 2001:db8:c::/48 metric 1052")  # out of the way
            lab.wait_for(lambda: "2001:db8:c::/48 via fe80::" in routes(), 2 + 3, "the refused route, retried")
            log = lab.log("peer")
            assert log.count("ignoring route ::/0") == 1 and "only -r makes the tunnel the default route" in log
            refused = [line for line in log.splitlines() if "route 2001:db8:c::/48" in line]
            assert len(refused) == 2, refused  # refused (once, though tried at each keepalive), then in place
            assert " WARNING " in refused[0] and "is in the way" in refused[0] and "trying again" in refused[0]
            assert refused[1].endswith("route 2001:db8:c::/48 is in place now")
            assert proc.poll() is None
            assert Lab.stop(proc) == 0
        assert not lab.has_link(ns, "6bed4") and "2001:db8:" not in lab.sh(ns, "ip -6 route").stdout
