"""The daemons' life as a service manager sees it: readiness, SIGHUP, what they watch, what they leave."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6EchoReply

from sixbed4.io import undo
from tests.integration import topology
from tests.integration.sixclient import SixClient
from tests.netlab import Lab


@pytest.fixture
def net():
    with Lab("lc") as lab:
        yield topology.build(lab, ("mob",))


def start(net, ns: str, module: str, *args: str, name: str, env: tuple[str, ...] = ()):
    """A daemon as `python -m module args` in `ns`, with extra environment variables (NAME=value)."""
    return net.lab.start(ns, ["env", *env, sys.executable, "-m", module, *args], name)


def serving(net, proc, name: str):
    net.lab.wait_for(lambda: "serving" in net.lab.log(name) or proc.poll() is not None, 10, "router start")
    assert proc.poll() is None, net.lab.log(name)


def pings(client: SixClient, seq: int) -> bool:
    client.ping(topology.INET6, seq=seq)
    try:
        reply = client.recv_matching(lambda p: p.haslayer(ICMPv6EchoReply) and p[ICMPv6EchoReply].seq == seq,
                                     timeout=3)
    except OSError:
        return False
    return reply is not None


class NotifySocket:
    """A stand-in for systemd's notification socket: collects what a daemon sends with sd_notify()."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)  # a path: reachable from every network namespace

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


# --- readiness ---------------------------------------------------------------------------------


def test_peer_is_ready_once_it_has_its_address(net, tmp_path):
    """READY=1 waits for the router's answer: a unit ordered after 6bed4peer.service finds the address there."""
    lab, ns = net.lab, net.clients["mob"].ns
    notify = NotifySocket(tmp_path / "notify")
    try:
        peer = start(net, ns, "sixbed4.peer.cli", "-s", topology.ROUTER_V4, name="peer",
                     env=(f"NOTIFY_SOCKET={notify.path}",))
        first = notify.receive(10)
        assert first == f"STATUS=soliciting router {topology.ROUTER_V4}", lab.log("peer")
        assert notify.receive(2) is None  # no router yet: not ready
        net.start_router()
        ready = notify.receive(10)
        address = lab.sh(ns, "ip -6 -o addr show dev 6bed4 scope global").stdout.split()[3].split("/")[0]
        assert ready == f"READY=1\nSTATUS=address {address} from router {topology.ROUTER_V4}"
        assert Lab.stop(peer) == 0
    finally:
        notify.close()


def test_router_is_ready_when_it_serves(net, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    try:
        router = start(net, net.router, "sixbed4.router.cli", "-l", topology.ROUTER_V4, "-L", topology.PREFIX,
                       name="router", env=(f"NOTIFY_SOCKET={notify.path}",))
        ready = notify.receive(10)
        assert ready == f"READY=1\nSTATUS=serving {topology.PREFIX} on UDP {topology.ROUTER_V4}:25790"
        assert net.lab.has_link(net.router, "6bed4")
        router.send_signal(signal.SIGHUP)  # systemctl reload: RELOADING=1, then READY=1 again
        assert notify.receive(5) == "RELOADING=1" and notify.receive(5) == "READY=1"
        assert Lab.stop(router) == 0
    finally:
        notify.close()


# --- SIGHUP ------------------------------------------------------------------------------------


def test_router_sighup_reloads_the_log_level_and_keeps_forwarding(net, tmp_path):
    lab = net.lab
    settings = tmp_path / "router.toml"
    settings.write_text(f'v4listen = "{topology.ROUTER_V4}"\nv6prefix = "{topology.PREFIX}"\nlog-level = "info"\n')
    router = lab.python(net.router, "sixbed4.router.cli", "--config", str(settings), name="router")
    serving(net, router, "router")
    client = SixClient(lab, net.clients["mob"].ns)
    try:
        client.solicit()
        assert pings(client, 1)
        settings.write_text(settings.read_text().replace('"info"', '"warning"') + 'v6route = ["2001:db8:77::/48"]\n')
        router.send_signal(signal.SIGHUP)
        line = lab.wait_for(lambda: [l for l in lab.log("router").splitlines() if "SIGHUP" in l], 5, "reload")[0]
        assert line.endswith(f"SIGHUP: reloaded {settings}: log level warning; "
                             "changed, but in effect only after a restart: config.routes")
        assert router.poll() is None and pings(client, 2)
        router.send_signal(signal.SIGTERM)
        assert router.wait(10) == 0
    finally:
        client.close()
    after = lab.log("router").split("SIGHUP: reloaded")[1]
    assert "SIGTERM received" not in after and " INFO " not in after  # at warning level now


def test_router_sighup_without_a_config_file_logs_and_runs_on(net):
    router = net.start_router()
    router.send_signal(signal.SIGHUP)
    net.lab.wait_for(lambda: "SIGHUP: no --config file to reload; running on unchanged" in net.lab.log("router"),
                     5, "the reload's log line")
    assert router.poll() is None
    assert Lab.stop(router) == 0


def test_peer_sighup_hands_the_offers_to_a_new_hook(net, tmp_path):
    lab, ns = net.lab, net.clients["mob"].ns
    record = tmp_path / "calls"
    hooks = {}
    for name in ("a", "b"):
        hooks[name] = tmp_path / f"hook-{name}"
        hooks[name].write_text(f'#!/bin/sh\necho "{name} $2" >> {record}\n')
        hooks[name].chmod(0o755)
    settings = tmp_path / "peer.toml"
    settings.write_text(f'v4server = "{topology.ROUTER_V4}"\nexthook = "{hooks["a"]}"\n')
    net.start_router()
    peer = lab.python(ns, "sixbed4.peer.cli", "--config", str(settings), name="peer")
    calls = lambda: record.read_text().splitlines() if record.exists() else []  # noqa: E731
    lab.wait_for(lambda: "a add-range-offer" in calls(), 10, "hook a's offer")
    address = lab.sh(ns, "ip -6 -o addr show dev 6bed4 scope global").stdout.split()[3]
    settings.write_text(settings.read_text().replace(str(hooks["a"]), str(hooks["b"])))
    peer.send_signal(signal.SIGHUP)
    lab.wait_for(lambda: "b add-range-offer" in calls(), 5, "hook b's offer")
    assert calls() == ["a add-range-offer", "a del-offers", "b add-range-offer"]
    assert peer.poll() is None
    assert lab.sh(ns, "ip -6 -o addr show dev 6bed4 scope global").stdout.split()[3] == address
    assert Lab.stop(peer) == 0
    assert calls()[-1] == "b del-offers"


# --- watching, and what stays behind ---------------------------------------------------------


def test_router_exits_when_its_proxy_nd_interface_is_deleted(net):
    """Proxy ND on the IPv6 side (up6), not the IPv4 uplink: deleting it ends the router, exit 1."""
    router = net.start_router("--proxy-nd", "up6")
    net.lab.sh(net.router, "ip link del up6")
    started = time.monotonic()
    assert router.wait(5) == 1
    print(f"exit {time.monotonic() - started:.2f}s after the proxy-ND interface was deleted")
    errors = [line for line in net.lab.log("router").splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "the proxy ND interface up6 was deleted" in errors[0], errors
    assert not net.lab.has_link(net.router, "6bed4")


def test_existing_device_keeps_nothing_after_kills_restarts_and_a_clean_stop(net):
    """-d: a SIGKILLed router leaves its addresses, route and sysctls; the next start takes them back from its
    undo record before it sets up again, or `6bed4 take-back router` does (the unit's ExecStopPost=), and a
    clean stop leaves the device as it was, however many SIGKILLs and restarts came before."""
    lab, ns = net.lab, net.router
    lab.sh(ns, "ip tuntap add dev tun6 mode tun")
    sysctls = "addr_gen_mode accept_ra autoconf"

    def settings() -> str:
        return lab.sh(ns, " ".join(f"sysctl -n net.ipv6.conf.tun6.{leaf};" for leaf in sysctls.split())).stdout

    def ours() -> list[str]:  # (the kernel makes a link-local address of its own when addr_gen_mode goes back)
        addresses = [line.split()[3] for line in lab.sh(ns, "ip -6 -o addr show dev tun6").stdout.splitlines()]
        routes = lab.sh(ns, "ip -6 route show dev tun6").stdout
        return ([f"address {a}" for a in addresses if a == "fe80::/64" or a.startswith("2001:db8")]
                + [f"route {line.split()[0]}" for line in routes.splitlines() if line.startswith("2001:db8")])

    def link() -> str:
        return lab.sh(ns, "ip -o link show dev tun6").stdout.split("<")[1].split(">")[0]

    before = settings(), link()
    assert before == ("0\n1\n1\n", "POINTOPOINT,MULTICAST,NOARP")  # down
    record = undo_record(lab, ns, "router", "tun6")
    for run, sig in enumerate((signal.SIGKILL, signal.SIGKILL, signal.SIGTERM)):
        router = net.start_router("-d", "tun6", name=f"router-{run}")
        assert "address 2001:db8:9:10:c000:201:64be:0/128" in ours() and f"route {topology.PREFIX}" in ours()
        assert settings().split() == ["1", "0", "0"]
        assert ("took back 7 change(s) that a killed router" in lab.log(f"router-{run}")) == (run == 1)
        assert Lab.stop(router, sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        if sig == signal.SIGKILL:
            assert ours() and record.exists(), "a SIGKILL leaves them (nothing runs to remove them)"
        if run == 1:
            assert f"took back 7 change(s) that a killed router (pid {router.pid}) left on tun6" in take_back(lab, ns)
            assert ours() == [] and (settings(), link()) == before and not record.exists()
    assert ours() == [] and (settings(), link()) == before
    assert not record.exists()
    assert lab.has_link(ns, "tun6")  # the device itself was there before: it stays


def take_back(lab: Lab, ns: str) -> str:
    """What `6bed4 take-back router` says in `ns`."""
    return lab.sh(ns, f"{sys.executable} -m sixbed4.cli take-back router").stdout


def undo_record(lab: Lab, ns: str, daemon: str, tun: str) -> Path:
    """Where a daemon in `ns` keeps its undo record (io/undo.py)."""
    inode = lab.sh(ns, "stat -L -c %i /proc/self/ns/net").stdout.strip()
    return undo.RUN_DIR / f"{daemon}-{inode}-{tun}.undo"


def test_a_second_daemon_for_the_same_tun_device_is_refused(net):
    """Its start would otherwise take back the first one's changes as a killed predecessor's."""
    lab, ns = net.lab, net.router
    first = net.start_router()
    second = lab.python(ns, "sixbed4.router.cli", "-l", topology.ROUTER_V4, "-L", topology.PREFIX, "--port", "25791",
                        name="second")
    assert second.wait(10) == 2
    assert (f"another router (pid {first.pid}) runs with the TUN device 6bed4 in this network namespace"
            in lab.log("second"))
    assert take_back(lab, ns) == ""  # nor does take-back touch a running router's changes
    assert first.poll() is None and "2001:db8:9:10:c000:201:64be:0" in lab.sh(ns, "ip -6 addr show dev 6bed4").stdout
