"""Anycast without root: the shared options and their fingerprint, the router's anycast options,
BIRD's configurations (parsed by the real BIRD), the health state and its /ready, `6bed4 anycast`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sixbed4 import cli, cliutil
from sixbed4.anycast import agreement, birdconf, health
from sixbed4.anycast.bird import check_config
from sixbed4.io.metrics import CountersCollector, serve_metrics
from sixbed4.core.stats import Counters
from sixbed4.router import cli as router_cli

BASE = ["-l", "192.0.2.1", "-L", "2001:db8:9:10::/64", "--anycast-table", "6464"]


def settings(*extra: str):
    return router_cli.settings_from_args(router_cli.build_parser().parse_args([*BASE, *extra]))


def shared(*extra: str) -> dict:
    s = settings(*extra)
    return agreement.shared_options(s.config, s.anycast.prefixes)


# --- what routers must share ---------------------------------------------------


def test_default_announcement_is_the_listen_address_and_the_served_prefix():
    assert settings().anycast.prefixes == ("192.0.2.1/32", "2001:db8:9:10::/64")
    assert settings().anycast.table == 6464 and settings().anycast.drain == 2.0


@pytest.mark.parametrize("extra", [
    ["-R", "2001:db8:77::/48"], ["--port", "25791"], ["-t", "80"], ["-m", "2001:db8:9:10::11", "-u", "53"],
    ["-i"], ["--anycast-prefix", "192.0.2.0/24", "--anycast-prefix", "2001:db8:9::/48"],
])
def test_each_shared_option_changes_the_fingerprint(extra):
    assert agreement.fingerprint(shared(*extra)) != agreement.fingerprint(shared())


@pytest.mark.parametrize("extra", [
    ["--bind", "0.0.0.0"], ["-x", "8888"], ["--tun-name", "other"], ["--proxy-nd", "eth0"],
    ["--metrics", "127.0.0.1:1"], ["--anycast-table", "100"], ["--anycast-drain", "0"], ["--no-prefix-route"],
])
def test_local_options_do_not_change_the_fingerprint(extra):
    assert agreement.fingerprint(shared(*extra)) == agreement.fingerprint(shared())


def test_the_listen_address_and_prefix_are_shared():
    other = router_cli.settings_from_args(router_cli.build_parser().parse_args(
        ["-l", "192.0.2.2", "-L", "2001:db8:9:11::/64", "--anycast-table", "6464"]))
    assert agreement.differences({"a": shared(), "b": agreement.shared_options(other.config, other.anycast.prefixes)}) == [
        '--anycast-prefix differs (a: ["192.0.2.1/32", "2001:db8:9:10::/64"], b: ["192.0.2.2/32", "2001:db8:9:11::/64"])',
        '-l differs (a: "192.0.2.1", b: "192.0.2.2")',
        '-L differs (a: "2001:db8:9:10::/64", b: "2001:db8:9:11::/64")',
    ]


def test_agreeing_routers_have_no_differences():
    assert agreement.differences({"a": shared("-R", "2001:db8:77::/48"), "b": shared("-R", "2001:db8:77::/48")}) == []


def test_fingerprint_fits_a_route_metric_and_a_community():
    assert 0 < agreement.fingerprint(shared()) < 2**31


# --- the router's anycast options ---------------------------------------------


def test_covering_prefixes_may_be_announced_instead():
    s = settings("--anycast-prefix", "192.0.2.0/24", "--anycast-prefix", "2001:db8:9::/48")
    assert s.anycast.prefixes == ("192.0.2.0/24", "2001:db8:9::/48")


@pytest.mark.parametrize("extra, message", [
    (["--anycast-prefix", "198.51.100.0/24"], "covers neither -l 192.0.2.1 nor the served 2001:db8:9:10::/64"),
    (["--anycast-prefix", "2001:db8:8::/48"], "covers neither"),
    (["--anycast-prefix", "192.0.2.1/24"], "has host bits set"),
    (["-d", "tun7"], "not -d"),
])
def test_bad_anycast_combinations_are_usage_errors(extra, message):
    with pytest.raises(cliutil.UsageError, match=message):
        settings(*extra)


def test_anycast_prefix_needs_a_table():
    args = router_cli.build_parser().parse_args(["-l", "192.0.2.1", "--anycast-prefix", "192.0.2.0/24"])
    with pytest.raises(cliutil.UsageError, match="needs --anycast-table"):
        router_cli.settings_from_args(args)


@pytest.mark.parametrize("argv", [
    ["--anycast-table", "254"], ["--anycast-table", "0"], ["--anycast-table", "main"],
    ["--anycast-table", "4294967296"], ["--anycast-drain", "-1"], ["--anycast-drain", "nan"],
])
def test_bad_anycast_values_are_one_line_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        router_cli.build_parser().parse_args(["-l", "192.0.2.1", *argv])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- BIRD's configurations -----------------------------------------------------------


def speaker(**changes) -> birdconf.Speaker:
    values = dict(local_as=64512, router_id="10.64.0.11",
                  neighbors=(birdconf.Neighbor("10.64.0.1", 64500), birdconf.Neighbor("2001:db8:64::1", 64500)),
                  prefixes=("192.0.2.1/32", "2001:db8:9:10::/64"), table=6464)
    values.update(changes)
    return birdconf.Speaker(**values)


def test_router_host_config_learns_the_table_and_exports_it_with_the_fingerprint():
    text = birdconf.router_host(speaker())
    check_config(text)  # the real BIRD parses it
    assert text.count("kernel table 6464;") == 2 and text.count("learn;") == 2
    assert "export none" in text and "bgp_large_community.add((64512, 25790, krt_metric));" in text
    assert "protocol bgp upstream_10_64_0_1 from sixbed4_upstream" in text
    assert "protocol bgp upstream_2001_db8_64__1 from sixbed4_upstream" in text
    assert "bfd on;" in text and "min rx interval 100 ms;" in text and "multiplier 3;" in text


def test_upstream_config_accepts_only_the_anycast_prefixes_and_merges_paths():
    routers = (birdconf.Neighbor("10.64.0.11", 64512), birdconf.Neighbor("10.64.0.12", 64512),
               birdconf.Neighbor("2001:db8:64::11", 64512))
    text = birdconf.upstream(speaker(local_as=64500, router_id="10.64.0.1", neighbors=routers))
    check_config(text)
    assert text.count("merge paths on;") == 2
    assert "if net ~ [ 192.0.2.1/32 ] then accept;" in text and "if net ~ [ 2001:db8:9:10::/64 ] then accept;" in text
    assert text.count("import filter sixbed4_accept_v4; export none;") == 2


def test_without_bfd_the_shortest_bgp_hold_time():
    text = birdconf.router_host(speaker(bfd_interval_ms=0))
    check_config(text)
    assert "bfd" not in text.replace("--bfd", "") and "hold time 3;" in text


def test_bird_refuses_a_broken_config():
    with pytest.raises(Exception, match="BIRD refuses the configuration"):
        check_config("protocol bgp {")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bird_config_command_from_the_routers_own_options(capsys):
    code, out, err = run_cli(["anycast", "bird-config", "--as", "64512", "--neighbor", "10.64.0.1", "--neighbor",
                              "2001:db8:64::1", "--neighbor-as", "64500", "--router-id", "10.64.0.11", "--", *BASE],
                             capsys)
    assert code == 0, err
    assert out == birdconf.router_host(speaker(log="syslog"))


@pytest.mark.parametrize("argv, message", [
    (["--router-id", "10.64.0.11", "--neighbor", "10.64.0.1", "--", "-l", "192.0.2.1"], "no --anycast-table"),
    (["--router-id", "10.64.0.11", "--neighbor", "10.64.0.1", "--", *BASE], "no IPv6 neighbour"),
    (["--router-id", "192.0.2.1", "--neighbor", "10.64.0.1", "--neighbor", "::1", "--", *BASE], "is the anycast"),
    (["--router-id", "10.64.0.11", "--neighbor", "10.64.0.1", "--neighbor", "::1"], "after `--`"),
    (["--neighbor", "10.64.0.1", "--neighbor", "::1", "--bfd-interval", "-5", "--router-id", "10.0.0.1", "--", *BASE],
     "--bfd-interval"),
])
def test_bird_config_command_errors(argv, message, capsys):
    code, _out, err = run_cli(["anycast", "bird-config", "--as", "64512", "--neighbor-as", "64500", *argv], capsys)
    assert code == 2 and message in err, err


# --- health ------------------------------------------------------------------------


class FakeTable:
    table = 6464

    def __init__(self):
        self.calls = []

    def add(self):
        self.calls.append("add")

    def remove(self):
        self.calls.append("remove")


def make_health(up: dict, drain: float = 0.0, forwarding=lambda: None):
    table = FakeTable()
    h = health.Health(shared(), {1: "the TUN device 6bed4", 2: "uplink eth0"}, lambda index: up[index], table,
                      ("192.0.2.1/32", "2001:db8:9:10::/64"), drain, forwarding)
    return h, table


def test_announced_only_while_serving_and_every_link_is_up():
    up = {1: True, 2: True}
    h, table = make_health(up)
    assert h.report()[0] is False and h.report()[1]["state"] == "starting" and table.calls == []
    h.update()
    assert h.report()[0] is True and table.calls == ["add"]
    up[2] = False
    h.update()
    ready, details = h.report()
    assert not ready and details["state"] == "uplink eth0 is down" and details["announced"] == []
    assert table.calls == ["add", "remove"]
    h.update()  # no change, no netlink
    assert table.calls == ["add", "remove"]
    up[2] = True
    h.update()
    assert table.calls == ["add", "remove", "add"] and h.report()[1]["announced"] == ["192.0.2.1/32", "2001:db8:9:10::/64"]
    h.close()
    assert table.calls[-1] == "remove" and not h.report()[0]


@pytest.mark.parametrize("flags, up", [(0x1 | 0x40, True), (0x1, False), (0x40, False), (0, False), (None, False)])
def test_a_link_serves_when_up_and_with_carrier(flags, up):
    assert health.running(flags) is up


def test_a_router_whose_kernel_does_not_forward_is_not_serving():
    """It would answer RSs and /ready, and forward nothing: no announcement, /ready 503 until forwarding is on."""
    problem = {"now": "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0; see 6bed4 host-setup)"}
    h, table = make_health({1: True, 2: True}, forwarding=lambda: problem["now"])
    h.update()
    assert table.calls == [] and h.report() == (False, h.report()[1]) and h.report()[1]["state"] == problem["now"]
    problem["now"] = None
    h.update()
    assert table.calls == ["add"] and h.report()[0] is True


def test_forwarding_is_read_from_the_kernel(monkeypatch):
    values = {"net.ipv6.conf.all.forwarding": "0"}
    monkeypatch.setattr(health.netlink, "read_sysctl", lambda key: values[key])
    assert "forwarding is off" in health.forwarding_problem()
    values["net.ipv6.conf.all.forwarding"] = "1"
    assert health.forwarding_problem() is None


def test_never_announced_while_a_link_is_down_at_start():
    h, table = make_health({1: True, 2: False})
    h.update()
    assert table.calls == [] and h.report()[1]["state"] == "uplink eth0 is down"


def test_a_clean_stop_withdraws_then_serves_for_the_drain_time():
    h, table = make_health({1: True, 2: True}, drain=0.2)
    h.update()
    stopped = threading.Event()
    h.drain(stopped.set)
    assert table.calls == ["add", "remove"] and not stopped.is_set()
    assert h.report()[1]["state"] == "draining" and not h.report()[0]
    h.update()  # the links are fine, but a draining router is not announced again
    assert table.calls == ["add", "remove"]
    assert stopped.wait(2)


def test_a_second_signal_stops_at_once():
    h, _table = make_health({1: True, 2: True}, drain=60)
    h.update()
    stops = []
    h.drain(lambda: stops.append(1))
    h.drain(lambda: stops.append(2))
    assert stops == [2]


def test_not_announced_means_no_drain():
    h, table = make_health({1: True, 2: False}, drain=60)
    h.update()
    stops = []
    h.drain(lambda: stops.append(1))
    assert stops == [1] and table.calls == []


# --- /ready and `6bed4 anycast check` -------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ready_server():
    servers = []

    def start(report):
        port = free_port()
        servers.append(serve_metrics(("127.0.0.1", port), CountersCollector("sixbed4_router", Counters()),
                                     ready=report))
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_ready_is_200_while_serving_and_503_otherwise(ready_server):
    state = {"ready": True}
    url = ready_server(lambda: (state["ready"], {"ready": state["ready"], "shared": {}}))
    with urllib.request.urlopen(f"{url}/ready") as response:
        assert response.status == 200 and json.load(response)["ready"] is True
    state["ready"] = False
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{url}/ready")
    assert exc.value.code == 503 and json.load(exc.value)["ready"] is False
    assert b"sixbed4_router_udp_in_total" in urllib.request.urlopen(f"{url}/metrics").read()


def report_of(ready: bool, *extra: str):
    s = settings(*extra)
    h = health.Health(agreement.shared_options(s.config, s.anycast.prefixes), {}, lambda index: True)
    h.state = "serving" if ready else "uplink eth0 is down"
    return h.report


def test_check_passes_when_all_serve_and_agree(ready_server, capsys):
    urls = [ready_server(report_of(True)), ready_server(report_of(True))]
    code, out, _err = run_cli(["anycast", "check", *urls], capsys)
    assert code == 0 and "all 2 routers serve and agree" in out


def test_check_names_the_option_that_differs_and_a_router_that_does_not_serve(ready_server, capsys):
    urls = [ready_server(report_of(True)), ready_server(report_of(True, "-R", "2001:db8:77::/48")),
            ready_server(report_of(False))]
    code, out, _err = run_cli(["anycast", "check", *urls], capsys)
    assert code == 1
    assert f"problem: {urls[2]}: not serving (uplink eth0 is down)" in out
    assert '-R differs (' in out and '["2001:db8:77::/48"]' in out


def test_check_reports_a_router_that_does_not_answer(capsys):
    code, out, _err = run_cli(["anycast", "check", f"127.0.0.1:{free_port()}"], capsys)
    assert code == 1 and "no answer from http://127.0.0.1:" in out and "/ready" in out


def test_bird_config_help_is_on_the_umbrella_command():
    result = subprocess.run([sys.executable, "-m", "sixbed4.cli", "anycast", "bird-config", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--anycast-table" in result.stdout


README = Path(__file__).resolve().parents[2] / "README.md"
ROUTER_OPTIONS = ["--", "-l", "192.0.2.1", "-L", "2001:db8:9:10::/64", "--anycast-table", "6464"]


@pytest.mark.parametrize("argv", [
    ["--as", "64512", "--neighbor", "10.64.0.1", "--neighbor", "2001:db8:64::1", "--neighbor-as", "64500",
     "--router-id", "10.64.0.11", *ROUTER_OPTIONS],
    ["--upstream", "--as", "64500", "--neighbor", "10.64.0.11", "--neighbor", "10.64.0.12", "--neighbor",
     "2001:db8:64::11", "--neighbor", "2001:db8:64::12", "--neighbor-as", "64512", "--router-id", "10.64.0.1",
     *ROUTER_OPTIONS],
])
def test_readme_shows_what_its_bird_config_commands_write(argv, capsys):
    code, out, err = run_cli(["anycast", "bird-config", *argv], capsys)
    assert code == 0, err
    readme = README.read_text()
    assert " ".join(argv[:4]) in readme.replace(" \\\n    ", " ")
    assert f"```\n{out}```" in readme
