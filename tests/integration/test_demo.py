"""`6bed4 demo`, the README's first command: it passes end to end and leaves nothing behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from pyroute2 import netns as pyroute2_netns

DEMO = [sys.executable, "-m", "sixbed4.cli", "demo"]
PEERS_AND_LAN = ("gateway", "laptop", "phone")  # global addresses
HOME = ("gateway", "laptop", "tablet")  # the home LAN; the tablet has a ULA only
EXPECTED_CELLS = {  # everyone behind 6bed4 to everything, and the Internet host back to the global addresses
    *((source, target) for source in (*PEERS_AND_LAN, "tablet")
      for target in ("internet", "vm ::11", "vm ::30", *PEERS_AND_LAN) if source != target),
    *(("internet", target) for target in PEERS_AND_LAN),
    *((source, "tablet") for source in HOME if source != "tablet"),
}


def demo_namespaces() -> list[str]:
    return [name for name in pyroute2_netns.listnetns() if name.startswith("6bed4demo-")]


def parse_matrix(output: str) -> dict[tuple[str, str], str]:
    """Read the printed matrix back: (source, target) -> 'pass' or 'FAIL'."""
    lines = output.split("connectivity (ping -6, average RTT)\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = lines[0]
    columns = [(m.start(), m.group().strip()) for m in re.finditer(r"\S+(?: \S+)?", header)]
    cells = {}
    for row in lines[1:]:
        source = row.split()[0]
        for index, (start, target) in enumerate(columns):
            end = columns[index + 1][0] if index + 1 < len(columns) else None
            text = row[start:end].strip()
            if text != "-":
                cells[(source, target)] = text.split()[0]
    return cells


@pytest.fixture(autouse=True)
def no_demo_left():
    subprocess.run([*DEMO, "--down"], capture_output=True)
    yield
    left = demo_namespaces()
    subprocess.run([*DEMO, "--down"], capture_output=True)
    assert not left, f"the demo left namespaces behind: {left}"


@pytest.mark.parametrize("upstream", ["on-link", "routed"])
def test_demo_passes_every_cell_and_cleans_up(upstream):
    started = time.monotonic()
    result = subprocess.run([*DEMO, "--upstream", upstream], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    cells = parse_matrix(result.stdout)
    assert set(cells) == EXPECTED_CELLS
    assert set(cells.values()) == {"pass"}
    assert re.search(r"iperf3 TCP, 3 s\): [\d.]+ Mbit/s", result.stdout)
    assert f"ALL PASSED ({len(EXPECTED_CELLS)}/{len(EXPECTED_CELLS)}" in result.stdout
    gateway = re.search(r"gateway has (2001:db8:9:10:c433:6407:[0-9a-f]+:8001)\n", result.stdout).group(1)
    laptop = re.search(r"laptop has (2001:db8:9:10:c433:6407:[0-9a-f]+:[0-9a-f]+) \(lanid \d+ of the gateway's "
                       r"/114, by DHCPv6\)", result.stdout).group(1)
    assert laptop.rsplit(":", 2)[:2] == gateway.rsplit(":", 2)[:2] and laptop != gateway
    assert re.search(r"tablet has fd[0-9a-f:]+ \(the gateway's ULA /64", result.stdout)
    assert re.search(rf"nat66 \(iperf3 TCP, 1 s\): [\d.]+ Mbit/s, the internet host sees {gateway} \(the gateway\)",
                     result.stdout)
    assert "cleaned up" in result.stdout
    print(f"demo --upstream {upstream} took {took:.1f}s")


def test_demo_interrupted_cleans_up_and_says_so():
    proc = subprocess.Popen([*DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(demo_namespaces()) < 8:
        time.sleep(0.1)
    assert demo_namespaces(), "the demo never built its lab"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "cleaned up" in output
    assert demo_namespaces() == []
