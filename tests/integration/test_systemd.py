"""The package's units under a real systemd (Debian 12's), installed and run as an operator would.

systemd is PID 1 of a container (tests/systemd_container.py) in the seed lab's
VM namespace.  The package goes in with dpkg, the settings into /etc/sixbed4
(the shipped files plus what this lab needs, as in test_package.py), and the
units are enabled and started with systemctl.  The peer's unit runs in the home
client's namespace through a drop-in (NetworkNamespacePath=), the one line that
differs from what ships: in real life the peer is another machine.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.integration import seedlab
from tests.integration.test_lan import eth0_global_addresses
from tests.integration.test_package import peer_address, serves
from tests.netlab import Lab
from tests.systemd_container import SystemdContainer

# Run beside the other tests, the container's systemd failed twice in four runs to put a unit's
# stop command into its cgroup (219/CGROUP, "Failed to kill control group: Input/output error"); it
# shares this machine's cgroup (v1) hierarchies with every other test's processes.
pytestmark = pytest.mark.alone

UNITS = "6bed4-host-setup 6bed4router 6bed4peer"
PEER_DROPINS = "/etc/systemd/system/6bed4peer.service.d"


@pytest.fixture(autouse=True)
def _nspawn():
    assert shutil.which("systemd-nspawn"), "systemd-nspawn is missing: ./dev setup installs systemd-container"


def install(box: SystemdContainer, package: Path, s: seedlab.SeedLab, gateway: bool = False) -> None:
    """dpkg -i, the settings for this lab, then enable --now every unit.

    `gateway`: the peer is the gateway of lan0 (`lan = "lan0"`), with the two lines
    its unit's comment gives for that, uncommented in a drop-in (systemctl edit).
    """
    box.write("/root/sixbed4.deb", package.read_bytes())
    # this machine's image comes from Docker, whose policy-rc.d keeps maintainer scripts from starting or
    # stopping anything; a Debian server has none
    box.run("rm -f /usr/sbin/policy-rc.d")
    box.run("DEBIAN_FRONTEND=noninteractive dpkg -i /root/sixbed4.deb", timeout=120)
    assert box.run("id -u _sixbed4", check=False).returncode == 0  # the package's sysusers file
    for name, extra in (("router.toml", 'proxy-nd = "eth0"\n'), ("host-setup.toml", "on-uplink = true\n"),
                        ("peer.toml", 'lan = "lan0"\n' if gateway else "")):
        box.write(f"/etc/sixbed4/{name}", box.path(f"/etc/sixbed4/{name}").read_text() + extra)
    put_peer_into(box, s)
    if gateway:
        unit = box.path("/lib/systemd/system/6bed4peer.service").read_text().splitlines()
        lines = [line[1:] for line in unit if line.startswith(("#CapabilityBoundingSet=", "#StateDirectory="))]
        assert len(lines) == 2, lines
        box.write(f"{PEER_DROPINS}/gateway.conf", "[Service]\n" + "\n".join(lines) + "\n")
    box.run(f"systemctl daemon-reload && systemctl enable --now {UNITS}", timeout=120)
    assert_all_active(box)


def unit_states(box: SystemdContainer) -> list[str]:
    return box.run(f"systemctl is-active {UNITS}", check=False).stdout.split()


def journals(box: SystemdContainer) -> str:
    return "\n".join(box.journal(unit) for unit in UNITS.split())


def assert_all_active(box: SystemdContainer) -> None:
    assert unit_states(box) == ["active"] * 3, journals(box)


def put_peer_into(box: SystemdContainer, s: seedlab.SeedLab) -> None:
    """The peer's unit runs in the lab's home client namespace (a drop-in)."""
    box.write(f"{PEER_DROPINS}/lab.conf", f"[Service]\nNetworkNamespacePath=/run/netns/{s.client}\n")


def stop(box: SystemdContainer) -> None:
    box.run(f"systemctl stop {UNITS}", timeout=60)
    assert unit_states(box) == ["inactive"] * 3, journals(box)


def main_pid(box: SystemdContainer, unit: str) -> int:
    return int(box.show(unit, "MainPID")["MainPID"])


def test_units_start_serve_reload_come_back_from_a_hang_and_stop_clean(package):
    with Lab("sd") as lab:
        s = seedlab.build(lab, routed=False)
        start = s.snapshot()
        with SystemdContainer(f"{lab.tag}-box") as box:
            box.boot(s.vm)
            install(box, package, s)
            router = main_pid(box, "6bed4router")
            assert box.run(f"ps -o user= -p {router}").stdout.strip() == "_sixbed4"
            journal = box.journal("6bed4router")
            assert "fast path attached" in journal, journal  # CAP_BPF, CAP_PERFMON, bpf(2) as the unit grants
            address = lab.wait_for(lambda: peer_address(s), 15, "the peer's address")
            assert serves(s, address)

            # a reload keeps the process; a hang (SIGSTOP) ends in the watchdog's kill and a restart
            for unit in ("6bed4router", "6bed4peer"):
                box.run(f"systemctl reload {unit}")
                lab.wait_for(lambda u=unit: "SIGHUP: reloaded" in box.journal(u), 5, f"{unit} to reload")
            assert main_pid(box, "6bed4router") == router
            box.run(f"kill -STOP {router}")
            lab.wait_for(lambda: main_pid(box, "6bed4router") not in (0, router)
                         and box.show("6bed4router", "ActiveState")["ActiveState"] == "active", 30,
                         "systemd to restart the hung router")
            assert "Watchdog timeout" in box.run("journalctl --no-pager -u 6bed4router").stdout
            assert box.show("6bed4router", "NRestarts")["NRestarts"] == "1"
            lab.wait_for(lambda: serves(s, address), 15, "service after the restart")

            # an upgrade (here: the same version again) starts the running daemons anew on the new files
            before = {unit: main_pid(box, unit) for unit in ("6bed4router", "6bed4peer")}
            box.run("DEBIAN_FRONTEND=noninteractive dpkg -i /root/sixbed4.deb", timeout=120)
            after = {unit: main_pid(box, unit) for unit in ("6bed4router", "6bed4peer")}
            assert all(after[unit] not in (0, before[unit]) for unit in after), (before, after)
            assert box.show("6bed4-host-setup", "ActiveState")["ActiveState"] == "active"  # undone and applied anew
            address = lab.wait_for(lambda: peer_address(s), 15, "the peer's address after the upgrade")
            lab.wait_for(lambda: serves(s, address), 15, "service after the upgrade")

            # removing the package stops the units while their programs are still there
            box.run("DEBIAN_FRONTEND=noninteractive dpkg -r sixbed4", timeout=120)
            assert unit_states(box) == ["inactive"] * 3
        assert s.snapshot() == start  # the host setup undone, the router's device gone


def test_enabled_units_come_back_at_boot_after_a_power_loss(package):
    """enable --now, a power loss, and the machine comes back: systemd starts host setup, router, peer in order."""
    with SystemdContainer(f"sb{os.getpid()}-box") as box:
        with Lab("sb") as lab:
            s = seedlab.build(lab, routed=False)
            box.boot(s.vm)
            install(box, package, s)
            assert serves(s, lab.wait_for(lambda: peer_address(s), 15, "the peer's address"))
            box.power_loss()
        # back: the seed's network as at the start (a new lab), /run empty, /etc and /var as they were
        with Lab("sb") as lab:
            s = seedlab.build(lab, routed=False)
            start = s.snapshot()
            put_peer_into(box, s)
            for wants in box.path("/etc/systemd/system/multi-user.target.wants").iterdir():
                if not wants.name.startswith("6bed4"):  # the machine image's own services stay off
                    box.path(f"/etc/systemd/system/{wants.name}").symlink_to("/dev/null")
            box.boot(s.vm, "multi-user.target")  # returns once the boot's jobs are done: the peer's needs its address
            assert_all_active(box)
            assert serves(s, lab.wait_for(lambda: peer_address(s), 15, "the peer's address"))
            stop(box)
            assert s.snapshot() == start


def test_peer_unit_as_home_gateway_with_the_lines_its_comment_gives(package):
    """lan = "lan0" in peer.toml: dnsmasq, nftables and the RAs under the unit's limits; after a kill, systemd's
    unit takes back what the killed one left (ExecStopPost=, from its undo record in the unit's RuntimeDirectory)
    before systemd starts it again; all gone at stop."""
    with Lab("sg") as lab:
        s = seedlab.build(lab, routed=False)
        lab.sh(s.client, "ip link add lan0 type bridge && ip link set lan0 up")

        def lan_state() -> str:
            return lab.sh(s.client, "sysctl -n net.ipv6.conf.all.forwarding net.ipv6.conf.lan0.proxy_ndp; "
                                    "ip -6 -o addr show dev lan0 scope global; ip -6 neigh show proxy").stdout

        before = lan_state()
        host = lab.ns("lanhost")
        lab.link(s.client, "plan0", host, "eth0")
        lab.sh(s.client, "ip link set plan0 master lan0")
        lab.sh(host, "ethtool -K eth0 tx off >/dev/null")  # checksums finished, as from a wire
        with SystemdContainer(f"{lab.tag}-box") as box:
            box.boot(s.vm)
            install(box, package, s, gateway=True)
            leases, pid = lab.scratch_file("dhclient.leases"), lab.scratch_file("dhclient.pid")
            lab.start(host, ["dhclient", "-6", "-d", "-lf", str(leases), "-pf", str(pid), "eth0"], "dhclient")
            gateway = lab.wait_for(lambda: peer_address(s), 15, "the gateway's address")

            prefix = gateway.rsplit(":", 1)[0]  # the /114's first 112 bits
            lab.wait_for(lambda: any(a.startswith(prefix) for a in eth0_global_addresses(lab, host)), 20, "a DHCPv6 address")
            lab.wait_for(lambda: any(a.startswith("fd") for a in eth0_global_addresses(lab, host)), 20, "a ULA (SLAAC)")
            # the RA that makes the gateway the default router may follow the lease by a few seconds
            lab.wait_for(lambda: s.ping(host, seedlab.INET6), 15, "the LAN host to reach the Internet")
            # dnsmasq's lines reach the journal through the peer, which passes them on at its next tick
            lab.wait_for(lambda: "DHCPREPLY(lan0)" in box.journal("6bed4peer"), 5, "dnsmasq's reply in the journal")
            assert "dnsmasq" in box.run("ps -e -o comm").stdout
            assert "sixbed4_lan_lan0" in lab.sh(s.client, "nft list tables").stdout

            # a kill (the OOM killer's, say) leaves the LAN's addresses, proxy entry and sysctls
            killed = main_pid(box, "6bed4peer")
            box.run("systemctl kill -s KILL 6bed4peer")
            lab.wait_for(lambda: main_pid(box, "6bed4peer") not in (0, killed), 20, "systemd to restart the peer")
            # ExecStopPost= (6bed4 take-back peer) takes them back before the restart: the new peer finds nothing
            took_back = re.compile(r"^took back [1-9]\d* change\(s\) that a killed peer \(pid \d+\)", re.M)
            lab.wait_for(lambda: took_back.search(box.journal("6bed4peer")), 10, "ExecStopPost= to take them back")
            # the new peer has another UDP port, so another /114: the DHCPv6 address follows at the lease's
            # renewal (test_lan.py's NAT rebinding); the SLAAC ULA, translated, works at once
            ula = next(a for a in eth0_global_addresses(lab, host) if a.startswith("fd"))
            lab.wait_for(lambda: lab.sh(host, f"ping -6 -n -c 1 -W 2 -I {ula} {seedlab.INET6}", check=False,
                                        timeout=30).returncode == 0, 20, "the LAN host to reach the Internet again")
            stop(box)
            assert "WARNING took back" not in box.journal("6bed4peer")
            assert lan_state() == before
            assert "sixbed4_lan_lan0" not in lab.sh(s.client, "nft list tables").stdout
            assert "dnsmasq" not in box.run("ps -e -o comm").stdout
