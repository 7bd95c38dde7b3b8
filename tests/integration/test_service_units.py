"""The systemd units shipped in contrib/ (as the package installs them: tests/integration/test_package.py;
the example configurations: tests/unit/test_config.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sixbed4.core.watchdog import STALL_LIMIT
from sixbed4.peer.daemon import HOOK_TIMEOUT

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNITS = ["6bed4router.service", "6bed4peer.service", "6bed4-host-setup.service"]


def settings(unit: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (CONTRIB / "systemd" / unit).read_text().splitlines()
                if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify_without_warnings(unit, tmp_path):
    verify = shutil.which("systemd-analyze")
    assert verify, "systemd-analyze is missing: .ci/run installs systemd"
    text = (CONTRIB / "systemd" / unit).read_text()
    # point ExecStart at the programs of this installation (verify checks they exist)
    text = text.replace("/usr/bin/6bed4", str(Path(sys.executable).parent / "6bed4"))
    (tmp_path / unit).write_text(text)
    result = subprocess.run([verify, "verify", "--man=no", str(tmp_path / unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_hardened(unit):
    s = settings(unit)
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict" and s["ProtectHome"] == "yes"
    # the daemons' kernel fast paths load and attach their programs with bpf(), which @system-service has not
    extra = " bpf" if unit in ("6bed4router.service", "6bed4peer.service") else ""
    assert s["SystemCallFilter"] == "@system-service" + extra and s["SystemCallArchitectures"] == "native"
    assert "ProtectKernelTunables" not in s  # the daemons write their device's sysctls
    caps = set(s["CapabilityBoundingSet"].split())
    if unit == "6bed4-host-setup.service":
        assert caps == {"CAP_NET_ADMIN"}
        return
    assert s["Type"] == "notify" and s["Restart"] == "on-failure" and s["ExecReload"] == "+/bin/kill -HUP $MAINPID"
    # systemd's watchdog (core.watchdog): a watchdog kill is a failure, so Restart=on-failure starts it again.
    # Longer than a stall the daemon lives through: the peer's hook holds its data path up to 2 x HOOK_TIMEOUT.
    watchdog = float(s["WatchdogSec"].removesuffix("s"))
    assert STALL_LIMIT < watchdog and "WatchdogSignal" not in s  # SIGABRT: faulthandler's tracebacks
    if unit == "6bed4peer.service":
        assert watchdog >= 2 * HOOK_TIMEOUT
    else:
        assert s["TimeoutAbortSec"] == "5s"  # a hung anycast router does not wait 90 s for its SIGKILL
    # root only to open /dev/net/tun and bind; then --user: CAP_NET_ADMIN alone (io.service.drop_privileges)
    assert s["ExecStart"].endswith(" --user _sixbed4") and "User" not in s and "DynamicUser" not in s
    # the kernel fast paths (loaded before --user), and the router's proxy ND packet socket
    fast = {"CAP_BPF", "CAP_PERFMON"} if unit != "6bed4-host-setup.service" else set()
    router = {"CAP_NET_RAW"} if unit == "6bed4router.service" else set()
    assert caps == {"CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID"} | fast | router
    assert s["DevicePolicy"] == "closed" and s["DeviceAllow"] == "/dev/net/tun rw"


def test_host_setup_runs_at_boot_before_the_router_and_undoes_at_stop():
    s = settings("6bed4-host-setup.service")
    assert s["Type"] == "oneshot" and s["RemainAfterExit"] == "yes"
    assert s["After"] == "network-online.target" and s["Wants"] == "network-online.target"
    assert s["Before"] == "6bed4router.service"
    assert s["ExecStart"] == "/usr/bin/6bed4 host-setup apply --config /etc/sixbed4/host-setup.toml"
    assert s["ExecStop"] == "/usr/bin/6bed4 host-setup undo --config /etc/sixbed4/host-setup.toml"
    assert s["RuntimeDirectory"] == "sixbed4"  # the record, /run/sixbed4/host-setup.json (hostsetup.apply)
    assert "6bed4-host-setup.service" in settings("6bed4router.service")["After"]
    assert s["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("unit", UNITS)
def test_the_records_live_where_the_units_let_them_write(unit):
    """host-setup's record and the daemons' undo records (ProtectSystem=strict: only these are writable)."""
    from sixbed4.hostsetup.apply import DEFAULT_STATE_FILE
    from sixbed4.io.undo import RUN_DIR

    s = settings(unit)
    record = DEFAULT_STATE_FILE.parent if unit == "6bed4-host-setup.service" else RUN_DIR
    assert str(record) == "/run/" + s["RuntimeDirectory"]
    assert s["RuntimeDirectoryPreserve"] == "yes"  # a record must outlive the restart after a kill
    if unit != "6bed4-host-setup.service":  # systemd takes back what a killed daemon left, restart or not
        assert s["ExecStopPost"] == f"/usr/bin/6bed4 take-back {unit.removeprefix('6bed4').removesuffix('.service')}"


def syscall_group(name: str) -> set[str]:
    """The system calls of a systemd syscall group such as @system-service, nested groups expanded."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.split()[0])
    calls, todo = set(), [name]
    while todo:
        for item in groups[todo.pop()]:
            if item.startswith("@"):
                todo.append(item)
            else:
                calls.add(item)
    return calls


def test_the_daemons_make_no_system_call_the_units_filter_out(tmp_path):
    """strace the router (fast path, proxy ND, metrics, --user, SIGHUP) and a peer (hook, metrics, --user)
    through a ping: every system call they and the hook make is in the units' SystemCallFilter."""
    from tests.integration import topology
    from tests.netlab import Lab

    filters = {name: settings(unit)["SystemCallFilter"].split() for name, unit in zip(("router", "peer"), UNITS)}
    allowed = {name: set().union(*(syscall_group(item) if item.startswith("@") else {item} for item in items))
               for name, items in filters.items()}
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    traces = {"router": tmp_path / "router.trace", "peer": tmp_path / "peer.trace"}
    with Lab("sc") as lab:
        net = topology.build(lab, ("mob",))
        common = ["--metrics", "127.0.0.1:9640", "--user", "nobody"]
        router = lab.start(net.router, ["strace", "-f", "-qq", "-o", str(traces["router"]), sys.executable, "-m",
                                        "sixbed4.router.cli", "-l", topology.ROUTER_V4, "-L", topology.PREFIX,
                                        "--proxy-nd", "up6", "--fast-path", "on", *common], "router")
        lab.wait_for(lambda: "serving" in lab.log("router"), 20, "router start")
        peer = lab.start(net.clients["mob"].ns, ["strace", "-f", "-qq", "-o", str(traces["peer"]), sys.executable,
                                                 "-m", "sixbed4.peer.cli", "-s", topology.ROUTER_V4, "-r",
                                                 "-x", str(hook), *common], "peer")
        lab.wait_for(lambda: "assigned" in lab.log("peer"), 20, "peer address")
        lab.sh(net.clients["mob"].ns, f"ping -6 -c 2 -i 0.2 {topology.INET6}")
        lab.metrics(net.router, "http://127.0.0.1:9640/metrics")
        lab.metrics(net.clients["mob"].ns, "http://127.0.0.1:9640/metrics")
        daemons = [int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(p.pid)], capture_output=True,
                                      text=True).stdout.split()[0]) for p in (router, peer)]  # strace's child
        for sig in (signal.SIGHUP, signal.SIGTERM):
            for pid in daemons:
                os.kill(pid, sig)
            time.sleep(1.5)
        assert router.wait(10) == 0 and peer.wait(10) == 0
    for name, trace in traces.items():
        calls = set(re.findall(r"^\d+ +([a-z0-9_]+)\(", trace.read_text(), re.M))
        assert "setuid" in calls or "setresuid" in calls  # the trace covers the switch to --user
        assert calls - allowed[name] == set(), name
