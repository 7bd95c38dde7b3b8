"""The peer daemon's LeaseApplier against a stand-in for netlink: what the kernel refuses stops nothing else."""

from __future__ import annotations

import errno
import ipaddress
import logging

from sixbed4.core.peer import Lease, PeerConfig
from sixbed4.io.netlink import NetlinkSetupError
from sixbed4.peer.daemon import ROUTE_METRIC, Hook, LeaseApplier

PREFIX114 = ipaddress.IPv6Address("2001:db8:9:10:c433:6407:9c40:8000").packed
ADDRESS = "2001:db8:9:10:c433:6407:9c40:8001"
ROUTES = tuple((ipaddress.IPv6Address(p).packed, n) for p, n in (("2001:db8:c::", 48), ("2001:db8:d::", 48)))


class FakeSetup:
    """InterfaceSetup's methods for addresses and routes, on a dict; refuses the routes in `refuse`."""

    def __init__(self, refuse=()):
        self.refuse = set(refuse)
        self.addresses: set[tuple[str, int]] = set()
        self.routes: dict[tuple[str, int], dict] = {}

    def add_address(self, address: str, prefixlen: int) -> None:
        self.addresses.add((address, prefixlen))

    def remove_address(self, address: str, prefixlen: int) -> None:
        self.addresses.discard((address, prefixlen))

    def add_route(self, prefix: str, prefixlen: int, **extra) -> None:
        if (prefix, prefixlen) in self.refuse:
            raise NetlinkSetupError(errno.EEXIST, f"adding route {prefix}/{prefixlen} via 6bed4: another route "
                                                  f"for {prefix}/{prefixlen} with metric 1052 is in the way")
        self.routes[(prefix, prefixlen)] = extra

    def remove_route(self, prefix: str, prefixlen: int, **extra) -> None:
        self.routes.pop((prefix, prefixlen), None)


class RecordingHook(Hook):
    def __init__(self):
        super().__init__("hook")
        self.calls: list[tuple[str, ...]] = []

    def _run(self, *args: str) -> None:
        self.calls.append(args)


def applier(refuse=(), default_route=False) -> tuple[LeaseApplier, FakeSetup, RecordingHook]:
    setup, hook = FakeSetup(refuse), RecordingHook()
    return LeaseApplier(setup, PeerConfig("192.0.2.1", default_route=default_route), hook), setup, hook


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_refused_route_stops_neither_the_others_nor_the_hook_and_is_retried(caplog):
    caplog.set_level(logging.INFO)
    lease_applier, setup, hook = applier(refuse={("2001:db8:c::", 48)})
    lease_applier.apply(Lease(PREFIX114, ROUTES), None)
    assert setup.addresses == {(ADDRESS, 128)}
    assert set(setup.routes) == {("2001:db8:9:10::", 64), ("2001:db8:d::", 48)}
    assert [call[0] for call in hook.calls] == ["add-range-offer", "add-route-offer", "add-route-offer"]
    (message,) = warnings(caplog)
    assert "2001:db8:c::/48" in message and "in the way" in message and "trying again" in message

    lease_applier.retry()  # still refused: not logged again
    assert warnings(caplog) == [message] and ("2001:db8:c::", 48) not in setup.routes

    setup.refuse.clear()  # the operator removed the route in the way
    lease_applier.retry()
    assert setup.routes[("2001:db8:c::", 48)] == dict(gateway="fe80::", priority=ROUTE_METRIC)
    assert "route 2001:db8:c::/48 is in place now" in caplog.messages
    assert lease_applier.refused == set()
    assert len(hook.calls) == 3  # offered once


def test_install_makes_again_what_is_gone():
    """A device set down loses every address and route; install() (when it is up again) puts the lease back."""
    lease_applier, setup, _ = applier(default_route=True)
    lease_applier.apply(Lease(PREFIX114, ROUTES), None)
    before = (set(setup.addresses), dict(setup.routes))
    setup.addresses.clear()
    setup.routes.clear()
    lease_applier.install()
    assert (setup.addresses, setup.routes) == before


def test_a_new_lease_forgets_what_the_old_one_had_refused(caplog):
    lease_applier, setup, _ = applier(refuse={("2001:db8:c::", 48)})
    lease_applier.apply(Lease(PREFIX114, ROUTES), None)
    assert lease_applier.refused == {"route 2001:db8:c::/48"}
    lease_applier.apply(Lease(PREFIX114, ROUTES[1:]), Lease(PREFIX114, ROUTES))
    assert lease_applier.refused == set()
    lease_applier.remove(Lease(PREFIX114, ROUTES[1:]))
    assert setup.routes == {} and setup.addresses == set() and lease_applier.lease is None
