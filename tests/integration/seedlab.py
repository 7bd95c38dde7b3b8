"""The seed's starting point in namespaces, for host-setup and proxy ND tests.

    inet (2001:db8:1::80) --- upstream --------- vm eth0 a8:bb:cc:00:11:22
                              vm0 a8:bb:cc:dd:ee:ff   192.0.2.1, ::11/64 ::30/64
                              fe80::aabb:ccff:fedd:eeff   default via the upstream
                                 |
        nat (198.51.100.7) ------+   masquerade, random ports
          |
        client (10.0.1.2): a bare 6bed4 client (tests.integration.sixclient)

The upstream routes IPv4 between everyone and IPv6 between the Internet host and
the VM's /64: either to the VM's link-local address (`routed=True`, what the
seed asks the operator to request) or as on-link on vm0 (`routed=False`: it
sends Neighbor Solicitations for every address, so only the proxy helps).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass

from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from sixbed4.demo.scenario import (  # the seed's numbers, as the demo uses them
    INET6,
    PREFIX,
    SERVERS,
    UPSTREAM_LINK_LOCAL,
    UPSTREAM_MAC,
    VM_LINK_LOCAL,
    VM_MAC,
    VM_V4,
)
from sixbed4.demo.scenario import HOME_PUBLIC as NAT_PUBLIC

from tests.integration.sixclient import SixClient
from tests.integration.topology import nat
from tests.netlab import Lab


@dataclass
class SeedLab:
    lab: Lab
    upstream: str
    inet: str
    vm: str
    nat: str
    client: str
    routed: bool

    # --- commands in the VM ------------------------------------------------------------

    def sixbed4(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """`6bed4 ARGS` inside the VM namespace."""
        cmd = " ".join([sys.executable, "-m", "sixbed4.cli", *args])
        return self.lab.sh(self.vm, f"PYTHONPATH={self.lab_src} {cmd}", check=check)

    @property
    def lab_src(self) -> str:
        from tests.netlab import ROOT
        return str(ROOT / "src")

    def snapshot(self) -> dict[str, str]:
        """What undo must restore byte for byte: `ip -6 addr`, `ip -6 route`, the IPv6 sysctls."""
        return {
            "addr": self.lab.sh(self.vm, "ip -6 addr").stdout,
            "route": self.lab.sh(self.vm, "ip -6 route").stdout,
            "sysctl": self.lab.sh(self.vm, "sysctl -a 2>/dev/null | grep -E '^net\\.ipv6\\.conf\\.'").stdout,
        }

    def start_router(self, *extra: str, name: str = "router"):
        proc = self.lab.python(self.vm, "sixbed4.router.cli", "-l", VM_V4, "-L", PREFIX,
                               "--log-level", "debug", *extra, name=name)
        self.lab.wait_for(lambda: "serving" in self.lab.log(name) or proc.poll() is not None,
                          what="router start")
        assert proc.poll() is None, f"router exited: {self.lab.log(name)}"
        return proc

    def start_proxy(self, *extra: str, name: str = "proxy"):
        proc = self.lab.python(self.vm, "sixbed4.cli", "proxy-nd", "--uplink", "eth0", "--prefix", PREFIX,
                               "--log-level", "debug", *extra, name=name)
        self.lab.wait_for(lambda: "proxy ND on" in self.lab.log(name) or proc.poll() is not None,
                          what="proxy start")
        assert proc.poll() is None, f"proxy exited: {self.lab.log(name)}"
        return proc

    def forget_neighbors(self) -> None:
        """Make the upstream ask again (a failed resolution is remembered for a while)."""
        self.lab.sh(self.upstream, "ip -6 neigh flush dev vm0", check=False)

    # --- reachability ----------------------------------------------------------------------

    def ping(self, ns: str, address: str, count: int = 1, wait: float = 2) -> bool:
        result = self.lab.sh(ns, f"ping -6 -n -c {count} -W {wait} {address}", check=False, timeout=30)
        return result.returncode == 0

    def new_client(self) -> SixClient:
        client = SixClient(self.lab, self.client)
        client.solicit()
        return client

    def internet_pings_client(self, client: SixClient, wait: float = 2) -> bool:
        """The Internet host pings the client's 6bed4 address; the bare client answers by hand."""
        answered = threading.Event()

        def answer():
            try:
                while True:
                    packet = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoRequest), timeout=wait + 1)
                    request = packet[ICMPv6EchoRequest]
                    client.send(IPv6(src=client.address, dst=packet.src, hlim=64)
                                / ICMPv6EchoReply(id=request.id, seq=request.seq, data=request.data))
                    answered.set()
            except OSError:
                pass  # timeout: nothing (more) came

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        ok = self.ping(self.inet, client.address, wait=wait)
        thread.join(wait + 3)
        return ok and answered.is_set()

    def client_pings(self, client: SixClient, address: str, seq: int) -> bool:
        client.ping(address, seq=seq)
        try:
            reply = client.recv_matching(
                lambda p: p.haslayer(ICMPv6EchoReply) and p[ICMPv6EchoReply].seq == seq, timeout=3)
        except OSError:
            return False
        return reply.src == address and reply.dst == client.address


def build(lab: Lab, routed: bool) -> SeedLab:
    upstream = lab.ns("up", forwarding=True)
    inet = lab.ns("inet")
    vm = lab.ns("vm")
    nat_ns = lab.ns("nat", forwarding=True)
    client = lab.ns("cl")

    # the VM's uplink, with the seed's MAC addresses (and so its link-local addresses)
    lab.sh(upstream, f"ip link add vm0 address {UPSTREAM_MAC} type veth peer name eth0 address {VM_MAC} netns {vm}")
    lab.sh(upstream, "ip link set vm0 up")
    lab.sh(vm, "ip link set eth0 up")
    lab.sh(upstream, "ip addr add 192.0.2.254/24 dev vm0")
    lab.sh(vm, f"ip addr add {VM_V4}/24 dev eth0 && ip route add default via 192.0.2.254")
    # the seed's starting point
    lab.sh(vm, f"ip -6 route add default via {UPSTREAM_LINK_LOCAL} dev eth0")
    for server in SERVERS:
        lab.sh(vm, f"ip -6 addr add {server}/64 dev eth0")
    if routed:
        lab.sh(upstream, f"ip -6 route add {PREFIX} via {VM_LINK_LOCAL} dev vm0")
    else:
        lab.sh(upstream, f"ip -6 route add {PREFIX} dev vm0")

    # the IPv6 Internet
    lab.link(upstream, "net0", inet, "eth0")
    lab.sh(upstream, "ip -6 addr add 2001:db8:1::1/64 dev net0 nodad")
    lab.sh(inet, f"ip -6 addr add {INET6}/64 dev eth0 nodad && ip -6 route add default via 2001:db8:1::1")

    # an IPv4-only client behind NAT
    lab.link(upstream, "home0", nat_ns, "wan")
    lab.sh(upstream, "ip addr add 198.51.100.254/24 dev home0")
    lab.sh(nat_ns, f"ip addr add {NAT_PUBLIC}/24 dev wan && ip route add default via 198.51.100.254")
    lab.link(nat_ns, "lan", client, "eth0")
    lab.sh(nat_ns, "ip addr add 10.0.1.1/24 dev lan")
    lab.sh(client, "ip addr add 10.0.1.2/24 dev eth0 && ip route add default via 10.0.1.1")
    nat(lab, nat_ns, "wan")

    # wait until the link-local addresses are usable (no DAD in the lab, but the links come up)
    lab.wait_for(lambda: VM_LINK_LOCAL in lab.sh(vm, "ip -6 addr show dev eth0").stdout, what="VM link-local")
    return SeedLab(lab, upstream, inet, vm, nat_ns, client, routed)
