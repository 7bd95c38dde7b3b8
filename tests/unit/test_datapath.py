"""The pump (Datapath.run) with a stand-in TUN device and UDP on loopback.

The TUN device is one end of a SOCK_SEQPACKET pair (each write one message, as
a TUN device's packets).  What is checked is when a lone packet from the TUN is
handed on: before the pump looks for more, so that no batch holds it back;
and that bursts, each side's first packet alone and the rest in batches,
still arrive whole and in order.
"""

from __future__ import annotations

import select
import socket

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
    """Every datagram to the TUN, every TUN packet to `target`; asks the pump to stop after this turn."""

    def __init__(self, target):
        self.counters = Counters()
        self.to_target = (SEND, None, target)
        self.datapath: Datapath | None = None

    def from_udp(self, packet, origin, now):
        self.datapath.stop()
        return (TUN, None, None)

    def from_tun(self, packet):
        self.datapath.stop()
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
    yield datapath, tun_theirs, far
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


def test_a_lone_packet_from_the_tun_is_sent_before_the_pump_reads_again(pump):
    datapath, tun, far = pump
    reads = datapath.tun_file = WatchedReads(datapath.tun_file, far)
    packet = bytes(range(60))
    tun.send(bytes(VNET_HEADER) + packet)
    datapath.run()
    assert far.recv(2048) == packet
    assert len(reads.sent_before) >= 2, "the pump never looked for more"
    assert reads.sent_before[0] is False  # the first read took the packet
    assert all(reads.sent_before[1:]), "a read for more came before the lone packet was sent"


def test_a_burst_from_the_tun_arrives_whole_and_in_order(pump):
    datapath, tun, far = pump
    packets = [bytes([i]) * 100 for i in range(6)]  # one size, one destination: a run after the first
    for packet in packets:
        tun.send(bytes(VNET_HEADER) + packet)
    datapath.run()
    assert [far.recv(2048) for _ in packets] == packets
    assert not waiting(far)


def test_a_burst_of_datagrams_reaches_the_tun_whole_and_in_order(pump):
    datapath, tun, _far = pump
    packets = [bytes([i]) * 100 for i in range(6)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for packet in packets:
            peer.sendto(packet, datapath.sock.getsockname())
        datapath.run()
    received = []
    while waiting(tun):
        received.append(tun.recv(70000))
    assert [message[VNET_HEADER:] for message in received] == packets
