"""Operating the router: metrics, config file, unprivileged user, start-up errors."""

from __future__ import annotations

import signal

import pytest
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.netlab import ROOT, Lab


@pytest.fixture(scope="module")
def net(fast_path):
    with Lab("op") as lab:
        yield topology.build(lab, ("mob",), fast_path)


def test_metrics_count_traffic_and_drops_by_reason(net):
    proc = net.start_router("--metrics", "127.0.0.1:9640", name="metrics")
    client = SixClient(net.lab, net.clients["mob"].ns)
    try:
        client.solicit()
        client.send(IPv6(src="2001:db8:9:10::1234:1", dst=topology.INET6) / ICMPv6EchoRequest())  # spoofed
        client.send(b"")  # keepalive
        client.ping(topology.INET6)
        client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))

        def scraped_after_the_slow_path_caught_up():
            """With the fast path the echo reply can come back before the Python path read the keepalive."""
            samples = net.lab.metrics(net.router, "http://127.0.0.1:9640/metrics")
            return samples if samples[("sixbed4_router_keepalives_total", ())] else None

        samples = net.lab.wait_for(scraped_after_the_slow_path_caught_up, 5, "the keepalive counted")
    finally:
        client.close()
        Lab.stop(proc)
    assert samples[("sixbed4_router_rs_received_total", ())] == 1
    assert samples[("sixbed4_router_ra_sent_total", ())] == 1
    assert samples[("sixbed4_router_keepalives_total", ())] == 1
    assert samples[("sixbed4_router_drops_total", (("reason", "bad_source"),))] == 1
    assert samples[("sixbed4_router_drops_total", (("reason", "multicast"),))] == 0
    assert samples[("sixbed4_router_to_tun_total", ())] >= 1
    assert samples[("sixbed4_router_to_udp_total", ())] >= 1
    info = next(dict(labels) for (name, labels) in samples if name == "sixbed4_router_info")
    assert info["address"] == "2001:db8:9:10:c000:201:64be:0" and info["prefix"] == "2001:db8:9:10::/64"
    assert info["fast_path"].startswith("tc ingress of eth1") if net.fast_path == "on" else info["fast_path"] == "off"
    page = (ROOT / "man" / "6bed4router.8").read_text().replace("\\-", "-")
    for name in {name for name, _labels in samples}:  # the man page's METRICS name every family scraped
        assert name in page, name


def test_ready_says_503_while_the_kernel_does_not_forward_ipv6(net):
    """A router whose host forwards nothing answers RSs and relays, but serves no native IPv6: not ready."""
    proc = net.start_router("--metrics", "127.0.0.1:9640", name="ready")

    def ready() -> tuple[int, dict]:
        return net.lab.ready(net.router, "http://127.0.0.1:9640/ready")

    try:
        assert ready()[0] == 200
        net.lab.sysctl(net.router, "net.ipv6.conf.all.forwarding", 0)
        code, state = net.lab.wait_for(lambda: (r := ready())[0] == 503 and r, 5, "/ready 503")
        assert state["state"].startswith("IPv6 forwarding is off")
        net.lab.sysctl(net.router, "net.ipv6.conf.all.forwarding", 1)
        net.lab.wait_for(lambda: ready()[0] == 200, 5, "/ready 200 again")
    finally:
        net.lab.sysctl(net.router, "net.ipv6.conf.all.forwarding", 1)
        Lab.stop(proc)
    log = net.lab.log("ready")
    assert "not serving: IPv6 forwarding is off" in log and "serving again" in log


def test_config_file_is_equivalent_to_options_and_cli_overrides(net, tmp_path):
    config = tmp_path / "router.toml"
    config.write_text('v4listen = "192.0.2.1"\nv6prefix = "2001:db8:7::/48"\nnetid = "beef"\nlog-level = "debug"\n')
    proc = net.lab.python(net.router, "sixbed4.router.cli", "--config", str(config), "-L", topology.PREFIX,
                          name="configured")
    try:
        net.lab.wait_for(lambda: "serving" in net.lab.log("configured") or proc.poll() is not None, what="start")
        assert "serving 2001:db8:9:10::/64" in net.lab.log("configured")  # -L on the command line wins
    finally:
        assert Lab.stop(proc) == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ('v4listen = "192.0.2.1"\nbogus = 1\n', "unknown setting 'bogus'"),
        ('v4listen = "192.0.2.1"\nv6prefix = "2001:db8::/40"\n', "/40 is not supported"),
        ("v4listen = [\n", "config file"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(net, tmp_path, content, message):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    proc = net.lab.python(net.router, "sixbed4.router.cli", "--config", str(config), name="badconfig")
    assert proc.wait(10) == 2
    output = net.lab.log("badconfig").strip()
    assert message in output and len(output.splitlines()) == 1
    assert not net.lab.has_link(net.router, "6bed4")


def test_runs_as_unprivileged_user_and_keeps_forwarding(net):
    proc = net.start_router("--user", "nobody", name="nobody")
    client = SixClient(net.lab, net.clients["mob"].ns)
    try:
        net.lab.wait_for(lambda: "running as user nobody" in net.lab.log("nobody"), what="privilege drop")
        status = dict(line.split(":", 1) for line in open(f"/proc/{proc.pid}/status"))
        assert status["Uid"].split()[0] == "65534"
        assert int(status["CapEff"], 16) == 1 << 12  # CAP_NET_ADMIN only
        client.solicit()
        client.ping(topology.INET6, seq=5)
        reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply))
        assert reply[ICMPv6EchoReply].seq == 5
    finally:
        client.close()
        assert Lab.stop(proc) == 0
    assert not net.lab.has_link(net.router, "6bed4")


def test_a_route_for_the_prefix_in_the_way_is_a_clear_error_at_start(net):
    """Another route for the /64 with the metric the router's would have: the kernel says "exists", and
    the router would serve a /64 that is not routed to it; it says so and exits 2, leaving nothing."""
    net.lab.sh(net.router, f"ip -6 route add {topology.PREFIX} dev up6 metric 1024")
    proc = net.lab.python(net.router, "sixbed4.router.cli", "-l", topology.ROUTER_V4, "-L", topology.PREFIX,
                          name="in-the-way")
    try:
        assert proc.wait(10) == 2
        output = net.lab.log("in-the-way").strip()
        assert len(output.splitlines()) == 1, output
        assert f"adding route {topology.PREFIX} via 6bed4: another route for {topology.PREFIX} with metric 1024 " \
               "is in the way" in output
        assert not net.lab.has_link(net.router, "6bed4")
    finally:
        Lab.stop(proc)
        net.lab.sh(net.router, f"ip -6 route del {topology.PREFIX} dev up6 metric 1024")


