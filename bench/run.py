#!/usr/bin/env python3
"""Throughput benchmark of the 6bed4 router against plain kernel IPv6 forwarding.

    sudo .venv/bin/python bench/run.py [--quick] [--duration S] [--sizes 80,1280]
                                       [--directions udp2tun,tun2udp] [--no-gro] [--no-latency]
                                       [--fast-path on,off] [--flows 1,1000]

Builds three namespaces (generator, router, sink; see bench/README.md), runs
the router pinned to core 1 and a C load generator (bench/loadgen.c, compiled
now) pinned to core 0, and measures per direction and IPv6 packet size: peak
throughput at maximum offered load, the highest offered rate with < 1% loss,
router CPU per packet and RSS (1 vs 100,000 sources).  The same generator and
topology, with the router ns forwarding native IPv6 itself, is the baseline.
The router runs with its kernel fast path on and off (one row each).
Then the latency row (bench/latency.py, which also runs alone): ping through
our peer and router against plain IPv4 on the same path.  Prints tables and
writes bench/results/<timestamp>.json.  Root only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.netlab import Lab  # noqa: E402
import latency  # noqa: E402  (bench/latency.py: the latency row)

MAC = {"g0": "02:00:00:00:00:01", "r0": "02:00:00:00:00:02", "r1": "02:00:00:00:00:03", "s0": "02:00:00:00:00:04"}
ROUTER_V4, GEN_V4 = "192.0.2.1", "192.0.2.2"
PEERS_V4 = "10.0.0.1"  # simulated peers sending to the router (10.0.0.1, 10.0.0.2, ...)
TARGET_V4 = "10.1.0.1"  # simulated peers the router sends to (routed to the generator ns)
PREFIX = "2001:db8:9:10::"
GEN_V6, R0_V6, R1_V6, SINK_V6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:ff::1", "2001:db8:ff::2"
LOSS_OK = 0.01
GEN_CPU, ROUTER_CPU = "0", "1"


def build_loadgen(workdir: Path) -> Path:
    exe = workdir / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(ROOT / "bench" / "loadgen.c")], check=True)
    return exe


class Bench:
    """The topology, the router process and one measurement at a time."""

    def __init__(self, lab: Lab, loadgen: Path, duration: float, gro: bool, flows: int = 1):
        self.lab, self.loadgen, self.duration, self.flows = lab, loadgen, duration, flows
        self.gen = lab.ns("gen")
        self.rtr = lab.ns("rtr", forwarding=True)
        self.sink = lab.ns("sink")
        lab.link(self.gen, "g0", self.rtr, "r0", mac_a=MAC["g0"])
        lab.link(self.rtr, "r1", self.sink, "s0", mac_a=MAC["r1"])
        lab.sh(self.sink, f"ip link set s0 address {MAC['s0']}")
        lab.sh(self.rtr, f"ip link set r0 address {MAC['r0']}")
        # Static neighbours: no ARP/ND traffic or timing in the measurements.
        lab.sh(self.gen, f"ip addr add {GEN_V4}/24 dev g0 && ip -6 addr add {GEN_V6}/64 dev g0 nodad"
                         f" && ip neigh add {ROUTER_V4} lladdr {MAC['r0']} dev g0 nud permanent"
                         f" && ip -6 neigh add {R0_V6} lladdr {MAC['r0']} dev g0 nud permanent"
                         f" && ip -6 route add default via {R0_V6}")
        lab.sh(self.rtr, f"ip addr add {ROUTER_V4}/24 dev r0 && ip -6 addr add {R0_V6}/64 dev r0 nodad"
                         f" && ip -6 addr add {R1_V6}/64 dev r1 nodad"
                         f" && ip neigh add {GEN_V4} lladdr {MAC['g0']} dev r0 nud permanent"
                         f" && ip -6 neigh add {GEN_V6} lladdr {MAC['g0']} dev r0 nud permanent"
                         f" && ip -6 neigh add {SINK_V6} lladdr {MAC['s0']} dev r1 nud permanent"
                         f" && ip route add 10.0.0.0/8 via {GEN_V4}")
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.r0.rp_filter"):
            lab.sysctl(self.rtr, key, 0)
        lab.sh(self.sink, f"ip -6 addr add {SINK_V6}/64 dev s0 nodad"
                          f" && ip -6 neigh add {R1_V6} lladdr {MAC['r1']} dev s0 nud permanent"
                          f" && ip -6 route add default via {R1_V6}")
        # Receivers count at the veth and drop at ingress: no socket lookups or ICMP errors.
        for ns, dev in ((self.gen, "g0"), (self.sink, "s0")):
            lab.sh(ns, f"nft add table netdev bench && nft add chain netdev bench in "
                       f"'{{ type filter hook ingress device {dev} priority 0; }}' && "
                       f"nft add rule netdev bench in meta l4proto udp drop")
        # Egress segments GSO sends (as a NIC without UDP offload), so receivers count datagrams.
        # GRO on the router's veths (NAPI mode), as a real NIC has it; forwarded UDP is not merged.
        self.gro = gro
        for dev in ("r0", "r1"):
            lab.sh(self.rtr, f"ethtool -K {dev} tx-udp-segmentation off gro {'on' if gro else 'off'}")
        self.router = None
        self.fast_path = None

    def start_router(self, fast_path: str = "off") -> None:
        """(Re)start the router with --fast-path `fast_path` (on must attach, or this fails)."""
        if self.router is not None and self.fast_path == fast_path:
            return
        lab = self.lab
        if self.router is not None:
            Lab.stop(self.router)
        self.fast_path = fast_path
        self.router = lab.start(self.rtr, [
            "taskset", "-c", ROUTER_CPU, sys.executable, "-m", "sixbed4.router.cli",
            "-l", ROUTER_V4, "-L", f"{PREFIX}/64", "--log-level", "warning", "--fast-path", fast_path,
        ], "router")
        lab.wait_for(lambda: lab.has_link(self.rtr, "6bed4") and "inet6 2001:db8:9:10:" in
                     lab.sh(self.rtr, "ip -6 addr show dev 6bed4").stdout or self.router.poll() is not None,
                     what="router start")
        if self.router.poll() is not None:
            raise RuntimeError(f"router exited: {lab.log('router')}")

    # --- counters -------------------------------------------------------------

    def rx_packets(self, ns: str, dev: str) -> int:
        out = self.lab.sh(ns, f"cat /sys/class/net/{dev}/statistics/rx_packets").stdout
        return int(out)

    def router_cpu_seconds(self) -> tuple[float, float]:
        """Router process CPU time so far: (user, system) seconds."""
        fields = Path(f"/proc/{self.router.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    @staticmethod
    def softirq_threads_cpu_seconds() -> float:
        """CPU time of the ksoftirqd threads so far (softirq work the kernel deferred to them)."""
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            if "(ksoftirqd/" in text:
                fields = text.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def router_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.router.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    # --- one run --------------------------------------------------------------

    def measure(self, target: str, direction: str, size: int, rate: float, flows: int | None = None,
                duration: float | None = None) -> dict:
        """Offer `rate` pps (0 = as fast as the generator can) for `duration` s; count what arrives."""
        duration = duration or self.duration
        flows = flows or self.flows
        if direction == "udp2tun":
            send_ns, send_dev, recv_ns, recv_dev = self.gen, "g0", self.sink, "s0"
            if target == "router":
                mode, src4, dst4, src6, dst6 = "6bed4", PEERS_V4, ROUTER_V4, PREFIX, SINK_V6
            else:
                mode, src4, dst4, src6, dst6 = "6", GEN_V4, ROUTER_V4, GEN_V6, SINK_V6
        else:
            send_ns, send_dev, recv_ns, recv_dev = self.sink, "s0", self.gen, "g0"
            if target == "router":
                mode, src4, dst4, src6, dst6 = "6to", GEN_V4, TARGET_V4, SINK_V6, PREFIX
            else:
                mode, src4, dst4, src6, dst6 = "6", GEN_V4, GEN_V4, SINK_V6, GEN_V6
        peer_mac = MAC["r0"] if send_dev == "g0" else MAC["r1"]
        rx0 = self.rx_packets(recv_ns, recv_dev)
        cpu0 = self.router_cpu_seconds()
        softirq0 = self.softirq_threads_cpu_seconds()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = ["taskset", "-c", GEN_CPU, "ip", "netns", "exec", send_ns, str(self.loadgen), send_dev,
               MAC[send_dev], peer_mac, mode, str(size), str(int(rate)), str(duration), str(flows),
               src4, dst4, src6, dst6]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30).stdout.split()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        generator = children.ru_utime - children0.ru_utime + children.ru_stime - children0.ru_stime
        sent, seconds = int(out[1]), float(out[3])
        time.sleep(0.3)  # let queues drain
        softirq = self.softirq_threads_cpu_seconds() - softirq0
        received = self.rx_packets(recv_ns, recv_dev) - rx0
        user, system = (b - a for a, b in zip(cpu0, self.router_cpu_seconds()))
        cpu = user + system
        # everything this path costs: the generator process (its sends, and the forwarding the
        # kernel does in its context: veth hands packets on in the sender's softirq), the router
        # process, and softirq work deferred to ksoftirqd (shared with other users of the machine)
        path = generator + (cpu if target == "router" else 0.0) + softirq
        result = {
            "target": target, "direction": direction, "size": size, "flows": flows,
            "offered_pps": round(sent / seconds), "sent": sent, "received": received,
            "pps": round(received / seconds), "mbit_s": round(received * size * 8 / seconds / 1e6, 1),
            "loss": round(max(0.0, 1 - received / sent), 5) if sent else 0.0,
            # the generator, the router and ksoftirqd: all the kernel's work for this path included
            # (the fast path has no process of its own)
            "path_cpu_s": round(path, 3),
            "path_us_per_packet": round(path * 1e6 / received, 3) if received else None,
        }
        if target == "router":
            result["fast_path"] = self.fast_path
            result["router_cpu_s"] = round(cpu, 3)
            result["cpu_us_per_packet"] = round(cpu * 1e6 / received, 3) if received else None
            result["user_us_per_packet"] = round(user * 1e6 / received, 3) if received else None
            result["system_us_per_packet"] = round(system * 1e6 / received, 3) if received else None
        return result

    def find_lossless(self, target: str, direction: str, size: int, steps: int) -> dict:
        """Peak at max load, then step down / bisect the offered rate to the highest with < 1% loss."""
        peak = self.measure(target, direction, size, 0)
        if peak["loss"] < LOSS_OK:
            return {"peak": peak, "lossless": peak, "probes": []}
        probes, best = [], None
        lo, hi = 0.0, float(peak["offered_pps"])
        rate = peak["pps"] * 0.98
        for _ in range(steps):
            run = self.measure(target, direction, size, rate)
            probes.append({"rate": round(rate), "loss": run["loss"], "pps": run["pps"]})
            if run["loss"] < LOSS_OK:
                lo, best = rate, run
            else:
                hi = rate
            rate = (lo + hi) / 2 if lo else rate * 0.75
        return {"peak": peak, "lossless": best, "probes": probes}


def rss_check(bench: Bench, duration: float) -> dict:
    """RSS after traffic from 1 source, then from 100,000 distinct IPv4:port sources."""
    out = {"rss_start_kib": bench.router_rss_kib()}
    for flows in (1, 100_000):
        run = bench.measure("router", "udp2tun", 80, 0, flows=flows, duration=duration)
        out[f"rss_{flows}_sources_kib"] = bench.router_rss_kib()
        out[f"run_{flows}_sources"] = run
    return out


def fmt_rate(value) -> str:
    return "-" if value is None else f"{value / 1000:.1f}k"


def print_table(results: list[dict], rss: dict | None) -> None:
    head = (f"{'direction':9} {'size':>5} {'flows':>5} {'fast path':>9} | {'router peak':>11} {'Mbit/s':>7} {'loss':>6}"
            f" {'<1% loss':>9} {'µs/pkt':>7} {'usr/sys':>9} {'path':>7} |"
            f" {'kernel peak':>11} {'<1% loss':>9} {'path':>7} | {'ratio pk':>8} {'ratio <1%':>9} {'cpu ratio':>9}")
    print(head)
    print("-" * len(head))
    for row in results:
        k = row["kernel"]
        kl = k["lossless"]["pps"] if k["lossless"] else None
        kcpu = k["peak"]["path_us_per_packet"]
        for mode in row["modes"]:
            r = row[f"router-{mode}"]
            rl = r["lossless"]["pps"] if r["lossless"] else None
            ratio_peak = r["peak"]["pps"] / k["peak"]["pps"] if k["peak"]["pps"] else 0
            ratio_ok = (rl / kl) if rl and kl else 0
            cpu = r["peak"].get("cpu_us_per_packet")
            split = f"{r['peak']['user_us_per_packet']:.2f}/{r['peak']['system_us_per_packet']:.2f}" if cpu else "-"
            rcpu = r["peak"]["path_us_per_packet"]
            cpu_ratio = f"{rcpu / kcpu:.2f}" if rcpu and kcpu else "-"
            print(f"{row['direction']:9} {row['size']:>5} {row['flows']:>5} {mode:>9} |"
                  f" {fmt_rate(r['peak']['pps']):>11} {r['peak']['mbit_s']:>7.0f}"
                  f" {r['peak']['loss'] * 100:>5.1f}% {fmt_rate(rl):>9} {cpu if cpu is not None else '-':>7} {split:>9}"
                  f" {rcpu if rcpu is not None else '-':>7} |"
                  f" {fmt_rate(k['peak']['pps']):>11} {fmt_rate(kl):>9} {kcpu if kcpu is not None else '-':>7} |"
                  f" {ratio_peak:>8.2f} {ratio_ok:>9.2f} {cpu_ratio:>9}")
    if rss:
        print(f"router RSS: start {rss['rss_start_kib']} KiB, after 1 source {rss['rss_1_sources_kib']} KiB,"
              f" after 100000 sources {rss['rss_100000_sources_kib']} KiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs, fewer bisection steps (checks the harness)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 2, --quick 1)")
    p.add_argument("--sizes", default="80,1280", help="IPv6 packet sizes, comma-separated (48..1280)")
    p.add_argument("--directions", default="udp2tun,tun2udp", help="udp2tun, tun2udp or both")
    p.add_argument("--steps", type=int, help="bisection steps for the < 1%% loss rate (default 5, --quick 2)")
    p.add_argument("--no-gro", dest="gro", action="store_false", help="GRO off on the router ns veths (default on)")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS check with 100,000 sources")
    p.add_argument("--flows", default="1",
                   help="distinct peers cycled packet by packet, comma-separated for several rows (default 1: one "
                        "flow, runs batch best; 1000: every packet from or to another peer)")
    p.add_argument("--fast-path", default="on,off",
                   help="the router's --fast-path for its rows: on, off or both (default on,off)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency row (ping through peer + router)")
    latency.add_arguments(p.add_argument_group("latency row (bench/latency.py)"))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py: run as root (namespaces, TUN)", file=sys.stderr)
        return 2
    duration = args.duration or (1.0 if args.quick else 2.0)
    steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    sizes = [int(s) for s in args.sizes.split(",")]
    directions = args.directions.split(",")
    modes = args.fast_path.split(",")
    flows_list = [int(f) for f in args.flows.split(",")]
    if not all(48 <= s <= 1280 for s in sizes) or not set(directions) <= {"udp2tun", "tun2udp"}:
        p.error("sizes must be 48..1280, directions udp2tun and/or tun2udp")
    if not set(modes) <= {"on", "off"} or not all(f >= 1 for f in flows_list):
        p.error("--fast-path takes on and/or off, --flows positive numbers")

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="6bed4-bench-"))
    lab = Lab("bn")
    started = time.time()
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", file=sys.stderr)
    try:
        bench = Bench(lab, build_loadgen(workdir), duration, args.gro)
        bench.start_router(modes[0])
        results = []
        for flows in flows_list:
            bench.flows = flows
            for direction in directions:
                for size in sizes:
                    row = {"direction": direction, "size": size, "flows": flows, "modes": modes}
                    for target, mode in [("kernel", None)] + [("router", mode) for mode in modes]:
                        key = "kernel" if mode is None else f"router-{mode}"
                        if mode is not None:
                            bench.start_router(mode)
                        row[key] = bench.find_lossless(target, direction, size, steps)
                        print(f"  {direction} {size}B {flows} flows {key}: peak {row[key]['peak']['pps']} pps,"
                              f" <1% loss at {row[key]['lossless']['pps'] if row[key]['lossless'] else '-'}",
                              file=sys.stderr)
                    results.append(row)
        bench.start_router("off")  # the RSS check is of the Python path
        rss = None if args.no_rss else rss_check(bench, max(duration, 2.0))
        if bench.router.poll() is not None:
            raise RuntimeError(f"router died: {lab.log('router')}")
        router_log = lab.log("router")
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        latency_rows = None if args.no_latency else latency.latency_rows(
            100 if args.quick else args.probes, args.interval, args.rounds, args.router_arg, args.peer_arg,
            args.compare_src, args.hops, args.nat, args.c_src, args.c_mixed)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except latency.c_pair.BuildError as error:
        print(f"bench/run.py: the C pair: {error}", file=sys.stderr)
        return 1

    print_table(results, rss)
    print("load average at start %.2f, at the end %.2f (1 min)" % (load_start[0], os.getloadavg()[0]))
    if latency_rows:
        latency.print_latency(latency_rows)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 1),
        "commit": commit.stdout.strip(), "dirty": bool(subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True).stdout),
        "duration": duration, "gro": args.gro, "flows": flows_list, "fast_path": modes, "argv": sys.argv[1:],
        "loadavg_start": load_start, "loadavg": os.getloadavg(),
        "results": results, "rss": rss, "latency": latency_rows, "router_log_tail": router_log[-2000:],
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path.relative_to(ROOT)} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
