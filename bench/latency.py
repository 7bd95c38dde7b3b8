#!/usr/bin/env python3
"""Latency through our router and peer, against plain IPv4 over the same veths.

    sudo .venv/bin/python bench/latency.py [--probes 500] [--interval 0.02] [--rounds 5]
                                           [--router-arg=ARG ...] [--peer-arg=ARG ...]
                                           [--c-src DIR [--c-mixed]]

Namespaces (bench/README.md, "Latency"):

    peer  p0 ──veth── r0  rtr  r1 ──veth── i0  inet
    192.0.2.2          192.0.2.1 (6bed4 router)   198.51.100.2, 2001:db8:ff::2
    6bed4peer -s 192.0.2.1      6bed4 TUN, 2001:db8:9:10::/64

(--nat: peer 10.0.1.2 ── nat 192.0.2.3 ── rtr, masquerading, as in a home network.)

`ping -6` from the peer's 6bed4 address to 2001:db8:ff::2 goes peer -> TUN ->
6bed4peer -> UDP -> 6bed4router -> TUN -> kernel -> inet and back the same way;
plain `ping` from 192.0.2.2 to 198.51.100.2 crosses the same two veths,
forwarded by the router namespace's kernel.  One lab per row (our router and
peer in each of their set-ups; with --c-src DIR also the original C pair built
from DIR), all built first, then measured in alternating blocks: each round
pings plain then tunnel in every lab in turn, so that a change of the
machine's load hits every row and its baseline.  One probe every 20 ms.
Added delay = tunnel RTT - plain RTT, also as a multiple of the plain RTT.
run.py --latency calls latency_rows().
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.netlab import Lab  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import c_pair  # noqa: E402  (bench/c_pair.py: builds the original C 6bed4router and 6bed4peer)

ROUTER_V4, PEER_V4, INET_V4, INET_V4_GATEWAY = "192.0.2.1", "192.0.2.2", "198.51.100.2", "198.51.100.1"
HOME_PEER_V4, HOME_GATEWAY_V4, NAT_V4 = "10.0.1.2", "10.0.1.1", "192.0.2.3"  # --nat
PREFIX = "2001:db8:9:10::/64"
INET_V6, INET_V6_GATEWAY = "2001:db8:ff::2", "2001:db8:ff::1"
_TIME = re.compile(r"time=([0-9.]+) ms")


@dataclass
class Pair:
    """One row: the router and the peer that carry its tunnel pings."""

    name: str
    router_args: list[str] = field(default_factory=list)
    peer_args: list[str] = field(default_factory=list)
    src: Path | None = None  # our daemons from another tree's src/ (--compare-src)
    c_router: Path | None = None  # the C 6bed4router binary in place of ours (--c-src)
    c_peer: Path | None = None  # the C 6bed4peer binary in place of ours


class LatencyLab:
    """peer <-> rtr <-> inet, with a router and a peer running; plain IPv4 routed over the same veths."""

    def __init__(self, lab: Lab, pair: Pair, nat: bool = False):
        self.lab = lab
        self.pair = pair
        self.peer = lab.ns("peer")
        self.rtr = lab.ns("rtr", forwarding=True)
        self.inet = lab.ns("inet")
        if nat:  # the peer in a home network: 10.0.1.2 behind a masquerading NAT at 192.0.2.3
            home = lab.ns("nat", forwarding=True)
            lab.link(self.peer, "p0", home, "n1")
            lab.link(home, "n0", self.rtr, "r0")
            lab.sh(self.peer, f"ip addr add {HOME_PEER_V4}/24 dev p0 && ip route add default via {HOME_GATEWAY_V4}")
            lab.sh(home, f"ip addr add {HOME_GATEWAY_V4}/24 dev n1 && ip addr add {NAT_V4}/24 dev n0"
                         f" && ip route add default via {ROUTER_V4}")
            lab.sh(home, "nft add table ip nat && nft add chain ip nat post '{ type nat hook postrouting priority 100; }'"
                         " && nft add rule ip nat post oifname n0 masquerade random")
        else:
            lab.link(self.peer, "p0", self.rtr, "r0")
            lab.sh(self.peer, f"ip addr add {PEER_V4}/24 dev p0 && ip route add default via {ROUTER_V4}")
        lab.link(self.rtr, "r1", self.inet, "i0")
        # Checksums filled in before the veth, as on a wire: a datagram from a local socket
        # would reach the router (or the peer) "partial", and the fast paths leave such to Python.
        lab.sh(self.peer, "ethtool -K p0 tx off")
        lab.sh(self.rtr, "ethtool -K r0 tx off")
        lab.sh(self.rtr, f"ip addr add {ROUTER_V4}/24 dev r0 && ip addr add {INET_V4_GATEWAY}/24 dev r1"
                         f" && ip -6 addr add {INET_V6_GATEWAY}/64 dev r1 nodad")
        lab.sh(self.inet, f"ip addr add {INET_V4}/24 dev i0 && ip route add default via {INET_V4_GATEWAY}"
                          f" && ip -6 addr add {INET_V6}/64 dev i0 nodad && ip -6 route add default via {INET_V6_GATEWAY}")
        self.router = self.start_c_router(pair.c_router) if pair.c_router else self.daemon(
            self.rtr, "sixbed4.router.cli", "-l", ROUTER_V4, "-L", PREFIX, "--log-level", "warning",
            *pair.router_args, name="router")
        lab.wait_for(lambda: lab.has_link(self.rtr, "6bed4") or self.router.poll() is not None, what="router start")
        if pair.c_peer:  # -f: stay in the foreground (without it, this version exits: its setsid() test is inverted)
            self.peer_proc = lab.start(self.peer, [str(pair.c_peer), "-s", ROUTER_V4, "-r", "-f"], "peer")
        else:
            self.peer_proc = self.daemon(self.peer, "sixbed4.peer.cli", "-s", ROUTER_V4, "-r", *pair.peer_args,
                                         name="peer")
        lab.wait_for(lambda: self.peer_address() or self.peer_proc.poll() is not None, what="peer address")
        for proc, name in ((self.router, "router"), (self.peer_proc, "peer")):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {lab.log(name)}")
        # Neighbours and routes warm: the first probes are not the measurement.
        self.ping(INET_V4, 3, 0.05)
        self.ping(INET_V6, 3, 0.05)

    def daemon(self, ns: str, module: str, *args: str, name: str):
        """Our router or peer, from this checkout or from the source tree pair.src (env execs: same pid)."""
        if self.pair.src is None:
            return self.lab.python(ns, module, *args, name=name)
        return self.lab.start(ns, ["env", f"PYTHONPATH={self.pair.src}", sys.executable, "-m", module, *args], name)

    def start_c_router(self, binary: Path):
        """The C router: it makes its TUN `6bed4` with ip(8), up last, but routes nothing into it.

        It gives the TUN only the /64's first address (a /128); routing the /64 to
        the TUN is left to the operator, so the lab does it once the TUN is up.
        """
        proc = self.lab.start(self.rtr, [str(binary), "-l", ROUTER_V4, "-L", PREFIX], "router")
        self.lab.wait_for(lambda: ",UP" in self.lab.sh(self.rtr, "ip link show 6bed4", check=False).stdout
                          or proc.poll() is not None, what="the C router's TUN up")
        if proc.poll() is None:
            self.lab.sh(self.rtr, f"ip -6 route replace {PREFIX} dev 6bed4")
        return proc

    def peer_address(self) -> str | None:
        out = self.lab.sh(self.peer, "ip -6 -o addr show dev 6bed4 scope global", check=False).stdout.split()
        return out[3].split("/")[0] if len(out) > 3 else None

    def ping(self, target: str, count: int, interval: float) -> list[float]:
        """Round trip times in ms of `count` probes one `interval` apart (lost ones left out)."""
        family = "-6" if ":" in target else "-4"
        out = self.lab.sh(self.peer, f"ping {family} -n -i {interval} -c {count} -W 1 {target}", check=False,
                          timeout=count * interval + 30).stdout
        return [float(m) for m in _TIME.findall(out)]


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share 0.99 = p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered) + 0.5)) - 1))]


def summary(rtts: list[float], sent: int) -> dict:
    return {"probes": sent, "answered": len(rtts), "avg_ms": round(sum(rtts) / len(rtts), 4) if rtts else None,
            "p99_ms": round(percentile(rtts, 0.99), 4) if rtts else None,
            "min_ms": round(min(rtts), 4) if rtts else None, "median_ms": round(percentile(rtts, 0.5), 4) if rtts else None}


def measure(labs: list[LatencyLab], probes: int, interval: float, rounds: int) -> list[dict]:
    """Plain and tunnel pings in alternating blocks, lab after lab in each round; totals of `probes` each."""
    plain: list[list[float]] = [[] for _ in labs]
    tunnel: list[list[float]] = [[] for _ in labs]
    block = max(1, probes // rounds)
    for done in range(0, probes, block):
        count = min(block, probes - done)
        for lab, lab_plain, lab_tunnel in zip(labs, plain, tunnel):
            lab_plain += lab.ping(INET_V4, count, interval)
            lab_tunnel += lab.ping(INET_V6, count, interval)
    return [compare(lab_plain, lab_tunnel, probes) for lab_plain, lab_tunnel in zip(plain, tunnel)]


def compare(plain: list[float], tunnel: list[float], probes: int) -> dict:
    """A row's summaries and what the tunnel adds to the plain path, in ms and as a multiple of it."""
    row = {"plain": summary(plain, probes), "tunnel": summary(tunnel, probes)}
    if plain and tunnel:
        for stat in ("avg_ms", "p99_ms"):
            added = row["tunnel"][stat] - row["plain"][stat]
            row[f"added_{stat}"] = round(added, 4)
            row[f"added_ratio_{stat[:-3]}"] = round(added / row["plain"][stat], 2)
    return row


# Where a tunnel ping's time goes: the capture points in its order, each (namespace, device,
# ICMPv6 type); a hop is the time between two neighbours.  TUN captures see a packet
# when the kernel queues it to the daemon (out) or the daemon's write arrives (in).
HOPS = (("peer", "6bed4", 128), ("peer", "p0", 128), ("rtr", "r0", 128), ("rtr", "r1", 128),
        ("rtr", "r1", 129), ("rtr", "r0", 129), ("peer", "p0", 129), ("peer", "6bed4", 129))
HOP_NAMES = ("peer: TUN -> UDP out", "wire peer -> router", "router: UDP -> forwarded", "internet host",
             "router: reply -> UDP out", "wire router -> peer", "peer: UDP -> TUN")


def hop_delays(lab: LatencyLab, probes: int, interval: float, workdir: Path) -> dict:
    """Median and mean µs per hop of tunnel pings, from tcpdump's kernel timestamps on every device.

    The captures write pcap files (no per-packet wake-up of tcpdump); each echo
    packet is found by its ICMPv6 type and sequence number.
    """
    from scapy.utils import RawPcapReader  # the test dependencies have scapy

    captures = []
    for role, device in sorted({(role, device) for role, device, _ in HOPS}):
        ns = lab.peer if role == "peer" else lab.rtr
        path = workdir / f"{role}-{device}.pcap"
        captures.append((role, device, path, subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", device, "-n", "-Q", "inout", "-B", "4096",
             "--time-stamp-precision=micro", "-w", str(path), "ip6 or udp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(1.5)  # tcpdump attaches
    lab.ping(INET_V6, probes, interval)
    time.sleep(0.5)
    seen: dict[tuple, float] = {}
    for role, device, path, tcpdump in captures:
        tcpdump.terminate()
        tcpdump.wait(10)
        for data, meta in RawPcapReader(str(path)):
            packet = bytes(data) if device == "6bed4" else bytes(data)[14:]  # TUN: no Ethernet header
            if packet and packet[0] >> 4 == 4:
                packet = packet[(packet[0] & 15) * 4 + 8:]  # the IPv6 packet in a 6bed4 datagram
            if len(packet) >= 48 and packet[0] >> 4 == 6 and packet[6] == 58 and packet[40] in (128, 129):
                key = (role, device, packet[40], int.from_bytes(packet[46:48], "big"))
                seen.setdefault(key, meta.sec + meta.usec / 1e6)
    hops = {}
    for name, start, end in zip(HOP_NAMES, HOPS, HOPS[1:]):
        delays = sorted((seen[end + (seq,)] - seen[start + (seq,)]) * 1e6 for seq in range(1, probes + 1)
                        if start + (seq,) in seen and end + (seq,) in seen)
        if delays:
            hops[name] = {"median_us": round(delays[len(delays) // 2], 1),
                          "mean_us": round(sum(delays) / len(delays), 1), "n": len(delays)}
    return hops


def has_option(module: str, option: str) -> bool:
    """Whether this checkout's daemon (sixbed4.router.cli, sixbed4.peer.cli) takes `option` (e.g. --fast-path)."""
    help_text = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT / "src"))).stdout
    return option in help_text


def variants(extra_router_args: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """Our set-ups to measure, (name, router args, peer args): each fast path off and on where the daemon has one."""
    if extra_router_args:
        return [("custom", extra_router_args, [])]
    if not has_option("sixbed4.router.cli", "--fast-path"):
        return [("python path", [], [])]
    off, on = ["--fast-path", "off"], ["--fast-path", "on"]
    if has_option("sixbed4.peer.cli", "--fast-path"):
        return [("fast paths off", off, off), ("peer fast path", off, on), ("router fast path", on, off),
                ("both fast paths", on, on)]
    return [("fast path off", off, []), ("fast path on", on, [])]


def pairs_to_measure(router_args: list[str], peer_args: list[str], compare_src: Path | None,
                     c_programs: dict[str, Path] | None, c_mixed: bool) -> list[Pair]:
    """The rows: another tree's pair first (before/after), ours, then the C pair (and the mixed pairs)."""
    pairs = [Pair(name, router, peer + peer_args) for name, router, peer in variants(router_args)]
    if compare_src is not None:
        pairs.insert(0, Pair(Path(compare_src).resolve().parent.name, list(router_args), list(peer_args), compare_src))
    if c_programs:
        c_router, c_peer = c_programs["6bed4router"], c_programs["6bed4peer"]
        pairs.append(Pair("C pair", c_router=c_router, c_peer=c_peer))
        if c_mixed:
            pairs.append(Pair("our peer + C router", peer_args=list(peer_args), c_router=c_router))
            pairs.append(Pair("C peer + our router", router_args=list(router_args), c_peer=c_peer))
    return pairs


def latency_rows(probes: int = 500, interval: float = 0.02, rounds: int = 5, router_args: list[str] = (),
                 peer_args: list[str] = (), compare_src: Path | None = None, hops: bool = False,
                 nat: bool = False, c_src: Path | None = None, c_mixed: bool = False) -> list[dict]:
    """One row per pair, each in a lab of its own; all labs are built, then measured together, then removed.

    With compare_src (another checkout's src/), its router and peer are measured
    too: a before/after in one run.  With c_src (a clone of vanrein/6bed4), the C
    router and peer are built from it into a temporary directory and measured
    beside ours.
    """
    with contextlib.ExitStack() as stack:
        c_programs = None
        if c_src is not None:
            build_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="6bed4-c-")))
            c_programs = c_pair.build(Path(c_src), build_dir, ROUTER_V4)
        pairs = pairs_to_measure(list(router_args), list(peer_args), compare_src, c_programs, c_mixed)
        labs = [LatencyLab(stack.enter_context(Lab("bl")), pair, nat) for pair in pairs]
        loadavg_before = os.getloadavg()
        rows = []
        for latency_lab, measured in zip(labs, measure(labs, probes, interval, rounds)):
            pair = latency_lab.pair
            rows.append({"variant": pair.name, "router_args": pair.router_args, "peer_args": pair.peer_args,
                         "router": "C" if pair.c_router else str(pair.src or ROOT / "src"),
                         "peer": "C" if pair.c_peer else str(pair.src or ROOT / "src"),
                         "nat": nat, "loadavg_before": loadavg_before, **measured})
        if hops:
            for latency_lab, row in zip(labs, rows):
                workdir = Path(tempfile.mkdtemp(prefix="6bed4-hops-"))
                try:
                    row["hops"] = hop_delays(latency_lab, probes, interval, workdir)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
        for latency_lab, row in zip(labs, rows):
            row["loadavg_after"] = os.getloadavg()
            for who, proc in (("router", latency_lab.router), ("peer", latency_lab.peer_proc)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{row['variant']}: {who} died: {latency_lab.lab.log(who)}")
            print(f"  latency {row['variant']}: plain {row['plain']['avg_ms']} ms,"
                  f" tunnel {row['tunnel']['avg_ms']} ms", file=sys.stderr)
    return rows


def print_latency(rows: list[dict]) -> None:
    head = (f"{'latency':20} | {'plain avg':>9} {'p99':>6} | {'tunnel avg':>10} {'p99':>6} | "
            f"{'added avg':>9} {'x plain':>7} | {'added p99':>9} {'x plain':>7} | {'answered':>8}")
    print(head)
    print("-" * len(head))
    for row in rows:
        p, t = row["plain"], row["tunnel"]
        if p["avg_ms"] is None or t["avg_ms"] is None:
            print(f"{row['variant']:20} | no answers (plain {p['answered']}, tunnel {t['answered']})")
            continue
        print(f"{row['variant']:20} | {p['avg_ms']:>9.3f} {p['p99_ms']:>6.3f} | {t['avg_ms']:>10.3f} {t['p99_ms']:>6.3f} |"
              f" {row['added_avg_ms']:>9.3f} {row['added_ratio_avg']:>7.2f} | {row['added_p99_ms']:>9.3f}"
              f" {row['added_ratio_p99']:>7.2f} | {t['answered']:>4}/{t['probes']}")
    print("(ms; added = tunnel - plain; x plain = added / plain; target: added avg <= 3x plain)")
    for row in rows:
        if row.get("hops"):
            print(f"hops of a tunnel ping, {row['variant']} (µs, median / mean): " + ", ".join(
                f"{name} {hop['median_us']:.0f}/{hop['mean_us']:.0f}" for name, hop in row["hops"].items()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", type=int, default=500, help="pings per path (default 500; run.py --quick: 100)")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between pings (default 0.02)")
    p.add_argument("--rounds", type=int, default=5, help="alternating blocks of plain and tunnel pings (default 5)")
    p.add_argument("--router-arg", action="append", default=[], help="extra 6bed4router argument (repeatable)")
    p.add_argument("--peer-arg", action="append", default=[], help="extra 6bed4peer argument (repeatable)")
    p.add_argument("--nat", action="store_true", help="the peer behind a masquerading NAT (one more namespace)")
    p.add_argument("--hops", action="store_true",
                   help="then more tunnel pings, captured on every device: the delay of each hop")
    p.add_argument("--compare-src", metavar="DIR", type=Path,
                   help="also measure the router and peer of another checkout's src/ (e.g. a git worktree of main)")
    p.add_argument("--c-src", metavar="DIR", type=Path,
                   help="also measure the original C 6bed4router + 6bed4peer, built from DIR"
                        " (a clone of github.com/vanrein/6bed4) into a temporary directory")
    p.add_argument("--c-mixed", action="store_true",
                   help="with --c-src, also our peer with the C router and the C peer with our router")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/latency.py: run as root (namespaces, TUN)", file=sys.stderr)
        return 2
    if args.c_mixed and args.c_src is None:
        p.error("--c-mixed needs --c-src")
    try:
        rows = latency_rows(args.probes, args.interval, args.rounds, args.router_arg, args.peer_arg,
                            args.compare_src, args.hops, args.nat, args.c_src, args.c_mixed)
    except c_pair.BuildError as error:
        print(f"bench/latency.py: the C pair: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    print_latency(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
