"""The seed's scenario with the real kernel: host-setup plan/apply/undo, the router, proxy ND.

(A) the upstream routes the /64 to the VM's link-local address;
(B) the upstream treats the /64 as on-link: without the proxy the 6bed4 client
    (and own addresses moved to lo) are unreachable, with it they work.
In both, `undo` restores `ip -6 addr`, `ip -6 route` and the IPv6 sysctls byte for byte.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.integration import seedlab
from tests.netlab import Lab

SETUP = ("--uplink", "eth0", "--prefix", seedlab.PREFIX)


@pytest.fixture
def seed_a():
    with Lab("hs") as lab:
        yield seedlab.build(lab, routed=True)


@pytest.fixture
def seed_b():
    with Lab("hs") as lab:
        yield seedlab.build(lab, routed=False)


def host_setup(s: seedlab.SeedLab, verb: str, *extra: str, state: str):
    return s.sixbed4("host-setup", verb, *SETUP, "--state-file", state, *extra)


def assert_same(before: dict, after: dict) -> None:
    for key in before:
        assert after[key] == before[key], f"{key} differs:\n{before[key]}\n---\n{after[key]}"


def test_routed_upstream_seed_scenario(seed_a, tmp_path):
    s = seed_a
    state = str(tmp_path / "host-setup.json")
    before = s.snapshot()

    # plan: the commands an operator can read, nothing changed
    plan = host_setup(s, "plan", "--on-uplink", state=state)
    assert plan.returncode == 0, plan.stderr
    out = plan.stdout
    for line in ("sysctl -w net.ipv6.conf.all.forwarding=1",
                 "sysctl -w net.ipv6.conf.eth0.forwarding=1",
                 "ip -6 addr del 2001:db8:9:10::11/64 dev eth0",
                 "ip -6 addr add 2001:db8:9:10::11/128 dev eth0 nodad",
                 "ip -6 addr add 2001:db8:9:10::30/128 dev eth0 nodad"):
        assert line in out.splitlines()
    assert f"ip -6 route add {seedlab.PREFIX} via {seedlab.VM_LINK_LOCAL} dev" in out
    assert "covers the 6bed4 /64" in out and "route 2001:db8:9:10::/64 dev eth0" in out
    assert "mc_forwarding" in out and "ip_forwarding" in out  # the seed's mistakes, explained
    assert_same(before, s.snapshot())

    # the default (/112 on dumbo0) fails clearly on this kernel and changes nothing
    dummy = host_setup(s, "apply", state=state)
    assert dummy.returncode == 2
    assert "no 'dummy' link type" in dummy.stderr and "--on-uplink" in dummy.stderr
    assert dummy.stderr.count("\n") == 1 and "Traceback" not in dummy.stderr
    assert_same(before, s.snapshot())

    applied = host_setup(s, "apply", "--on-uplink", state=state)
    assert applied.returncode == 0, applied.stderr
    assert "applied" in applied.stdout
    record = json.loads(open(state).read())
    assert record["uplink"] == "eth0" and record["steps"]
    after_apply = s.snapshot()
    addr6 = after_apply["addr"]
    assert "2001:db8:9:10::11/128" in addr6 and "2001:db8:9:10::30/128" in addr6 and "/64 scope global" not in addr6
    assert "2001:db8:9:10::/64" not in after_apply["route"]
    assert "net.ipv6.conf.eth0.forwarding = 1" in after_apply["sysctl"]

    again = host_setup(s, "apply", "--on-uplink", state=state)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert_same(after_apply, s.snapshot())
    assert json.loads(open(state).read()) == record

    router = s.start_router()
    assert "2001:db8:9:10::/64 dev 6bed4" in s.lab.sh(s.vm, "ip -6 route").stdout  # the router's own route
    client = s.new_client()
    try:
        for server in seedlab.SERVERS:
            assert s.ping(s.inet, server), f"internet -> {server}"
        assert s.internet_pings_client(client), "internet -> client"
        assert s.client_pings(client, seedlab.INET6, 1), "client -> internet"
        assert s.client_pings(client, seedlab.SERVERS[0], 2), "client -> ::11"
    finally:
        client.close()
    assert s.lab.stop(router) == 0
    assert "2001:db8:9:10::/64 dev 6bed4" not in s.lab.sh(s.vm, "ip -6 route").stdout

    undone = host_setup(s, "undo", state=state)
    assert undone.returncode == 0, undone.stderr
    assert_same(before, s.snapshot())
    assert not (tmp_path / "host-setup.json").exists()


def test_onlink_upstream_needs_proxy_nd(seed_b, tmp_path):
    s = seed_b
    state = str(tmp_path / "host-setup.json")
    before = s.snapshot()
    applied = host_setup(s, "apply", "--loopback", state=state)
    assert applied.returncode == 0, applied.stderr
    assert "2001:db8:9:10::11/128 scope global" in s.lab.sh(s.vm, "ip -6 addr show dev lo").stdout

    # the router without the proxy: the upstream's Neighbor Solicitations go unanswered
    router = s.start_router()
    client = s.new_client()
    try:
        assert not s.ping(s.inet, seedlab.SERVERS[0], wait=1), "::11 on lo must need the proxy"
        assert not s.internet_pings_client(client, wait=1), "the client must need the proxy"
        assert s.lab.stop(router) == 0

        # the responder on its own, next to the router
        router = s.start_router(name="router2")
        proxy = s.start_proxy("--metrics", "127.0.0.1:9642")
        s.forget_neighbors()
        for server in seedlab.SERVERS:
            assert s.ping(s.inet, server), f"internet -> {server} with 6bed4 proxy-nd"
        assert s.internet_pings_client(client), "internet -> client with 6bed4 proxy-nd"
        assert s.client_pings(client, seedlab.INET6, 1), "client -> internet with 6bed4 proxy-nd"
        # the proxy's socket holds the uplink in all-multicast mode (solicited-node groups of any address)
        assert " allmulti 1 " in s.lab.sh(s.vm, "ip -d link show dev eth0").stdout
        metrics = s.lab.metrics(s.vm, "http://127.0.0.1:9642/metrics")
        assert metrics[("sixbed4_proxynd_na_sent_total", ())] > 0
        assert metrics[("sixbed4_proxynd_drops_total", (("reason", "proxy_port0"),))] == 0
        assert not any(name.startswith("sixbed4_router") for name, _ in metrics)
        assert s.lab.stop(proxy) == 0
        answered = re.search(r"proxy ND counters: ns_received=(\d+) na_sent=(\d+)", s.lab.log("proxy"))
        assert answered and int(answered.group(2)) > 0, s.lab.log("proxy")[-500:]
        assert " allmulti 0 " in s.lab.sh(s.vm, "ip -d link show dev eth0").stdout  # released with the socket
        assert s.lab.stop(router) == 0

        # the responder inside the router
        router = s.start_router("--proxy-nd", "eth0", "--metrics", "127.0.0.1:9640", name="router3")
        s.forget_neighbors()
        assert s.internet_pings_client(client), "internet -> client with --proxy-nd"
        assert s.ping(s.inet, seedlab.SERVERS[1]), "internet -> ::30 with --proxy-nd"
        assert s.client_pings(client, seedlab.INET6, 2), "client -> internet with --proxy-nd"
        assert s.client_pings(client, seedlab.SERVERS[0], 3), "client -> ::11 with --proxy-nd"
        # the upstream learned the VM's MAC for the peer address: the answer had the right link-layer address
        neigh = s.lab.sh(s.upstream, f"ip -6 neigh show {client.address}").stdout
        assert f"lladdr {seedlab.VM_MAC}" in neigh
        # never for an address nobody handles: a port-0 address that is not the host's
        assert not s.ping(s.inet, "2001:db8:9:10::99", wait=1)
        metrics = s.lab.metrics(s.vm, "http://127.0.0.1:9640/metrics")  # the router's and its responder's
        assert metrics[("sixbed4_proxynd_na_sent_total", ())] > 0
        assert metrics[("sixbed4_proxynd_drops_total", (("reason", "proxy_port0"),))] > 0
        assert metrics[("sixbed4_router_relayed_total", ())] == 0 and metrics[("sixbed4_router_to_tun_total", ())] > 0
        assert s.lab.stop(router) == 0
        assert "proxy ND counters" in s.lab.log("router3")
    finally:
        client.close()

    undone = host_setup(s, "undo", state=state)
    assert undone.returncode == 0, undone.stderr
    assert_same(before, s.snapshot())


def test_proxy_nd_errors(seed_a):
    s = seed_a
    missing = s.sixbed4("proxy-nd", "--uplink", "eth9", "--prefix", seedlab.PREFIX)
    assert missing.returncode == 2 and "no interface named eth9" in missing.stderr
    assert "Traceback" not in missing.stderr
    router = s.lab.python(s.vm, "sixbed4.router.cli", "-l", seedlab.VM_V4, "-L", seedlab.PREFIX,
                          "--proxy-nd", "eth9", name="badproxy")
    assert router.wait(10) == 2
    assert "--proxy-nd eth9: no interface named eth9" in s.lab.log("badproxy")
    # the router's TUN device went away with it
    assert not s.lab.has_link(s.vm, "6bed4")


def test_failed_apply_takes_its_changes_back(seed_a, tmp_path):
    """An interface the kernel refuses IPv6 addresses on: the forwarding sysctls already set are restored."""
    s = seed_a
    state = tmp_path / "host-setup.json"
    s.lab.sh(s.vm, "ip link add srv0 type veth peer name srv1 && ip link set srv0 up "
                   "&& sysctl -qw net.ipv6.conf.srv0.disable_ipv6=1")
    before = s.snapshot()
    failed = host_setup(s, "apply", "--dummy", "srv0", state=str(state))
    assert failed.returncode == 1
    assert "ip -6 addr add 2001:db8:9:10::30/112 dev srv0" in failed.stderr
    assert "taken back" in failed.stderr and "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1
    assert_same(before, s.snapshot())
    assert not state.exists()
