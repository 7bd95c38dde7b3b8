"""TunWriter without a TUN device: a SOCK_SEQPACKET pair keeps each write one message.

What a TUN device would be handed is checked field by field: the virtio_net_hdr,
the run's headers (lengths, the pseudo-header checksum, worked out here
independently), the payloads in order; packets that are not one flow go alone.
"""

from __future__ import annotations

import errno
import logging
import ipaddress
import socket
import struct

import pytest
from scapy.layers.inet import TCP
from scapy.layers.inet6 import UDP, ICMPv6EchoRequest, IPv6

from sixbed4.io import tun as tun_module
from sixbed4.io.tun import VNET_HEADER, TunWriter

SRC, DST = "2001:db8:9:10:c433:6407:9c40:8001", "2001:db8:ff::2"
SLOT = 2048


class FakeTun:
    def __init__(self, fd: int):
        self.fd, self.name = fd, "fake"


@pytest.fixture
def device():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(1)
    errors = []
    buffer = bytearray(8 * SLOT)
    writer = TunWriter(FakeTun(ours.fileno()), buffer, lambda exc, count: errors.append((exc.errno, count)))
    yield writer, buffer, theirs, errors
    ours.close()
    theirs.close()


def place(buffer: bytearray, packets) -> list[int]:
    offsets = []
    for i, packet in enumerate(packets):
        at = i * SLOT + VNET_HEADER
        buffer[at : at + len(packet)] = packet
        offsets.append(at)
    return offsets


def udp(payload: bytes, dport: int = 5000, hlim: int = 64) -> bytes:
    return bytes(IPv6(src=SRC, dst=DST, hlim=hlim) / UDP(sport=4000, dport=dport) / payload)


def tcp(seq: int, payload: bytes, flags: str = "A", window: int = 501) -> bytes:
    header = TCP(sport=4000, dport=443, seq=seq, ack=777, flags=flags, window=window,
                 options=[("NOP", None), ("NOP", None), ("Timestamp", (11, 22))])
    return bytes(IPv6(src=SRC, dst=DST) / header / payload)


def pseudo_header_sum(length: int, protocol: int = 17) -> int:
    words = ipaddress.IPv6Address(SRC).packed + ipaddress.IPv6Address(DST).packed
    total = sum(struct.unpack("!16H", words)) + length + protocol
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def messages(sock, count: int) -> list[bytes]:
    return [sock.recv(70000) for _ in range(count)]


def test_a_run_of_one_flow_is_one_gso_write(device):
    writer, buffer, theirs, errors = device
    packets = [udp(bytes([i]) * 1000) for i in range(5)]
    writer.write(len(packets[0]), place(buffer, packets))
    (message,) = messages(theirs, 1)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("=BBHHHH", message[:VNET_HEADER])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 5, 48, 1000, 40, 6)
    head = IPv6(message[VNET_HEADER : VNET_HEADER + 48])
    length = 8 + 5 * 1000
    assert head.plen == length and head[UDP].len == length
    assert head[UDP].chksum == pseudo_header_sum(length)
    assert message[VNET_HEADER + 48 :] == b"".join(bytes([i]) * 1000 for i in range(5))
    assert errors == [] and writer.gso
    assert bytes(buffer[:VNET_HEADER]) == bytes(VNET_HEADER)  # the slot's header is empty again


def test_packets_that_are_not_one_flow_go_alone_in_order(device):
    writer, buffer, theirs, errors = device
    packets = [udp(b"a" * 300), udp(b"b" * 300, dport=5001), udp(b"c" * 300, hlim=7),
               bytes(IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest(data=b"d" * 300)), udp(b"e" * 300)]
    assert len({len(p) for p in packets}) == 1
    writer.write(len(packets[0]), place(buffer, packets))
    got = messages(theirs, 5)
    assert [m[:VNET_HEADER] for m in got] == [bytes(VNET_HEADER)] * 5
    assert [m[VNET_HEADER:] for m in got] == packets  # untouched, checksums included


def test_consecutive_tcp_segments_are_one_tso_write_and_psh_ends_the_run(device):
    writer, buffer, theirs, errors = device
    chunks = [bytes([65 + i]) * 1200 for i in range(6)]
    packets = [tcp(1000 + 1200 * i, chunk, "PA" if i == 3 else "A") for i, chunk in enumerate(chunks)]
    writer.write(len(packets[0]), place(buffer, packets))
    first, second = messages(theirs, 2)  # segments 0-3 (PSH ends the run), then 4-5
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("=BBHHHH", first[:VNET_HEADER])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 4, 72, 1200, 40, 16)
    head = IPv6(first[VNET_HEADER : VNET_HEADER + 72])
    length = 32 + 4 * 1200
    assert head.plen == length and head[TCP].seq == 1000 and head[TCP].flags == "PA"
    assert head[TCP].chksum == pseudo_header_sum(length, 6)
    assert first[VNET_HEADER + 72 :] == b"".join(chunks[:4])
    head = IPv6(second[VNET_HEADER : VNET_HEADER + 72])
    assert head[TCP].seq == 1000 + 4 * 1200 and head[TCP].flags == "A" and head.plen == 32 + 2 * 1200
    assert second[VNET_HEADER + 72 :] == chunks[4] + chunks[5]
    assert bytes(buffer[:VNET_HEADER]) == bytes(VNET_HEADER) and errors == []


def test_tcp_segments_that_do_not_continue_each_other_go_alone(device):
    writer, buffer, theirs, errors = device
    packets = [tcp(1000, b"a" * 500), tcp(1600, b"b" * 500),  # a gap in the sequence
               tcp(2100, b"c" * 500, "SA"),  # not only ACK
               tcp(2600, b"d" * 500, window=9)]  # another window
    assert len({len(p) for p in packets}) == 1
    writer.write(len(packets[0]), place(buffer, packets))
    got = messages(theirs, 4)
    assert [m[VNET_HEADER:] for m in got] == packets


def test_a_kernel_without_udp_gso_gets_one_write_per_packet(device, monkeypatch, caplog):
    writer, buffer, theirs, errors = device

    def refuse(fd, parts):
        raise OSError(errno.EINVAL, "Invalid argument")

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(tun_module.os, "writev", refuse)  # a kernel before 6.2: no such kernel here
    packets = [udp(bytes([i]) * 500) for i in range(3)]
    writer.write(len(packets[0]), place(buffer, packets))
    got = messages(theirs, 3)
    assert [m[VNET_HEADER:] for m in got] == packets  # headers restored after the refused run
    assert not writer.gso and errors == []
    assert "takes no GSO packets" in caplog.text
    writer.write(len(packets[0]), place(buffer, packets))  # and no GSO is tried again
    assert [m[VNET_HEADER:] for m in messages(theirs, 3)] == packets


def test_a_failed_run_counts_every_packet(device, monkeypatch):
    writer, buffer, theirs, errors = device

    def full(fd, parts):
        raise OSError(errno.ENOBUFS, "No buffer space available")

    monkeypatch.setattr(tun_module.os, "writev", full)
    packets = [udp(bytes([i]) * 500) for i in range(4)]
    writer.write(len(packets[0]), place(buffer, packets))
    assert errors == [(errno.ENOBUFS, 4)] and writer.gso
