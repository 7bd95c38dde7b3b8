"""The test Internet: an IPv4 core, NATs with clients, a 6bed4 router host, an IPv6 host.

    cl1 (10.0.1.2) -- nat1 (198.51.100.7) --\\
    cl2 (10.0.2.2) -- nat2 (203.0.113.9) ----- core4 ---- rtr (192.0.2.1) --- inet6 (2001:db8:ff::2)
    mob (198.18.0.50, no NAT) ------/                6bed4 TUN, 2001:db8:9:10::/64
    atk (198.18.1.66, no NAT, sends forged packets)

The NATs masquerade with random source ports, so a client's public port differs
from its local one, as behind a real home router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.netlab import Lab

ROUTER_V4 = "192.0.2.1"
PREFIX = "2001:db8:9:10::/64"
INET6 = "2001:db8:ff::2"
ROUTER_UPLINK6 = "2001:db8:ff::1"
HOST_SERVER = "2001:db8:9:10::11"  # a port-0 address of the router host


@dataclass
class Client:
    ns: str
    local_v4: str
    public_v4: str
    nat: str | None


@dataclass
class Topology:
    lab: Lab
    core: str
    router: str
    inet: str
    clients: dict[str, Client] = field(default_factory=dict)
    router_proc: object = None
    fast_path: str = "off"  # the router's --fast-path

    def start_router(self, *extra: str, name: str = "router"):
        proc = self.lab.python(
            self.router, "sixbed4.router.cli", "-l", ROUTER_V4, "-L", PREFIX, "--log-level", "debug",
            "--fast-path", self.fast_path, *extra, name=name
        )
        self.lab.wait_for(
            lambda: "serving" in self.lab.log(name) or proc.poll() is not None, what="router start"
        )
        assert proc.poll() is None, f"router exited: {self.lab.log(name)}"
        self.router_proc = proc
        return proc


def nat(lab: Lab, ns: str, wan: str) -> None:
    """Masquerade everything leaving `wan`, with random ports (like a real NAT)."""
    lab.sh(ns, f"nft add table ip nat && nft add chain ip nat post '{{ type nat hook postrouting priority 100; }}' "
               f"&& nft add rule ip nat post oifname {wan} masquerade random")


def build(lab: Lab, clients: tuple[str, ...] = ("cl1", "cl2"), fast_path: str = "off") -> Topology:
    core = lab.ns("core4", forwarding=True)
    router = lab.ns("rtr", forwarding=True)
    inet = lab.ns("inet6")
    topo = Topology(lab, core, router, inet, fast_path=fast_path)

    lab.link(core, "r0", router, "eth1")
    # Datagrams reach the router as from a NIC: checksums complete, no GSO super-packets
    # (a veth would hand on a local sender's unfinished checksum and unsplit GSO sends).
    lab.sh(core, "ethtool -K r0 tx off gso off >/dev/null")
    # and leave it likewise: each datagram's checksum is complete, and checked where it arrives
    lab.sh(router, "ethtool -K eth1 tx off >/dev/null")
    lab.sh(core, "ip addr add 192.0.2.254/24 dev r0")
    lab.sh(router, f"ip addr add {ROUTER_V4}/24 dev eth1 && ip route add default via 192.0.2.254")
    lab.link(router, "up6", inet, "eth0")
    lab.sh(router, f"ip -6 addr add {ROUTER_UPLINK6}/64 dev up6 nodad")
    lab.sh(inet, f"ip -6 addr add {INET6}/64 dev eth0 nodad && ip -6 route add default via {ROUTER_UPLINK6}")
    lab.sh(router, f"ip -6 addr add {HOST_SERVER}/128 dev lo")

    plan = {
        "cl1": ("198.51.100.7", "198.51.100.254", "10.0.1"),
        "cl2": ("203.0.113.9", "203.0.113.254", "10.0.2"),
        "mob": ("198.18.0.50", "198.18.0.254", None),
        "atk": ("198.18.1.66", "198.18.1.254", None),
    }
    for index, role in enumerate(clients):
        public, gateway, lan = plan[role]
        core_if = f"c{index}"
        if lan is None:  # a client with its own public address
            ns = lab.ns(role)
            lab.link(core, core_if, ns, "eth0")
            lab.sh(core, f"ip addr add {gateway}/24 dev {core_if}")
            lab.sh(ns, f"ip addr add {public}/24 dev eth0 && ip route add default via {gateway}")
            topo.clients[role] = Client(ns, public, public, None)
            continue
        nat_ns = lab.ns(f"nat{index}", forwarding=True)
        ns = lab.ns(role)
        lab.link(core, core_if, nat_ns, "wan")
        lab.sh(core, f"ip addr add {gateway}/24 dev {core_if}")
        lab.sh(nat_ns, f"ip addr add {public}/24 dev wan && ip route add default via {gateway}")
        lab.link(nat_ns, "lan", ns, "eth0")
        lab.sh(nat_ns, f"ip addr add {lan}.1/24 dev lan")
        lab.sh(ns, f"ip addr add {lan}.2/24 dev eth0 && ip route add default via {lan}.1")
        nat(lab, nat_ns, "wan")
        topo.clients[role] = Client(ns, f"{lan}.2", public, nat_ns)
    return topo

