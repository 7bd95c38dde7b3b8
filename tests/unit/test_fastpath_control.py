"""The fast path's control side without a kernel: modes, reasons, the build cache, merged counters."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from sixbed4.core import addr
from sixbed4.core.router import RouterConfig
from sixbed4.core.stats import Counters
from sixbed4.fastpath import build, control
from sixbed4.fastpath.loader import ClsactHooks, FastPathError
from sixbed4.io.metrics import CountersCollector

CONFIG = RouterConfig(prefix=bytes.fromhex("20010db800090010"), ipv4=addr.parse_ipv4("192.0.2.1"))


def never_called():
    raise AssertionError("the host's addresses are read only when the programs are loaded")


def test_off_loads_nothing():
    assert control.start("off", never_called, logging.getLogger("6bed4router")) is None


@pytest.mark.parametrize("bind, uplink, reason", [
    (("127.0.0.1", 4000), "eth0", "the socket is bound to 127.0.0.1 (-x): datagrams come through firewall rules"),
    (("192.0.2.1", 25790), None, "no interface has or routes 192.0.2.1: give --uplink"),
])
def test_on_fails_and_auto_logs_why(bind, uplink, reason, caplog):
    log = logging.getLogger("6bed4router")

    def attach():
        return control.router(CONFIG, bind, "6bed4", uplink, never_called, None)

    with pytest.raises(FastPathError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        control.start("on", attach, log)
    with caplog.at_level(logging.INFO, logger="6bed4router"):
        assert control.start("auto", attach, log) is None
    [record] = [r for r in caplog.records if "fast path" in r.message]
    assert record.message == f"fast path not used: {reason}; all packets take the Python path"


def test_a_cached_object_someone_else_could_have_written_is_not_loaded(tmp_path, monkeypatch):
    """The cache holds what gets loaded into the kernel: only an object that is ours and private counts."""
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "clang", lambda: "clang")
    monkeypatch.setattr(build, "_compiler_version", lambda compiler: "clang version 14")
    compiled = []

    def compile_object(source, output, compiler, defines=()):
        compiled.append(output)
        output.write_bytes(b"\x7fELF built here")

    monkeypatch.setattr(build, "compile_object", compile_object)
    source = tmp_path / "prog.bpf.c"
    source.write_text("int x;")
    assert build.build(source) == b"\x7fELF built here" and len(compiled) == 1
    assert build.build(source) == b"\x7fELF built here" and len(compiled) == 1  # from the cache
    [cached] = (tmp_path / "cache").glob("prog.bpf-*.o")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600

    cached.write_bytes(b"\x7fELF planted")
    os.chmod(cached, 0o666)  # writable by anyone: not trusted, built again
    assert build.build(source) == b"\x7fELF built here" and len(compiled) == 2
    source.write_text("int y;")  # another source: another object
    build.build(source)
    assert len(compiled) == 3 and len(list((tmp_path / "cache").glob("prog.bpf-*.o"))) == 2
    build.build(source, ("COMPAT_5_10",))  # the build for older kernels: another object
    assert len(compiled) == 4 and len(list((tmp_path / "cache").glob("prog.bpf-*.o"))) == 3


def test_the_kernels_counts_are_added_to_the_cores():
    core = Counters()
    core.udp_in, core.to_tun = 3, 2
    core.drop("bad_source")
    total = core.plus({"udp_in": 10, "to_tun": 9, "relayed": 1})
    assert (total.udp_in, total.to_tun, total.relayed, total.drops["bad_source"]) == (13, 11, 1, 1)
    assert core.udp_in == 3  # the core's own counters are left alone
    families = {f.name: f for f in CountersCollector("sixbed4_router", lambda: total).collect()}
    assert families["sixbed4_router_udp_in"].samples[0].value == 13


class FakePeerFastPath:
    """What PeerFollower tells the peer's programs, without a kernel."""

    def __init__(self, movable=("eth0", "wlan0")):
        self.lease, self.route, self.uplink, self.movable = None, None, "eth0", movable
        self.attachment, self.broken = "attached", False

    def set_lease(self, prefix114):
        if self.broken:
            raise OSError(12, "Cannot allocate memory")
        self.lease = prefix114

    def detach(self):
        self.attachment = None

    def set_route(self, local_ipv4, uplink_ifindex):
        self.route = local_ipv4

    def move_uplink(self, uplink):
        if uplink not in self.movable:
            raise FastPathError(f"uplink {uplink} is not an Ethernet device (ARPHRD 65534)")
        self.uplink = uplink


def test_the_peers_programs_follow_the_lease_and_the_route_to_the_router(monkeypatch, caplog):
    from tests.unit.test_peer_core import PREFIX, configured, packed

    monkeypatch.setattr(control, "ifindex", lambda name: 7)
    routes = {"now": ("eth0", "10.0.1.2")}
    fast, core = FakePeerFastPath(), configured()
    follower = control.PeerFollower(fast, core, "0.0.0.0", logging.getLogger("6bed4peer"),
                                    route_to=lambda ipv4: routes["now"])
    ticks = []
    tick = follower.following(ticks.append)
    tick(1.0)
    assert ticks == [1.0] and fast.lease == packed(PREFIX) and fast.route == addr.parse_ipv4("10.0.1.2")

    routes["now"] = ("wlan0", "192.168.1.20")  # the laptop moved to its wireless
    tick(1.5)
    assert fast.uplink == "eth0"  # looked at once a second
    tick(2.1)
    assert fast.uplink == "wlan0" and fast.route == addr.parse_ipv4("192.168.1.20")

    with caplog.at_level(logging.INFO, logger="6bed4peer"):
        routes["now"] = None
        tick(3.2)
        tick(4.3)
        assert fast.route is None
        routes["now"] = ("wwan0", "100.64.0.9")  # not Ethernet: everything to Python
        tick(5.4)
        assert fast.route is None and fast.uplink == "wlan0"
        routes["now"] = ("wlan0", "192.168.1.20")
        tick(6.5)
        assert fast.route == addr.parse_ipv4("192.168.1.20")
    assert [r.message for r in caplog.records] == [
        "fast path idle: no route to the router 192.0.2.1; all packets take the Python path",
        "fast path idle: the route to the router leaves by wwan0: uplink wwan0 is not an Ethernet device "
        "(ARPHRD 65534); all packets take the Python path",
        "fast path: datagrams to the router leave by wlan0 from 192.168.1.20"]

    core.lease = None  # (as after the router withdrew it)
    tick(6.6)
    assert fast.lease is None


def test_a_peer_bound_to_an_address_sends_from_it(monkeypatch):
    from tests.unit.test_peer_core import configured

    monkeypatch.setattr(control, "ifindex", lambda name: 7)
    fast = FakePeerFastPath()
    follower = control.PeerFollower(fast, configured(), "10.0.1.99", logging.getLogger("6bed4peer"),
                                    route_to=lambda ipv4: ("eth0", "10.0.1.2"))
    follower.check_route()
    assert fast.route == addr.parse_ipv4("10.0.1.99")


def test_a_peer_whose_programs_cannot_be_updated_takes_them_away(monkeypatch, caplog):
    from tests.unit.test_peer_core import configured

    monkeypatch.setattr(control, "ifindex", lambda name: 7)
    fast = FakePeerFastPath()
    tick = control.PeerFollower(fast, configured(), "0.0.0.0", logging.getLogger("6bed4peer"),
                                route_to=lambda ipv4: ("eth0", "10.0.1.2")).following(lambda now: None)
    tick(1.0)
    fast.broken = True
    with caplog.at_level(logging.INFO, logger="6bed4peer"):
        tick(2.0)
        tick(3.0)  # detached: not tried again
    assert fast.attachment is None
    assert [r.message for r in caplog.records] == [
        "fast path detached: cannot update its configuration (Cannot allocate memory); all packets take the "
        "Python path"]


def test_before_linux_6_6_a_daemon_without_an_undo_record_attaches_no_tc_filter():
    """A filter outlives a killed daemon; without the record nothing would take it back, and it would go
    on taking the next daemon's packets."""
    with pytest.raises(FastPathError, match="undo record"):
        ClsactHooks(None).attach(3, "eth0", True, "uplink_in")
