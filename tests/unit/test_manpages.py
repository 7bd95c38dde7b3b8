"""The man pages are generated from the code: the committed copies must match it."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from sixbed4 import cli, cliutil, config, manpage
from sixbed4.hostsetup import cli as hostsetup_cli
from sixbed4.peer import daemon as peer_daemon
from sixbed4.router import daemon as router_daemon

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `python -m sixbed4.manpage man` and commit man/"
SIGNAL_TABLES = {"6bed4router": router_daemon.SIGNALS, "6bed4peer": peer_daemon.SIGNALS,
                 "6bed4": hostsetup_cli.PROXY_SIGNALS}
EXIT_TABLES = {"6bed4router": cliutil.DAEMON_EXIT_STATUS, "6bed4peer": cliutil.DAEMON_EXIT_STATUS,
               "6bed4": cli.EXIT_STATUS}


def rendered(filename: str) -> str:
    """The page as man shows it (plain text, 80 columns)."""
    return subprocess.run(["man", "-l", str(ROOT / "man" / filename)], capture_output=True, text=True, check=True,
                          env={"MANWIDTH": "200", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}).stdout


def section(text: str, title: str) -> str:
    return re.search(rf"^{title}\n(.*?)(?=^\S)", text, re.M | re.S).group(1)


@pytest.mark.parametrize("filename", sorted(manpage.pages()))
def test_committed_page_matches_the_code(filename):
    committed = ROOT / "man" / filename
    assert committed.exists(), f"man/{filename} is missing: {REGENERATE}"
    assert committed.read_text() == manpage.pages()[filename], f"man/{filename} drifted from the code: {REGENERATE}"


def test_every_page_is_installed_with_the_package():
    import tomllib

    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert sorted(data_files["share/man/man8"]) == sorted(f"man/{name}" for name in manpage.pages())


@pytest.mark.parametrize("filename", sorted(manpage.pages()))
def test_page_renders_without_warnings(filename):
    result = subprocess.run(["man", "--warnings", "-l", str(ROOT / "man" / filename)], capture_output=True,
                            text=True, env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("filename", sorted(manpage.pages()))
def test_page_lists_every_long_option(filename):
    name = filename.removesuffix(".8")
    module = manpage.PROGRAMS[name][0]
    parser = __import__(module, fromlist=["build_parser"]).build_parser()
    text = (ROOT / "man" / filename).read_text()
    for action in parser._actions:  # noqa: SLF001
        for flag in action.option_strings:
            assert flag.replace("-", "\\-") in text, f"{flag} missing from {filename}"


@pytest.mark.parametrize("name", sorted(manpage.PROGRAMS))
def test_page_has_the_operators_sections(name):
    text = rendered(f"{name}.8")
    titles = re.findall(r"^([A-Z][A-Z ]+)$", text, re.M)
    daemon = name != "6bed4"
    assert titles[-7 if daemon else -6:] == ["CONFIGURATION", "SIGNALS", *(["ENVIRONMENT"] if daemon else []),
                                             "EXIT STATUS", "FILES", "METRICS", "SEE ALSO"]
    if daemon:  # what systemd hands the daemons: the notify socket and the watchdog
        for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            assert variable in section(text, "ENVIRONMENT")
    see_also = section(text, "SEE ALSO")
    assert f"{name}(8)" not in see_also  # not itself
    for other in set(manpage.PROGRAMS) - {name}:
        assert f"{other}(8)" in see_also
    for unit in ("6bed4router.service", "6bed4peer.service", "6bed4-host-setup.service"):
        assert unit in see_also
    signals = section(text, "SIGNALS")
    for signum in SIGNAL_TABLES[name]:
        assert signal.Signals(signum).name in signals
    exits = section(text, "EXIT STATUS")
    for code in EXIT_TABLES[name]:
        assert re.search(rf"^\s+{code}\s", exits, re.M), code
    assert f"{config.CONFIG_DIR}/" in section(text, "FILES")


@pytest.mark.parametrize("name", ["6bed4router", "6bed4peer"])
def test_configuration_lists_every_key(name):
    parser = __import__(manpage.PROGRAMS[name][0], fromlist=["build_parser"]).build_parser()
    keys = section(rendered(f"{name}.8"), "CONFIGURATION")
    for key, (action, flag) in config.long_options(parser).items():
        if not flag.startswith("--no-"):
            assert re.search(rf"^\s+{re.escape(key)} = ", keys, re.M), key
