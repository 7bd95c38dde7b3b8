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


def without_temporary_addresses(snapshot: dict) -> dict:
    """`ip -6 addr` without the kernel's temporary (privacy) addresses: each is random, and undo gets new ones."""
    lines, kept = snapshot["addr"].splitlines(), []
    for line in lines:
        if " temporary " in line:
            continue
        if line.strip().startswith("valid_lft") and kept and kept[-1] is None:
            continue
        kept.append(line)
    return dict(snapshot, addr="\n".join(line for line in kept if line is not None))


def test_mngtmpaddr_address_moves_without_the_flag_and_undo_restores_it(seed_a, tmp_path):
    """The kernel takes mngtmpaddr only on a /64: the moved /128 goes without it, its temporary addresses
    go with the /64, undo brings the /64 back with the flag (and the kernel makes temporary addresses again)."""
    s = seed_a
    state = str(tmp_path / "host-setup.json")
    server = seedlab.SERVERS[0]
    s.lab.sh(s.vm, f"sysctl -qw net.ipv6.conf.eth0.use_tempaddr=2 && ip -6 addr del {server}/64 dev eth0 "
                   f"&& ip -6 addr add {server}/64 dev eth0 mngtmpaddr")
    s.lab.wait_for(lambda: " temporary " in s.lab.sh(s.vm, "ip -6 addr show dev eth0").stdout, 5, "a temporary address")
    before = without_temporary_addresses(s.snapshot())

    applied = host_setup(s, "apply", "--on-uplink", state=state)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"ip -6 addr add {server}/128 dev eth0 nodad\n" in applied.stdout and "mngtmpaddr is dropped" in applied.stdout
    addresses = s.lab.sh(s.vm, "ip -6 addr show dev eth0").stdout
    assert f"{server}/128 scope global nodad" in addresses
    assert " temporary " not in addresses and "mngtmpaddr" not in addresses
    assert s.ping(s.inet, server)

    undone = host_setup(s, "undo", state=state)
    assert undone.returncode == 0, undone.stderr
    assert f"{server}/64 scope global mngtmpaddr" in s.lab.sh(s.vm, "ip -6 addr show dev eth0").stdout
    assert_same(before, without_temporary_addresses(s.snapshot()))


def test_uplink_address_shorter_than_64_stays_and_peers_are_reached_beside_it(seed_a, tmp_path):
    s = seed_a
    state = str(tmp_path / "host-setup.json")
    server = seedlab.SERVERS[0]
    other = seedlab.SERVERS[1]  # added after ::11 again, so that undo, re-adding it, keeps the kernel's order
    s.lab.sh(s.vm, f"ip -6 addr del {server}/64 dev eth0 && ip -6 addr del {other}/64 dev eth0 "
                   f"&& ip -6 addr add {server}/48 dev eth0 && ip -6 addr add {other}/64 dev eth0")
    before = s.snapshot()
    applied = host_setup(s, "apply", "--on-uplink", state=state)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"{server}/48 on eth0 is shorter than /64: it stays" in applied.stdout
    assert f"{server}/48 scope global" in s.lab.sh(s.vm, "ip -6 addr show dev eth0").stdout
    assert "2001:db8:9::/48 dev eth0 proto kernel" in s.lab.sh(s.vm, "ip -6 route").stdout

    router = s.start_router()
    client = s.new_client()
    try:
        assert s.internet_pings_client(client), "internet -> client: the router's /64 wins over the /48 on-link"
        assert s.ping(s.inet, server) and s.ping(s.inet, other)
    finally:
        client.close()
    assert s.lab.stop(router) == 0
    undone = host_setup(s, "undo", state=state)
    assert undone.returncode == 0, undone.stderr
    assert_same(before, s.snapshot())


COLLIDING = "2001:db8:9:10:c433:6407:9c40:8001"  # 198.51.100.7 port 40000 lanid 1: a peer's address


@pytest.mark.parametrize("condition, setup, message", [
    ("ipv6 disabled", "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1", "IPv6 is disabled on eth0"),
    ("colliding address on lo", f"ip -6 addr add {COLLIDING}/128 dev lo",
     f"{COLLIDING} is not in port-0 form"),
])
def test_refusals_change_nothing_and_say_why(seed_a, tmp_path, condition, setup, message):
    s = seed_a
    state = tmp_path / "host-setup.json"
    s.lab.sh(s.vm, setup)
    before = s.snapshot()
    for verb in ("plan", "apply"):
        refused = host_setup(s, verb, "--on-uplink", state=str(state))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"# REFUSED: {message}" in refused.stdout
        assert refused.stderr.startswith(f"6bed4 host-setup: refused, nothing changed: {message}")
        assert refused.stderr.count("\n") == 1
    assert_same(before, s.snapshot())
    assert not state.exists()
