"""Two router hosts behind one anycast address, announced by real BIRD, ECMP at a real BIRD upstream.

The lab is the anycast demo's (sixbed4.demo.anycast): an upstream with the
Internet host, two router hosts on its LAN (a bridge, so that a host's link
going down is seen by BFD, not by the upstream's carrier), a peer behind NAT
(home) and one without (phone).  Every test leaves both routers serving and
announced for the next one (the `healthy` fixture puts it back).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest
from pyroute2 import netns as pyroute2_netns

from sixbed4.core import addr
from sixbed4.demo import anycast
from sixbed4.demo.lab import Lab
from sixbed4.demo.run import tunnel_address
from tests import netlab
from tests.integration.sdnotify import Notifications, assert_ended_by_watchdog_abort, under_systemd, unit_watchdog_sec

pytestmark = pytest.mark.alone  # failover gaps, the watchdog's kill and iperf3 are measured against limits in seconds

HOSTS = tuple(anycast.HOSTS)
CONTRIB_UNITS = netlab.ROOT / "contrib" / "systemd"
GAP_LIMIT = 1.0  # seconds without replies beyond the ping interval, with BFD (the target)
PING_INTERVAL = 0.05
FLOW_SECONDS = 12  # long enough that the flows still run when a slow return (BGP collision: 5-7 s) is checked
FAIL_AFTER = 2.0
RECOVER_AFTER = 1.5  # seconds after the withdrawal
IPERF_RATE = "100M"  # TCP, paced: a flow, not a CPU hog that would starve BFD on a 2-core box


@dataclass
class Net:
    al: anycast.AnycastLab
    addresses: dict[str, str]

    @property
    def lab(self) -> Lab:
        return self.al.lab

    def ns(self, role: str) -> str:
        return self.al.ns[role]

    def run(self, role: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        result = self.lab.run(self.ns(role), list(argv))
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {role}: {result.stderr.strip()}")
        return result

    def ready(self, host: str) -> bool:
        pyroute2_netns.pushns(self.ns("upstream"))
        try:
            with urllib.request.urlopen(self.al.metrics_url(host, "/ready"), timeout=1) as response:
                return json.load(response)["ready"]
        except OSError:
            return False
        finally:
            pyroute2_netns.popns()


wait_for = functools.partial(netlab.Lab.wait_for, interval=0.02)  # failover steps are tens of milliseconds


@pytest.fixture(scope="module")
def net():
    lab = Lab(f"acy{os.getpid() % 100000}")
    try:
        al = anycast.build(lab)
        al.start_birds()
        wait_for(al.sessions_established, 20, "BGP sessions")
        for host in HOSTS:
            al.start_router(host)
        wait_for(al.all_announced, 15, "both routers announced")
        for role in ("home", "phone"):
            al.start_peer(role)
        addresses = {role: wait_for(lambda r=role: tunnel_address(al.ns[r]), 15, f"{role}'s address")
                     for role in ("home", "phone")}
        yield Net(al, addresses)
    finally:
        lab.close()
        shutil.rmtree(lab.logdir, ignore_errors=True)


@pytest.fixture
def healthy(net):
    """Both routers serving and announced, before and after the test."""

    def restore():
        for host in HOSTS:
            net.run(host, "ip", "link", "set", "eth0", "up")
            if net.al.routers[host].poll() is not None:
                net.al.start_router(host)
        wait_for(net.al.all_announced, 20, "both routers announced again")

    restore()
    yield net
    restore()


def flows_end(started: float, seconds: float = FLOW_SECONDS) -> float:
    """When the flows' last requests left: a silence after that is not theirs (the test may have waited since)."""
    return started + seconds - PING_INTERVAL


def flows(net: Net, seconds: float = FLOW_SECONDS) -> dict[str, subprocess.Popen]:
    """A ping every 50 ms both ways between each peer and the Internet host."""
    plan = {"home-out": ("home", anycast.INET6), "home-in": ("inet", net.addresses["home"]),
            "phone-out": ("phone", anycast.INET6), "phone-in": ("inet", net.addresses["phone"])}
    return {name: anycast.start_ping(net.lab, net.ns(role), destination, seconds, name, PING_INTERVAL)
            for name, (role, destination) in plan.items()}


def iperf(net: Net) -> subprocess.Popen:
    server = net.lab.start(net.ns("inet"), ["iperf3", "-s", "-1", "-B", anycast.INET6], "iperf3-server")
    wait_for(lambda: ":5201 " in net.run("inet", "ss", "-ltnH").stdout or server.poll() is not None, 5,
             "iperf3 server")
    return net.lab.start(net.ns("home"), ["iperf3", "-6", "-c", anycast.INET6, "-t", str(FLOW_SECONDS - 1),
                                          "-b", IPERF_RATE, "-i", "0.1", "-J"], "iperf3-client")


def carrier(net: Net, seconds: float = 1.0) -> str:
    """The router that carries the most of the running flows."""
    before = net.al.all_counters()
    time.sleep(seconds)
    moved = anycast.carried(before, net.al.all_counters())
    return max(moved, key=moved.get)


def never_announced_unready(net: Net, host: str, until, timeout: float = 20) -> None:
    """Until `until()`: whenever the upstream forwards to `host`, its router must already serve."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"{host} not announced again after {timeout} s"
        announced = host in net.al.next_hops(anycast.ANYCAST_V4) | net.al.next_hops(anycast.PREFIX)
        if announced:
            assert net.ready(host), f"the upstream forwards to {host} while its router does not serve"
        time.sleep(0.02)


# --- both healthy -----------------------------------------------------------------


def test_both_routers_announce_both_prefixes_and_peers_work(healthy):
    net = healthy
    assert net.al.announced_by() == {"ipv4": set(HOSTS), "ipv6": set(HOSTS)}
    routes = net.al.birds["upstream"].birdc("show", "route", "all")
    fingerprint = int(json.loads(_ready_document(net, HOSTS[0]))["fingerprint"], 16)
    assert routes.count(f"BGP.large_community: (64512, 25790, {fingerprint})") == 4  # 2 prefixes x 2 hosts
    check = net.run("upstream", net.al.python, "-m", "sixbed4.cli", "anycast", "check",
                    *(net.al.metrics_url(host, "") for host in HOSTS))
    assert "all 2 routers serve and agree" in check.stdout
    for role in ("home", "phone"):
        assert net.run(role, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", anycast.INET6).returncode == 0
        assert net.run("inet", "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", net.addresses[role]).returncode == 0


def _ready_document(net: Net, host: str) -> str:
    pyroute2_netns.pushns(net.ns("upstream"))
    try:
        return urllib.request.urlopen(net.al.metrics_url(host, "/ready"), timeout=2).read().decode()
    finally:
        pyroute2_netns.popns()


def test_a_reply_by_the_other_router_reaches_the_peer(healthy):
    """Forced: the home's datagrams go to r1, the Internet's packets for the home to r2."""
    net = healthy
    home = net.addresses["home"]
    net.run("upstream", "ip", "rule", "add", "from", anycast.HOME_PUBLIC, "lookup", "100")
    net.run("upstream", "ip", "route", "add", f"{anycast.ANYCAST_V4}/32", "via", anycast.HOSTS["r1"][0],
            "table", "100")
    net.run("upstream", "ip", "-6", "route", "add", f"{home}/128", "via", anycast.HOSTS["r2"][1])
    try:
        before = net.al.all_counters()
        out = net.run("home", "ping", "-6", "-c", "10", "-i", "0.05", "-W", "2", anycast.INET6, check=False)
        back = net.run("inet", "ping", "-6", "-c", "10", "-i", "0.05", "-W", "2", home, check=False)
        after = net.al.all_counters()
    finally:
        net.run("upstream", "ip", "rule", "del", "from", anycast.HOME_PUBLIC, "lookup", "100")
        net.run("upstream", "ip", "route", "flush", "table", "100")
        net.run("upstream", "ip", "-6", "route", "del", f"{home}/128")
    assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout
    assert back.returncode == 0 and " 0% packet loss" in back.stdout, back.stdout

    def delta(host, counter):
        return after[host][counter] - before[host][counter]

    assert delta("r1", "to_tun") >= 20 and delta("r1", "to_udp") <= 2  # in by r1 (requests and echo replies)
    assert delta("r2", "to_udp") >= 20 and delta("r2", "udp_in") <= 2  # out by r2


# --- failures -----------------------------------------------------------------------


def _fail(net: Net, host: str, how: str) -> None:
    router = net.al.routers[host]
    if how == "sigkill":
        router.kill()
    elif how == "clean-stop":
        router.send_signal(signal.SIGTERM)
    elif how == "link-down":
        net.run(host, "ip", "link", "set", "eth0", "down")
    elif how == "tun-deleted":
        net.run(host, "ip", "link", "del", "6bed4")
    elif how == "tun-down":
        net.run(host, "ip", "link", "set", "6bed4", "down")


def _recover(net: Net, host: str, how: str) -> None:
    if how == "link-down":
        net.run(host, "ip", "link", "set", "eth0", "up")
        for family, gateway in (("-4", anycast.UPSTREAM_V4), ("-6", anycast.UPSTREAM_V6)):
            net.run(host, "ip", family, "route", "replace", "default", "via", gateway)  # as the host's network config would
        return
    if how == "tun-down":  # the router lives on, makes the device's routes again, and announces
        net.run(host, "ip", "link", "set", "6bed4", "up")
        return
    assert net.al.routers[host].wait(5) == {"sigkill": -signal.SIGKILL, "clean-stop": 0, "tun-deleted": 1}[how]
    net.al.start_router(host)


@pytest.mark.parametrize("how", ["sigkill", "link-down", "clean-stop", "tun-deleted", "tun-down"])
def test_failover_gap_and_return(healthy, how):
    net = healthy
    pings = flows(net)
    client = iperf(net)
    started = time.time()
    victim = carrier(net, FAIL_AFTER - 0.5)
    failed_at = time.time()
    _fail(net, victim, how)
    wait_for(lambda: victim not in net.al.next_hops(anycast.ANYCAST_V4) | net.al.next_hops(anycast.PREFIX),
             5, f"{victim} withdrawn")
    withdrawn_after = time.time() - failed_at
    time.sleep(RECOVER_AFTER)
    _recover(net, victim, how)
    never_announced_unready(net, victim, until=net.al.all_announced)
    back_after = time.time() - failed_at
    returned = carrier(net, 0.8)  # which router carries the most now (the flows hash as before)
    for proc in [*pings.values(), client]:
        proc.wait(FLOW_SECONDS + 10)

    runs = {name: anycast.ping_run(net.lab.log(name), started, flows_end(started)) for name in pings}
    gaps = {name: run.longest_silence - PING_INTERVAL for name, run in runs.items()}
    report = json.loads(net.lab.log("iperf3-client"))
    stall = _longest_stall(report)
    print(f"\n{how}: {victim} withdrawn after {1000 * withdrawn_after:.0f} ms, back after {back_after:.2f} s; "
          f"gaps " + ", ".join(f"{name} {1000 * gap:.0f} ms ({runs[name].replies}/{runs[name].sent})"
                               for name, gap in gaps.items())
          + f"; iperf3 {report['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s, "
            f"{report['end']['sum_sent'].get('retransmits', 0)} retransmits, longest stall {1000 * stall:.0f} ms")
    assert all(gap <= GAP_LIMIT for gap in gaps.values()), gaps
    assert all(run.last_reply > failed_at + RECOVER_AFTER for run in runs.values()), "a flow stopped"
    assert "error" not in report and report["end"]["sum_received"]["bytes"] > 0
    assert stall <= GAP_LIMIT + 0.5, f"TCP stalled {stall:.2f} s"
    assert returned == victim, f"{victim} carries the flows again once back (now {returned})"
    for role in ("home", "phone"):
        assert tunnel_address(net.ns(role)) == net.addresses[role], f"the {role} peer's address changed"


def _longest_stall(report: dict) -> float:
    """The longest run of iperf3 intervals in which nothing arrived, in seconds."""
    longest = current = 0.0
    for interval in report["intervals"]:
        seconds = interval["sum"]["seconds"]
        current = current + seconds if interval["sum"]["bytes"] == 0 else 0.0
        longest = max(longest, current)
    return longest


# --- a router that hangs ------------------------------------------------------------


def test_a_hung_router_is_withdrawn_when_systemds_watchdog_kills_it(healthy, tmp_path):
    """A router stopped dead (SIGSTOP) keeps its TUN device, its routes and its announcement, and stops
    saying WATCHDOG=1; systemd's watchdog (WatchdogSec= of the shipped unit, played by the test) kills
    it, and the kernel's deletion of the TUN device withdraws it."""
    net = healthy
    interval = unit_watchdog_sec(CONTRIB_UNITS / "6bed4router.service")
    watchdogs = {}
    for host in HOSTS:  # both routers as systemd runs them: the flows may hash to either
        net.al.routers[host].kill()
        net.al.routers[host].wait(5)
        watchdogs[host] = Notifications(tmp_path / f"notify-{host}")
        argv = under_systemd(watchdogs[host], net.al.router_argv(host), int(interval * 1_000_000))
        net.al.routers[host] = net.lab.start(net.ns(host), argv, f"router-{host}")
    try:
        wait_for(net.al.all_announced, 20, "both routers announced")
        for host in HOSTS:
            watchdogs[host].kill_when_silent(net.al.routers[host].pid, interval)
        seconds = FAIL_AFTER + interval + 5
        pings = flows(net, seconds)
        started = time.time()
        victim = carrier(net, FAIL_AFTER - 0.5)
        net.al.routers[victim].send_signal(signal.SIGSTOP)
        hung_at, hung_mono = time.time(), time.monotonic()
        wait_for(lambda: victim not in net.al.next_hops(anycast.ANYCAST_V4) | net.al.next_hops(anycast.PREFIX),
                 interval + 5, f"{victim} withdrawn")
        withdrawn_after = time.monotonic() - hung_mono
        killed_after = watchdogs[victim].killed_at - hung_mono
        assert_ended_by_watchdog_abort(net.al.routers[victim].wait(5), net.lab.log(f"router-{victim}"))
        for proc in pings.values():
            proc.wait(seconds + 10)
        runs = {name: anycast.ping_run(net.lab.log(name), started, flows_end(started, seconds)) for name in pings}
        gaps = {name: run.longest_silence - PING_INTERVAL for name, run in runs.items()}
        print(f"\nhung (SIGSTOP): {victim} killed by the watchdog (WatchdogSec {interval:g} s) after "
              f"{killed_after:.2f} s, withdrawn after {withdrawn_after:.2f} s; gaps "
              + ", ".join(f"{name} {1000 * gap:.0f} ms ({runs[name].replies}/{runs[name].sent})"
                          for name, gap in gaps.items()))
        # the kill withdraws it (nothing else does), at most WatchdogSec after the hang
        assert interval - interval / 4 - 0.1 <= killed_after <= interval + 0.5, killed_after
        assert 0 <= withdrawn_after - killed_after <= 1.0
        assert max(gaps.values()) <= withdrawn_after + GAP_LIMIT, gaps
        assert all(run.last_reply > hung_at + withdrawn_after for run in runs.values()), "a flow stopped"
        for role in ("home", "phone"):
            assert tunnel_address(net.ns(role)) == net.addresses[role], f"the {role} peer's address changed"
    finally:
        for notifications in watchdogs.values():
            notifications.close()
        for host in HOSTS:  # the healthy fixture starts them again as the other tests have them
            if net.al.routers[host].poll() is None:
                net.al.routers[host].send_signal(signal.SIGCONT)
                net.al.routers[host].kill()
                net.al.routers[host].wait(5)


# --- a router that never serves -------------------------------------------------


NFT_COUNTERS = """\
table inet sixbed4_seen {
 chain in {
  type filter hook prerouting priority -300;
  ip daddr %s udp dport 25790 counter
  ip6 daddr %s counter
 }
}
"""


def _seen(net: Net, host: str) -> list[int]:
    text = net.run(host, "nft", "list", "table", "inet", "sixbed4_seen").stdout
    return [int(word.split()[0]) for word in text.split("counter packets ")[1:]]


def spray(net: Net, count: int = 64) -> None:
    """From the Internet host, one datagram to each of `count` peer addresses: ECMP spreads them over all
    router hosts the upstream forwards to (each router sends it on to an address nobody answers)."""
    prefix = addr.parse_prefix64(anycast.PREFIX)
    pyroute2_netns.pushns(net.ns("inet"))
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            for index in range(count):
                peer = addr.encode(prefix, bytes([198, 51, 100, 100 + index]), 40000 + index, 1)
                sock.sendto(b"spray", (addr.format_address(peer), 9))
    finally:
        pyroute2_netns.popns()


def test_a_router_that_never_serves_never_attracts_traffic(healthy):
    net = healthy
    victim = "r2"
    net.lab.run(net.ns(victim), ["nft", "-f", "-"], input=NFT_COUNTERS % (anycast.ANYCAST_V4, anycast.PREFIX))
    try:
        assert net.al.routers[victim].send_signal(signal.SIGTERM) is None
        net.al.routers[victim].wait(10)
        wait_for(lambda: victim not in net.al.next_hops(anycast.ANYCAST_V4), 5, f"{victim} withdrawn")
        stuck = net.al.start_router(victim)
        stuck.send_signal(signal.SIGSTOP)  # before its Python has even imported the router
        net.run(victim, "nft", "reset", "counters", "table", "inet", "sixbed4_seen")
        pings = flows(net)
        for proc in pings.values():
            proc.wait(FLOW_SECONDS + 5)
        assert "serving" not in net.lab.log(f"router-{victim}")
        assert net.al.announced_by() == {"ipv4": {"r1"}, "ipv6": {"r1"}}
        spray(net)
        assert _seen(net, victim) == [0, 0], "traffic reached the router host whose router never served"
        assert all(anycast.ping_run(net.lab.log(name), 0, 0).replies > 0 for name in pings)

        stuck.send_signal(signal.SIGCONT)  # now it serves: it is announced and gets its share
        wait_for(net.al.all_announced, 10, f"{victim} announced once serving")
        spray(net)
        assert _seen(net, victim)[1] > 0, "the ECMP route spreads traffic over both router hosts"
    finally:
        net.run(victim, "nft", "delete", "table", "inet", "sixbed4_seen", check=False)
        if net.al.routers[victim].poll() is None:
            net.al.routers[victim].send_signal(signal.SIGCONT)


# --- the demo ----------------------------------------------------------------------


def test_demo_anycast_shows_the_failover_and_cleans_up():
    demo = [sys.executable, "-m", "sixbed4.cli", "demo", "--anycast"]
    proc = subprocess.Popen(demo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    # this demo's namespaces only: other demos may run on the machine at the same time
    left = [name for name in pyroute2_netns.listnetns() if name.startswith(f"{anycast.TAG}-{proc.pid}-")]
    subprocess.run([*demo, "--down"], capture_output=True)
    assert proc.returncode == 0, out + err
    assert "all 2 routers serve and agree" in out
    victim = re.search(r"SIGKILL to the router on (r[12])", out).group(1)
    assert re.search(rf"{victim} withdrawn within \d+ ms of the kill", out)
    after_kill = re.search(r"after the kill: +r1 (\d+), r2 (\d+)", out).groups()
    assert int(after_kill[HOSTS.index(victim)]) == 0 and int(after_kill[1 - HOSTS.index(victim)]) > 0
    assert len(re.findall(r"^(?:home|phone|internet) -> \S+ +\d+/\d+ +\d+ ms$", out, re.M)) == 4
    assert "result: the flows survived the failover" in out and "cleaned up" in out
    assert left == [], f"the demo left namespaces behind: {left}"
