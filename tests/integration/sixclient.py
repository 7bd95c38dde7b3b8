"""A bare 6bed4 client for router tests: a UDP socket in a namespace, packets via scapy.

It stands in for a peer without a TUN device, so each test sees exactly what the
router sends, dissected by scapy rather than by our own parser.
"""

from __future__ import annotations

import socket

from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptPrefixInfo, IPv6

from tests.integration.topology import ROUTER_V4

ROUTER = (ROUTER_V4, 25790)


class SixClient:
    def __init__(self, lab, ns: str, port: int = 0, router: tuple[str, int] = ROUTER):
        self.router = router
        self.sock = lab.socket(ns)
        self.sock.bind(("0.0.0.0", port))
        self.sock.settimeout(3)
        self.address: str | None = None
        self.prefix114: str | None = None

    def send(self, packet) -> None:
        self.sock.sendto(bytes(packet), self.router)

    def recv(self, timeout: float = 3) -> tuple[IPv6, tuple[str, int]]:
        self.sock.settimeout(timeout)
        data, origin = self.sock.recvfrom(65536)
        return IPv6(data), origin

    def recv_matching(self, predicate, timeout: float = 3) -> IPv6:
        """Skip unrelated datagrams (e.g. RAs) until one matches."""
        while True:
            packet, _ = self.recv(timeout)
            if predicate(packet):
                return packet

    def solicit(self) -> IPv6:
        """Send an RS, take the /114 from the RA: address = /114 + lanid 1."""
        self.send(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
        ra = self.recv_matching(lambda p: p.haslayer(ICMPv6ND_RA))
        pio = ra[ICMPv6NDOptPrefixInfo]
        self.prefix114 = pio.prefix
        packed = bytearray(socket.inet_pton(socket.AF_INET6, pio.prefix))
        packed[15] |= 1
        self.address = socket.inet_ntop(socket.AF_INET6, bytes(packed))
        return ra

    def ping(self, destination: str, seq: int = 1, hlim: int = 64):
        self.send(IPv6(src=self.address, dst=destination, hlim=hlim) / ICMPv6EchoRequest(id=0x6b, seq=seq, data=b"6bed4"))

    def close(self) -> None:
        self.sock.close()
