"""The systemd units shipped in contrib/ (the example configurations: tests/unit/test_config.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNITS = ["6bed4router.service", "6bed4peer.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify_without_warnings(unit, tmp_path):
    verify = shutil.which("systemd-analyze")
    assert verify, "systemd-analyze is missing: .ci/run installs systemd"
    text = (CONTRIB / "systemd" / unit).read_text()
    # point ExecStart at the programs of this installation (verify checks they exist)
    text = text.replace("/usr/local/bin/", str(Path(sys.executable).parent) + "/")
    (tmp_path / unit).write_text(text)
    result = subprocess.run([verify, "verify", "--man=no", str(tmp_path / unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_hardened(unit):
    settings = dict(
        line.split("=", 1) for line in (CONTRIB / "systemd" / unit).read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    allowed = {"CAP_NET_ADMIN", "CAP_NET_RAW"} | ({"CAP_BPF", "CAP_PERFMON"} if unit == "6bed4router.service" else set())
    assert set(settings["CapabilityBoundingSet"].split()) <= allowed

