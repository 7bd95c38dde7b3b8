"""The pump (Datapath.run) with a stand-in TUN device and UDP on loopback.

The TUN device is one end of a SOCK_SEQPACKET pair (each write one message, as
a TUN device's packets).  What is checked is when a lone packet from the TUN is
handed on: before the pump looks for more, so that no batch holds it back;
and that bursts, each side's first packet alone and the rest in batches,
still arrive whole and in order.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys

import pytest

from sixbed4.core.router import SEND, TUN
from sixbed4.core.stats import Counters
from sixbed4.io import datapath as datapath_module
from sixbed4.io.datapath import Datapath
from sixbed4.io.tun import VNET_HEADER


class FakeTun:
    def __init__(self, fd: int):
        self.fd, self.name = fd, "fake"


class ForwardingCore:
    """Every datagram to the TUN, every TUN packet to `target`; stops the pump after `expected` packets."""

    def __init__(self, target):
        self.counters = Counters()
        self.to_target = (SEND, None, target)
        self.datapath: Datapath | None = None
        self.expected = 1

    def _count(self) -> None:
        self.expected -= 1
        if self.expected == 0:
            self.datapath.stop()  # run() returns after this turn

    def from_udp(self, packet, origin, now):
        self._count()
        return (TUN, None, None)

    def from_tun(self, packet):
        self._count()
        return self.to_target


def waiting(sock: socket.socket) -> bool:
    """Whether a message is queued on `sock`, without taking it."""
    return bool(select.select([sock], [], [], 0)[0])


@pytest.fixture
def pump(monkeypatch):
    monkeypatch.setattr(datapath_module, "short_scheduler_slice", lambda: False)  # not for the test runner
    tun_ours, tun_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun_ours.setblocking(False)  # as the TUN device (O_NONBLOCK)
    tun_theirs.settimeout(1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.settimeout(1)
    core = ForwardingCore(far.getsockname())
    datapath = core.datapath = Datapath(udp, FakeTun(tun_ours.fileno()), core)
    yield datapath, tun_theirs, far, core
    datapath.close()
    for sock in (tun_ours, tun_theirs, udp, far):
        sock.close()


class WatchedReads:
    """The TUN file, noting at each read whether the datagram had already reached `far`."""

    def __init__(self, file, far: socket.socket):
        self.file, self.far = file, far
        self.sent_before: list[bool] = []

    def readinto(self, buffer):
        self.sent_before.append(waiting(self.far))
        return self.file.readinto(buffer)

    def close(self):
        self.file.close()


def test_a_lone_packet_from_the_tun_is_sent_without_a_read_for_more(pump):
    datapath, tun, far, _core = pump
    reads = datapath.tun_file = WatchedReads(datapath.tun_file, far)
    packet = bytes(range(60))
    tun.send(bytes(VNET_HEADER) + packet)
    datapath.run()
    assert far.recv(2048) == packet
    assert reads.sent_before == [False], "the pump read again before it sent the lone packet"


def test_the_first_packet_after_a_wait_is_sent_before_the_next_is_read(pump):
    datapath, tun, far, core = pump
    reads = datapath.tun_file = WatchedReads(datapath.tun_file, far)
    first, second = bytes(range(60)), bytes(range(1, 61))
    for packet in (first, second):
        tun.send(bytes(VNET_HEADER) + packet)
    core.expected = 2
    datapath.run()
    assert [far.recv(2048), far.recv(2048)] == [first, second]
    assert reads.sent_before[:2] == [False, True], "the first packet waited for the next one"


def test_a_burst_from_the_tun_arrives_whole_and_in_order(pump):
    datapath, tun, far, core = pump
    packets = [bytes([i]) * 100 for i in range(6)]  # one size, one destination: a run after the first
    for packet in packets:
        tun.send(bytes(VNET_HEADER) + packet)
    core.expected = len(packets)
    datapath.run()
    assert [far.recv(2048) for _ in packets] == packets
    assert not waiting(far)


def test_a_burst_of_datagrams_reaches_the_tun_whole_and_in_order(pump):
    datapath, tun, _far, core = pump
    packets = [bytes([i]) * 100 for i in range(6)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for packet in packets:
            peer.sendto(packet, datapath.sock.getsockname())
        core.expected = len(packets)
        datapath.run()
    received = []
    while waiting(tun):
        received.append(tun.recv(70000))
    assert [message[VNET_HEADER:] for message in received] == packets


def scheduling_after(setup: str) -> dict:
    """In a fresh interpreter: `setup`, then short_scheduler_slice(); what it returned and what the kernel shows."""
    code = f"""
import json, os
from sixbed4.io.datapath import short_scheduler_slice
{setup}
granted = short_scheduler_slice()
sched = {{key.strip(): value.strip() for key, value in (line.split(":", 1) for line in open("/proc/self/sched")
                                                       if ":" in line)}}
print(json.dumps({{"granted": granted, "policy": os.sched_getscheduler(0), "nice": os.getpriority(os.PRIO_PROCESS, 0),
                  "slice": int(sched.get("se.slice", "0"))}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_the_pump_asks_for_short_scheduler_slices_and_keeps_the_nice_value():
    seen = scheduling_after("os.nice(3)")
    assert seen == {"granted": True, "policy": os.SCHED_OTHER, "nice": 3, "slice": datapath_module.SCHEDULER_SLICE_NS}


def test_a_policy_the_operator_chose_is_left_alone():
    seen = scheduling_after("os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))")
    assert seen["granted"] is False
    assert seen["policy"] == os.SCHED_BATCH
