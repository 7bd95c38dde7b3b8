"""`6bed4 demo --anycast`: two router hosts behind one anycast address, and a failover shown live.

    inet (2001:db8:1::80)                     phone (203.0.113.50): 6bed4peer, no NAT
            \\                                  /
             upstream: BIRD (AS 64500), ECMP over the router hosts that announce
            /   br0 10.64.0.1, 2001:db8:64::1: the hosting provider's LAN
    homenat          |                    |
  (198.51.100.7)    r1 10.64.0.11        r2 10.64.0.12      each: 192.0.2.1/32 on lo,
       |            BIRD (AS 64512) + 6bed4router -l 192.0.2.1 -L 2001:db8:9:10::/64 --anycast-table 6464
    home (192.168.1.2): 6bed4peer behind NAT

Each router host's BIRD announces 192.0.2.1/32 and the /64 only while its
router serves (see sixbed4.anycast).  The tests build the same lab.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from pyroute2 import netns as pyroute2_netns

from ..anycast import birdconf
from ..anycast.bird import Bird, require
from . import scenario
from .lab import Lab
from .run import run_lab, tunnel_address

TAG = "6bed4any"
ANYCAST_V4 = scenario.VM_V4
PREFIX = scenario.PREFIX
INET6 = scenario.INET6
HOME_PUBLIC = scenario.HOME_PUBLIC
PHONE_V4 = scenario.PHONE_V4
TABLE = 6464
UPSTREAM_AS, ROUTER_AS = 64500, 64512
UPSTREAM_V4, UPSTREAM_V6 = "10.64.0.1", "2001:db8:64::1"
HOSTS = {"r1": ("10.64.0.11", "2001:db8:64::11"), "r2": ("10.64.0.12", "2001:db8:64::12")}
METRICS_PORT = 9640
PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


@dataclass
class AnycastLab:
    lab: Lab
    ns: dict[str, str]
    python: str = sys.executable
    birds: dict[str, Bird] = field(default_factory=dict)
    routers: dict[str, subprocess.Popen] = field(default_factory=dict)

    # --- what runs -------------------------------------------------------------------

    def start_birds(self) -> None:
        """BIRD on the upstream and on each router host, configured by sixbed4.anycast.birdconf."""
        require()
        announced = (f"{ANYCAST_V4}/32", PREFIX)
        hosts = [address for pair in HOSTS.values() for address in pair]
        configs = {"upstream": birdconf.upstream(birdconf.Speaker(
            UPSTREAM_AS, UPSTREAM_V4, tuple(birdconf.Neighbor(a, ROUTER_AS) for a in hosts), announced,
            log="stderr"))}
        for host, (v4, _v6) in HOSTS.items():
            configs[host] = birdconf.router_host(birdconf.Speaker(
                ROUTER_AS, v4, (birdconf.Neighbor(UPSTREAM_V4, UPSTREAM_AS), birdconf.Neighbor(UPSTREAM_V6, UPSTREAM_AS)),
                announced, TABLE, log="stderr"))
        for name, text in configs.items():
            bird = Bird(self.lab.logdir, f"bird-{name}")
            bird.write(text)
            self.birds[name] = bird
            self.lab.start(self.ns[name], bird.argv(), bird.name)

    def sessions_established(self) -> bool:
        sessions = self.birds["upstream"].bgp_sessions()
        return len(sessions) == 2 * len(HOSTS) and set(sessions.values()) == {"Established"}

    def router_argv(self, host: str, *extra: str) -> list[str]:
        return [self.python, "-m", "sixbed4.router.cli", "-l", ANYCAST_V4, "-L", PREFIX,
                "--anycast-table", str(TABLE), "--metrics", f"{HOSTS[host][0]}:{METRICS_PORT}", *extra]

    def start_router(self, host: str, *extra: str) -> subprocess.Popen:
        proc = self.lab.start(self.ns[host], self.router_argv(host, *extra), f"router-{host}")
        self.routers[host] = proc
        return proc

    def start_peer(self, role: str) -> subprocess.Popen:
        return self.lab.start(self.ns[role], [self.python, "-m", "sixbed4.peer.cli", "-s", ANYCAST_V4, "-r"],
                              f"peer-{role}")

    # --- what the upstream and the routers say ---------------------------------------

    def next_hops(self, destination: str) -> set[str]:
        """The router hosts the upstream's kernel sends `destination` to (its ECMP route's next hops)."""
        family = "-6" if ":" in destination else "-4"
        text = self.lab.run(self.ns["upstream"], ["ip", family, "route", "show", destination]).stdout
        gateways = set(re.findall(r"via (\S+)", text))
        return {host for host, pair in HOSTS.items() if gateways & set(pair)}

    def announced_by(self) -> dict[str, set[str]]:
        """For the anycast /32 and the /64: which router hosts the upstream forwards to."""
        return {"ipv4": self.next_hops(f"{ANYCAST_V4}/32"), "ipv6": self.next_hops(PREFIX)}

    def all_announced(self) -> bool:
        return self.announced_by() == {"ipv4": set(HOSTS), "ipv6": set(HOSTS)}

    def metrics_url(self, host: str, path: str = "/metrics") -> str:
        return f"http://{HOSTS[host][0]}:{METRICS_PORT}{path}"

    def counters(self, host: str) -> dict[str, float]:
        """The router's sixbed4_router_* counters (udp_in, to_udp, ...), {} if it does not answer."""
        pyroute2_netns.pushns(self.ns["upstream"])
        try:
            text = urllib.request.urlopen(self.metrics_url(host), timeout=2).read().decode()
        except OSError:
            return {}
        finally:
            pyroute2_netns.popns()
        found = re.findall(r"^sixbed4_router_(\w+)_total (\S+)$", text, re.MULTILINE)
        return {name: float(value) for name, value in found}

    def all_counters(self) -> dict[str, dict[str, float]]:
        return {host: self.counters(host) for host in HOSTS}


def _ip(lab: Lab, ns: str, *args: str) -> None:
    result = lab.run(ns, ["ip", *args])
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} in {ns}: {result.stderr.strip()}")


def masquerade(lab: Lab, ns: str, wan: str) -> None:
    """A home router's NAT: everything leaving `wan` gets its address, with random ports."""
    result = lab.run(ns, ["nft", "-f", "-"], input=(
        "table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        f'  oifname "{wan}" masquerade random\n }}\n}}\n'))
    if result.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {result.stderr.strip()}")


def build(lab: Lab) -> AnycastLab:
    """Create every namespace and link (nothing runs yet)."""
    ns = {role: lab.add(role, forwarding=role in ("upstream", "r1", "r2", "homenat"))
          for role in ("upstream", "inet", "r1", "r2", "homenat", "home", "phone")}
    up = ns["upstream"]
    _ip(lab, up, "link", "add", "br0", "type", "bridge")
    _ip(lab, up, "link", "set", "br0", "up")
    lab.address(up, "br0", f"{UPSTREAM_V4}/24")
    lab.address(up, "br0", f"{UPSTREAM_V6}/64")
    for host, (v4, v6) in HOSTS.items():
        lab.sysctl(ns[host], "net.ipv6.conf.all.keep_addr_on_down", "1")  # a link that flaps keeps its addresses
        lab.veth(up, host, ns[host], "eth0")
        _ip(lab, up, "link", "set", host, "master", "br0")
        lab.address(ns[host], "eth0", f"{v4}/24")
        lab.address(ns[host], "eth0", f"{v6}/64")
        lab.address(ns[host], "lo", f"{ANYCAST_V4}/32")
        lab.route(ns[host], "0.0.0.0/0", via=UPSTREAM_V4)
        lab.route(ns[host], "::/0", via=UPSTREAM_V6)

    lab.veth(up, "net0", ns["inet"], "eth0")
    lab.address(up, "net0", "2001:db8:1::1/64")
    lab.address(ns["inet"], "eth0", f"{INET6}/64")
    lab.route(ns["inet"], "::/0", via="2001:db8:1::1")

    lab.veth(up, "home0", ns["homenat"], "wan")
    lab.address(up, "home0", "198.51.100.254/24")
    lab.address(ns["homenat"], "wan", f"{HOME_PUBLIC}/24")
    lab.route(ns["homenat"], "0.0.0.0/0", via="198.51.100.254")
    lab.veth(ns["homenat"], "lan", ns["home"], "eth0")
    lab.address(ns["homenat"], "lan", "192.168.1.1/24")
    lab.address(ns["home"], "eth0", "192.168.1.2/24")
    lab.route(ns["home"], "0.0.0.0/0", via="192.168.1.1")
    masquerade(lab, ns["homenat"], "wan")

    lab.veth(up, "mob0", ns["phone"], "eth0")
    lab.address(up, "mob0", "203.0.113.254/24")
    lab.address(ns["phone"], "eth0", f"{PHONE_V4}/24")
    lab.route(ns["phone"], "0.0.0.0/0", via="203.0.113.254")
    return AnycastLab(lab, ns)


# --- flows -------------------------------------------------------------------------


def start_ping(lab: Lab, ns: str, address: str, seconds: float, name: str, interval: float = 0.05):
    """ping every `interval` s for `seconds`, each reply timestamped (read it with ping_run).

    A count, not a deadline (-w): with a deadline ping ends at the first ICMPv6
    error, and a failover may return one (a router host whose router just died
    has no route for a request that was on its way), which would end the flow.
    """
    count = max(1, round(seconds / interval))
    return lab.start(ns, ["ping", "-6", "-n", "-D", "-i", str(interval), "-c", str(count), "-W", "1", address],
                     name)


@dataclass
class PingRun:
    sent: int
    replies: int
    longest_silence: float  # seconds between two consecutive replies (or from the start / to the end)
    last_reply: float  # wall-clock time of the last reply (0 if none)


def ping_run(log: str, started: float, ended: float) -> PingRun:
    """What a timestamped ping log says: replies, and the longest time without one."""
    times = [float(m.group(1)) for m in map(PING_LINE.match, log.splitlines()) if m]
    sent = re.search(r"(\d+) packets transmitted", log)
    marks = [started, *times, ended]
    silence = max(b - a for a, b in zip(marks, marks[1:]))
    return PingRun(int(sent.group(1)) if sent else 0, len(times), silence, times[-1] if times else 0.0)


# --- the demo ---------------------------------------------------------------------


def main(prog: str, keep: bool, python: str) -> int:
    """Run the anycast demo; exit code 0 only if every flow survived the failover."""
    return run_lab(prog, TAG, ("ping", "nft", "bird", "birdc"), keep,
                   lambda lab, progress: _run(AnycastLab(lab, {}, python), progress))


def _run(al: AnycastLab, progress) -> int:
    progress.step("building the lab: upstream (BIRD, ECMP) with the Internet host, two router hosts r1 and r2 "
                  "on its LAN, a home behind NAT and a phone")
    al.ns = build(al.lab).ns
    al.start_birds()
    if not progress.wait("BGP sessions up (upstream <-> r1, r2; IPv4 and IPv6)", al.sessions_established, 20):
        return _fail(al, progress, "bird-upstream")
    progress.step(f"nothing announced yet: the upstream forwards 192.0.2.1 to {_hosts(al.next_hops(ANYCAST_V4))}")
    for host in HOSTS:
        al.start_router(host)
    if not progress.wait("both routers serve and are announced", al.all_announced, 15):
        return _fail(al, progress, "router-r1")
    check = al.lab.run(al.ns["upstream"], [al.python, "-m", "sixbed4.cli", "anycast", "check",
                                           *(al.metrics_url(h, "") for h in HOSTS)])
    progress.step("6bed4 anycast check (from the upstream):\n" + _indent(check.stdout + check.stderr))
    for role in ("home", "phone"):
        al.start_peer(role)
    addresses = {}
    for role in ("home", "phone"):
        address = progress.wait(f"6bed4peer in the {role} gets an address", lambda r=role: tunnel_address(al.ns[r]), 15)
        if not address:
            return _fail(al, progress, f"peer-{role}")
        addresses[role] = address
        progress.step(f"{role} has {address}")

    seconds = 8.0
    flows = {  # name -> (namespace, destination, log)
        "home -> internet": (al.ns["home"], INET6, "ping-home-out"),
        "internet -> home": (al.ns["inet"], addresses["home"], "ping-home-in"),
        "phone -> internet": (al.ns["phone"], INET6, "ping-phone-out"),
        "internet -> phone": (al.ns["inet"], addresses["phone"], "ping-phone-in"),
    }
    counted = [al.all_counters()]
    started = time.time()
    pings = [start_ping(al.lab, ns, destination, seconds, log) for ns, destination, log in flows.values()]
    progress.step("4 flows, a ping every 50 ms: home and phone to the Internet host and back")
    time.sleep(2.0)
    counted.append(al.all_counters())
    victim = max(HOSTS, key=lambda h: carried(counted[0], counted[1])[h])
    failed_at = time.time()
    al.routers[victim].kill()
    progress.step(f"SIGKILL to the router on {victim}, which carried the most")
    withdrawn = progress.wait(f"the upstream drops {victim}",
                              lambda: victim not in al.next_hops(ANYCAST_V4) | al.next_hops(PREFIX), 5)
    progress.step(f"{victim} withdrawn within {1000 * (time.time() - failed_at):.0f} ms of the kill")
    counted.append(al.all_counters())
    time.sleep(1.5)
    counted.append(al.all_counters())
    restarted_at = time.time()
    al.start_router(victim)
    back = progress.wait(f"{victim}'s router restarts, serves, and only then is announced", al.all_announced, 10)
    counted.append(al.all_counters())
    for proc in pings:
        proc.wait(seconds + 5)
    ended = time.time()
    counted.append(al.all_counters())

    print(f"\nfailover: the router on {victim} was killed at +{failed_at - started:.2f} s, "
          f"restarted at +{restarted_at - started:.2f} s")
    print("datagrams each router took from and sent to the peers:")
    for when, (a, b) in {"before the kill": (0, 1), "after the kill": (2, 3),
                         f"after {victim} came back": (4, 5)}.items():
        print(f"    {when + ':':<22} {_shares(carried(counted[a], counted[b]))}")
    print("\nflow                  replies    longest time without a reply")
    survived = bool(withdrawn and back)
    for name, (_ns, _destination, log) in flows.items():
        run = ping_run(al.lab.log(log), started, ended)
        flowed_after = run.last_reply > failed_at + 1.0
        survived &= flowed_after
        print(f"{name:<20} {run.replies:>4}/{run.sent:<4}  {1000 * run.longest_silence:6.0f} ms"
              f"{'' if flowed_after else '   no replies after the kill'}")
    print(f"\nresult: {'the flows survived the failover' if survived else 'FAILED: a flow did not survive'}")
    return 0 if survived else 1


def carried(before: dict, after: dict) -> dict[str, float]:
    """Datagrams each router took from peers and sent to them between two all_counters()."""
    return {host: sum(after[host].get(k, 0) - before[host].get(k, 0) for k in ("udp_in", "to_udp"))
            for host in HOSTS}


def _shares(counts: dict) -> str:
    return ", ".join(f"{host} {int(count)}" for host, count in counts.items())


def _hosts(hosts: set[str]) -> str:
    return ", ".join(sorted(hosts)) or "nobody"


def _fail(al: AnycastLab, progress, log: str) -> int:
    progress.step(f"{log} says:\n" + _indent(al.lab.log(log)[-3000:]))
    return 1


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in text.strip().splitlines())
