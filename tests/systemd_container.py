"""systemd as PID 1 in a container (systemd-nspawn), to run the units as shipped.

The container's root is this machine's own, seen through an overlay whose upper
layer is a tmpfs: what the package and the units change inside (dpkg, /etc,
/var, /run) is gone with the container, and the machine's files are never
written, and it stays across a power loss (`power_loss()`, then `boot()` again:
a reboot).  It boots into a network namespace of the test's lab, so its traffic
stays in the lab; /run/netns is bound in, so that a unit can be put into
another of the lab's namespaces (NetworkNamespacePath=), and /dev/net/tun,
which a container's /dev lacks.  This machine's PID 1 is not systemd, so
nspawn neither registers the container nor asks for a scope (--register=no
--keep-unit); commands run inside through nsenter.  It boots basic.target unless
told otherwise: nothing of the machine's own services starts.  It keeps every capability and
may call bpf(2) (nspawn's own filter refuses it), so that what the units allow
and forbid is theirs alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

BOOTED = ("running", "degraded")


class SystemdContainer:
    """`with SystemdContainer(name) as box: box.boot(netns)`; the overlay (and so /etc, /var) outlives a power loss."""

    def __init__(self, name: str, binds: tuple[str, ...] = ("/dev/net/tun", "/run/netns")):
        self.name = name
        self.binds = binds
        self.base = Path(f"/tmp/{name}-root")
        self.root = self.base / "merged"
        self.log_path = Path(f"/tmp/{name}-nspawn.log")
        self.nspawn: subprocess.Popen | None = None
        self.pid = 0  # the container's PID 1, as this machine sees it

    def __enter__(self) -> "SystemdContainer":
        try:
            self.base.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(self.base)], check=True)
            for part in ("upper", "work", "merged"):
                (self.base / part).mkdir()
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir=/,upperdir={self.base}/upper,workdir={self.base}/work", str(self.root)],
                           check=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boot(self, netns: str, target: str = "basic.target") -> None:
        """Boot systemd in the lab's namespace `netns` up to `target`; RuntimeError if it does not come up."""
        argv = ["systemd-nspawn", "--quiet", "--directory", str(self.root), "--machine", self.name,
                "--register=no", "--keep-unit", "--link-journal=no", "--capability=all", "--system-call-filter=bpf",
                f"--network-namespace-path=/run/netns/{netns}",
                *(f"--bind={path}" for path in self.binds), "--boot", "--", f"systemd.unit={target}"]
        with open(self.log_path, "w") as log:
            self.nspawn = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        self.pid = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn ended ({self.nspawn.returncode}): {self.log()}")
            self.pid = self.pid or _container_init(self.nspawn.pid)
            if self.pid and self.run("systemctl is-system-running", check=False).stdout.strip() in BOOTED:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the container did not boot in 60 s: {self.log()}")

    def power_loss(self) -> None:
        """Every process of the container gone at once (its PID 1 killed), nothing shut down; the files stay."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.nspawn is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(30)
        self.pid = 0

    def run(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A shell command inside the container (its namespaces, its root)."""
        result = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "sh", "-c", command],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"in the container: {command} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        return result

    def path(self, path: str) -> Path:
        """Where a file inside the container is, seen from outside (writes go to the overlay's upper layer)."""
        return self.root / path.lstrip("/")

    def write(self, path: str, content: str | bytes) -> None:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run(f"journalctl -u {unit} --no-pager -o cat", check=False).stdout

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def close(self) -> None:
        """Power off (nspawn passes SIGTERM on as a shutdown request), kill what is left, unmount."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:  # the container's PID 1 takes its namespace along, then nspawn
                self.pid = self.pid or _container_init(self.nspawn.pid)
                if self.pid:
                    self.power_loss()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(10)
        for mount in (self.root, self.base):
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
        with contextlib.suppress(OSError):
            self.base.rmdir()
        self.log_path.unlink(missing_ok=True)


def _container_init(nspawn_pid: int) -> int:
    """The container's PID 1: the process below nspawn that is PID 1 in its own PID namespace."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("NSpid", "").split()[-1:] == ["1"] and int(fields.get("PPid", 0)) in _family(nspawn_pid):
            return int(status.parent.name)
    return 0


def _family(pid: int) -> set[int]:
    """nspawn and its children (it forks once before the container's init)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return {pid, *map(int, children.read_text().split())}
    except OSError:
        return {pid}
