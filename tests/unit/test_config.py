"""The example configuration files in contrib/, read by the programs' own config loaders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sixbed4 import config
from sixbed4.core import addr
from sixbed4.peer import cli as peer_cli
from sixbed4.peer.lan import LanSettings
from sixbed4.router import cli as router_cli

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
EXAMPLES = {"router.toml": router_cli, "peer.toml": peer_cli}
COMMENTED_SETTING = re.compile(r"^# ?([a-z][a-z0-9-]*\s*=.*)$", re.M)  # "# key = value  # what it does"
SETTING_KEY = re.compile(r"^(?:# ?)?([a-z][a-z0-9-]*)\s*=", re.M)  # the key of a setting, commented out or not


def load(cli, path: Path):
    """(parsed options, settings) as `PROGRAM --config path` gets them."""
    args = config.parse_with_config(cli.build_parser(), ["--config", str(path)])
    return args, cli.settings_from_args(args)


def uncommented(path: Path, tmp_path: Path) -> Path:
    """A copy of the example with every commented-out setting switched on."""
    copy = tmp_path / path.name
    copy.write_text(COMMENTED_SETTING.sub(r"\1", path.read_text()))
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
    assert gateway.lan == LanSettings("lan0", "both", "/var/lib/sixbed4", "dnsmasq", None)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_shows_every_setting_and_each_works(name, tmp_path):
    cli = EXAMPLES[name]
    keys = set(SETTING_KEY.findall((CONTRIB / name).read_text()))
    options = {flag[2:] for action in cli.build_parser()._actions for flag in action.option_strings  # noqa: SLF001
               if flag.startswith("--")}
    assert keys == options - {"help", "config"}
    load(cli, uncommented(CONTRIB / name, tmp_path))  # every example value is accepted


def test_uncommented_examples_take_effect(tmp_path):
    _, router = load(router_cli, uncommented(CONTRIB / "router.toml", tmp_path))
    assert router.bind == ("127.0.0.1", 25791) and router.user == "nobody"  # xlate wins over bind
    assert (router.tun_name, router.create_tun, router.prefix_route) == ("tun6", False, True)
    assert router.config.routes == (addr.parse_route("2001:db8:99::/48"),)
    assert [(rule.proto, rule.lo, rule.hi) for rule in router.config.masquerade] == [
        (6, 80, 80), (6, 443, 443), (17, 5000, 5009), (132, 5060, 5060), (58, 0, 0)]
    assert {rule.host for rule in router.config.masquerade} == {addr.parse_address("2001:db8:9:10::30")}
    _, peer = load(peer_cli, uncommented(CONTRIB / "peer.toml", tmp_path))
    assert peer.bind == ("0.0.0.0", 40000) and peer.user == "nobody"
    assert (peer.tun_name, peer.create_tun, peer.hook) == ("tun6", False, "/etc/6bed4/peer-hook")
    assert peer.lan == LanSettings("br-lan", "both", "/var/lib/sixbed4", "/usr/sbin/dnsmasq", "nobody")


def test_systemd_units_read_the_installed_examples():
    for program in ("router", "peer"):
        unit = (CONTRIB / "systemd" / f"6bed4{program}.service").read_text()
        assert f"--config /etc/6bed4/{program}.toml" in unit and f"contrib/{program}.toml" in unit
        assert (CONTRIB / f"{program}.toml").read_text().startswith(f"# /etc/6bed4/{program}.toml ")
