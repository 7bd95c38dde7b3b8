"""Network namespaces for integration tests: real kernel, real tools, always cleaned up.

A `Lab` owns the namespaces and processes it creates and removes them all on
close(), whatever happened.  Namespace names carry the test process id, so
parallel runs and helpers never collide.  Sockets can be opened inside a
namespace from the test process itself (`lab.socket(ns, ...)`), which keeps
packet checks in the test, through scapy.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns as pyroute2_netns

from sixbed4.io import undo

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def _run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class Lab:
    def __init__(self, tag: str = "lab"):
        self.tag = f"{tag}{os.getpid() % 100000}x{next(_counter)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.logs: dict[str, Path] = {}
        self.etc_dirs: list[Path] = []  # /etc/netns/<ns>: files `ip netns exec` puts over /etc's

    # --- namespaces and links ---------------------------------------------

    def ns(self, role: str, *, forwarding: bool = False) -> str:
        name = f"{self.tag}-{role}"
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.sh(name, "ip link set lo up")
        self.sysctl(name, "net.ipv6.conf.all.accept_dad", 0)
        self.sysctl(name, "net.ipv6.conf.default.accept_dad", 0)
        if forwarding:
            self.sysctl(name, "net.ipv4.ip_forward", 1)
            self.sysctl(name, "net.ipv6.conf.all.forwarding", 1)
        return name

    def sysctl(self, ns: str, key: str, value) -> None:
        self.sh(ns, f"sysctl -qw {key}={value}")

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str, *, mac_a: str | None = None) -> None:
        """A veth pair between two namespaces, both ends up."""
        _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        if mac_a:
            self.sh(ns_a, f"ip link set {if_a} address {mac_a}")
        self.sh(ns_a, f"ip link set {if_a} up")
        self.sh(ns_b, f"ip link set {if_b} up")

    def sh(self, ns: str, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", ns, "sh", "-c", command], check=check, timeout=timeout)

    # --- processes ------------------------------------------------------------

    def start(self, ns: str, args: list[str], name: str) -> subprocess.Popen:
        """Start a long-running process in `ns`; its stderr+stdout go to a log file."""
        log_path = Path(f"/tmp/{self.tag}-{name}.log")
        self.logs[name] = log_path
        log_file = open(log_path, "w")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args], stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        log_file.close()
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc

    def scratch_file(self, name: str) -> Path:
        """A file for a test's own records (a capture, a trace), removed with the lab."""
        path = self.logs[name] = Path(f"/tmp/{self.tag}-{name}")
        return path

    def resolv_conf(self, ns: str, text: str = "") -> Path:
        """A resolv.conf of the namespace's own: what `ip netns exec` shows its processes (and a DHCPv6
        client's script writes) as /etc/resolv.conf, instead of the machine's; removed with the lab."""
        directory = Path("/etc/netns") / ns
        directory.mkdir(parents=True, exist_ok=True)
        self.etc_dirs.append(directory)
        path = directory / "resolv.conf"
        path.write_text(text)
        return path

    def python(self, ns: str, module: str, *args: str, name: str) -> subprocess.Popen:
        return self.start(ns, [sys.executable, "-m", module, *args], name)

    def log(self, name: str) -> str:
        return self.logs[name].read_text() if name in self.logs else ""

    @staticmethod
    def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    # --- sockets inside a namespace -----------------------------------------

    @contextlib.contextmanager
    def inside(self, ns: str):
        """Run the block with this thread in `ns` (sockets made there stay there)."""
        pyroute2_netns.pushns(ns)
        try:
            yield
        finally:
            pyroute2_netns.popns()

    def metrics(self, ns: str, url: str) -> dict[tuple[str, tuple], float]:
        """Scrape a daemon's Prometheus endpoint inside `ns`: {(sample name, sorted labels): value}."""
        with self.inside(ns):
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def ready(self, ns: str, url: str) -> tuple[int, dict]:
        """A daemon's `/ready` inside `ns`: the HTTP status and the JSON document (also with 503)."""
        with self.inside(ns):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

    def socket(self, ns: str, family=socket.AF_INET, kind=socket.SOCK_DGRAM, proto=0) -> socket.socket:
        with self.inside(ns):
            return socket.socket(family, kind, proto)

    # --- waiting -------------------------------------------------------------

    @staticmethod
    def wait_for(predicate, timeout: float = 10, what: str = "condition", interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def has_link(self, ns: str, ifname: str) -> bool:
        return self.sh(ns, f"ip link show {ifname}", check=False).returncode == 0

    # --- cleanup -------------------------------------------------------------

    def close(self) -> None:
        for proc in self.processes:
            try:
                self.stop(proc, signal.SIGKILL, timeout=5)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        for name in reversed(self.namespaces):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            undo.forget_namespace(name)  # what the lab's SIGKILLed daemons recorded goes with their namespace
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()
        for path in self.logs.values():
            with contextlib.suppress(OSError):
                path.unlink()
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # /etc/netns, if nothing else is in it
        self.etc_dirs.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
