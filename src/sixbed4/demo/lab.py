"""Network namespaces for the demo, built through pyroute2, always torn down.

Every namespace is named `<tag>-<role>`; `Lab.sweep()` removes those a crashed
earlier run left behind, and `close()` kills the lab's processes and deletes
its namespaces whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from ..io import netlink

AF_INET6 = 10


def _enter(name: str):
    """preexec_fn: move the child into the namespace before it execs."""
    return lambda: pyroute2_netns.setns(name, flags=0)


class Lab:
    def __init__(self, tag: str = "6bed4demo"):
        self.tag = tag
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.logdir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))

    @staticmethod
    def sweep(tag: str) -> list[str]:
        """Delete namespaces of an earlier run with this tag; returns their names."""
        stale = [name for name in pyroute2_netns.listnetns() if name.startswith(f"{tag}-")]
        for name in stale:
            for pid in pyroute2_netns.ns_pids().get(name, []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pyroute2_netns.remove(name)
        return stale

    def name(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def add(self, role: str, *, forwarding: bool = False) -> str:
        name = self.name(role)
        self.namespaces.append(name)  # first: a Ctrl-C during create() must still find it in close()
        pyroute2_netns.create(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        self.sysctl(name, "net.ipv6.conf.all.accept_dad", "0")
        self.sysctl(name, "net.ipv6.conf.default.accept_dad", "0")
        if forwarding:
            self.sysctl(name, "net.ipv4.ip_forward", "1")
            self.sysctl(name, "net.ipv6.conf.all.forwarding", "1")
        return name

    def sysctl(self, ns: str, key: str, value: str) -> None:
        pyroute2_netns.pushns(ns)
        try:
            netlink.write_sysctl(key, value)
        finally:
            pyroute2_netns.popns()

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str, mac_a: str | None = None, mac_b: str | None = None):
        with IPRoute(netns=ns_a) as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
        for ns, ifname, mac in ((ns_a, if_a, mac_a), (ns_b, if_b, mac_b)):
            with IPRoute(netns=ns) as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                if mac:
                    ipr.link("set", index=index, address=mac)
                ipr.link("set", index=index, state="up")

    def bridge(self, ns: str, ifname: str, mac: str) -> None:
        with IPRoute(netns=ns) as ipr:
            ipr.link("add", ifname=ifname, kind="bridge", address=mac)
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")

    def enslave(self, ns: str, ifname: str, bridge: str) -> None:
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], master=ipr.link_lookup(ifname=bridge)[0])

    def address(self, ns: str, ifname: str, cidr: str) -> None:
        address, prefixlen = cidr.split("/")
        with IPRoute(netns=ns) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=address, prefixlen=int(prefixlen))

    def route(self, ns: str, destination: str, *, via: str | None = None, dev: str | None = None) -> None:
        spec: dict = {"dst": destination}
        if ":" in destination or (via and ":" in via):
            spec["family"] = AF_INET6
        if via:
            spec["gateway"] = via
        with IPRoute(netns=ns) as ipr:
            if dev:
                spec["oif"] = ipr.link_lookup(ifname=dev)[0]
            ipr.route("add", **spec)

    def start(self, ns: str, argv: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_enter(ns), env=env, start_new_session=True)
        log.close()
        self.processes.append(proc)
        return proc

    def run(self, ns: str, argv: list[str], timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              preexec_fn=_enter(ns))

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.processes.clear()
        for name in reversed(self.namespaces):
            with contextlib.suppress(OSError):
                pyroute2_netns.remove(name)
        self.namespaces.clear()
