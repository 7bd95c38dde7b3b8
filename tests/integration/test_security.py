"""One forged packet against a live router (issue 11): no loops, nothing sent to its own host, no theft.

Each attack is sent as an attacker would, from a namespace of its own; nftables
counters and sockets in the router's host record what the router sends.  Every
test also checks that the forged packets did reach the router (its drop
counters rose), so none passes because the attack went astray.
"""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import threading
import time

from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, IPv6
from scapy.packet import Raw

from sixbed4.core import addr
from sixbed4.demo.scenario import PREFIX as SEED_PREFIX
from sixbed4.demo.scenario import UPSTREAM_MAC, VM_MAC, VM_V4
from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.integration.test_hostile import drops, raw_udp, sixbed4
from tests.netlab import Lab

METRICS = "http://127.0.0.1:9641/metrics"


def send_native(lab: Lab, ns: str, packet) -> None:
    """Send a whole IPv6 packet, any source, from `ns` (a raw socket with the header included)."""
    sock = lab.socket(ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sock.sendto(bytes(packet), (packet[IPv6].dst, 0))
    finally:
        sock.close()


def nft_packets(lab: Lab, ns: str, table: str) -> int:
    """The sum of every counter in an nftables table."""
    listing = lab.sh(ns, f"nft list table {table}").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


def rose(lab: Lab, ns: str, before: dict, *names: str) -> float:
    """How much the router's counters (drop reasons or metric names) rose since `before`."""
    after = drops(lab, ns)
    return sum(after.get(name, 0) - before.get(name, 0) for name in names)


ARRIVED = ("sixbed4_router_tun_in_total", "sixbed4_router_udp_in_total")


# --- RFC 6324: two routers, one packet -------------------------------------------------------


def test_a_forged_packet_between_two_routers_dies_at_the_first():
    """Source in B's /64 encoding A:25790, destination in A's /64 encoding B:25790: sent once, by the Internet."""
    with Lab("loop") as lab:
        core = lab.ns("core4", forwarding=True)
        inet = lab.ns("inet6", forwarding=True)
        routers = {"a": ("192.0.2.1", "2001:db8:a::/64", "2001:db8:ff:a"),
                   "b": ("198.51.100.1", "2001:db8:b::/64", "2001:db8:ff:b")}
        for index, (name, (v4, prefix, uplink)) in enumerate(routers.items()):
            ns = lab.ns(f"rtr{name}", forwarding=True)
            lab.link(core, f"r{index}", ns, "eth1")
            gateway = v4.rsplit(".", 1)[0] + ".254"
            lab.sh(core, f"ip addr add {gateway}/24 dev r{index}")
            lab.sh(ns, f"ip addr add {v4}/24 dev eth1 && ip route add default via {gateway}")
            lab.link(ns, "up6", inet, f"to{name}")
            lab.sh(ns, f"ip -6 addr add {uplink}::1/64 dev up6 nodad && ip -6 route add default via {uplink}::2")
            lab.sh(inet, f"ip -6 addr add {uplink}::2/64 dev to{name} nodad && "
                         f"ip -6 route add {prefix} via {uplink}::1")
            proc = lab.python(ns, "sixbed4.router.cli", "-l", v4, "-L", prefix, "--metrics", "127.0.0.1:9641",
                              name=f"router-{name}")
            lab.wait_for(lambda: "serving" in lab.log(f"router-{name}") or proc.poll() is not None,
                         what=f"router {name}")
            assert proc.poll() is None, lab.log(f"router-{name}")
            routers[name] = (v4, prefix, uplink, ns)
        lab.sh(core, "nft add table ip bounces && nft add chain ip bounces forwarded '{ type filter hook forward priority 0; }' "
                     "&& nft add rule ip bounces forwarded udp sport 25790 udp dport 25790 counter")
        (a_v4, a_prefix, _, a_ns), (b_v4, b_prefix, _, _) = routers["a"], routers["b"]

        def address(prefix: str, v4: str) -> str:
            packed = ipaddress.IPv6Network(prefix).network_address.packed[:8]
            return addr.format_address(addr.encode(packed, addr.parse_ipv4(v4), 25790, 1))

        before = drops(lab, a_ns)
        send_native(lab, inet, IPv6(src=address(b_prefix, a_v4), dst=address(a_prefix, b_v4), hlim=255)
                    / UDP(sport=1, dport=2) / Raw(b"loop"))
        lab.wait_for(lambda: rose(lab, a_ns, before, *ARRIVED) >= 1, what="the packet to reach router A")
        time.sleep(0.5)  # a bounce, had there been one, takes well under a millisecond a round
        assert nft_packets(lab, core, "ip bounces") == 0
        assert rose(lab, a_ns, before, "tun_forbidden") == 1


# --- the router's own host --------------------------------------------------------------------


def test_nothing_is_sent_to_the_routers_own_host():
    """--bind 0.0.0.0, more addresses on the host (one added while the router runs), a UDP service on it."""
    with Lab("self") as lab:
        topo = topology.build(lab, ("mob",))
        rtr = topo.router
        lab.sh(rtr, "ip addr add 10.99.0.1/32 dev lo")
        topo.start_router("--bind", "0.0.0.0", "--metrics", "127.0.0.1:9641")
        lab.sh(rtr, "ip addr add 10.99.0.2/24 dev eth1")  # comes while the router runs
        own = ("10.99.0.1", "10.99.0.2", topology.ROUTER_V4)
        lab.sh(rtr, "nft add table ip tohost && nft add chain ip tohost sent '{ type filter hook output priority 0; }' "
                    f"&& nft add rule ip tohost sent udp sport 25790 ip daddr {{ {', '.join(own)} }} counter")
        service = lab.socket(rtr)
        service.bind(("0.0.0.0", 5353))
        service.setblocking(False)
        time.sleep(0.5)  # the router has seen the new address

        peer = SixClient(lab, topo.clients["mob"].ns)
        peer.solicit()
        before = drops(lab, rtr)
        sent = 0
        for v4 in own:
            for port in (25790, 5353):
                for source in (topology.INET6, sixbed4(v4, 25790, 2)):  # native, and forged as "ours"
                    send_native(lab, topo.inet, IPv6(src=source, dst=sixbed4(v4, port)) / UDP(sport=53, dport=port))
                    sent += 1
                peer.send(IPv6(src=peer.address, dst=sixbed4(v4, port), hlim=64) / UDP(sport=53, dport=port))
                sent += 1
        lab.wait_for(lambda: rose(lab, rtr, before, *ARRIVED) >= sent, what=f"{sent} forged packets to arrive")
        time.sleep(0.5)
        assert nft_packets(lab, rtr, "ip tohost") == 0
        reasons = ("tun_forbidden", "tun_to_self", "tun_spoofed_source", "relay_forbidden")
        assert rose(lab, rtr, before, *reasons) == sent
        try:
            data = service.recv(2048)
        except BlockingIOError:
            data = None
        assert data is None, f"the host's UDP service received {data!r}"
        service.close()
        peer.close()


# --- proxy ND beside other hosts on an on-link uplink ------------------------------------------


def eui64(prefix: bytes, mac: str) -> str:
    octets = bytearray(bytes.fromhex(mac.replace(":", "")))
    octets[0] ^= 0x02
    return addr.format_address(prefix + bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:]))


def test_proxy_nd_takes_no_address_from_hosts_on_the_uplink():
    """Another host on the VM's link adds its EUI-64 and random addresses in the /64 (with DAD)."""
    prefix = ipaddress.IPv6Network(SEED_PREFIX).network_address.packed[:8]
    host_mac = "a8:bb:cc:00:33:44"
    with Lab("dad") as lab:
        upstream = lab.ns("up", forwarding=True)
        vm = lab.ns("vm", forwarding=True)
        host = lab.ns("host")
        lab.sh(upstream, "ip link add br0 type bridge mcast_snooping 0 && ip link set br0 up")
        lab.sh(upstream, f"ip link add vm0 address {UPSTREAM_MAC} type veth peer name eth0 address {VM_MAC} netns {vm}")
        lab.sh(upstream, f"ip link add h0 type veth peer name eth0 address {host_mac} netns {host}")
        for port in ("vm0", "h0"):
            lab.sh(upstream, f"ip link set {port} master br0 && ip link set {port} up")
        lab.sh(vm, "ip link set eth0 up")
        lab.sh(host, "ip link set eth0 up")
        lab.sh(upstream, f"ip addr add 192.0.2.254/24 dev br0 && ip -6 route add {SEED_PREFIX} dev br0")
        lab.sh(vm, f"ip addr add {VM_V4}/24 dev eth0 && sysctl -qw net.ipv6.conf.all.forwarding=1")
        proc = lab.python(vm, "sixbed4.router.cli", "-l", VM_V4, "-L", SEED_PREFIX, "--proxy-nd", "eth0",
                          "--metrics", "127.0.0.1:9641", name="router")
        lab.wait_for(lambda: "proxy ND on" in lab.log("router") or proc.poll() is not None, what="router")
        assert proc.poll() is None, lab.log("router")

        lab.sysctl(host, "net.ipv6.conf.eth0.accept_dad", 1)
        rng = random.Random(6324)
        canonical = [prefix + bytes((rng.randrange(256) & 0xFC,)) + rng.randbytes(7) for _ in range(12)]
        addresses = [eui64(prefix, host_mac)] + [addr.format_address(a) for a in canonical]
        addresses += [addr.format_address(prefix + rng.randbytes(8)) for _ in range(12)]
        assert sum(addr.peer_endpoint(ipaddress.IPv6Address(a).packed) is not None for a in addresses) >= 10
        for address in addresses:
            lab.sh(host, f"ip -6 addr add {address}/64 dev eth0")
        lab.wait_for(lambda: "tentative" not in lab.sh(host, "ip -6 addr show dev eth0 -dadfailed").stdout,
                     timeout=15, what="DAD to finish")
        assert lab.sh(host, "ip -6 addr show dev eth0 dadfailed").stdout.strip() == ""
        proxy_dad = lab.metrics(vm, METRICS)[("sixbed4_proxynd_drops_total", (("reason", "proxy_dad"),))]
        assert proxy_dad >= 10  # the probes did reach the proxy

        # the host's addresses stay the host's; a 6bed4 peer's address is still answered by the VM
        lab.sh(upstream, f"ping -6 -c 1 -W 2 {addresses[1]}")
        peer_address = sixbed4("198.51.100.7", 40000)
        lab.sh(upstream, f"ping -6 -c 1 -W 1 {peer_address}", check=False)
        neighbours = lab.sh(upstream, "ip -6 neigh show dev br0").stdout
        assert re.search(rf"{re.escape(addresses[1])} lladdr {host_mac}", neighbours), neighbours
        assert re.search(rf"{re.escape(peer_address)} lladdr {VM_MAC}", neighbours), neighbours


# --- budgets -------------------------------------------------------------------------------------


def test_a_port_rotating_rs_flood_leaves_a_real_peer_its_ras():
    with Lab("flood") as lab:
        topo = topology.build(lab, ("mob", "atk"))
        for ns in (topo.core, topo.router):
            lab.sh(ns, "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done")
        topo.start_router("--metrics", "127.0.0.1:9641")
        attacker_v4 = topo.clients["atk"].public_v4
        rs = bytes(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
        flood = [raw_udp(attacker_v4, port, topology.ROUTER_V4, 25790, rs) for port in range(1024, 65024)]
        stop = threading.Event()
        flooded = []

        def flood_router():
            raw = lab.socket(topo.clients["atk"].ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            count = 0
            while not stop.is_set():
                for _ in range(50):  # about 5000 RS/s: 25 times the whole RA budget
                    raw.sendto(flood[count % len(flood)], (topology.ROUTER_V4, 0))
                    count += 1
                time.sleep(0.01)
            raw.close()
            flooded.append(count)

        peer = SixClient(lab, topo.clients["mob"].ns)
        before = lab.metrics(topo.router, METRICS)
        thread = threading.Thread(target=flood_router)
        thread.start()
        answered = tries = 0
        started = time.monotonic()
        try:
            time.sleep(1)
            for second in range(8):  # the peer asks once a second, retrying within the second like a peer
                for _ in range(4):
                    tries += 1
                    peer.send(IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
                    try:
                        peer.recv_matching(lambda p: p.haslayer(ICMPv6ND_RA), timeout=0.25)
                        answered += 1
                        break
                    except TimeoutError:
                        continue
                time.sleep(max(0.0, started + 2 + second - time.monotonic()))
        finally:
            stop.set()
            thread.join()
        seconds = time.monotonic() - started
        after = lab.metrics(topo.router, METRICS)
        rs = after[("sixbed4_router_rs_received_total", ())] - before[("sixbed4_router_rs_received_total", ())]
        ras = after[("sixbed4_router_ra_sent_total", ())] - before[("sixbed4_router_ra_sent_total", ())]
        print(f"flood: {flooded[0]} RS sent, router took {rs:.0f}, sent {ras:.0f} RAs; the peer got {answered} of 8")
        assert rs > 5000, "the flood did not arrive"
        assert answered == 8
        assert ras - tries <= 40 + 20 * seconds  # the attacker's IPv4 got its share, no more
        peer.close()
