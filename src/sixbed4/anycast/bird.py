"""BIRD instances of our own (the lab, the tests): configuration, control socket and pid file in one directory.

BIRD runs in the foreground (`-f`) under whoever starts it (in the lab: inside
a network namespace); `birdc` reaches it through its control socket, which is a
file, so it works from any namespace.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

BGP_LINE = re.compile(r"^(\S+)\s+BGP\s+\S+\s+(\S+)\s+\S+\s*(.*)$")


class BirdError(RuntimeError):
    """BIRD is missing, refused a configuration, or did not answer; str() says which."""


def require() -> None:
    """BirdError unless bird and birdc are installed (Debian: bird2; ./dev setup installs it)."""
    missing = [tool for tool in ("bird", "birdc") if shutil.which(tool) is None]
    if missing:
        raise BirdError(f"{' and '.join(missing)} missing: install BIRD 2 (Debian package bird2; ./dev setup does)")


def check_config(text: str) -> None:
    """Let BIRD parse a configuration (`bird -p`); BirdError with its complaint if it refuses."""
    require()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", prefix="sixbed4-bird-") as handle:
        handle.write(text)
        handle.flush()
        result = subprocess.run(["bird", "-p", "-c", handle.name], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise BirdError(f"BIRD refuses the configuration: {(result.stderr or result.stdout).strip()}")


class Bird:
    def __init__(self, directory: Path, name: str):
        self.name = name
        self.config = directory / f"{name}.conf"
        self.socket = directory / f"{name}.ctl"
        self.pidfile = directory / f"{name}.pid"

    def write(self, text: str) -> None:
        self.config.write_text(text)

    def argv(self) -> list[str]:
        """The command that runs this BIRD in the foreground, logging where its configuration says."""
        return ["bird", "-f", "-c", str(self.config), "-s", str(self.socket), "-P", str(self.pidfile)]

    def birdc(self, *command: str) -> str:
        try:
            result = subprocess.run(["birdc", "-s", str(self.socket), *command], capture_output=True, text=True,
                                    timeout=10)
        except subprocess.TimeoutExpired:
            raise BirdError(f"{self.name}: birdc {' '.join(command)} timed out") from None
        if result.returncode != 0:
            raise BirdError(f"{self.name}: birdc {' '.join(command)}: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def bgp_sessions(self) -> dict[str, str]:
        """BGP protocol name -> its state ("Established", "Active", "Connect", ...); {} while BIRD is not up."""
        try:
            text = self.birdc("show", "protocols")
        except BirdError:
            return {}
        sessions = {}
        for line in text.splitlines():
            match = BGP_LINE.match(line)
            if match:
                sessions[match.group(1)] = match.group(3).split()[0] if match.group(3) else match.group(2)
        return sessions
