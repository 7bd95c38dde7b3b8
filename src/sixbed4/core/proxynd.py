"""Proxy Neighbor Discovery on the uplink, as pure logic: which NS to answer, and the answer.

When the upstream router treats the host's /64 as on-link, it sends a Neighbor
Solicitation for every address it wants to reach.  The kernel answers only for
addresses on the uplink itself, and kernel proxy entries must be listed one
address at a time (a /64 cannot be listed).  This core answers, from the uplink's
MAC address, for the addresses the host handles in the /64 that the kernel
would not answer itself:

- the host's own addresses that are not on the uplink (moved to a dummy
  interface or lo by `6bed4 host-setup`): OWN, answered like their owner would,
  Duplicate Address Detection probes included (the host defends them);
- addresses a 6bed4 peer can have (addr.peer_endpoint: canonical interface
  identifier, port neither 0 nor 25790, a unicast IPv4 address): PEER, unless
  another host on the uplink has claimed the address.

Other hosts share the /64 on an on-link uplink, and their addresses may look
like peer addresses, so for PEER targets the proxy never takes an address away:

- it never answers a DAD probe (an NS from ::) for them: the prober is about
  to own the address; the target is remembered as claimed;
- an NS whose source is in the /64, and any NA from another host, tells the
  same: that host owns that address; remembered as claimed;
- claimed addresses are not answered (a bounded table, oldest forgotten first);
- answers carry O=0: a real owner's NA (O=1) replaces ours in the upstream's
  neighbour cache, and ours never replaces the owner's (RFC 4861 7.2.5).

EUI-64 identifiers (U/L bit set) and three quarters of random ones are not
canonical 6bed4 identifiers and are never answered at all.

Flags (RFC 4861 7.2.4, 7.2.8): R=1, because this host forwards the /64 (it is a
router for it); S=1 when the solicitation came from a unicast address, S=0 for a
DAD probe (answered to ff02::1); O=0 for PEER, O=1 for OWN.  The NA's source is
the uplink's link-local address (an address of the sending interface, as the
kernel does for its proxy answers).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import addr, icmp6
from .ratelimit import Budget, Rate
from .stats import DROP_REASONS, Counters

ETH_HEADER = 14
ETH_P_IPV6 = 0x86DD
ALL_NODES_MAC = bytes.fromhex("333300000001")
CLAIMS_LIMIT = 4096  # addresses remembered as claimed by other hosts
SOLICITED_NODE_PREFIX = bytes.fromhex("ff0200000000000000000001ff")  # ff02::1:ff00:0/104
# what the responder counts (it shares the Counters type with the datapath cores)
EVENTS = ("ns_received", "na_sent")
REASONS = tuple(reason for reason in DROP_REASONS if reason.startswith(("proxy_", "nd_", "rate_", "send_")))

# answer kinds
PEER = "peer"
OWN = "own"


def solicited_node(target: bytes) -> bytes:
    """ff02::1:ffXX:XXXX for a unicast address."""
    return SOLICITED_NODE_PREFIX + bytes(target[13:16])


def multicast_mac(ipv6: bytes) -> bytes:
    return b"\x33\x33" + bytes(ipv6[12:16])


def parse_mac(text: str) -> bytes:
    value = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(value) != 6:
        raise ValueError(f"{text!r} is not a MAC address")
    return value


@dataclass(frozen=True)
class ProxyConfig:
    prefix: bytes  # the 8 bytes of the /64
    mac: bytes  # the uplink's MAC address: the answers' link-layer address
    source: bytes | None = None  # the uplink's link-local address (None: answer from the target)
    own: frozenset[bytes] = frozenset()  # the host's addresses in the /64 that are not on the uplink
    uplink: frozenset[bytes] = frozenset()  # addresses on the uplink: the kernel answers for those


def classify(config: ProxyConfig, target: bytes) -> str:
    """PEER or OWN if the proxy answers for `target`, else the drop reason."""
    if target[:8] != config.prefix:
        return "proxy_not_ours"
    if target in config.uplink:
        return "proxy_kernel_answers"
    if target in config.own:
        return OWN
    if addr.port_of(target) == 0:
        return "proxy_port0"
    if addr.peer_endpoint(target) is None:
        return "proxy_forbidden"
    return PEER


@dataclass(frozen=True)
class Answer:
    packet: bytes  # the IPv6 packet of the NA
    eth_dst: bytes  # where the Ethernet frame goes
    kind: str  # PEER or OWN

    def frame(self, eth_src: bytes) -> bytes:
        return self.eth_dst + eth_src + struct.pack("!H", ETH_P_IPV6) + self.packet


class ProxyCore:
    """Decide on one NS at a time; count every answer and every drop by reason."""

    def __init__(self, config: ProxyConfig, counters: Counters | None = None, limiter: Budget | None = None):
        self.config = config
        self.counters = counters or Counters()
        # per target 5/s (burst 10): the upstream retries 3 times per second at most;
        # 500/s in total: a scan of the /64 must not turn into a flood from us
        self.limiter = limiter or Budget(Rate(500.0, 200.0), Rate(5.0, 10.0))
        self.claimed: dict[bytes, None] = {}  # addresses other hosts on the uplink own, oldest first

    def _claim(self, address: bytes) -> None:
        """Remember that another host owns `address` (only addresses the proxy could take matter)."""
        if address[:8] != self.config.prefix or address in self.config.own or address in self.config.uplink:
            return
        claimed = self.claimed
        claimed.pop(address, None)
        if len(claimed) >= CLAIMS_LIMIT:
            del claimed[next(iter(claimed))]
        claimed[address] = None

    def _drop(self, reason: str) -> None:
        self.counters.drop(reason)

    def handle_frame(self, frame, now: float) -> bytes | None:
        """An Ethernet frame in; the NA frame to send, or None (the reason is counted)."""
        if len(frame) < ETH_HEADER + icmp6.IPV6_HEADER or frame[12:14] != b"\x86\xdd":
            self._drop("proxy_not_ns")
            return None
        eth_dst = bytes(frame[0:6])
        eth_src = bytes(frame[6:12])
        if eth_src == self.config.mac:
            self._drop("proxy_not_ns")  # our own frame, looped back
            return None
        if not eth_dst[0] & 1 and eth_dst != self.config.mac:
            self._drop("proxy_other_host")
            return None
        answer = self.handle_packet(memoryview(frame)[ETH_HEADER:], now, eth_src)
        return None if answer is None else answer.frame(self.config.mac)

    def handle_packet(self, packet, now: float, eth_src: bytes | None = None) -> Answer | None:
        """An IPv6 packet in; the Answer, or None (the reason is counted)."""
        if len(packet) < icmp6.IPV6_HEADER + 24 or packet[0] >> 4 != 6:
            self._drop("proxy_not_ns")
            return None
        length = icmp6.IPV6_HEADER + struct.unpack_from("!H", packet, 4)[0]
        if length > len(packet):
            self._drop("proxy_not_ns")
            return None
        packet = bytes(packet[:length])  # Ethernet may pad short frames
        if packet[6] != icmp6.PROTO_ICMPV6 or packet[icmp6.IPV6_HEADER] != icmp6.NEIGHBOR_SOLICIT:
            if packet[6] == icmp6.PROTO_ICMPV6 and packet[icmp6.IPV6_HEADER] == icmp6.NEIGHBOR_ADVERT:
                self._drop("proxy_na")
                self._claim(packet[48:64])  # its target: the advertising host owns it
            else:
                self._drop("proxy_not_ns")
            return None
        self.counters.ns_received += 1
        try:
            target = icmp6.parse_neighbor_solicit(packet)
            options = icmp6.nd_options(packet[icmp6.IPV6_HEADER:], 24)
        except icmp6.NdError as exc:
            self._drop(exc.reason)
            return None
        src = packet[8:24]
        dst = packet[24:40]
        source_lladdr = next((value for kind, value in options if kind == icmp6.OPT_SOURCE_LLADDR), None)
        dad = src == icmp6.UNSPECIFIED
        if src[0] == 0xFF:
            self._drop("nd_malformed")  # multicast source
            return None
        if dad and (dst != solicited_node(target) or source_lladdr is not None):
            self._drop("nd_malformed")  # RFC 4861 7.1.1
            return None
        if dst != target and dst != solicited_node(target):
            self._drop("proxy_bad_dst")
            return None
        if not dad:
            self._claim(src)  # the soliciting host owns its source address
        kind = classify(self.config, target)
        if kind == PEER:
            if dad:
                self._claim(target)
                kind = "proxy_dad"
            elif target in self.claimed:
                kind = "proxy_claimed"
        if kind not in (PEER, OWN):
            self._drop(kind)
            return None
        if not self.limiter.allow(now, target):
            self._drop("rate_limited")
            return None
        flags = icmp6.NA_ROUTER | (0 if dad else icmp6.NA_SOLICITED) | (icmp6.NA_OVERRIDE if kind == OWN else 0)
        na_dst = icmp6.ALL_NODES if dad else src
        na_src = self.config.source or target
        na = icmp6.neighbor_advert(na_src, na_dst, target, flags, self.config.mac)
        if dad:
            eth_dst = ALL_NODES_MAC
        elif source_lladdr is not None and len(source_lladdr) == 6:
            eth_dst = source_lladdr
        elif eth_src is not None:
            eth_dst = eth_src
        else:
            self._drop("nd_malformed")  # nowhere to send the answer
            return None
        self.counters.na_sent += 1
        return Answer(na, eth_dst, kind)
