"""Network namespaces for the demo, built through pyroute2, always torn down.

Every namespace is named `<tag>-<role>`, the tag unique to the run (it carries
the demo's process id), so that two demos on one machine never meet.  A lab
records itself in RECORDS while it exists; `close()` kills the lab's processes,
deletes its namespaces and its record whatever happened.  A lab left up by
--keep, or by a run that was killed, keeps its record: `Lab.take_down()` finds
it there, removes it with its log directory, and touches nothing that no
record names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from ..io import netlink, undo

AF_INET6 = 10
RECORDS = Path("/run/6bed4demo")  # one <tag>.json per lab that is up


def _enter(name: str):
    """preexec_fn: move the child into the namespace before it execs."""
    return lambda: pyroute2_netns.setns(name, flags=0)


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _remove_namespace(name: str) -> None:
    """The namespace, and the undo records of the daemons that ran in it (killed ones leave theirs)."""
    undo.forget_namespace(name)
    pyroute2_netns.remove(name)


def _remove_logdir(lab: dict) -> None:
    """The lab's log directory, if the record names one of this lab's (a temporary directory with its tag)."""
    logdir = Path(lab.get("logdir") or "")
    if logdir.parent == Path(tempfile.gettempdir()) and logdir.name.startswith(f"{lab['tag']}-"):
        shutil.rmtree(logdir, ignore_errors=True)


class Lab:
    def __init__(self, tag: str = "6bed4demo"):
        self.tag = f"{tag}-{os.getpid()}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.logdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.record = RECORDS / f"{self.tag}.json"
        self._write_record(kept=False)

    def _write_record(self, kept: bool) -> None:
        RECORDS.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"tag": self.tag, "pid": os.getpid(), "started": _started(os.getpid()),
                                           "kept": kept, "logdir": str(self.logdir)}) + "\n")

    def keep(self) -> None:
        """Leave the lab up: its record says so, for take_down()."""
        self._write_record(kept=True)

    @staticmethod
    def take_down() -> list[str]:
        """Remove the labs that --keep left up or whose demo was killed; returns their tags.

        A lab whose demo still runs is left alone, and so is every namespace no record names.
        """
        removed = []
        for record in sorted(RECORDS.glob("*.json")):
            try:
                lab = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if not lab["kept"] and _started(lab["pid"]) == lab["started"]:
                continue  # that demo is running: it cleans up after itself
            for name in [n for n in pyroute2_netns.listnetns() if n.startswith(f"{lab['tag']}-")]:
                for pid in pyroute2_netns.ns_pids().get(name, []):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _remove_namespace(name)
            _remove_logdir(lab)
            record.unlink(missing_ok=True)
            removed.append(lab["tag"])
        return removed

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
                _remove_namespace(name)
        self.namespaces.clear()
        self.record.unlink(missing_ok=True)
