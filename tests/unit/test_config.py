"""The example configuration files in contrib/, read by the programs' own config loaders."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from sixbed4 import cli as umbrella
from sixbed4 import cliutil, config
from sixbed4.core import addr
from sixbed4.peer import cli as peer_cli
from sixbed4.peer.lan import LanSettings
from sixbed4.router import cli as router_cli

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


class HostSetupCli:
    """`6bed4 host-setup` as the other programs' cli modules: build_parser() and settings_from_args()."""

    @staticmethod
    def build_parser():
        parser = umbrella.build_parser()
        commands = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
        return commands.choices["host-setup"]

    @staticmethod
    def settings_from_args(args):
        from sixbed4.hostsetup.cli import _options

        return _options(args)


EXAMPLES = {"router.toml": router_cli, "peer.toml": peer_cli, "host-setup.toml": HostSetupCli}
COMMENTED_SETTING = re.compile(r"^# ?([a-z][a-z0-9-]*\s*=.*)$", re.M)  # "# key = value  # what it does"
SETTING_KEY = re.compile(r"^(?:# ?)?([a-z][a-z0-9-]*)\s*=", re.M)  # the key of a setting, commented out or not


def load(cli, path: Path, *argv: str):
    """(parsed options, settings) as `PROGRAM --config path ARGV` gets them."""
    args = config.parse_with_config(cli.build_parser(), [*argv, "--config", str(path)])
    return args, cli.settings_from_args(args)


EXCLUSIVE = ({"tundev"}, {"anycast-table", "anycast-prefix", "anycast-drain"})  # an announcement needs its own TUN


def uncommented(path: Path, tmp_path: Path, leave: set[str] = EXCLUSIVE[1]) -> Path:
    """A copy of the example with every commented-out setting switched on, except those in `leave`."""

    def switch_on(match: re.Match) -> str:
        key = SETTING_KEY.match(match.group(1)).group(1)
        return match.group(0) if key in leave else match.group(1)

    copy = tmp_path / path.name
    copy.write_text(COMMENTED_SETTING.sub(switch_on, path.read_text()))
    return copy


def test_router_example_gives_the_documented_settings():
    args, settings = load(router_cli, CONTRIB / "router.toml")
    assert settings.bind == ("192.0.2.1", 25790)
    assert settings.config.prefix == addr.parse_prefix64("2001:db8:9:10::/64")
    assert settings.config.address == addr.parse_address("2001:db8:9:10:c000:201:64be:0")
    assert settings.metrics == ("127.0.0.1", 9640)
    assert (settings.tun_name, settings.create_tun, settings.prefix_route) == ("6bed4", True, True)
    assert (settings.user, settings.proxy_nd, settings.config.routes, settings.config.masquerade) == (None, None, (), ())
    assert args.log_level == "info"


def test_peer_example_gives_the_documented_settings():
    args, settings = load(peer_cli, CONTRIB / "peer.toml")
    assert settings.config.router == ("192.0.2.1", 25790)
    assert settings.config.default_route is True
    assert (settings.config.keepalive, settings.config.keepalive_ttl) == (30.0, 3)
    assert settings.bind == ("0.0.0.0", 0)
    assert settings.metrics == ("127.0.0.1", 9641)
    assert (settings.tun_name, settings.create_tun, settings.hook, settings.user) == ("6bed4", True, None, None)
    assert settings.lan is None
    assert args.log_level == "info"


def test_a_lan_gateway_routes_through_the_tunnel_without_r():
    parser = peer_cli.build_parser()
    plain = peer_cli.settings_from_args(parser.parse_args(["-s", "192.0.2.1"]))
    gateway = peer_cli.settings_from_args(parser.parse_args(["-s", "192.0.2.1", "--lan", "lan0"]))
    assert not plain.config.default_route and plain.lan is None
    assert gateway.config.default_route
    assert gateway.lan == LanSettings("lan0", mode="both", inbound="closed", dns=(), state_dir="/var/lib/sixbed4",
                                      dnsmasq="dnsmasq", user=None)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_shows_every_setting_and_each_works(name, tmp_path):
    cli = EXAMPLES[name]
    keys = set(SETTING_KEY.findall((CONTRIB / name).read_text()))
    options = {key for key, (action, flag) in config.long_options(cli.build_parser()).items()
               if not flag.startswith("--no-")}  # a boolean once: prefix-route = false
    assert keys == options
    argv = ["plan"] if cli is HostSetupCli else []
    for leave in EXCLUSIVE:
        load(cli, uncommented(CONTRIB / name, tmp_path, leave), *argv)  # every example value is accepted


def test_uncommented_examples_take_effect(tmp_path):
    _, router = load(router_cli, uncommented(CONTRIB / "router.toml", tmp_path))
    assert router.bind == ("127.0.0.1", 25791) and router.user == "nobody"  # xlate wins over bind
    assert (router.tun_name, router.create_tun, router.prefix_route) == ("tun6", False, True)
    assert router.config.routes == (addr.parse_route("2001:db8:99::/48"),)
    assert [(rule.proto, rule.lo, rule.hi) for rule in router.config.masquerade] == [
        (6, 80, 80), (6, 443, 443), (17, 5000, 5009), (132, 5060, 5060), (58, 0, 0)]
    assert {rule.host for rule in router.config.masquerade} == {addr.parse_address("2001:db8:9:10::30")}
    _, router = load(router_cli, uncommented(CONTRIB / "router.toml", tmp_path, leave=EXCLUSIVE[0]))
    assert (router.anycast.table, router.anycast.prefixes, router.anycast.drain) == (
        6464, ("192.0.2.0/24", "2001:db8:9::/48"), 2.0)
    _, peer = load(peer_cli, uncommented(CONTRIB / "peer.toml", tmp_path))
    assert peer.bind == ("0.0.0.0", 40000) and peer.user == "nobody"
    assert (peer.tun_name, peer.create_tun, peer.hook) == ("tun6", False, "/etc/sixbed4/peer-hook")
    assert peer.lan == LanSettings("br-lan", mode="both", inbound="closed", dns=("self",),
                                   state_dir="/var/lib/sixbed4", dnsmasq="/usr/sbin/dnsmasq", user="nobody")


def test_host_setup_example_gives_the_documented_settings():
    args, options = load(HostSetupCli, CONTRIB / "host-setup.toml", "apply")
    assert (options.uplink, options.prefix_text, options.placement, options.dummy) == (
        "eth0", "2001:db8:9:10::/64", "dummy", "dumbo0")
    assert args.state_file is None and args.verb == "apply"


def test_systemd_units_read_the_installed_examples():
    for unit_name, example in (("6bed4router", "router"), ("6bed4peer", "peer"), ("6bed4-host-setup", "host-setup")):
        unit = (CONTRIB / "systemd" / f"{unit_name}.service").read_text()
        assert f"--config /etc/sixbed4/{example}.toml" in unit
        assert (CONTRIB / f"{example}.toml").read_text().startswith(f"# /etc/sixbed4/{example}.toml ")


# --- the command line overrides the file, option by option ---------------------------------

# two different valid values for every option that takes one: (in the file, on the command line)
SAMPLES = {
    "v4listen": ("192.0.2.1", "192.0.2.2"), "v6prefix": ("2001:db8:7::/48", "2001:db8:9:10::/64"),
    "v6route": ("2001:db8:99::/48", "2001:db8:98::/48"), "netid": ("abc", "def"), "tundev": ("tun6", "tun7"),
    "xlate": ("25791", "25792"), "port": ("25790", "25793"), "bind": ("0.0.0.0", "192.0.2.9"),
    "tun-name": ("sixa", "sixb"), "proxy-nd": ("eth0", "eth1"), "masqhost": ("2001:db8::30", "2001:db8::31"),
    "tcp": ("80", "443"), "udp": ("53", "5000:5009"), "sctp": ("5060", "5061"), "metrics": ("127.0.0.1:9640", "[::1]:9641"),
    "user": ("nobody", "daemon"), "log-level": ("debug", "warning"), "v4server": ("192.0.2.1", "192.0.2.2"),
    "router-port": ("25790", "4000"), "keepalive": ("30,3", "10,5"), "exthook": ("/bin/true", "/bin/false"),
    "uplink": ("eth0", "eth1"), "prefix": ("2001:db8:9:10::/64", "2001:db8:9:11::/64"),
    "local": ("2001:db8:9:10::80", "2001:db8:9:10::81"), "dummy": ("dumbo0", "dumbo1"),
    "state-file": ("/run/a.json", "/run/b.json"), "fast-path": ("off", "on"),
    "lan": ("br-lan", "eth1"), "lan-mode": ("routed", "nat66"), "lan-inbound": ("open", "closed"),
    "lan-dns": ("self", "2001:db8::53"),
    "state-dir": ("/var/lib/a", "/var/lib/b"), "dnsmasq": ("/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"),
    "anycast-table": ("6464", "100"),
    "anycast-prefix": ("192.0.2.0/24", "2001:db8:9::/48"), "anycast-drain": ("2", "0.5"),
}
PROGRAMS = {"6bed4router": router_cli, "6bed4peer": peer_cli, "6bed4 host-setup": HostSetupCli}
FIRST = {HostSetupCli: ["plan"]}  # the arguments before the options


def toml_value(text: str) -> str:
    return f'"{text}"'


def option_cases():
    for program, cli in PROGRAMS.items():
        for key, (action, flag) in config.long_options(cli.build_parser()).items():
            if not flag.startswith("--no-"):
                yield pytest.param(cli, key, action, flag, id=f"{program} {key}")


@pytest.mark.parametrize("cli, key, action, flag", list(option_cases()))
def test_command_line_overrides_the_file_for_every_option(cli, key, action, flag, tmp_path):
    """The file sets the option one way, the command line the other way: the command line wins, and
    the result is what the command line alone gives."""
    parser = cli.build_parser()
    first = FIRST.get(cli, [])
    if action.nargs == 0:
        if isinstance(action, argparse.BooleanOptionalAction):  # both ways round
            pairs = [(f"{key} = true", [f"--no-{key}"]), (f"{key} = false", [flag])]
        else:  # a switch that only turns something on (--icmp, --on-uplink): nothing to turn off
            other = {"on-uplink": "--loopback", "loopback": "--on-uplink", "icmp": "-t"}
            extra = ["80"] if key == "icmp" else []
            pairs = [(f"{key} = true", [other[key], *extra])]
    else:
        assert key in SAMPLES, f"add two sample values for --{key} to SAMPLES"
        in_file, on_line = SAMPLES[key]
        pairs = [(f"{key} = {toml_value(in_file)}", [flag, on_line])]
    for file_line, argv in pairs:
        path = tmp_path / "settings.toml"
        path.write_text(file_line + "\n")
        merged = config.parse_with_config(parser, [*first, "--config", str(path), *argv])
        alone = parser.parse_args([*first, *argv])
        for dest in {"on-uplink": ("placement", "dummy"), "loopback": ("placement", "dummy")}.get(key, (action.dest,)):
            assert getattr(merged, dest) == getattr(alone, dest), (file_line, argv, dest)


def test_lists_from_the_command_line_replace_the_files(tmp_path):
    path = tmp_path / "router.toml"
    path.write_text('v4listen = "192.0.2.1"\nv6route = ["2001:db8:99::/48", "2001:db8:98::/48"]\n'
                    'tcp = ["80", "443"]\n')
    _, from_file = load(router_cli, path)
    assert len(from_file.config.routes) == 2 and len(from_file.config.masquerade) == 2
    _, replaced = load(router_cli, path, "-R", "2001:db8:97::/48", "-u", "53")
    assert replaced.config.routes == (addr.parse_route("2001:db8:97::/48"),)
    assert [(rule.proto, rule.lo) for rule in replaced.config.masquerade] == [(17, 53)]  # the file's TCP rules: gone
    _, kept = load(router_cli, path, "-L", "2001:db8:9:10::/64")  # other options leave the file's lists alone
    assert kept.config.routes == from_file.config.routes


def test_booleans_from_the_file_can_be_turned_off(tmp_path):
    peer = tmp_path / "peer.toml"
    peer.write_text('v4server = "192.0.2.1"\ndefault-route = true\n')
    assert load(peer_cli, peer)[1].config.default_route is True
    assert load(peer_cli, peer, "--no-default-route")[1].config.default_route is False
    router = tmp_path / "router.toml"
    router.write_text('v4listen = "192.0.2.1"\nno-prefix-route = true\n')  # the old key still works
    assert load(router_cli, router)[1].prefix_route is False
    assert load(router_cli, router, "--prefix-route")[1].prefix_route is True


def test_usage_shows_what_is_required(capsys):
    for cli, required in ((router_cli, "-l IPV4"), (peer_cli, "-s IPV4")):
        usage = cli.build_parser().format_usage()
        prog = cli.build_parser().prog
        assert usage == f"usage: {prog} {required} [OPTION]...\n       {prog} --config FILE [OPTION]...\n"
    usage = HostSetupCli.build_parser().format_usage()
    assert "6bed4 host-setup {plan,apply,undo} --uplink IF --prefix PREFIX/64 [OPTION]..." in usage
    assert "6bed4 host-setup {plan,apply,undo} --config FILE [OPTION]..." in usage


@pytest.mark.parametrize("cli, argv, message", [
    (router_cli, [], "no public IPv4 address given: use -l IPV4 (or v4listen in the --config file)"),
    (peer_cli, [], "no router given: use -s IPV4"),
    (HostSetupCli, ["plan"], "give --uplink IF and --prefix PREFIX/64 (on the command line or in the --config file)"),
])
def test_what_is_required_comes_from_the_command_line_or_the_file(cli, argv, message, tmp_path):
    with pytest.raises(cliutil.UsageError, match=re.escape(message)):
        cli.settings_from_args(config.parse_with_config(cli.build_parser(), argv))
    path = tmp_path / "settings.toml"
    path.write_text({router_cli: 'v4listen = "192.0.2.1"', peer_cli: 'v4server = "192.0.2.1"',
                     HostSetupCli: 'uplink = "eth0"\nprefix = "2001:db8:9:10::/64"'}[cli] + "\n")
    cli.settings_from_args(config.parse_with_config(cli.build_parser(), [*argv, "--config", str(path)]))


@pytest.mark.parametrize("line, message", [
    ("port = 99999", "config file {}: port: port 99999 is out of range 1..65535"),
    ('log-level = "loud"', "config file {}: log-level: 'loud' is not one of debug, info, warning, error"),
    ("prefix-route = 1", "config file {}: prefix-route must be true or false"),
    ("v4listen = [[1]]", "config file {}: v4listen must be a string or number"),
    ("bogus = 1", "config file {}: unknown setting 'bogus'"),
])
def test_bad_values_in_the_file_are_one_line_naming_the_file(line, message, tmp_path):
    path = tmp_path / "router.toml"
    path.write_text(line + "\n")
    with pytest.raises(cliutil.UsageError) as info:
        config.parse_with_config(router_cli.build_parser(), ["--config", str(path)])
    assert str(info.value) == message.format(path)


# --- SIGHUP: reading the file again ---------------------------------------------------------


def test_reload_applies_the_log_level_and_names_what_waits_for_a_restart(tmp_path, caplog):
    path = tmp_path / "peer.toml"
    path.write_text('v4server = "192.0.2.1"\nlog-level = "info"\n')
    parser = peer_cli.build_parser()
    argv = ["--config", str(path), "-p", "4000"]
    args = config.parse_with_config(parser, argv)
    running = peer_cli.settings_from_args(args)
    reload = config.Reload(parser, peer_cli.settings_from_args, argv, args)
    assert not reload.due()
    reload.request()
    assert reload.due() and not reload.due()

    path.write_text('v4server = "192.0.2.7"\nlog-level = "debug"\nexthook = "/bin/true"\nport = 5000\n')
    root = logging.getLogger()
    before = root.level
    try:
        with caplog.at_level(logging.INFO):
            new = reload.check(running, live=frozenset({"hook"}))
            assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)
    assert new.hook == "/bin/true" and new.bind == ("0.0.0.0", 4000)  # -p on the command line still wins
    assert "log level debug, hook changed; changed, but in effect only after a restart: config.router_ipv4" \
        in caplog.text

    path.write_text("port = 0\n")  # wrong: the daemon runs on unchanged
    caplog.clear()
    assert reload.check(running) is None
    assert "running on unchanged" in caplog.text
