"""The Debian package as `./dev deb` builds it, and what it installs, run as shipped.

The package is unpacked (`dpkg -x`) into a scratch root rather than installed, so
that the suite never changes the machine's /usr or /etc (other test runs share
it); its programs run with Debian's python3 and Debian's libraries
(python3-pyroute2, python3-prometheus-client), its units' command lines are run
as written, with systemd's limits (the capability bounding set, no new
privileges) and a /dev/net/tun of mode 0600.  In CI (CI=true, a throwaway
machine) the package is also installed with apt and checked in place.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from sixbed4.demo.scenario import INET6, PREFIX, VM_V4
from tests.integration import seedlab
from tests.netlab import Lab

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
PROGRAMS = ("6bed4router", "6bed4peer", "6bed4")
UNITS = ("6bed4router.service", "6bed4peer.service", "6bed4-host-setup.service")
CONFIGS = ("router.toml", "peer.toml", "host-setup.toml")
UNIT_DIR = "lib/systemd/system"
SITE = "usr/lib/python3/dist-packages"


@pytest.fixture(scope="module")
def tree(package, tmp_path_factory) -> Path:
    """The package's files, unpacked as they would be installed."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg", "-x", str(package), str(root)], check=True)
    return root


def packaged(tree: Path, program: str, *args: str) -> list[str]:
    """argv that runs /usr/bin/PROGRAM of the package as installed: Debian's python3, the package's modules."""
    return ["env", f"PYTHONPATH={tree / SITE}", SYSTEM_PYTHON, str(tree / "usr/bin" / program), *args]


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def unit_command(tree: Path, unit: str, key: str, configs: dict[str, Path]) -> list[str]:
    """The unit's ExecStart (or ExecStop) as written, run from the unpacked package.

    Only what the scratch root changes is replaced: /usr/bin/X runs from the tree,
    /etc/sixbed4/X.toml is the test's copy, and the user _sixbed4 (which the
    package's sysusers file creates at installation) is nobody unless it exists.
    """
    text = (tree / UNIT_DIR / unit).read_text()
    [line] = unit_settings(text)[key]
    argv = shlex.split(line)
    assert argv[0].startswith("/usr/bin/") and (tree / argv[0][1:]).exists(), argv
    user = "_sixbed4" if subprocess.run(["id", "_sixbed4"], capture_output=True).returncode == 0 else "nobody"
    args = []
    for arg in argv[1:]:
        if arg.startswith("/etc/sixbed4/"):
            arg = str(configs[Path(arg).name])
        args.append(user if arg == "_sixbed4" else arg)
    command = packaged(tree, Path(argv[0]).name, *args)
    return as_systemd_starts(text, command)


def as_systemd_starts(unit_text: str, argv: list[str]) -> list[str]:
    """argv under the unit's limits: its CapabilityBoundingSet and NoNewPrivileges (setpriv), and
    a /dev/net/tun of mode 0600 owned by root (in a mount namespace of its own)."""
    settings = unit_settings(unit_text)
    assert settings["NoNewPrivileges"] == ["yes"]
    caps = settings["CapabilityBoundingSet"][0].split()
    bounding = ",".join(["-all", *("+" + cap.removeprefix("CAP_").lower() for cap in caps)])
    script = ("mount -t tmpfs -o mode=0755 tmpfs /dev/net && mknod -m 0600 /dev/net/tun c 10 200 && "
              f'exec setpriv --no-new-privs --bounding-set={bounding} --inh-caps=-all "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


# --- the package file ---------------------------------------------------------------------


def test_lintian_reports_no_errors(package):
    result = subprocess.run(["lintian", "--info", str(package)], capture_output=True, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout


def test_package_holds_programs_units_pages_and_conffiles(package, tmp_path):
    listing = subprocess.run(["dpkg-deb", "-c", str(package)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for program in PROGRAMS:
        assert f"/usr/bin/{program}" in paths
        assert f"/usr/share/man/man8/{program}.8.gz" in paths
    for unit in UNITS:
        assert f"/{UNIT_DIR}/{unit}" in paths
    assert "/usr/lib/sysusers.d/sixbed4.conf" in paths
    subprocess.run(["dpkg-deb", "-e", str(package), str(tmp_path / "control")], check=True)
    conffiles = (tmp_path / "control" / "conffiles").read_text().split()
    assert sorted(conffiles) == sorted(f"/etc/sixbed4/{name}" for name in CONFIGS)
    for name in CONFIGS:  # the examples of the repository, as they are
        assert (ROOT / "contrib" / name).read_text().startswith(f"# /etc/sixbed4/{name} ")

    fields = dict(re.findall(r"^(\S+): (.*)$", (tmp_path / "control" / "control").read_text(), re.M))
    depends = {item.split()[0] for item in fields["Depends"].split(", ")}
    assert {"python3-pyroute2", "python3-prometheus-client", "procps"} <= depends
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert fields["Version"] == version


# --- what it installs ------------------------------------------------------------------------


def test_programs_run_with_debians_python_and_libraries(tree):
    where = subprocess.run(
        packaged(tree, "6bed4", "addr", "2001:db8:9:10:c433:6407:9c40:8001")[:3]
        + ["-c", "import sixbed4, pyroute2, prometheus_client as p; print(sixbed4.__file__, pyroute2.__file__, p.__file__)"],
        capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(tree / SITE))
    assert where[1].startswith("/usr/lib/python3/dist-packages/") and where[2].startswith("/usr/lib/python3/dist-packages/")
    for program in PROGRAMS:
        result = subprocess.run(packaged(tree, program, "--help"), capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: {program} "), result.stderr
    decoded = subprocess.run(packaged(tree, "6bed4", "addr", "2001:db8:9:10:c433:6407:9c40:8001"),
                             capture_output=True, text=True, check=True).stdout
    assert "198.51.100.7" in decoded and "40000" in decoded


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_clean_as_installed(tree, unit, tmp_path):
    """systemd-analyze verify, with /usr/bin/ meaning the unpacked package's (it checks the programs exist)."""
    text = (tree / UNIT_DIR / unit).read_text()
    for key in ("ExecStart", "ExecStop"):
        for line in unit_settings(text).get(key, []):
            program, *args = shlex.split(line)
            assert program.startswith("/usr/bin/") and (tree / program[1:]).is_file()
            for path in (arg for arg in args if arg.startswith("/etc/")):  # the config files the package installs
                assert (tree / path[1:]).is_file()
    copy = tmp_path / unit
    copy.write_text(text.replace("/usr/bin/6bed4", f"{tree}/usr/bin/6bed4"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_man_finds_every_page(tree, program):
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    manpath = str(tree / "usr/share/man")
    found = subprocess.run(["man", "-M", manpath, "-w", program], capture_output=True, text=True, env=env)
    assert found.stdout.strip() == f"{manpath}/man8/{program}.8.gz", found.stderr
    shown = subprocess.run(["man", "--warnings", "-M", manpath, program], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    for section in ("SYNOPSIS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert f"\n{section}\n" in shown.stdout


# --- a reboot, with the units as shipped ---------------------------------------------------


def boot_configs(tree: Path, directory: Path) -> dict[str, Path]:
    """/etc/sixbed4 as an operator leaves it: the shipped examples plus what this lab needs.

    The seed's upstream treats the /64 as on-link, so the router answers ND for it
    (proxy-nd); the lab's kernel has no dummy links (on-uplink); /run is
    `directory/run`, emptied by each reboot.
    """
    extra = {"router.toml": 'proxy-nd = "eth0"\n',
             "host-setup.toml": f'on-uplink = true\nstate-file = "{directory}/run/host-setup.json"\n',
             "peer.toml": ""}
    configs = {}
    for name in CONFIGS:
        configs[name] = directory / name
        configs[name].write_text((tree / "etc/sixbed4" / name).read_text() + extra[name])
    return configs


def boot(s: seedlab.SeedLab, tree: Path, configs: dict[str, Path]):
    """What systemd starts at boot, in its order: host setup (oneshot), then the router; the peer elsewhere."""
    lab = s.lab
    applied = lab.start(s.vm, unit_command(tree, "6bed4-host-setup.service", "ExecStart", configs), "host-setup")
    assert applied.wait(30) == 0, lab.log("host-setup")
    router = lab.start(s.vm, unit_command(tree, "6bed4router.service", "ExecStart", configs), "router")
    lab.wait_for(lambda: "serving" in lab.log("router") or router.poll() is not None, 15, "router start")
    assert router.poll() is None, lab.log("router")
    assert "running as user" in lab.log("router")
    peer = lab.start(s.client, unit_command(tree, "6bed4peer.service", "ExecStart", configs), "peer")
    address = lab.wait_for(lambda: peer_address(s) or peer.poll() is not None, 15, "the peer's address")
    assert peer.poll() is None, lab.log("peer")
    return router, peer, address


def peer_address(s: seedlab.SeedLab) -> str | None:
    out = s.lab.sh(s.client, "ip -6 -o addr show dev 6bed4 scope global", check=False).stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else None


def serves(s: seedlab.SeedLab, address: str) -> bool:
    """The peer reaches the IPv6 Internet through the router, and the Internet reaches the peer."""
    return s.ping(s.client, INET6, count=2) and s.ping(s.inet, address, count=2)


def test_a_reboot_restores_service(tree, tmp_path):
    (tmp_path / "run").mkdir()
    configs = boot_configs(tree, tmp_path)
    # first boot, then power loss: nothing is undone, /run is gone
    with Lab("boot") as lab:
        s = seedlab.build(lab, routed=False)
        router, peer, address = boot(s, tree, configs)
        assert serves(s, address)
        uid = open(f"/proc/{router.pid}/status").read().split("\nUid:")[1].split()[0]
        assert uid != "0"  # --user: after setup the router runs unprivileged
    shutil.rmtree(tmp_path / "run")
    (tmp_path / "run").mkdir()
    # the reboot: the seed's starting point again, and the same units
    with Lab("boot") as lab:
        s = seedlab.build(lab, routed=False)
        start = s.snapshot()
        router, peer, address = boot(s, tree, configs)
        assert serves(s, address)
        # shutdown: the peer and router stop, then the host setup's ExecStop puts the host back
        assert Lab.stop(peer) == 0 and Lab.stop(router) == 0
        undone = lab.start(s.vm, unit_command(tree, "6bed4-host-setup.service", "ExecStop", configs), "undo")
        assert undone.wait(30) == 0, lab.log("undo")
        assert s.snapshot() == start


# --- installed for real (CI: a throwaway machine) --------------------------------------------


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="installs system-wide: CI only (CI=true)")
def test_apt_install_gives_commands_units_and_pages(package):
    """`apt install ./sixbed4_*.deb`, then the commands, units and pages in place; purged afterwards."""
    was_installed = subprocess.run(["dpkg-query", "-W", "sixbed4"], capture_output=True).returncode == 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    subprocess.run(["apt-get", "install", "-y", "-q", str(package)], check=True, env=env, capture_output=True)
    try:
        for program in PROGRAMS:
            result = subprocess.run([f"/usr/bin/{program}", "--help"], capture_output=True, text=True, env=env)
            assert result.returncode == 0, result.stderr
            page = subprocess.run(["man", "-w", program], capture_output=True, text=True, env=env).stdout.strip()
            assert page == f"/usr/share/man/man8/{program}.8.gz"
        units = [f"/{UNIT_DIR}/{unit}" for unit in UNITS]
        result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, env=env)
        assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
        assert subprocess.run(["id", "_sixbed4"], capture_output=True).returncode == 0
        for name in CONFIGS:
            assert Path(f"/etc/sixbed4/{name}").is_file()
    finally:
        if not was_installed:
            subprocess.run(["apt-get", "purge", "-y", "-q", "sixbed4"], env=env, capture_output=True)
