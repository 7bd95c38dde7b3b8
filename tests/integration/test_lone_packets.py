"""A lone packet through our peer and router: answered, and never held back for a batch.

One ping from a peer (without NAT) to the IPv6 host crosses the peer and the
router twice.  The daemons' system calls (strace, attached to the running
processes) show that a packet read from the TUN device leaves by UDP before the
daemon reads the device again to look for more: a batch does not hold it back.
Both run with short scheduler slices, so that a woken daemon runs soon.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from sixbed4.io.datapath import SCHEDULER_SLICE_NS
from tests.integration import topology
from tests.netlab import Lab

pytestmark = pytest.mark.alone  # which packets the daemons read together depends on what else runs

ECHO_REQUEST, ECHO_REPLY = 128, 129
_READ = re.compile(r'^read\((\d+), "((?:\\x[0-9a-f]{2})*)".*\) = (-?\d+)')
_SEND = re.compile(r"^(sendto|sendmsg)\(")


@pytest.fixture(scope="module")
def net():
    with Lab("lp") as lab:
        topo = topology.build(lab, ("mob",))  # the Python paths: the kernel's fast paths would take the pings
        topo.start_router()
        peer = lab.python(topo.clients["mob"].ns, "sixbed4.peer.cli", "-s", topology.ROUTER_V4, "-r",
                          "--fast-path", "off", name="peer")
        ns = topo.clients["mob"].ns
        lab.wait_for(lambda: "inet6 2001:db8:9:10:" in lab.sh(ns, "ip -6 addr show dev 6bed4", check=False).stdout
                     or peer.poll() is not None, what="peer address")
        assert peer.poll() is None, lab.log("peer")
        topo.peer_proc = peer
        yield topo


def ping(net, count: int = 1) -> bool:
    return net.lab.sh(net.clients["mob"].ns, f"ping -6 -n -c {count} -W 2 {topology.INET6}", check=False).returncode == 0


def test_a_single_ping_through_peer_and_router_is_answered(net):
    assert ping(net, count=1)


def traced(net, pids: dict[str, int], action) -> dict[str, list[str]]:
    """strace of the running daemons (system calls on the data path, buffers in hex) while `action` runs."""
    tracers, paths = {}, {}
    for name, pid in pids.items():
        path = paths[name] = net.lab.scratch_file(f"strace-{name}.txt")
        tracers[name] = subprocess.Popen(
            ["strace", "-p", str(pid), "-xx", "-s", "64", "-o", str(path),
             "-e", "trace=read,write,writev,sendto,sendmsg,recvfrom,recvmmsg"],
            stderr=subprocess.PIPE, text=True)
    try:
        for name, tracer in tracers.items():  # strace says "Process N attached" once it is
            assert "attached" in tracer.stderr.readline(), f"strace could not attach to the {name}"
        action()
    finally:
        for tracer in tracers.values():
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
    traces = {}
    for name, path in paths.items():
        with open(path) as trace:
            traces[name] = trace.read().splitlines()
    return traces


def tun_fd(pid: int) -> int:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun":
            return int(fd)
    raise AssertionError(f"process {pid} has no TUN device open")


def next_after_echo_read(lines: list[str], tun: int, icmp_type: int) -> str | None:
    """The data-path system call after the read from the TUN (fd `tun`) that took the echo packet of `icmp_type`;
    None if the read before it took another packet: then the echo packet came second in a burst, which the
    daemon rightly drains as a batch (on the device, the kernel's MLD reports come at times of their own)."""
    calls = [line for line in lines if not line.startswith(("+++", "---"))]
    for at, line in enumerate(calls):
        read = _READ.match(line)
        if read and int(read.group(1)) == tun and int(read.group(3)) > 0:
            data = bytes.fromhex(read.group(2).replace("\\x", ""))
            if len(data) > 50 and data[10 + 6] == 58 and data[50] == icmp_type:  # virtio_net_hdr, IPv6, ICMPv6
                before = _READ.match(calls[at - 1]) if at else None
                if before and int(before.group(1)) == tun and int(before.group(3)) > 0:
                    return None
                assert at + 1 < len(calls), "nothing after the read"
                return calls[at + 1]
    raise AssertionError(f"no TUN read of ICMPv6 type {icmp_type} in:\n" + "\n".join(lines[-20:]))


def test_a_packet_from_the_tun_leaves_before_the_daemon_looks_for_more(net):
    pids = {"peer": net.peer_proc.pid, "router": net.router_proc.pid}
    assert ping(net)  # neighbours resolved: what follows is the data path alone
    # The request leaves the peer, and the reply the router, by UDP before the next TUN read.
    found = {}
    for _ in range(3):  # a ping whose echo packet came second in a burst says nothing: another one
        traces = traced(net, pids, lambda: ping(net))
        for name, icmp_type in (("peer", ECHO_REQUEST), ("router", ECHO_REPLY)):
            after = next_after_echo_read(traces[name], tun_fd(pids[name]), icmp_type)
            if after is not None:
                found.setdefault(name, after)
        if len(found) == len(pids):
            break
    for name in pids:
        assert name in found, f"in 3 pings the {name} read every echo packet right behind another TUN packet"
        assert _SEND.match(found[name]), f"the {name} did not send the echo packet first, but: {found[name]}"


def scheduler_slice(pid: int) -> int:
    for line in open(f"/proc/{pid}/sched"):
        key, _, value = line.partition(":")
        if key.strip() == "se.slice":
            return int(value)
    raise AssertionError(f"/proc/{pid}/sched shows no slice")


def test_both_daemons_run_with_short_scheduler_slices(net):
    for proc in (net.router_proc, net.peer_proc):
        assert scheduler_slice(proc.pid) == SCHEDULER_SLICE_NS
