"""Host setup planning: the seed's host as plain data in, changes with their ip/sysctl text out."""

from __future__ import annotations

import ipaddress

import pytest

from sixbed4 import cli
from sixbed4.core import hostplan
from sixbed4.core.hostplan import Address, Link, Route

PREFIX = ipaddress.IPv6Address("2001:db8:9:10::").packed[:8]
LL = "fe80::aabb:ccff:fe00:1122"
UPSTREAM_LL = "fe80::aabb:ccff:fedd:eeff"


def seed_state(default_proto: int = hostplan.RTPROT_BOOT, forwarding: str = "0", extra_addresses=(),
               extra_routes=(), dummy_available=None) -> hostplan.HostState:
    """The seed's VM before setup: ::11/64 and ::30/64 on eth0, the /64 on-link, default via the upstream."""
    return hostplan.HostState(
        links={"lo": Link("lo", 1), "eth0": Link("eth0", 2, "veth", "a8:bb:cc:00:11:22")},
        addresses=[
            Address("lo", "::1", 128, hostplan.SCOPE_HOST),
            Address("eth0", "2001:db8:9:10::30", 64, flags=0x80),
            Address("eth0", "2001:db8:9:10::11", 64, flags=0x80),
            Address("eth0", LL, 64, hostplan.SCOPE_LINK, flags=0x80),
            *extra_addresses,
        ],
        routes=[
            Route("2001:db8:9:10::", 64, "eth0", proto=hostplan.RTPROT_KERNEL, metric=256),
            Route("fe80::", 64, "eth0", proto=hostplan.RTPROT_KERNEL, metric=256),
            Route("::", 0, "eth0", UPSTREAM_LL, proto=default_proto, metric=1024),
            *extra_routes,
        ],
        sysctls={
            "net.ipv6.conf.all.forwarding": forwarding,
            "net.ipv6.conf.default.forwarding": forwarding,
            "net.ipv6.conf.eth0.forwarding": forwarding,
            "net.ipv6.conf.eth0.accept_ra": "1",
            "net.ipv6.conf.eth0.accept_ra_pinfo": "1",
            "net.ipv6.conf.eth0.mc_forwarding": "0",
            "net.ipv6.conf.eth0.disable_ipv6": "0",
            "net.ipv6.conf.lo.forwarding": forwarding,
        },
        dummy_available=dummy_available,
    )


def options(**kwargs) -> hostplan.Options:
    return hostplan.Options(uplink="eth0", prefix=PREFIX, **kwargs)


def commands(plan) -> list[str]:
    return [change.command for change in plan.changes]


def test_seed_on_uplink():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink"))
    assert commands(plan) == [
        "sysctl -w net.ipv6.conf.all.forwarding=1",
        "sysctl -w net.ipv6.conf.eth0.forwarding=1",
        "ip -6 addr del 2001:db8:9:10::30/64 dev eth0",
        "ip -6 addr add 2001:db8:9:10::30/128 dev eth0 nodad",
        "ip -6 addr del 2001:db8:9:10::11/64 dev eth0",
        "ip -6 addr add 2001:db8:9:10::11/128 dev eth0 nodad",
        "ip -6 route del 2001:db8:9:10::/64 dev eth0 proto kernel metric 256",
    ]
    assert not plan.errors
    assert plan.upstream_route.startswith(f"ip -6 route add 2001:db8:9:10::/64 via {LL} dev ")


def test_seed_dummy_is_the_default_make_before_break():
    plan = hostplan.compute_plan(seed_state(dummy_available=True), options())
    assert commands(plan) == [
        "sysctl -w net.ipv6.conf.all.forwarding=1",
        "sysctl -w net.ipv6.conf.eth0.forwarding=1",
        "ip link add dumbo0 type dummy",
        "ip link set dumbo0 up",
        "ip -6 addr add 2001:db8:9:10::30/112 dev dumbo0",
        "ip -6 addr del 2001:db8:9:10::30/64 dev eth0",
        "ip -6 addr add 2001:db8:9:10::11/112 dev dumbo0",
        "ip -6 addr del 2001:db8:9:10::11/64 dev eth0",
        "ip -6 route del 2001:db8:9:10::/64 dev eth0 proto kernel metric 256",
    ]


def test_loopback_placement_and_named_dummy():
    plan = hostplan.compute_plan(seed_state(), options(placement="loopback"))
    assert "ip -6 addr add 2001:db8:9:10::11/128 dev lo" in commands(plan)
    plan = hostplan.compute_plan(seed_state(dummy_available=True), options(dummy="srv0"))
    assert "ip -6 addr add 2001:db8:9:10::11/112 dev srv0" in commands(plan)


def test_dummy_missing_is_a_clear_error_with_alternatives():
    with pytest.raises(hostplan.PlanError) as info:
        hostplan.compute_plan(seed_state(dummy_available=False), options())
    message = str(info.value)
    assert "no 'dummy' link type" in message and "--on-uplink" in message and "--loopback" in message
    assert "\n" not in message


def test_existing_dummy_is_used_even_if_the_kernel_lacks_the_type():
    state = seed_state(dummy_available=False)
    state.links["dumbo0"] = Link("dumbo0", 3, "dummy", up=False)
    plan = hostplan.compute_plan(state, options())
    assert commands(plan)[2] == "ip link set dumbo0 up"
    assert "ip link add dumbo0 type dummy" not in commands(plan)


def test_forwarding_key_and_mc_forwarding_explained():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink"))
    text = plan.render(options(placement="uplink"))
    assert "ip_forwarding" not in "\n".join(commands(plan))
    assert "'ip_forwarding' key does not exist" in text
    assert "mc_forwarding" in text and "read-only" in text
    assert not any("mc_forwarding" in c for c in commands(plan))


def test_ra_default_route_gets_accept_ra_2_before_forwarding():
    plan = hostplan.compute_plan(seed_state(default_proto=hostplan.RTPROT_RA), options(placement="uplink"))
    assert commands(plan)[:3] == [
        "sysctl -w net.ipv6.conf.eth0.accept_ra=2",
        "sysctl -w net.ipv6.conf.eth0.accept_ra_pinfo=0",
        "sysctl -w net.ipv6.conf.all.forwarding=1",
    ]
    assert "Router Advertisements" in plan.changes[0].why


def test_static_default_route_keeps_accept_ra():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink"))
    assert not any("accept_ra" in c for c in commands(plan))


def test_misconfigurations_explained():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink"))
    findings = "\n".join(plan.findings)
    assert "2001:db8:9:10::11/64 on eth0 covers the 6bed4 /64" in findings
    assert "route 2001:db8:9:10::/64 dev eth0" in findings and "on-link" in findings


def test_static_route_back_to_upstream_is_removed_too():
    back = Route("2001:db8:9:10::", 64, "eth0", UPSTREAM_LL, proto=hostplan.RTPROT_BOOT, metric=1024)
    plan = hostplan.compute_plan(seed_state(extra_routes=[back]), options(placement="uplink"))
    assert f"ip -6 route del 2001:db8:9:10::/64 via {UPSTREAM_LL} dev eth0 proto boot metric 1024" in commands(plan)
    assert any(f"back to {UPSTREAM_LL}" in f for f in plan.findings)


def test_not_port0_refused_naming_each_unless_forced():
    bad = [Address("eth0", "2001:db8:9:10::1:11", 64), Address("eth0", "2001:db8:9:10:c433:6407:9c40:8001", 64)]
    plan = hostplan.compute_plan(seed_state(extra_addresses=bad), options(placement="uplink"))
    assert len(plan.errors) == 2
    assert "2001:db8:9:10::1:11" in plan.errors[0] and "port 1" in plan.errors[0]
    assert "198.51.100.7 port 40000" in plan.errors[1]
    assert "REFUSED" in plan.render(options(placement="uplink"))
    forced = hostplan.compute_plan(seed_state(extra_addresses=bad), options(placement="uplink", force=True))
    assert not forced.errors
    assert "ip -6 addr add 2001:db8:9:10::1:11/128 dev eth0 nodad" in commands(forced)


def test_local_addresses():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink", local=("2001:db8:9:10::80", "2001:db8:9:10::11")))
    assert commands(plan).count("ip -6 addr add 2001:db8:9:10::80/128 dev eth0 nodad") == 1
    assert commands(plan).count("ip -6 addr add 2001:db8:9:10::11/128 dev eth0 nodad") == 1
    with pytest.raises(hostplan.PlanError, match="not inside"):
        hostplan.compute_plan(seed_state(), options(local=("2001:db8:9:11::80",)))
    with pytest.raises(hostplan.PlanError, match="not an IPv6 address"):
        hostplan.compute_plan(seed_state(), options(local=("nonsense",)))


def test_local_address_not_in_port0_form_refused():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink", local=("2001:db8:9:10::2:80",)))
    assert len(plan.errors) == 1 and "2001:db8:9:10::2:80" in plan.errors[0]


def after_setup_state(placement: str) -> hostplan.HostState:
    target, plen = {"uplink": ("eth0", 128), "dummy": ("dumbo0", 112)}[placement]
    state = seed_state(forwarding="1")
    state.addresses = [a for a in state.addresses if a.prefixlen != 64 or a.scope != hostplan.SCOPE_GLOBAL]
    state.addresses += [Address(target, "2001:db8:9:10::11", plen), Address(target, "2001:db8:9:10::30", plen)]
    state.routes = [r for r in state.routes if r.dst != "2001:db8:9:10::"]
    state.routes.append(Route("2001:db8:9:10::", 64, "6bed4", proto=hostplan.RTPROT_BOOT, metric=1024))
    if placement == "dummy":
        state.links["dumbo0"] = Link("dumbo0", 3, "dummy")
    return state


@pytest.mark.parametrize("placement", ["uplink", "dummy"])
def test_set_up_host_needs_nothing(placement):
    opts = options(placement=placement)
    plan = hostplan.compute_plan(after_setup_state(placement), opts)
    assert plan.changes == []
    assert "nothing to change" in plan.render(opts)
    assert any("already takes the /64 elsewhere" in n for n in plan.notes)


def test_unknown_uplink_and_dummy_equal_to_uplink():
    with pytest.raises(hostplan.PlanError, match="no interface named eth9"):
        hostplan.compute_plan(seed_state(), hostplan.Options(uplink="eth9", prefix=PREFIX))
    with pytest.raises(hostplan.PlanError, match="--on-uplink"):
        hostplan.compute_plan(seed_state(), options(dummy="eth0"))


def test_no_link_local_means_no_upstream_route():
    state = seed_state()
    state.addresses = [a for a in state.addresses if a.scope != hostplan.SCOPE_LINK]
    plan = hostplan.compute_plan(state, options(placement="uplink"))
    assert plan.upstream_route is None
    assert any("no link-local address" in n for n in plan.notes)


def test_changes_carry_data_the_applier_needs():
    plan = hostplan.compute_plan(seed_state(), options(placement="uplink"))
    delete = next(c for c in plan.changes if c.action == "addr_del")
    assert delete.args["address"] == "2001:db8:9:10::30" and delete.args["prefixlen"] == 64
    assert delete.args["flags"] == 0x80 and delete.args["valid"] == hostplan.FOREVER
    add = next(c for c in plan.changes if c.action == "addr_add")
    assert add.args == {"ifname": "eth0", "address": "2001:db8:9:10::30", "prefixlen": 128,
                        "flags": hostplan.IFA_F_NODAD}
    route = next(c for c in plan.changes if c.action == "route_del")
    assert route.args["proto"] == hostplan.RTPROT_KERNEL and route.args["metric"] == 256
    assert route.to_json()["action"] == "route_del"


def test_sysctl_keys_cover_every_interfaces_forwarding():
    keys = hostplan.sysctl_keys("eth0", ["lo", "eth0", "6bed4"])
    assert "net.ipv6.conf.6bed4.forwarding" in keys and "net.ipv6.conf.all.forwarding" in keys
    assert len(keys) == len(set(keys))


MNGTMPADDR = hostplan.IFA_F_MANAGETEMPADDR | 0x80  # and permanent
TEMPORARY = Address("eth0", "2001:db8:9:10:fc88:2625:673e:ab59", 64, flags=hostplan.IFA_F_TEMPORARY,
                    valid=604799, preferred=85872)


@pytest.mark.parametrize("placement, moved", [("uplink", "2001:db8:9:10::11/128 dev eth0 nodad"),
                                              ("dummy", "2001:db8:9:10::11/112 dev dumbo0")])
def test_mngtmpaddr_is_not_carried_to_the_moved_address_and_its_temporary_addresses_go_with_it(placement, moved):
    """The kernel takes mngtmpaddr on a /64 only; the temporary addresses made from it vanish with it."""
    state = seed_state(dummy_available=True)
    state.addresses = [Address("eth0", "2001:db8:9:10::11", 64, flags=MNGTMPADDR) if a.address.endswith("::11")
                       else a for a in state.addresses] + [TEMPORARY]
    plan = hostplan.compute_plan(state, options(placement=placement))
    assert not plan.errors
    assert f"ip -6 addr add {moved}" in commands(plan) and "ip -6 addr del 2001:db8:9:10::11/64 dev eth0" in commands(plan)
    assert not any(TEMPORARY.address in c for c in commands(plan))
    delete = next(c for c in plan.changes if c.action == "addr_del" and c.args["address"].endswith("::11"))
    assert delete.args["flags"] == MNGTMPADDR  # undo puts it back as it was
    notes = "\n".join(plan.notes)
    assert "2001:db8:9:10::11: mngtmpaddr is dropped" in notes and "only on a /64" in notes
    assert f"{TEMPORARY.address}/64 on eth0 is a temporary address made from 2001:db8:9:10::11" in notes


def test_a_temporary_address_without_its_mngtmpaddr_base_is_not_taken_for_one():
    """SLAAC's privacy addresses have no base in the /64 that the plan removes: they are the host's, and collide."""
    plan = hostplan.compute_plan(seed_state(extra_addresses=[TEMPORARY]), options(placement="uplink"))
    assert len(plan.errors) == 1 and TEMPORARY.address in plan.errors[0]


def test_an_uplink_with_ipv6_disabled_is_refused():
    state = seed_state()
    state.sysctls["net.ipv6.conf.eth0.disable_ipv6"] = "1"
    plan = hostplan.compute_plan(state, options(placement="uplink"))
    assert plan.errors == ["IPv6 is disabled on eth0 (net.ipv6.conf.eth0.disable_ipv6 = 1): the router's native "
                           "IPv6 goes through it; enable it (sysctl -w net.ipv6.conf.eth0.disable_ipv6=0), check "
                           "the addresses it gets, and plan again"]
    assert "REFUSED: IPv6 is disabled on eth0" in plan.render(options(placement="uplink"))
    del state.sysctls["net.ipv6.conf.all.forwarding"]  # no net.ipv6 at all: booted with ipv6.disable=1
    with pytest.raises(hostplan.PlanError, match="this kernel has no IPv6"):
        hostplan.compute_plan(state, options(placement="uplink"))
    assert "net.ipv6.conf.eth0.disable_ipv6" in hostplan.sysctl_keys("eth0", ["eth0"])


def test_an_uplink_address_shorter_than_64_stays_where_it_is():
    """Its on-link route is less specific than the router's /64, so it takes nothing from the peers;
    removing it would take the rest of its prefix off the link."""
    state = seed_state()
    state.addresses = [Address("eth0", "2001:db8:9:10::11", 48, flags=0x80) if a.address.endswith("::11")
                       else a for a in state.addresses]
    state.routes.append(Route("2001:db8:9::", 48, "eth0", proto=hostplan.RTPROT_KERNEL, metric=256))
    plan = hostplan.compute_plan(state, options(placement="uplink"))
    assert not any("::11" in c or "2001:db8:9::" in c for c in commands(plan))
    assert "ip -6 addr del 2001:db8:9:10::30/64 dev eth0" in commands(plan)
    assert any("2001:db8:9:10::11/48 on eth0 is shorter than /64" in n and "stays" in n for n in plan.notes)
    state.addresses = [a for a in state.addresses if not a.address.endswith("::11")]
    state.addresses.append(Address("eth0", "2001:db8:9:10::2:11", 48))  # not in port-0 form: still the host's
    assert len(hostplan.compute_plan(state, options(placement="uplink")).errors) == 1


COLLIDING = "2001:db8:9:10:c433:6407:9c40:8001"  # 198.51.100.7 port 40000 lanid 1: a peer's address


@pytest.mark.parametrize("where", [Address("lo", COLLIDING, 128), Address("eth0", COLLIDING, 128),
                                   Address("dumbo0", COLLIDING, 112)])
def test_an_address_not_in_port0_form_already_off_the_64_is_refused_too(where):
    state = seed_state(extra_addresses=[where])
    state.links["dumbo0"] = Link("dumbo0", 3, "dummy")
    plan = hostplan.compute_plan(state, options(placement="uplink"))
    assert len(plan.errors) == 1 and COLLIDING in plan.errors[0] and "port 40000" in plan.errors[0]
    assert not any(COLLIDING in c for c in commands(plan))  # where it is, it stays
    named = hostplan.compute_plan(state, options(placement="uplink", local=(COLLIDING,)))
    assert len(named.errors) == 1 and COLLIDING in named.errors[0]
    forced = hostplan.compute_plan(state, options(placement="uplink", force=True))
    assert not forced.errors and any(COLLIDING in n and "--force" in n for n in forced.notes)


def test_the_running_routers_own_address_on_its_tun_device_is_no_collision():
    state = after_setup_state("uplink")
    state.links["6bed4"] = Link("6bed4", 9, "tun")
    state.addresses.append(Address("6bed4", "2001:db8:9:10:c000:201:64be:0", 128))  # 192.0.2.1 port 25790 lanid 0
    plan = hostplan.compute_plan(state, options(placement="uplink"))
    assert not plan.errors and plan.changes == []


# --- the command line, without root (errors only) ------------------------------------------


def run_main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv, message", [
    (["host-setup", "plan", "--uplink", "eth0", "--prefix", "2001:db8:9::/48"], "give the served /64"),
    (["host-setup", "plan", "--uplink", "eth0", "--prefix", "nonsense/64"], "not an IPv6 prefix"),
    (["host-setup", "fix", "--uplink", "eth0", "--prefix", "2001:db8:9:10::/64"], "invalid choice"),
    (["host-setup", "plan", "--uplink", "eth0", "--prefix", "2001:db8:9:10::/64", "--on-uplink", "--loopback"],
     "not allowed with"),
    (["proxy-nd", "--uplink", "eth0", "--prefix", "2001:db8:9:10::/64", "--local", "2001:db8:9:11::1"], "not inside"),
    (["proxy-nd", "--uplink", "eth0", "--prefix", "2001:db8:9:10::/64", "--local", "x"], "not an IPv6 address"),
])
def test_cli_usage_errors_are_one_line_exit_2(capsys, argv, message):
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_undo_without_record_has_nothing_to_do(capsys, tmp_path):
    """As apply with nothing to do: exit 0, so that stopping 6bed4-host-setup.service after a no-op apply works."""
    argv = ["host-setup", "undo", "--uplink", "eth0", "--prefix", "2001:db8:9:10::/64",
            "--state-file", str(tmp_path / "none.json")]
    assert run_main(argv) == 0
    assert "nothing to undo" in capsys.readouterr().out


def test_cli_state_file_of_another_setup(capsys, tmp_path):
    record = tmp_path / "hs.json"
    record.write_text('{"version": 1, "uplink": "eth1", "prefix": "2001:db8:9:10::/64", "steps": []}')
    argv = ["host-setup", "apply", "--uplink", "eth0", "--prefix", "2001:db8:9:10::/64", "--state-file", str(record)]
    assert run_main(argv) == 2
    assert "records the setup of eth1" in capsys.readouterr().err
