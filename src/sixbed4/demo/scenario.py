"""The seed's scenario as a lab: a hosting VM with a /64, its upstream, IPv4-only clients.

    inet (2001:db8:1::80) --- upstream --- vm eth0 (a8:bb:cc:00:11:22, 192.0.2.1)
                              fe80::aabb:ccff:fedd:eeff    ::11 ::30, 6bed4router
                                 |         |
        homenat (198.51.100.7) --+         +-- phone (203.0.113.50): 6bed4peer
          |  NAT, random ports
        gateway (192.168.1.2): 6bed4peer --lan lan0, the home network's IPv6 gateway
          |  lan0: a bridge, the home LAN; the gateway advertises itself there
        laptop: DHCPv6 (dhclient) for an address of the gateway's /114
        tablet: SLAAC only, an address of the gateway's ULA /64, translated (nat66)

`upstream` is the hosting provider's router and the whole Internet, IPv4 and
IPv6.  It either routes the /64 to the VM's link-local address (as the seed
asks the operator to request) or treats it as on-link, in which case only the
proxy Neighbor Discovery responder makes the 6bed4 addresses reachable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lab import Lab

PREFIX = "2001:db8:9:10::/64"
VM_MAC = "a8:bb:cc:00:11:22"
VM_LINK_LOCAL = "fe80::aabb:ccff:fe00:1122"
UPSTREAM_MAC = "a8:bb:cc:dd:ee:ff"
UPSTREAM_LINK_LOCAL = "fe80::aabb:ccff:fedd:eeff"
VM_V4 = "192.0.2.1"
INET6 = "2001:db8:1::80"
SERVERS = ("2001:db8:9:10::11", "2001:db8:9:10::30")
HOME_PUBLIC = "198.51.100.7"
PHONE_V4 = "203.0.113.50"
LAN_BRIDGE_MAC = "a8:bb:cc:00:00:01"  # fixed, so that the gateway's link-local address on the LAN is too
LAN_DEVICES = ("laptop", "tablet")


@dataclass
class Scenario:
    lab: Lab
    upstream_routes_prefix: bool

    @property
    def roles(self) -> dict[str, str]:
        roles = ("upstream", "inet", "vm", "homenat", "gateway", *LAN_DEVICES, "phone")
        return {role: self.lab.name(role) for role in roles}


def build(lab: Lab, upstream_routes_prefix: bool) -> Scenario:
    """Create every namespace and link; the VM starts as the seed's starting point."""
    up = lab.add("upstream", forwarding=True)
    inet = lab.add("inet")
    vm = lab.add("vm")
    homenat = lab.add("homenat", forwarding=True)
    gateway = lab.add("gateway")  # 6bed4peer --lan turns IPv6 forwarding on, and off again
    devices = [lab.add(role) for role in LAN_DEVICES]
    phone = lab.add("phone")

    # the VM's uplink: one Ethernet link carrying IPv4 and the /64
    lab.veth(up, "vm0", vm, "eth0", mac_a=UPSTREAM_MAC, mac_b=VM_MAC)
    lab.address(up, "vm0", "192.0.2.254/24")
    lab.address(vm, "eth0", f"{VM_V4}/24")
    lab.route(vm, "0.0.0.0/0", via="192.0.2.254")
    # the VM receives finished datagrams, as from a NIC (a veth would hand on a local
    # sender's unfinished checksums and GSO super-packets, which the fast path leaves alone)
    lab.run(up, ["ethtool", "-K", "vm0", "tx", "off", "gso", "off"])
    for server in SERVERS:
        lab.address(vm, "eth0", f"{server}/64")
    lab.route(vm, "::/0", via=UPSTREAM_LINK_LOCAL, dev="eth0")
    if upstream_routes_prefix:
        lab.route(up, PREFIX, via=VM_LINK_LOCAL, dev="vm0")
    else:
        lab.route(up, PREFIX, dev="vm0")

    # an IPv6 host on the Internet
    lab.veth(up, "net0", inet, "eth0")
    lab.address(up, "net0", "2001:db8:1::1/64")
    lab.address(inet, "eth0", f"{INET6}/64")
    lab.route(inet, "::/0", via="2001:db8:1::1")

    # a home network behind NAT, with a gateway running the peer
    lab.veth(up, "home0", homenat, "wan")
    lab.address(up, "home0", "198.51.100.254/24")
    lab.address(homenat, "wan", f"{HOME_PUBLIC}/24")
    lab.route(homenat, "0.0.0.0/0", via="198.51.100.254")
    lab.veth(homenat, "lan", gateway, "eth0")
    lab.address(homenat, "lan", "192.168.1.1/24")
    lab.address(gateway, "eth0", "192.168.1.2/24")
    lab.route(gateway, "0.0.0.0/0", via="192.168.1.1")
    nat = lab.run(homenat, ["nft", "-f", "-"], input=(
        "table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        '  oifname "wan" masquerade random\n }\n}\n'))
    if nat.returncode != 0:
        raise RuntimeError(f"nft in {homenat}: {nat.stderr.strip()}")
    # the home LAN: a bridge on the gateway, a laptop and a tablet on it; their IPv6 comes from the gateway
    lab.bridge(gateway, "lan0", LAN_BRIDGE_MAC)
    for role, device in zip(LAN_DEVICES, devices):
        lab.veth(gateway, f"lan-{role}", device, "eth0")
        lab.enslave(gateway, f"lan-{role}", "lan0")
        lab.run(device, ["ethtool", "-K", "eth0", "tx", "off"])  # checksums finished, as over a wire

    # a phone with its own public IPv4 address
    lab.veth(up, "mob0", phone, "eth0")
    lab.address(up, "mob0", "203.0.113.254/24")
    lab.address(phone, "eth0", f"{PHONE_V4}/24")
    lab.route(phone, "0.0.0.0/0", via="203.0.113.254")
    return Scenario(lab, upstream_routes_prefix)
