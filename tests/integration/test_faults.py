"""Faults under a running tunnel: the router killed mid-transfer and restarted,
devices deleted under the daemons or set down and up again, the router
unreachable for a long time.

Each test on the shared topology leaves the router running for the next one (the
`router` fixture restarts it when a test has stopped it); tests that delete an
uplink build a topology of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time

import pytest

from sixbed4.core.peer import RS_BACKOFF
from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.integration.test_peer import (  # noqa: F401 - peers is a fixture
    KEEPALIVE, address, launch_peer, peers, ping, wait_for_address,
)
from tests.netlab import Lab

RESUME_LIMIT = 2.0  # seconds from the router being back (restarted and serving, or reachable) to traffic flowing
IPERF_SECONDS = 10
IPERF_RATE = "20M"  # bit/s of UDP: steady load that leaves CPU for the restart on a 2-core box
EXIT_LIMIT = 3.0  # seconds for a daemon to notice a deleted device and exit (the router's timer ticks each second)
CPU_LIMIT = 0.3  # CPU seconds it may use meanwhile, clean-up included; a busy loop would use ~1 per second
# The issue asks for 2 minutes; 40 s takes the peers through every timer state that
# matters (a peer without an address reaches its 30 s solicitation backoff at 26 s, a
# peer with one (-k 5) re-solicits 8 times and logs the silence after 15 s).  Run
# the 2 minutes by hand: FAULTS_OUTAGE=120 pytest -k unreachable tests/integration/test_faults.py
OUTAGE = float(os.environ.get("FAULTS_OUTAGE", 40))


@pytest.fixture(scope="module")
def net(fast_path):
    with Lab("fl") as lab:
        topo = topology.build(lab, ("cl1", "cl2"), fast_path)
        topo.start_router()
        yield topo


@pytest.fixture
def router(net):
    """The running router process; started again if an earlier test left it stopped."""
    if net.router_proc is None or net.router_proc.poll() is not None:
        net.start_router(name=f"router-{time.monotonic_ns()}")
    return net.router_proc


def ping_stream(lab: Lab, ns: str, target: str, name: str):
    """ping every 0.1 s with wall-clock timestamps on each reply (see reply_times)."""
    return lab.start(ns, ["ping", "-6", "-D", "-n", "-i", "0.1", target], name)


def reply_times(log: str) -> list[float]:
    """The CLOCK_REALTIME timestamps of the echo replies in a `ping -D` log."""
    return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", log, re.M)]


def zero_intervals(report: dict) -> list[tuple[float, float]]:
    """The (start, end) of each interval in which the iperf3 receiver got nothing."""
    return [(i["sum"]["start"], i["sum"]["end"]) for i in report["intervals"] if i["sum"]["bytes"] == 0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process from /proc/PID/stat (also readable while it is a zombie)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exit_and_cpu(proc, timeout: float) -> tuple[float | None, float]:
    """Watch `proc` until it exits, at most `timeout` seconds.

    Returns (seconds until it exited, or None; CPU seconds it used meanwhile).  An
    exited process is measured before it is reaped (WNOWAIT); proc.wait() reaps it.
    """
    start, cpu_before, exited = time.monotonic(), cpu_seconds(proc.pid), None
    while exited is None and time.monotonic() - start < timeout:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            exited = time.monotonic() - start
        else:
            time.sleep(0.02)
    return exited, cpu_seconds(proc.pid) - cpu_before


@contextlib.contextmanager
def router_unreachable(net):
    """Drop every packet to and from the router's IPv4 in the IPv4 core, until the block ends."""
    net.lab.sh(net.core, "nft 'add table ip fl_outage; "
                         "add chain ip fl_outage block { type filter hook forward priority 0; }; "
                         f"add rule ip fl_outage block ip daddr {topology.ROUTER_V4} drop; "
                         f"add rule ip fl_outage block ip saddr {topology.ROUTER_V4} drop'")
    try:
        yield
    finally:
        net.lab.sh(net.core, "nft delete table ip fl_outage")


def router_leftovers(net) -> list[str]:
    """What a router leaves in its namespace: its device, the /64 route, processes, the UDP port."""
    lab = net.lab
    found = []
    if lab.has_link(net.router, "6bed4"):
        found.append("link 6bed4")
    if "2001:db8:9:10::/64" in lab.sh(net.router, "ip -6 route").stdout:
        found.append("route to the /64")
    pids = subprocess.run(["ip", "netns", "pids", net.router], capture_output=True, text=True).stdout.split()
    found += [f"process {pid}" for pid in pids]
    if lab.sh(net.router, "ss -Hlun 'sport = :25790'").stdout.strip():
        found.append("UDP port 25790 bound")
    return found


def test_router_sigkill_and_restart_under_iperf3(net, router, peers):  # noqa: F811
    lab, client = net.lab, net.clients["cl1"]
    peers("cl1", "-r")
    before = address(lab, client.ns)
    server = lab.start(net.inet, ["iperf3", "-s", "-1", "-J", "-i", "0.1", "-B", topology.INET6], "iperf3-server")
    lab.wait_for(lambda: lab.sh(net.inet, "ss -Hltn 'sport = :5201'").stdout.strip(), 5, "iperf3 server")
    pinger = ping_stream(lab, client.ns, topology.INET6, "ping-stream")
    iperf = lab.start(client.ns, ["iperf3", "-6", "-u", "-c", topology.INET6, "-b", IPERF_RATE, "-l", "1200",
                                  "-t", str(IPERF_SECONDS)], "iperf3-client")
    try:
        time.sleep(3)
        assert Lab.stop(router, signal.SIGKILL) == -signal.SIGKILL
        killed = time.time()
        net.start_router(name="router-restarted")  # same arguments; fails the test if it cannot start
        ready = time.time()
        assert iperf.wait(IPERF_SECONDS + 15) == 0, lab.log("iperf3-client")
        assert server.wait(10) == 0, lab.log("iperf3-server")
    finally:
        Lab.stop(pinger, signal.SIGINT)
    replies = reply_times(lab.log("ping-stream"))
    resumed = next((t for t in replies if t > killed), None)
    assert resumed is not None, "no ping reply after the router was killed"
    print(f"SIGKILL->serving {ready - killed:.2f}s, serving->first ping reply {resumed - ready:.2f}s")
    assert resumed - ready <= RESUME_LIMIT

    report = json.loads(lab.log("iperf3-server"))
    silent = zero_intervals(report)
    # the time with nothing received, summed: on a loaded machine a lone empty 0.1 s interval
    # can come seconds after the restart, and the span up to it is no outage
    outage = sum(end - start for start, end in silent)
    print(f"iperf3 receiver silent for {outage:.1f}s in {len(silent)} intervals")
    assert outage <= (ready - killed) + RESUME_LIMIT
    # the stream was flowing again at its end (in its last half second: on a loaded machine the receiver's
    # very last 0.1 s interval can be the empty tail after the sender's last datagram)
    assert any(interval["sum"]["bytes"] > 0 for interval in report["intervals"][-5:])
    assert address(lab, client.ns) == before  # no action on the peer

    assert Lab.stop(net.router_proc) == 0
    assert router_leftovers(net) == []


@pytest.mark.parametrize("daemon, device", [("router", "6bed4"), ("router", "eth1"), ("peer", "6bed4"),
                                            ("peer", "eth0")])
def test_deleted_device_makes_the_daemon_log_it_and_exit_1(daemon, device):
    """`ip link del` of the TUN device or the uplink veth under a running daemon."""
    with Lab("fl") as lab:
        topo = topology.build(lab, ("mob",))
        proc = topo.start_router()
        ns = topo.router
        if daemon == "peer":
            proc = launch_peer(topo, "mob", name="peer")
            wait_for_address(topo, "mob", proc)
            ns = topo.clients["mob"].ns
        log_name = "router" if daemon == "router" else proc.name

        lab.sh(ns, f"ip link del {device}")
        exited, cpu = exit_and_cpu(proc, EXIT_LIMIT)
        print(f"{daemon}, {device} deleted: exit after {exited}s, {cpu:.2f} CPU seconds")
        assert exited is not None, f"still running {EXIT_LIMIT}s after deleting {device}"
        assert proc.wait(5) == 1
        assert cpu <= CPU_LIMIT
        what = "the TUN device 6bed4" if device == "6bed4" else f"uplink {device}"
        errors = [line for line in lab.log(log_name).splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"{what} was deleted" in errors[0] and errors[0].endswith("exiting"), errors
        assert not lab.has_link(ns, "6bed4")


def counters_at_exit(log: str) -> dict[str, int]:
    """The counters a daemon logs when it stops (only those that are not 0)."""
    line = [line for line in log.splitlines() if " counters: " in line][-1]
    return {key: int(value) for key, value in (item.split("=") for item in line.split(" counters: ")[1].split())}


def set_down_and_up(lab: Lab, ns: str, proc, while_down) -> float:
    """`ip link set 6bed4 down` under a running daemon, `while_down()`, then up again.

    Checks the daemon's log (one line when down, one when up again) and that it
    keeps running without spinning; returns the CPU seconds it used while down.
    """
    lab.sh(ns, "ip link set 6bed4 down")
    lab.wait_for(lambda: "the TUN device 6bed4 is down" in proc.log_path.read_text(), EXIT_LIMIT, "the log line")
    cpu_before = cpu_seconds(proc.pid)
    while_down()
    cpu = cpu_seconds(proc.pid) - cpu_before
    assert proc.poll() is None, proc.log_path.read_text()
    lab.sh(ns, "ip link set 6bed4 up")
    lab.wait_for(lambda: "the TUN device 6bed4 is up again" in proc.log_path.read_text(), EXIT_LIMIT, "the log line")
    log = proc.log_path.read_text()
    assert log.count("is down (not deleted)") == 1 and log.count("6bed4 is up again") == 1, log
    assert " ERROR " not in log, log
    return cpu


def test_router_tun_set_down_drops_counted_serves_on_and_resumes_when_up(net, router, peers):  # noqa: F811
    """Down: packets for the TUN counted as tun_down; RS/RA and relays between peers work; up: all back."""
    lab = net.lab
    one, two = net.clients["cl1"], net.clients["cl2"]
    peers("cl1", "-r")
    peers("cl2", "-r")
    other = address(lab, two.ns)
    assert ping(lab, one.ns, topology.INET6)
    configuration = lab.sh(net.router, "ip -6 addr show dev 6bed4; ip -6 route show dev 6bed4").stdout

    def while_down() -> None:
        assert not ping(lab, one.ns, topology.INET6, count=3, wait=1)  # into the down TUN: dropped
        assert ping(lab, one.ns, other, count=2)  # peer to peer: relayed by the router
        client = SixClient(lab, two.ns)  # a new peer still gets its RA
        try:
            assert client.solicit() is not None
        finally:
            client.close()

    cpu = set_down_and_up(lab, net.router, router, while_down)
    print(f"router CPU while down: {cpu:.2f}s")
    assert cpu <= CPU_LIMIT
    lab.wait_for(lambda: ping(lab, one.ns, topology.INET6, wait=1), RESUME_LIMIT + 2, "ping after up")
    assert lab.sh(net.router, "ip -6 addr show dev 6bed4; ip -6 route show dev 6bed4").stdout == configuration
    assert Lab.stop(router) == 0
    assert counters_at_exit(router.log_path.read_text())["drop_tun_down"] >= 3


def test_peer_tun_set_down_drops_counted_and_resumes_with_its_lease_when_up(net, router, peers):  # noqa: F811
    lab, client = net.lab, net.clients["cl1"]
    proc = peers("cl1", "-r")
    mine = address(lab, client.ns)
    assert ping(lab, net.inet, mine)
    routes = lab.sh(client.ns, "ip -6 route show dev 6bed4").stdout

    def while_down() -> None:
        assert address(lab, client.ns) is None  # the kernel took it away with the down device
        assert not ping(lab, net.inet, mine, count=3, wait=1)  # reaches the peer, whose TUN is down

    cpu = set_down_and_up(lab, client.ns, proc, while_down)
    print(f"peer CPU while down: {cpu:.2f}s")
    assert cpu <= CPU_LIMIT
    lab.wait_for(lambda: ping(lab, client.ns, topology.INET6, wait=1), RESUME_LIMIT + 2, "ping after up")
    assert address(lab, client.ns) == mine
    assert lab.sh(client.ns, "ip -6 route show dev 6bed4").stdout == routes
    assert ping(lab, net.inet, mine)
    assert Lab.stop(proc) == 0
    assert counters_at_exit(proc.log_path.read_text())["drop_tun_down"] >= 3


def test_peers_recover_by_themselves_after_the_router_was_unreachable(net, router, peers):  # noqa: F811
    """cl1 keeps its address through the outage; cl2, started during it, backs off to 30 s and then gets one."""
    lab = net.lab
    one, two = net.clients["cl1"], net.clients["cl2"]
    first = peers("cl1", "-r")
    before = address(lab, one.ns)
    pinger = ping_stream(lab, one.ns, topology.INET6, "ping-outage")
    try:
        with router_unreachable(net):
            late = peers("cl2", "-r", wait=False)
            time.sleep(OUTAGE)
            assert address(lab, two.ns) is None
        back = time.time()
        wait_for_address(net, "cl2", late, timeout=RS_BACKOFF[-1] + RESUME_LIMIT)  # its next RS, at the latest
        got_address = time.time() - back
        period = float(KEEPALIVE.split(",")[0])  # cl1 re-solicits once per keepalive period
        lab.wait_for(lambda: "the router answers again" in lab.log(first.name), period + RESUME_LIMIT, "cl1's RA")
    finally:
        Lab.stop(pinger, signal.SIGINT)
    resumed = next((t for t in reply_times(lab.log("ping-outage")) if t > back), None)
    assert resumed is not None, "cl1's pings were not answered after the outage"
    print(f"outage {OUTAGE:.0f}s: cl1 traffic after {resumed - back:.2f}s, cl2 address after {got_address:.1f}s")
    assert resumed - back <= RESUME_LIMIT
    assert address(lab, one.ns) == before
    assert "has not answered solicitations" in lab.log(first.name)
    assert f"next in {RS_BACKOFF[-1]:.0f}s" in lab.log(late.name)  # cl2 reached its longest backoff
    assert ping(lab, two.ns, topology.INET6) and ping(lab, two.ns, before)
