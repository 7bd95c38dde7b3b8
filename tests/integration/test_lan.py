"""6bed4peer --lan: the gateway of a home LAN, with real DHCPv6 server (dnsmasq) and client (dhclient).

    inet6 --- rtr (6bed4router) --- core4 --- nat1 --- cl1: 6bed4peer --lan lan0
                                                         lan0: a bridge
                                                  /          |          \\
                                          h1 (dhclient)  h2 (dhclient)  t1 (SLAAC only)

The LAN hosts are made anew for each test (their addresses and routes come
only from what the gateway advertises); the Internet side is shared.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptRDNSS

from sixbed4.core import addr
from tests.integration import topology
from tests.integration.test_peer import make_hook, calls, lanid_address
from tests.netlab import Lab

KEEPALIVE = 5  # seconds: -k 5,3
BRIDGE_MAC = "02:00:5e:10:00:01"
GATEWAY_LINK_LOCAL = "fe80::5eff:fe10:1"  # of BRIDGE_MAC (EUI-64)
HOSTS = ("h1", "h2", "t1")


@dataclass
class Home:
    lab: Lab  # the LAN hosts' own lab: gone after the test
    net: topology.Topology
    gateway: str  # the gateway's namespace (cl1)
    hosts: dict[str, str]  # name -> namespace
    state_dir: Path

    def sh(self, host: str, command: str, check: bool = True, timeout: float = 60):
        return self.lab.sh(self.hosts[host], command, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def net(fast_path):
    """The router and the gateway with their kernel fast paths (--fast-path on), and without."""
    with Lab("lan") as lab:
        topo = topology.build(lab, ("cl1",), fast_path)
        topo.start_router()
        yield topo


@pytest.fixture
def home(net):
    """A bridge lan0 in the gateway's namespace with three fresh hosts on it; all removed afterwards.

    The state directory is one the DHCPv6 server's user can walk to (pytest's own are root's alone).
    """
    gateway = net.clients["cl1"].ns
    state = Path(tempfile.mkdtemp(prefix="sixbed4-lan-"))
    state.chmod(0o755)
    with Lab("lh") as hosts_lab:
        net.lab.sh(gateway, f"ip link add lan0 address {BRIDGE_MAC} type bridge && ip link set lan0 up")
        try:
            hosts = {}
            for name in HOSTS:
                ns = hosts_lab.ns(name)
                hosts_lab.link(gateway, f"p{name}", ns, "eth0")
                hosts_lab.sh(ns, "ethtool -K eth0 tx off >/dev/null")  # checksums finished, as from a wire
                net.lab.sh(gateway, f"ip link set p{name} master lan0")
                hosts[name] = ns
            yield Home(hosts_lab, net, gateway, hosts, state / "state")
        finally:
            for proc in hosts_lab.processes:  # gateways first, and gently: they clean up after themselves
                Lab.stop(proc)
            for name in HOSTS:  # at once: a deleted namespace takes its end of a pair along only later
                net.lab.sh(gateway, f"ip link del p{name}", check=False)
            hosts_lab.close()
            # what a SIGKILLed gateway leaves until the next start (the next test starts from a clean namespace)
            net.lab.sh(gateway, "ip link del lan0; nft delete table ip6 sixbed4_lan_lan0; "
                                "sysctl -qw net.ipv6.conf.all.forwarding=0", check=False)
            shutil.rmtree(state)


def start_gateway(home: Home, mode: str, *extra: str, name: str = "gw") -> subprocess.Popen:
    proc = home.lab.python(home.gateway, "sixbed4.peer.cli", "-s", topology.ROUTER_V4, "-k", f"{KEEPALIVE},3",
                           "--lan", "lan0", "--lan-mode", mode, "--state-dir", str(home.state_dir),
                           "--fast-path", home.net.fast_path, *extra, name=name)
    proc.name = name
    home.lab.wait_for(lambda: tunnel_address(home) or proc.poll() is not None, 10, "the gateway's address")
    assert proc.poll() is None, home.lab.log(name)
    if mode != "nat66":
        home.lab.wait_for(lambda: "hands out" in home.lab.log(name), 5, "the DHCPv6 server")
    return proc


def tunnel_address(home: Home) -> str | None:
    out = home.net.lab.sh(home.gateway, "ip -6 -o addr show dev 6bed4 scope global", check=False).stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else None


def dhcp_client(home: Home, host: str) -> subprocess.Popen:
    """dhclient -6 in the foreground, its lease and DUID in its own file."""
    files = home.state_dir.parent / f"dhclient-{host}"
    return home.lab.start(home.hosts[host], ["dhclient", "-6", "-d", "-v", "-lf", f"{files}.leases",
                                             "-pf", f"{files}.pid", "eth0"], f"dhclient-{host}")


def global_addresses(home: Home, host: str) -> list[str]:
    return eth0_global_addresses(home.lab, home.hosts[host])


def eth0_global_addresses(lab: Lab, ns: str) -> list[str]:
    out = lab.sh(ns, "ip -6 -o addr show dev eth0 scope global", check=False).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def in_114(address: str, prefix_address: str) -> bool:
    return ipaddress.IPv6Address(address) in ipaddress.IPv6Network(f"{prefix_address}/114", strict=False)


def wait_dhcp_address(home: Home, host: str, timeout: float = 15) -> str:
    """The host's address from the gateway's /114 (by DHCPv6)."""
    def found():
        mine = tunnel_address(home)
        return mine and next((a for a in global_addresses(home, host) if in_114(a, mine)), None)
    return home.lab.wait_for(found, timeout, f"a DHCPv6 address on {host}")


def ula_prefix(home: Home) -> ipaddress.IPv6Network:
    lines = (home.state_dir / "lan0.ula").read_text().splitlines()
    return ipaddress.IPv6Network([line for line in lines if not line.startswith("#")][0])


def wait_ula_address(home: Home, host: str, timeout: float = 10) -> str:
    ula = ula_prefix(home)
    return home.lab.wait_for(lambda: next((a for a in global_addresses(home, host)
                                           if ipaddress.IPv6Address(a) in ula), None), timeout, f"a ULA on {host}")


def ping(home: Home, host: str, target: str, count: int = 1, wait: int = 2) -> bool:
    return home.sh(host, f"ping -6 -c {count} -W {wait} {target}", check=False).returncode == 0


def seen_from_internet(home: Home, host: str) -> str:
    """Connect from `host` to a TCP server on the Internet host; the source address the server saw."""
    listener = home.net.lab.socket(home.net.inet, socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.bind((topology.INET6, 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        home.sh(host, f"{sys.executable} -c \"import socket; socket.create_connection(('{topology.INET6}', {port}), "
                      "timeout=5).sendall(b'hello')\"")
        connection, peer = listener.accept()
        with connection:
            assert connection.recv(5) == b"hello"
        return peer[0]
    finally:
        listener.close()


def iperf_both_ways(home: Home, host: str) -> None:
    lab = home.net.lab
    server = lab.start(home.net.inet, ["iperf3", "-s", "--forceflush", "-B", topology.INET6], "iperf3-lan")
    try:
        lab.wait_for(lambda: "listening" in lab.log("iperf3-lan").lower(), 5, "iperf3 server")
        for direction in ("", "-R"):
            run = home.sh(host, f"iperf3 -6 -c {topology.INET6} -t 1 {direction}", check=False, timeout=20)
            assert run.returncode == 0 and "receiver" in run.stdout, run.stdout + run.stderr
    finally:
        Lab.stop(server)


def default_router(home: Home, host: str) -> str:
    return home.sh(host, "ip -6 route show default").stdout


def wait_default_router(home: Home, host: str) -> str:
    """The host's default route through the gateway (the RA after the lease may wait MIN_DELAY_BETWEEN_RAS)."""
    expected = f"default via {GATEWAY_LINK_LOCAL} dev eth0 proto ra"
    return home.lab.wait_for(lambda: expected in (route := default_router(home, host)) and route, 5,
                             f"the default route of {host}")


# --- the three modes ---------------------------------------------------------------------------


def test_routed_dhcpv6_hosts_get_lanids_and_reach_everything(home, tmp_path):
    hook, record = make_hook(tmp_path)  # -x keeps working beside --lan
    proc = start_gateway(home, "routed", "-x", hook)
    mine = tunnel_address(home)
    for host in ("h1", "h2"):
        dhcp_client(home, host)
    one, two = wait_dhcp_address(home, "h1"), wait_dhcp_address(home, "h2")
    for address in (one, two):
        lanid = addr.decode(ipaddress.IPv6Address(address).packed).lanid
        assert 2 <= lanid <= 0x3FFF, address
    assert one != two
    wait_default_router(home, "h1")
    assert f"{lanid_address(mine, 0)}/114 dev eth0 proto kernel" in home.sh("h1", "ip -6 route").stdout  # on-link

    assert ping(home, "h1", topology.INET6, count=2)
    assert ping(home, "h1", two)  # LAN hosts reach each other
    assert ping(home, "h1", mine)  # the gateway
    # lanid 0 is the router's own address in the /114: through the tunnel, from the LAN and the gateway alike
    route = home.net.lab.sh(home.gateway, f"ip -6 route get {lanid_address(mine, 0)}").stdout
    assert "dev 6bed4" in route and "anycast" not in route, route
    assert ping(home, "h1", lanid_address(mine, 0))
    assert ping(home, "h1", topology.HOST_SERVER)
    assert home.net.lab.sh(home.net.inet, f"ping -6 -c 1 -W 2 {one}", check=False).returncode == 0  # reachable
    assert seen_from_internet(home, "h1") == one  # routed, not translated
    iperf_both_ways(home, "h1")

    assert global_addresses(home, "t1") == []  # SLAAC-only devices get nothing in routed mode
    assert "masquerade" not in home.net.lab.sh(home.gateway, "nft list ruleset").stdout  # nothing translated
    assert calls(record)[0] == f"{proc.pid} add-range-offer {lanid_address(mine, 2)} {lanid_address(mine, 0x3FFF)}"
    assert "DHCPREPLY(lan0)" in home.lab.log(proc.name)  # dnsmasq's log lines are in the peer's
    assert_fast_path_carried(home, proc)


@pytest.mark.parametrize("inbound", ["closed", "open"])
def test_routed_hosts_take_connections_from_the_internet_only_when_inbound_is_open(home, inbound):
    args = ("--lan-inbound", inbound) if inbound == "open" else ()  # closed is the default
    start_gateway(home, "routed", *args)
    dhcp_client(home, "h1")
    one = wait_dhcp_address(home, "h1")
    wait_default_router(home, "h1")
    listener = home.lab.socket(home.hosts["h1"], socket.AF_INET6, socket.SOCK_STREAM)
    caller = home.net.lab.socket(home.net.inet, socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.bind(("::", 0))
        listener.listen(1)  # the kernel completes the handshake: nothing needs to accept
        caller.settimeout(3)
        try:
            caller.connect((one, listener.getsockname()[1]))
            connected = True
        except TimeoutError:
            connected = False
    finally:
        listener.close()
        caller.close()
    assert connected == (inbound == "open")
    assert home.net.lab.sh(home.net.inet, f"ping -6 -c 1 -W 2 {one}", check=False).returncode == 0  # echo passes
    assert seen_from_internet(home, "h1") == one  # what the LAN opens works either way
    table = home.net.lab.sh(home.gateway, "nft list table ip6 sixbed4_lan_lan0", check=False).stdout
    if inbound == "open":
        assert table == ""
    else:
        assert int(re.search(r"counter packets (\d+) .* drop", table)[1]) >= 1, table


def test_nat66_traffic_takes_the_fast_path_too(home):
    proc = start_gateway(home, "nat66")
    wait_ula_address(home, "t1")
    wait_default_router(home, "t1")
    iperf_both_ways(home, "t1")
    assert_fast_path_carried(home, proc)


def assert_fast_path_carried(home: Home, proc: subprocess.Popen) -> None:
    """With --fast-path on, the gateway's kernel programs carried the LAN's traffic both ways; else nothing did."""
    assert Lab.stop(proc) == 0
    log = home.lab.log(proc.name)
    if home.net.fast_path == "off":
        assert "fast path" not in log
        return
    took = dict(item.split("=") for item in re.search(r"fast path detached; the kernel took (.*)", log)[1].split())
    assert int(took.get("to_tun", 0)) > 1000 and int(took.get("to_udp", 0)) > 1000, took


def test_nat66_slaac_hosts_get_the_kept_ula_and_are_translated(home):
    proc = start_gateway(home, "nat66", "--metrics", "127.0.0.1:9643")
    mine = tunnel_address(home)
    ula = ula_prefix(home)
    assert ula.prefixlen == 64 and ula.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    tablet = wait_ula_address(home, "t1")
    wait_default_router(home, "t1")
    assert ping(home, "t1", topology.INET6, count=2)
    assert seen_from_internet(home, "t1") == mine  # the Internet sees the peer's 6bed4 address
    assert ping(home, "t1", mine)
    assert "hands out" not in home.lab.log(proc.name)  # no DHCPv6 server in this mode
    # a device that comes (back) later solicits, and has its answer at once, not at the next periodic RA
    home.sh("t1", "ip link set eth0 down && ip link set eth0 up")
    joined = time.monotonic()
    wait_default_router(home, "t1")
    assert time.monotonic() - joined < 2
    metrics = home.net.lab.metrics(home.gateway, "http://127.0.0.1:9643/metrics")
    assert metrics[("sixbed4_peer_lan_rs_received_total", ())] >= 1
    assert metrics[("sixbed4_peer_lan_ra_sent_total", ())] >= 3  # before and after the lease, and the answer

    # a lanid of the /114 that nobody holds is unreachable, not a loop through the router
    result = home.net.lab.sh(home.net.inet, f"ping -6 -c 1 -W 2 {lanid_address(mine, 7)}", check=False)
    assert result.returncode != 0
    assert f"From {mine}" in result.stdout and "unreachable" in result.stdout.lower(), result.stdout

    # stable: a restart keeps the prefix, so the tablet keeps its address
    assert Lab.stop(proc) == 0
    start_gateway(home, "nat66", name="gw-again")
    assert ula_prefix(home) == ula
    wait_default_router(home, "t1")  # the last RA of the first one took it away
    assert ping(home, "t1", topology.INET6)
    assert tablet in global_addresses(home, "t1")


def test_both_dhcpv6_hosts_prefer_their_global_address_slaac_hosts_are_translated(home):
    start_gateway(home, "both")
    mine = tunnel_address(home)
    dhcp_client(home, "h1")
    laptop = wait_dhcp_address(home, "h1")
    wait_ula_address(home, "h1")  # it has both kinds
    tablet = wait_ula_address(home, "t1")
    wait_default_router(home, "h1")
    wait_default_router(home, "t1")
    assert not [a for a in global_addresses(home, "t1") if in_114(a, mine)]
    assert seen_from_internet(home, "h1") == laptop  # RFC 6724: the global address for a global destination
    assert seen_from_internet(home, "t1") == mine
    assert ping(home, "h1", tablet) and ping(home, "t1", laptop)  # one LAN
    assert ping(home, "t1", topology.INET6)


# --- DNS (--lan-dns) -----------------------------------------------------------------------------

NAME = "www.example.test"  # what the test's resolver knows: the Internet host
SOLICIT = """
import socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.settimeout(1)
for _ in range(5):
    s.sendto(struct.pack("!BBHI", 133, 0, 0, 0), ("ff02::2", 0, 0, socket.if_nametoindex("eth0")))
    try:
        while (m := s.recv(1500))[0] != 134:
            pass
        print(m.hex()); sys.exit(0)
    except TimeoutError:
        pass
sys.exit(1)
"""


def solicited_advert(home: Home, host: str) -> ICMPv6ND_RA:
    """The gateway's answer to a Router Solicitation from `host` (what its RA daemon reads)."""
    out = home.sh(host, f"{sys.executable} -c '{SOLICIT}'", timeout=15).stdout
    return ICMPv6ND_RA(bytes.fromhex(out.strip()))


def resolve(home: Home, host: str) -> str:
    """NAME as the host's C library resolves it, through the resolvers in its own resolv.conf."""
    return home.sh(host, f"getent ahostsv6 {NAME}", check=False, timeout=15).stdout


@pytest.mark.parametrize("where", ["self", "internet"])
def test_lan_hosts_learn_the_announced_resolvers_and_resolve_names(home, where):
    """--lan-dns self (a resolver on the gateway host) or an Internet resolver's address, in RAs and DHCPv6:
    a DHCPv6 client's script writes it into the host's resolv.conf; a SLAAC-only host reads it in the RA."""
    laptop_conf = home.lab.resolv_conf(home.hosts["h1"])
    tablet_conf = home.lab.resolv_conf(home.hosts["t1"])
    proc = start_gateway(home, "both", "--lan-dns", "self" if where == "self" else topology.INET6)
    if where == "self":
        resolver, ns = str(ula_prefix(home).network_address + 1), home.gateway  # the gateway's ULA ::1
        assert "nothing on this host answers DNS" in home.lab.log(proc.name)  # none runs yet
    else:
        resolver, ns = topology.INET6, home.net.inet
    home.lab.start(ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                        "--log-facility=-", "--pid-file", f"--listen-address={resolver}", "--bind-interfaces",
                        f"--host-record={NAME},{topology.INET6}"], "resolver")
    home.lab.wait_for(lambda: "started" in home.lab.log("resolver"), 5, "the resolver")

    dhcp_client(home, "h1")
    wait_dhcp_address(home, "h1")
    home.lab.wait_for(lambda: f"nameserver {resolver}" in laptop_conf.read_text(), 15, "the laptop's resolver")
    wait_default_router(home, "h1")
    assert topology.INET6 in resolve(home, "h1")

    wait_ula_address(home, "t1")
    wait_default_router(home, "t1")
    advert = solicited_advert(home, "t1")
    assert list(advert[ICMPv6NDOptRDNSS].dns) == [resolver] and advert[ICMPv6NDOptRDNSS].lifetime == 1800
    tablet_conf.write_text(f"nameserver {resolver}\noptions timeout:2 attempts:2\n")  # as rdnssd would
    assert topology.INET6 in resolve(home, "t1")


# --- renumbering ---------------------------------------------------------------------------------


def test_nat_rebinding_moves_the_lan_to_the_new_114(home):
    """Under --user nobody, so that the DHCPv6 server's restart for the new range works without root."""
    home.state_dir.mkdir()
    os.chown(home.state_dir, 65534, 65534)  # with --user, the state directory is that user's
    proc = start_gateway(home, "both", "--user", "nobody")
    old = tunnel_address(home)
    dhcp_client(home, "h1")
    laptop = wait_dhcp_address(home, "h1")
    wait_ula_address(home, "t1")
    wait_default_router(home, "h1")
    assert ping(home, "h1", topology.INET6) and ping(home, "t1", topology.INET6)

    home.net.lab.sh(home.net.clients["cl1"].nat, "conntrack -F 2>/dev/null")
    rebound = time.monotonic()
    translated_back = routed_back = None
    new = None
    while time.monotonic() - rebound < 130 and routed_back is None:
        now = time.monotonic() - rebound
        new = new or ((a := tunnel_address(home)) != old and a)
        if translated_back is None and new and ping(home, "t1", topology.INET6, wait=1):
            translated_back = now
        if new and any(in_114(a, new) for a in global_addresses(home, "h1")) and ping(home, "h1", topology.INET6,
                                                                                      wait=1):
            routed_back = now
        time.sleep(0.2)
    print(f"\nrecovery after NAT rebinding (keepalive {KEEPALIVE}s): translated host {translated_back}s, "
          f"DHCPv6 host {routed_back}s")
    assert new, home.lab.log(proc.name)
    assert translated_back is not None and translated_back <= KEEPALIVE + 5
    assert routed_back is not None and routed_back <= 120

    new_laptop = wait_dhcp_address(home, "h1")
    assert laptop not in global_addresses(home, "h1")  # the old address was withdrawn
    routes = home.sh("h1", "ip -6 route").stdout
    assert f"{lanid_address(old, 0)}/114" not in routes  # the old on-link /114 too (RA with zero lifetime)
    assert f"{lanid_address(new, 0)}/114" in routes
    assert seen_from_internet(home, "h1") == new_laptop
    assert seen_from_internet(home, "t1") == new
    log = home.lab.log(proc.name)
    assert "NAT mapping changed" in log and log.count("hands out") == 2
    assert "address invalid" in log  # dnsmasq refused the old address with zero lifetimes
    assert Lab.stop(proc) == 0
    assert [p.name for p in home.state_dir.iterdir()] == ["lan0.ula"]


def test_lan_interface_set_down_and_up_again_is_set_up_again(home):
    proc = start_gateway(home, "both")
    dhcp_client(home, "h1")
    laptop = wait_dhcp_address(home, "h1")
    wait_ula_address(home, "t1")
    wait_default_router(home, "t1")
    before = gateway_state(home)
    home.net.lab.sh(home.gateway, "ip link set lan0 down && sleep 0.5 && ip link set lan0 up")
    home.lab.wait_for(lambda: "the LAN interface lan0 is up again" in home.lab.log(proc.name), 5, "the restore")
    home.lab.wait_for(lambda: gateway_state(home)["addresses"] == before["addresses"], 5, "the addresses")
    assert gateway_state(home)["proxies"] == before["proxies"]
    assert "dev 6bed4" in home.net.lab.sh(home.gateway, f"ip -6 route get {lanid_address(tunnel_address(home), 0)}"
                                          ).stdout  # and lanid 0 is not the gateway's anycast again
    home.lab.wait_for(lambda: ping(home, "t1", topology.INET6, wait=1), 10, "the tablet")
    home.lab.wait_for(lambda: ping(home, "h1", topology.INET6, wait=1), 10, "the laptop")
    assert laptop in global_addresses(home, "h1")
    assert home.lab.log(proc.name).count("hands out") == 2  # dnsmasq started again on the restored LAN


# --- leaving nothing behind ------------------------------------------------------------------------


def processes(home: Home) -> dict[int, str]:
    """pid -> command name of what runs in the gateway's namespace."""
    found = {}
    for pid in subprocess.run(["ip", "netns", "pids", home.gateway], capture_output=True, text=True).stdout.split():
        try:
            found[int(pid)] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:  # gone meanwhile
            pass
    return found


def gateway_state(home: Home) -> dict[str, str]:
    """What the gateway's namespace looks like, without what changes by itself."""
    sh = lambda command: home.net.lab.sh(home.gateway, command, check=False).stdout  # noqa: E731
    return {
        "addresses": sh("ip -6 -o addr show dev lan0 scope global"),
        "routes": re.sub(r"expires \d+sec ", "", sh("ip -6 route show table all | grep -v '^local\\|^multicast'")),
        "proxies": sh("ip -6 neigh show proxy"),
        "nft": sh("nft list ruleset"),
        "sysctls": sh("sysctl -n net.ipv6.conf.all.forwarding net.ipv6.conf.lan0.proxy_ndp"),
        "processes": " ".join(sorted(processes(home).values())),
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exit_leaves_the_lan_as_it_was(home, sig):
    before = gateway_state(home)
    proc = start_gateway(home, "both")
    dhcp_client(home, "h1")
    wait_dhcp_address(home, "h1")
    wait_ula_address(home, "t1")
    wait_default_router(home, "t1")
    during = gateway_state(home)
    assert "dnsmasq" in during["processes"] and "sixbed4_lan_lan0" in during["nft"]
    assert during["sysctls"].split() == ["1", "1"] and during["proxies"]

    assert Lab.stop(proc, sig) == 0
    after = gateway_state(home)
    assert after == before
    assert before["sysctls"].split() == ["0", "0"]
    assert [p.name for p in home.state_dir.iterdir()] == ["lan0.ula"]  # no lease file: only the kept ULA
    # the last RA said: no longer a router, and the prefixes are gone
    home.lab.wait_for(lambda: "default" not in default_router(home, "t1"), 3, "the tablet to drop its default route")
    assert "default" not in default_router(home, "h1")
    assert "/114" not in home.sh("h1", "ip -6 route").stdout


def test_lan_interface_deleted_ends_the_gateway_and_it_cleans_up(home):
    before = gateway_state(home)
    proc = start_gateway(home, "both")
    home.net.lab.sh(home.gateway, "ip link del lan0")
    assert proc.wait(10) == 1
    assert "the LAN interface lan0 was deleted" in home.lab.log(proc.name)
    after = gateway_state(home)
    assert after["nft"] == before["nft"] and after["processes"] == before["processes"]
    assert after["sysctls"].split()[0] == before["sysctls"].split()[0] == "0"  # forwarding
    without_lan = lambda routes: [r for r in routes.splitlines() if "lan0" not in r]  # noqa: E731
    assert without_lan(after["routes"]) == without_lan(before["routes"])
    assert [p.name for p in home.state_dir.iterdir()] == ["lan0.ula"]


def test_what_a_sigkilled_gateway_left_the_next_one_takes_back(home):
    """The DHCPv6 server dies with its gateway; addresses, proxy entry, routes and sysctls stay until the next
    start takes them back from the undo record, so that its clean stop leaves the LAN as it was."""
    before = gateway_state(home)
    proc = start_gateway(home, "both")
    (server,) = [pid for pid, name in processes(home).items() if name == "dnsmasq"]
    Lab.stop(proc, signal.SIGKILL)
    home.lab.wait_for(lambda: server not in processes(home), 5, "dnsmasq to end with its parent")
    left = gateway_state(home)
    assert left["sysctls"].split() == ["1", "1"] and left["proxies"] and "/114" in left["addresses"]

    again = start_gateway(home, "both", name="gw-again")
    assert re.search(r"took back \d+ change\(s\) that a killed peer \(pid \d+\) left on 6bed4",
                     home.lab.log("gw-again"))
    assert Lab.stop(again) == 0
    assert gateway_state(home) == before


# --- errors: one line, exit 2, nothing configured --------------------------------------------------


def run_gateway(home: Home, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"), **(env or {}))
    return subprocess.run(["ip", "netns", "exec", home.gateway, sys.executable, "-m", "sixbed4.peer.cli",
                           "-s", topology.ROUTER_V4, "--state-dir", str(home.state_dir), *args],
                          capture_output=True, text=True, timeout=30, env=environment)


@pytest.mark.parametrize("args, message", [
    (["--lan", "nosuch0"], "--lan nosuch0: no interface named nosuch0"),
    (["--lan", "quiet0"], "--lan quiet0: the interface has no IPv6 link-local address"),
    (["--lan", "lan0", "--dnsmasq", "/nonexistent/dnsmasq"], "needs the DHCPv6 server"),
    (["--lan", "lan0", "--lan-mode", "routed", "--dnsmasq", "no-such-dnsmasq"], "no-such-dnsmasq not found"),
    (["--lan", "6bed4"], "that is the tunnel device"),
    (["--lan", "quiet1"], "--lan quiet1: the interface is down"),
])
def test_wrong_lan_is_one_line_exit_2_and_nothing_changed(home, args, message):
    lab = home.net.lab
    lab.sh(home.gateway, "ip link add quiet0 type veth peer name quiet1 && "
                         "sysctl -qw net.ipv6.conf.quiet0.addr_gen_mode=1 && ip link set quiet0 up")  # quiet1: down
    try:
        before = gateway_state(home)
        result = run_gateway(home, *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert gateway_state(home) == before
        assert not lab.has_link(home.gateway, "6bed4")
        assert not home.state_dir.exists() or not list(home.state_dir.iterdir())
    finally:
        lab.sh(home.gateway, "ip link del quiet0", check=False)


def test_state_dir_the_dhcpv6_server_cannot_reach_is_refused(home, tmp_path):
    before = gateway_state(home)
    result = run_gateway(home, "--lan", "lan0", "--state-dir", str(tmp_path / "state"))  # pytest's: root's alone
    assert result.returncode == 2
    assert "the DHCPv6 server runs as dnsmasq, who cannot enter" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert gateway_state(home) == before


def test_second_gateway_on_the_same_lan_is_refused(home):
    first = start_gateway(home, "both")
    # with a TUN device of its own (set up, as an operator's -d device), the second one gets as far as the LAN
    home.net.lab.sh(home.gateway, "ip tuntap add 6bed4b mode tun && ip link set 6bed4b up")
    during = gateway_state(home)
    try:
        result = run_gateway(home, "--lan", "lan0", "-d", "6bed4b")
        assert result.returncode == 2
        assert result.stderr.strip() == "6bed4peer: --lan lan0: another 6bed4peer is the gateway of lan0 already"
        after = gateway_state(home)
        # (undoing -d's addr_gen_mode on 6bed4b gives it a link-local route; not the LAN's business)
        after["routes"] = "".join(line for line in after["routes"].splitlines(True) if "6bed4b" not in line)
        during["routes"] = "".join(line for line in during["routes"].splitlines(True) if "6bed4b" not in line)
        assert after == during
        assert first.poll() is None
    finally:
        home.net.lab.sh(home.gateway, "ip link del 6bed4b", check=False)
