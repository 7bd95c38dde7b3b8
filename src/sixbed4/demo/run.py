"""`6bed4 demo`: build the seed's scenario, run host setup, router and peers, show who reaches whom."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from . import scenario
from .lab import Lab

TAG = "6bed4demo"
AF_INET6 = 10
PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


class Progress:
    """Step lines, and a spinner with elapsed seconds while waiting (plain dots off a terminal)."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.interrupted = False  # set by the signal handler; every step and wait raises on it

    def check(self) -> None:
        """KeyboardInterrupt if a signal came, also if library code swallowed the first one."""
        if self.interrupted:
            raise KeyboardInterrupt

    def step(self, text: str) -> None:
        self.check()
        self.stream.write(f"[{time.monotonic() - self.started:5.1f}s] {text}\n")
        self.stream.flush()

    def wait(self, text: str, predicate, timeout: float):
        start = time.monotonic()
        frames = "|/-\\"
        tick = 0
        while True:
            self.check()
            value = predicate()
            elapsed = time.monotonic() - start
            if value or elapsed > timeout:
                break
            if self.tty:
                self.stream.write(f"\r        {frames[tick % 4]} {text} ({elapsed:.1f}s)")
                self.stream.flush()
            tick += 1
            time.sleep(0.1)
        if self.tty:
            self.stream.write("\r\033[K")
        self.step(f"{text}: {'done' if value else 'TIMED OUT'} after {time.monotonic() - start:.1f}s")
        return value


def tunnel_address(ns: str) -> str | None:
    """The global address the peer configured on its 6bed4 device, if any yet."""
    try:
        with IPRoute(netns=ns) as ipr:
            found = ipr.link_lookup(ifname="6bed4")
            if not found:
                return None
            for entry in ipr.get_addr(index=found[0], family=AF_INET6):
                address = entry.get_attr("IFA_ADDRESS")
                if not ipaddress.IPv6Address(address).is_link_local:
                    return address
    except OSError:
        return None
    return None


@dataclass
class Cell:
    source: str
    target: str
    ok: bool
    detail: str


def ping(lab: Lab, ns: str, address: str) -> tuple[bool, str]:
    result = lab.run(ns, ["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", address], timeout=15)
    match = PING_RTT.search(result.stdout)
    if result.returncode == 0 and match:
        return True, f"{float(match.group(1)):.2f} ms"
    return False, "no reply"


def print_matrix(cells: list[Cell], sources: list[str], targets: list[str], out=sys.stdout) -> None:
    table = {(c.source, c.target): c for c in cells}
    width = max(len("pass 999.99 ms"), *(len(t) for t in targets)) + 2
    first = max(len(s) for s in sources) + 2
    out.write("\nconnectivity (ping -6, average RTT)\n")
    out.write((" " * first + "".join(t.ljust(width) for t in targets)).rstrip() + "\n")
    for source in sources:
        row = source.ljust(first)
        for target in targets:
            cell = table.get((source, target))
            text = "-" if cell is None else (f"pass {cell.detail}" if cell.ok else "FAIL")
            row += text.ljust(width)
        out.write(row.rstrip() + "\n")


def main(argv_prog: str, keep: bool, upstream: str, python: str, fast_path: str = "auto") -> int:
    """Run the demo; exit code 0 only if every cell of the matrix passed."""
    return run_lab(argv_prog, TAG, ("ping", "nft", "iperf3", "dnsmasq", "dhclient"), keep,
                   lambda lab, progress: _run(lab, progress, upstream == "routed", python, keep, fast_path))


def run_lab(argv_prog: str, tag: str, tools: tuple[str, ...], keep: bool, body) -> int:
    """A lab for `body(lab, progress)`, whose result is the exit code: errors and Ctrl-C end it
    with a line that says so, and the lab goes afterwards (or stays, with --keep)."""
    progress = Progress()
    if os.geteuid() != 0:
        print(f"{argv_prog}: needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    for tool in tools:
        if find(tool) is None:
            print(f"{argv_prog}: {tool} is missing (./dev setup installs it)", file=sys.stderr)
            return 2
    lab = Lab(tag)
    demo_pid = os.getpid()

    def on_signal(signum, _frame):
        # pyroute2 forks helpers (IPRoute(netns=...)) and stops them with SIGTERM: they inherit
        # this handler, and must die quietly instead of tearing the lab down from the child.
        if os.getpid() != demo_pid:
            os._exit(128 + signum)
        progress.interrupted = True
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    try:
        result = body(lab, progress)
        progress.check()
        return result
    except KeyboardInterrupt:
        progress.interrupted = False
        progress.step("interrupted")
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        progress.step(f"the lab failed: {exc}")
        return 1
    finally:
        progress.interrupted = False  # reported above; cleanup must run to the end
        if keep and lab.namespaces:
            lab.keep()
            _print_keep(lab)
        else:
            lab.close()
            shutil.rmtree(lab.logdir, ignore_errors=True)  # the logs (shown on failure) and the daemons' files
            progress.step("cleaned up: namespaces and processes removed")


def _fast_path(lab: Lab, daemon: str) -> str:
    """What the daemon's log says of its kernel fast path."""
    lines = [line.split(" INFO ", 1)[-1] for line in lab.log(daemon).splitlines() if "fast path " in line]
    return lines[0] if lines else "fast path off"


def _run(lab: Lab, progress: Progress, routed: bool, python: str, keep: bool, fast_path: str) -> int:
    progress.step("building the lab: upstream router + Internet, VM with eth0 "
                  f"{scenario.VM_MAC}, home NAT with a gateway and a LAN (laptop, tablet) behind it, a phone")
    sc = scenario.build(lab, upstream_routes_prefix=routed)
    ns = sc.roles
    how = "routes the /64 to the VM's link-local address" if routed else "has the /64 on-link (needs proxy ND)"
    progress.step(f"upstream {how}")

    cli = [python, "-m", "sixbed4.cli"]
    setup = ["host-setup", "--uplink", "eth0", "--prefix", scenario.PREFIX, "--on-uplink",
             "--state-file", str(lab.logdir / "host-setup.json")]
    plan = lab.run(ns["vm"], cli + [setup[0], "plan", *setup[1:]])
    progress.step("host setup plan for the VM:\n" + _indent(plan.stdout + plan.stderr))
    applied = lab.run(ns["vm"], cli + [setup[0], "apply", *setup[1:]])
    if applied.returncode != 0:
        progress.step("host setup failed:\n" + _indent(applied.stdout + applied.stderr))
        return 1
    progress.step("host setup applied: forwarding on, ::11 and ::30 moved to /128, /64 off eth0")

    router_args = [python, "-m", "sixbed4.router.cli", "-l", scenario.VM_V4, "-L", scenario.PREFIX,
                   "--fast-path", fast_path]
    if not routed:
        router_args += ["--proxy-nd", "eth0"]
    router = lab.start(ns["vm"], router_args, "router")
    if not progress.wait("starting 6bed4router in the VM", lambda: "serving" in lab.log("router")
                         or router.poll() is not None, 10) or router.poll() is not None:
        progress.step("router failed:\n" + _indent(lab.log("router")))
        return 1
    progress.step(f"router: {_fast_path(lab, 'router')}")

    peers = {"gateway": ns["gateway"], "phone": ns["phone"]}
    state = lab.logdir / "gateway-state"  # the LAN's ULA; dnsmasq (its own user) keeps its leases here too
    lab.logdir.chmod(0o755)
    extra = {"gateway": ["--lan", "lan0", "--state-dir", str(state)], "phone": ["-r"]}
    for role, peer_ns in peers.items():
        lab.start(peer_ns, [python, "-m", "sixbed4.peer.cli", "-s", scenario.VM_V4, "--fast-path", fast_path,
                            *extra[role]], f"peer-{role}")
    addresses = {}
    for role, peer_ns in peers.items():
        address = progress.wait(f"6bed4peer on the {role} asks for an address",
                                lambda n=peer_ns: tunnel_address(n), 15)
        if not address:
            progress.step(f"{role} got no address:\n" + _indent(lab.log(f"peer-{role}")))
            return 1
        addresses[role] = address
        progress.step(f"{role} has {address}; {_fast_path(lab, f'peer-{role}')}")
    gateway = addresses["gateway"]
    progress.step("the gateway advertises itself on its LAN: its /114 (by DHCPv6, dnsmasq) "
                  "and a ULA /64 (SLAAC, translated to its own address by nftables)")

    lab.start(ns["laptop"], [find("dhclient"), "-6", "-d", "-lf", str(lab.logdir / "laptop-dhclient.leases"),
                             "-pf", str(lab.logdir / "laptop-dhclient.pid"), "eth0"], "dhclient-laptop")
    laptop = progress.wait("the laptop asks the gateway for an address by DHCPv6 (dhclient)",
                           lambda: lan_address(ns["laptop"], lambda a: in_114(a, gateway)), 15)
    tablet = progress.wait("the tablet configures itself from the gateway's RA (SLAAC only)",
                           lambda: lan_address(ns["tablet"], lambda a: a.is_private), 10)
    routers = progress.wait("both take the gateway as their default router",
                            lambda: all(default_route(ns[d]) for d in scenario.LAN_DEVICES), 10)
    if not (laptop and tablet and routers):
        progress.step("the LAN did not come up:\n" + _indent(lab.log("peer-gateway")))
        return 1
    addresses["laptop"], addresses["tablet"] = laptop, tablet
    progress.step(f"laptop has {laptop} (lanid {lanid(laptop)} of the gateway's /114, by DHCPv6)")
    progress.step(f"tablet has {tablet} (the gateway's ULA /64; it goes out as {gateway})")

    lan = ("gateway", *scenario.LAN_DEVICES)
    targets = {"internet": scenario.INET6, "vm ::11": scenario.SERVERS[0], "vm ::30": scenario.SERVERS[1],
               **{role: addresses[role] for role in ("gateway", *scenario.LAN_DEVICES, "phone")}}
    sources = {role: ns[role] for role in (*lan, "phone")} | {"internet": ns["inet"]}
    cells = []
    progress.step("pinging every pair (the tablet's ULA only from its own LAN)")
    for source, source_ns in sources.items():
        for target, address in targets.items():
            if target == source or (source == "internet" and target.startswith("vm")):
                continue
            if target == "tablet" and source not in lan:
                continue  # a ULA is not reachable from outside its site
            progress.check()
            ok, detail = ping(lab, source_ns, address)
            cells.append(Cell(source, target, ok, detail))
    print_matrix(cells, list(sources), list(targets))

    throughput_ok, throughput, _ = iperf(lab, ns["inet"], ns["phone"], 3)
    print(f"\nthroughput phone -> internet through the tunnel (iperf3 TCP, 3 s): {throughput}")
    nat_ok, nat_throughput, seen = iperf(lab, ns["inet"], ns["tablet"], 1)
    nat_ok = nat_ok and seen == gateway
    print(f"tablet -> internet through nat66 (iperf3 TCP, 1 s): {nat_throughput}, "
          f"the internet host sees {seen or 'nothing'}{' (the gateway)' if seen == gateway else ''}")
    closed_ok = inbound_dropped(lab, python, ns["inet"], ns["laptop"], laptop)
    print("internet -> laptop, a new TCP connection to a port it listens on: "
          + ("dropped by the gateway (--lan-inbound closed)" if closed_ok else "NOT dropped"))
    passed = all(c.ok for c in cells) and throughput_ok and nat_ok and closed_ok
    print(f"\nresult: {'ALL PASSED' if passed else 'SOME FAILED'} "
          f"({sum(c.ok for c in cells)}/{len(cells)} reachability checks, throughput "
          f"{'ok' if throughput_ok else 'failed'}, nat66 {'ok' if nat_ok else 'failed'}, "
          f"inbound closed {'ok' if closed_ok else 'failed'})")
    return 0 if passed else 1


def find(tool: str) -> str | None:
    """The tool's path, also where root's PATH may lack the sbin directories."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


ACCEPTED = re.compile(r"Accepted connection from ([0-9a-f:]+), port")


def iperf(lab: Lab, server_ns: str, client_ns: str, seconds: int) -> tuple[bool, str, str | None]:
    """iperf3 from client_ns to the Internet host: (worked, Mbit/s, the client's address as the server saw it)."""
    name = f"iperf3-server-{client_ns}"
    server = lab.start(server_ns, ["iperf3", "-s", "-1", "--forceflush", "-B", scenario.INET6], name)
    time.sleep(0.3)
    result = lab.run(client_ns, ["iperf3", "-6", "-c", scenario.INET6, "-t", str(seconds), "-J"], timeout=20)
    server.wait(5)
    seen = ACCEPTED.search(lab.log(name))
    try:
        bits = json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"]
    except (ValueError, KeyError):
        return False, "failed", seen and seen.group(1)
    return bits > 0, f"{bits / 1e6:.1f} Mbit/s", seen and seen.group(1)


LISTEN = ("import socket, time; s = socket.create_server(('::', 8022), family=socket.AF_INET6); print('ready'); "
          "time.sleep(60)")
CONNECT = """import socket, sys
try:
    socket.create_connection((sys.argv[1], 8022), timeout=2)
except TimeoutError:
    sys.exit(3)
"""


def inbound_dropped(lab: Lab, python: str, inet_ns: str, device_ns: str, address: str) -> bool:
    """Whether a connection from the Internet to a port the device listens on times out (the gateway drops it)."""
    listener = lab.start(device_ns, [python, "-u", "-c", LISTEN], "laptop-listener")
    deadline = time.monotonic() + 5
    while "ready" not in lab.log("laptop-listener") and listener.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        return lab.run(inet_ns, [python, "-c", CONNECT, address], timeout=10).returncode == 3
    finally:
        listener.kill()


def lan_address(ns: str, wanted) -> str | None:
    """A global address on the device's eth0 for which wanted(IPv6Address) holds."""
    try:
        with IPRoute(netns=ns) as ipr:
            for entry in ipr.get_addr(index=ipr.link_lookup(ifname="eth0")[0], family=AF_INET6):
                address = ipaddress.IPv6Address(entry.get_attr("IFA_ADDRESS"))
                if not address.is_link_local and wanted(address):
                    return str(address)
    except OSError:
        return None
    return None


def default_route(ns: str) -> bool:
    with IPRoute(netns=ns) as ipr:
        return bool(ipr.get_routes(family=AF_INET6, dst_len=0, table=254))


def in_114(address: ipaddress.IPv6Address, peer: str) -> bool:
    return address in ipaddress.IPv6Network(f"{peer}/114", strict=False)


def lanid(address: str) -> int:
    return int(ipaddress.IPv6Address(address)) & 0x3FFF


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in text.strip().splitlines())


def _print_keep(lab: Lab) -> None:
    print("\nthe lab stays up (--keep). Enter a namespace with:")
    for name in lab.namespaces:
        print(f"    ip netns exec {name} bash")
    print(f"logs are in {lab.logdir}\ntake it all down with:\n    {shlex.join(down_command())}")


def down_command() -> list[str]:
    """`6bed4 demo --down` as this demo was started, so that it works as printed (e.g. from a venv)."""
    program = Path(sys.argv[0])
    if program.name != "6bed4":  # python -m sixbed4.cli
        return [sys.executable, "-m", "sixbed4.cli", "demo", "--down"]
    on_path = shutil.which("6bed4")
    if on_path and Path(on_path).resolve() == program.resolve():
        return ["6bed4", "demo", "--down"]
    return [str(program.resolve()), "demo", "--down"]
