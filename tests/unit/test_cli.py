"""The command lines: `6bed4 addr` and 6bed4router option parsing (no root, no devices)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sixbed4 import cli, cliutil
from sixbed4.core import addr, icmp6
from sixbed4.core.router import MasqRule
from sixbed4.peer import cli as peer_cli
from sixbed4.router import cli as router_cli

SRC = str(Path(__file__).resolve().parents[2] / "src")


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def run_main(main, argv) -> int:
    """main() returns an exit code or raises SystemExit (argparse); give the code either way."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch):
    """A usage error must fail before the router touches any device: starting it fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("run_router must not be reached")

    monkeypatch.setattr(router_cli, "run_router", forbidden)


# --- 6bed4 addr ------------------------------------------------------------------------


def test_addr_decode_worked_example(capsys):
    assert run_main(cli.main, ["addr", "2001:db8:9:10:c433:6407:9c40:8001"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    fields = dict(line.split(None, 1) for line in out.out.splitlines())
    assert fields["prefix"] == "2001:db8:9:10::/64"
    assert fields["ipv4"] == "198.51.100.7"
    assert fields["port"] == "40000"
    assert fields["lanid"] == "1"
    assert fields["/114"] == "2001:db8:9:10:c433:6407:9c40:8000/114"
    assert "note" not in fields


def test_addr_decode_router_address(capsys):
    assert run_main(cli.main, ["addr", "2001:db8:9:10:c000:201:64be:0"]) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert (fields["ipv4"], fields["port"], fields["lanid"]) == ("192.0.2.1", "25790", "0")


def test_addr_decode_port0_notes_host_address(capsys):
    assert run_main(cli.main, ["addr", "2001:db8:9:10:c433:6407:0:1"]) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["port"] == "0"
    assert "port 0" in fields["note"]


def test_addr_decode_non_unicast_notes(capsys):
    assert run_main(cli.main, ["addr", "2001:db8:9:10:7c00:1:fa0:c001"]) == 0  # 127.0.0.1:4000
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["ipv4"] == "127.0.0.1"
    assert "not unicast" in fields["note"]


def test_addr_encode_worked_example(capsys):
    argv = ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100.7", "--port", "40000"]
    assert run_main(cli.main, argv) == 0
    out = capsys.readouterr()
    assert out.out == "2001:db8:9:10:c433:6407:9c40:8001\n"
    assert out.err == ""


@pytest.mark.parametrize("lanid,expected", [("0", "8000"), ("2", "8002"), ("0x3fff", "bfff")])
def test_addr_encode_lanid(capsys, lanid, expected):
    argv = ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100.7", "--port", "40000",
            "--lanid", lanid]
    assert run_main(cli.main, argv) == 0
    assert capsys.readouterr().out == f"2001:db8:9:10:c433:6407:9c40:{expected}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["addr", "not-an-address"],
        ["addr", "2001:db8::1", "--port", "4"],
        ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100.7"],
        ["addr", "--prefix", "2001:db8:9::/48", "--ipv4", "198.51.100.7", "--port", "1"],
        ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100", "--port", "1"],
        ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100.7", "--port", "0"],
        ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100.7", "--port", "65536"],
        ["addr", "--prefix", "2001:db8:9:10::/64", "--ipv4", "198.51.100.7", "--port", "1", "--lanid", "0x4000"],
        ["nosuchcommand"],
        [],
    ],
)
def test_addr_usage_errors(capsys, argv):
    assert run_main(cli.main, argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("6bed4")


# --- 6bed4router: usage errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,words",
    [
        (["-l", "192.0.2.1", "-L", "2001:db8::/40"], ["-L", "/40"]),
        (["-l", "192.0.2.1", "-L", "2001:db8::1/32"], ["-L", "beyond"]),
        (["-l", "192.0.2.1", "-L", "2001:db8:9:10::/65"], ["-L", "/65"]),
        (["-l", "192.0.2.1", "-L", "garbage"], ["-L", "garbage"]),
        (["-l", "192.0.2.1", "-L", "2001:db8:9:10::"], ["-L", "length"]),
        (["-l", "300.1.2.3"], ["-l", "300.1.2.3"]),
        (["-l", "192.0.2"], ["-l"]),
        (["-l", "127.0.0.1"], ["-l", "127.0.0.1"]),
        (["-l", "0.0.0.0"], ["-l"]),
        (["-l", "224.0.0.1"], ["-l"]),
        (["-l", "192.0.2.1", "-t", "0:5"], ["0:5"]),
        (["-l", "192.0.2.1", "-t", "5:3"], ["5:3"]),
        (["-l", "192.0.2.1", "-u", "70000"], ["70000"]),
        (["-l", "192.0.2.1", "-s", "ssh"], ["ssh"]),
        (["-l", "192.0.2.1", "-t", "1:2:3"], ["1:2:3"]),
        (["-l", "192.0.2.1", "--bogus"], ["--bogus"]),
        (["-l", "192.0.2.1", "-Z"], ["-Z"]),
        ([], ["-l"]),
        (["-L", "2001:db8:9:10::/64"], ["-l"]),
        (["-l", "192.0.2.1", "-n", "xyz"], ["xyz"]),
        (["-l", "192.0.2.1", "-R", "2001::/8"], ["-R"]),
        (["-l", "192.0.2.1", "-R", "2001:db8::/12"], ["-R"]),
        (["-l", "192.0.2.1", "-x", "0"], ["-x"]),
        (["-l", "192.0.2.1", *[f"-R2001:db8:{n + 1:x}::/48" for n in range(37)]], ["-R", "at most 36"]),
        (["-l", "192.0.2.1", "--port", "99999"], ["--port"]),
        (["-l", "192.0.2.1", "--bind", "1.2.3"], ["--bind"]),
        (["-l", "192.0.2.1", "-m", "nonsense", "-t", "22"], ["nonsense"]),
        (["-l", "192.0.2.1", "--config", "/nonexistent/6bed4router.toml"], ["/nonexistent/6bed4router.toml"]),
    ],
)
def test_router_usage_error_one_line_exit_2(capsys, argv, words):
    assert run_main(router_cli.main, argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("6bed4router: ")
    for word in words:
        assert word in lines[0]


def test_router_bad_config_setting(tmp_path, capsys):
    config = tmp_path / "router.toml"
    config.write_text('v4listen = "192.0.2.1"\nv6prefix = "2001:db8::/40"\n')
    assert run_main(router_cli.main, ["--config", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "/40" in lines[0]
    config.write_text('v4listen = "192.0.2.1"\nno_such_thing = 1\n')
    assert run_main(router_cli.main, ["--config", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "no_such_thing" in lines[0]


@pytest.mark.parametrize("argv", [["-l", "192.0.2.1", "-L", "2001:db8::/40"], ["-L", "2001:db8:9:10::/64"],
                                  ["-l", "192.0.2.1", "-t", "9:1"], ["-l", "192.0.2.1", "--what"]])
def test_router_module_usage_error_without_root(argv):
    """As a program: exit code 2, one line, nothing on stdout, before any device is touched."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "sixbed4.router.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("6bed4router: ")


# --- 6bed4router: settings ------------------------------------------------------------------


def settings(argv):
    return router_cli.settings_from_args(router_cli.build_parser().parse_args(argv))


def test_settings_worked_example():
    s = settings(["-l", "192.0.2.1", "-L", "2001:db8:9:10::/64"])
    assert s.config.prefix == v6("2001:db8:9:10::")[:8]
    assert s.config.ipv4 == bytes((192, 0, 2, 1))
    assert s.config.port == 25790
    assert s.config.address == v6("2001:db8:9:10:c000:201:64be:0")
    assert s.bind == ("192.0.2.1", 25790)
    assert s.config.masquerade == () and s.config.routes == ()


def test_settings_default_prefix_and_netid():
    assert settings(["-l", "192.0.2.1"]).config.prefix == v6("fc64:bed:c000:201::")[:8]
    assert settings(["-l", "192.0.2.1", "-n", "abc"]).config.prefix == v6("fc64:abc:c000:201::")[:8]
    assert settings(["-l", "192.0.2.1", "-L", "2001:db8:9::/48", "-n", "77"]).config.prefix \
        == v6("2001:db8:9:77::")[:8]
    assert settings(["-l", "192.0.2.1", "-L", "2001:db8::/32"]).config.prefix == v6("2001:db8:c000:201::")[:8]


def test_settings_xlate_and_bind():
    assert settings(["-l", "192.0.2.1", "-x", "4000"]).bind == ("127.0.0.1", 4000)
    s = settings(["-l", "192.0.2.1", "-x", "4000"])
    assert s.config.ipv4 == bytes((192, 0, 2, 1)) and s.config.port == 25790  # -l still in addresses
    assert settings(["-l", "192.0.2.1", "--bind", "0.0.0.0"]).bind == ("0.0.0.0", 25790)


def test_settings_routes():
    s = settings(["-l", "192.0.2.1", "-R", "2001:db8:ffff::/48", "-R", "2001:db8:eeee::1/128"])
    assert s.config.routes == ((v6("2001:db8:ffff::"), 48), (v6("2001:db8:eeee::1"), 128))


def test_settings_masquerade_order():
    s = settings(["-l", "192.0.2.1", "-L", "2001:db8:9:10::/64", "-t", "80", "-m", "2001:db8::22", "-t", "22",
                  "-u", "5000:5010", "-i", "-m", "2001:db8::33", "-s", ":100", "-t", "8000:"])
    router = v6("2001:db8:9:10:c000:201:64be:0")
    host22, host33 = v6("2001:db8::22"), v6("2001:db8::33")
    assert s.config.masquerade == (
        MasqRule(icmp6.PROTO_TCP, 80, 80, router),  # before any -m: the router's own address
        MasqRule(icmp6.PROTO_TCP, 22, 22, host22),
        MasqRule(icmp6.PROTO_UDP, 5000, 5010, host22),
        MasqRule(icmp6.PROTO_ICMPV6, 0, 0, host22),
        MasqRule(icmp6.PROTO_SCTP, 1, 100, host33),
        MasqRule(icmp6.PROTO_TCP, 8000, 65535, host33),
    )


@pytest.mark.parametrize(
    "text,expected",
    [("22", (22, 22)), ("1:1024", (1, 1024)), (":80", (1, 80)), ("8000:", (8000, 65535)), ("65535", (65535, 65535)),
     (":", (1, 65535))],
)
def test_parse_port_range(text, expected):
    assert router_cli.parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "5:3", "a", "1:b", "", "-1", "1:2:3", "0:10"])
def test_parse_port_range_errors(text):
    with pytest.raises(cliutil.UsageError) as info:
        router_cli.parse_port_range(text, "--tcp")
    assert str(info.value).startswith(f"--tcp {text!r}: ")


def test_masquerade_rules_default_host():
    router = addr.encode(v6("2001:db8:9:10::")[:8], bytes((192, 0, 2, 1)), 25790)
    assert router_cli.masquerade_rules([("udp", "53", "-u")], router) == (MasqRule(icmp6.PROTO_UDP, 53, 53, router),)
    with pytest.raises(addr.AddressError, match="^-m 'not-v6' is not an IPv6 address$"):
        router_cli.masquerade_rules([("host", "not-v6", "-m"), ("tcp", "22", "-t")], router)


@pytest.mark.parametrize("port", ["25790", "4000"])
def test_peer_refuses_a_routers_port_as_its_own(capsys, port):
    """A router never serves a peer at its service port (RFC 6324 loops run through it)."""
    assert run_main(peer_cli.main, ["-s", "192.0.2.1", "--router-port", "4000", "-p", port]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("6bed4peer: -p " + port)
