"""`6bed4 demo`, the README's first command: it passes end to end, leaves nothing behind, and two demos
on one machine do not meet (each names its namespaces after its own process id)."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from sixbed4.demo.lab import RECORDS

DEMO = [sys.executable, "-m", "sixbed4.cli", "demo"]
VENV_DEMO = [str(Path(sys.executable).parent / "6bed4"), "demo"]  # as ./dev demo runs it
PEERS_AND_LAN = ("gateway", "laptop", "phone")  # global addresses
HOME = ("gateway", "laptop", "tablet")  # the home LAN; the tablet has a ULA only
EXPECTED_CELLS = {  # everyone behind 6bed4 to everything, and the Internet host back to the global addresses
    *((source, target) for source in (*PEERS_AND_LAN, "tablet")
      for target in ("internet", "vm ::11", "vm ::30", *PEERS_AND_LAN) if source != target),
    *(("internet", target) for target in PEERS_AND_LAN),
    *((source, "tablet") for source in HOME if source != "tablet"),
}


def demo_namespaces(pid: int) -> list[str]:
    """The namespaces of the demo with process id `pid`."""
    return [name for name in pyroute2_netns.listnetns() if name.startswith(f"6bed4demo-{pid}-")]


def run_demo(*args: str, command=DEMO, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = proc.communicate(timeout=timeout)
    return proc, output


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


def assert_passed(proc: subprocess.Popen, output: str, kept: bool = False) -> None:
    """Every cell passed, the figures are there, and (unless `kept`) the lab is gone."""
    assert proc.returncode == 0, output
    cells = parse_matrix(output)
    assert set(cells) == EXPECTED_CELLS
    assert set(cells.values()) == {"pass"}
    assert re.search(r"iperf3 TCP, 3 s\): [\d.]+ Mbit/s", output)
    assert f"ALL PASSED ({len(EXPECTED_CELLS)}/{len(EXPECTED_CELLS)}" in output
    gateway = re.search(r"gateway has (2001:db8:9:10:c433:6407:[0-9a-f]+:8001);", output).group(1)
    laptop = re.search(r"laptop has (2001:db8:9:10:c433:6407:[0-9a-f]+:[0-9a-f]+) \(lanid \d+ of the gateway's "
                       r"/114, by DHCPv6\)", output).group(1)
    assert laptop.rsplit(":", 2)[:2] == gateway.rsplit(":", 2)[:2] and laptop != gateway
    assert re.search(r"tablet has fd[0-9a-f:]+ \(the gateway's ULA /64", output)
    assert re.search(rf"nat66 \(iperf3 TCP, 1 s\): [\d.]+ Mbit/s, the internet host sees {gateway} \(the gateway\)",
                     output)
    assert "internet -> laptop, a new TCP connection to a port it listens on: dropped by the gateway" in output
    if not kept:
        assert "cleaned up" in output
        assert demo_namespaces(proc.pid) == [] and not (RECORDS / f"6bed4demo-{proc.pid}.json").exists()


def assert_fast_paths(output: str, fast_path: str) -> None:
    if fast_path == "on":  # the router's, and both peers' (the gateway's and the phone's)
        assert "router: fast path attached: tc ingress of eth0 (peers -> router)" in output
        assert output.count("; fast path attached: tc ingress of eth0 (router -> peer)") == 2, output
    else:
        assert "router: fast path off" in output and output.count("; fast path off") == 2


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_demo_passes_every_cell_and_cleans_up(fast_path):
    started = time.monotonic()
    proc, output = run_demo("--fast-path", fast_path)
    print(f"demo --fast-path {fast_path} took {time.monotonic() - started:.1f}s")
    assert_passed(proc, output)
    assert_fast_paths(output, fast_path)


def test_two_demos_at_once_pass_and_a_kept_lab_comes_down_with_the_printed_command_alone():
    """--upstream routed, twice at the same time: one with --fast-path on, one with --keep, whose printed
    command then takes down its lab and nothing else (a namespace named like a demo's stays)."""
    stranger = "6bed4demo-0-stranger"  # looks like a demo's, but no demo recorded it
    pyroute2_netns.create(stranger)
    first = proc = None
    try:
        first = subprocess.Popen([*DEMO, "--upstream", "routed", "--fast-path", "on"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        proc, output = run_demo("--keep", "--upstream", "routed", command=VENV_DEMO, timeout=180)
        first_output, _ = first.communicate(timeout=180)
        assert_passed(first, first_output)
        assert_fast_paths(first_output, "on")
        assert_passed(proc, output, kept=True)
        kept = demo_namespaces(proc.pid)
        assert len(kept) >= 7 and all(f"ip netns exec {name} bash" in output for name in kept)
        logdir = Path(output.split("logs are in ", 1)[1].split("\n", 1)[0])
        assert (logdir / "router.log").exists()
        command = output.split("take it all down with:\n", 1)[1].strip()
        assert command == f"{VENV_DEMO[0]} demo --down"  # the full path: works also when the venv is not on PATH
        down = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
        assert down.returncode == 0 and f"6bed4demo-{proc.pid}" in down.stdout, down.stdout + down.stderr
        assert demo_namespaces(proc.pid) == [] and not logdir.exists()
        assert stranger in pyroute2_netns.listnetns()
    finally:
        if first is not None and first.poll() is None:
            first.send_signal(signal.SIGINT)  # the demo cleans up after itself
            first.communicate(timeout=60)
        pyroute2_netns.remove(stranger)
        for name in demo_namespaces(proc.pid) if proc is not None else []:
            pyroute2_netns.remove(name)


def test_demo_interrupted_cleans_up_and_says_so():
    proc = subprocess.Popen([*DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(demo_namespaces(proc.pid)) < 8:
        time.sleep(0.1)
    assert demo_namespaces(proc.pid), "the demo never built its lab"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "cleaned up" in output
    assert demo_namespaces(proc.pid) == []
