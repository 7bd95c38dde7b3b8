"""Carry out a host-setup plan through pyroute2 and /proc/sys, and take it back.

Every change that is actually made leaves an undo record in the state file
(written after each step, atomically), so `undo` restores exactly what was
there before, even after a crash half-way.  A change whose effect is already
in place is skipped and leaves no record: a second `apply` changes nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core import hostplan
from ..io import netlink

log = logging.getLogger(__name__)

AF_INET6 = 10
DEFAULT_STATE_FILE = Path("/run/sixbed4/host-setup.json")  # the changes end with a reboot, so does their record
STATE_VERSION = 1


class ApplyError(OSError):
    """A change the kernel refused; str() names it."""


class DummyMissing(ApplyError):
    """The kernel has no `dummy` link type."""


# --- the state file -------------------------------------------------------------------


class StateFile:
    def __init__(self, path: Path, uplink: str, prefix: str):
        self.path = Path(path)
        self.uplink = uplink
        self.prefix = prefix
        self.steps: list[dict] = []

    def load(self) -> bool:
        """Read an existing record; False if there is none.  Raises ValueError if it is not ours."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            raise ValueError(f"state file {self.path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"state file {self.path} is not a 6bed4 host-setup record")
        if (data.get("uplink"), data.get("prefix")) != (self.uplink, self.prefix):
            raise ValueError(f"state file {self.path} records the setup of {data.get('uplink')} for "
                             f"{data.get('prefix')}; undo that first, or give another --state-file")
        self.steps = list(data.get("steps", []))
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {"version": STATE_VERSION, "uplink": self.uplink, "prefix": self.prefix, "steps": self.steps}
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --- netlink helpers --------------------------------------------------------------------


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _need_index(ipr: IPRoute, ifname: str) -> int:
    index = _index(ipr, ifname)
    if index is None:
        raise ApplyError(errno.ENODEV, f"no interface named {ifname}")
    return index


def _has_address(ipr: IPRoute, index: int, address: str, prefixlen: int | None = None) -> bool:
    packed = ipaddress.IPv6Address(address)
    for msg in ipr.get_addr(index=index, family=AF_INET6):
        if ipaddress.IPv6Address(msg.get_attr("IFA_ADDRESS")) == packed and (
                prefixlen is None or msg["prefixlen"] == prefixlen):
            return True
    return False


def _route_spec(ipr: IPRoute, route: dict) -> dict | None:
    spec = dict(family=AF_INET6, dst=route["dst"], dst_len=route["dst_len"], table=route["table"],
                priority=route["metric"])
    if route.get("ifname"):
        index = _index(ipr, route["ifname"])
        if index is None:
            return None
        spec["oif"] = index
    if route.get("gateway"):
        spec["gateway"] = route["gateway"]
    return spec


def _has_route(ipr: IPRoute, route: dict) -> bool:
    spec = _route_spec(ipr, route)
    if spec is None:
        return False
    for msg in ipr.get_routes(family=AF_INET6, table=route["table"]):
        if (msg["dst_len"] == route["dst_len"]
                and ipaddress.IPv6Address(msg.get_attr("RTA_DST") or "::") == ipaddress.IPv6Address(route["dst"])
                and msg.get_attr("RTA_OIF") == spec.get("oif")
                and (msg.get_attr("RTA_GATEWAY") or None) == (route.get("gateway") or None)
                and (msg.get_attr("RTA_PRIORITY") or 0) == route["metric"]):
            return True
    return False


def _cacheinfo(valid: int, preferred: int) -> dict:
    return {"ifa_preferred": preferred, "ifa_valid": valid, "cstamp": 0, "tstamp": 0}


def _netlink(what: str, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except NetlinkError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else os.strerror(exc.code)
        raise ApplyError(exc.code, f"{what}: {reason}") from None


def forwarding_snapshot() -> dict[str, str]:
    """net.ipv6.conf.*.forwarding of every interface: writing `all` changes them all."""
    values = {}
    for path in sorted(netlink.SYSCTL_ROOT.joinpath("net/ipv6/conf").glob("*/forwarding")):
        try:
            values[f"net.ipv6.conf.{path.parent.name}.forwarding"] = path.read_text().strip()
        except OSError:
            pass
    return values


# --- apply ---------------------------------------------------------------------------------


class Applier:
    """Apply changes one by one, recording how to take each back."""

    def __init__(self, state: StateFile):
        self.state = state
        self.ipr = IPRoute()
        self.done: list[str] = []  # commands that changed something
        self.skipped: list[str] = []  # already in place

    def close(self) -> None:
        self.ipr.close()

    def _record(self, change: hostplan.Change, undo: dict) -> None:
        self.state.steps.append(undo)
        self.state.save()
        self.done.append(change.command)

    def apply(self, change: hostplan.Change) -> None:
        getattr(self, f"_{change.action}")(change, change.args)

    def _sysctl(self, change, args) -> None:
        key, value = args["key"], args["value"]
        old = netlink.read_sysctl(key)
        if old == value:
            self.skipped.append(change.command)
            return
        side = forwarding_snapshot() if key in ("net.ipv6.conf.all.forwarding",) else {}
        try:
            netlink.write_sysctl(key, value)
        except OSError as exc:
            raise ApplyError(exc.errno or errno.EIO, f"sysctl {key}={value}: {exc.strerror}") from None
        self._record(change, {"undo": "sysctl", "key": key, "old": old, "side_effects": side})

    def _link_add(self, change, args) -> None:
        if _index(self.ipr, args["ifname"]) is not None:
            self.skipped.append(change.command)
            return
        try:
            self.ipr.link("add", ifname=args["ifname"], kind=args["kind"])
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.ENOENT):
                raise DummyMissing(exc.code, f"ip link add {args['ifname']} type {args['kind']}: "
                                             "the kernel has no such link type") from None
            raise ApplyError(exc.code, f"{change.command}: {os.strerror(exc.code)}") from None
        self._record(change, {"undo": "link_del", "ifname": args["ifname"]})

    def _link_up(self, change, args) -> None:
        index = _need_index(self.ipr, args["ifname"])
        if self.ipr.get_links(index)[0]["flags"] & 1:
            self.skipped.append(change.command)
            return
        _netlink(change.command, self.ipr.link, "set", index=index, state="up")
        self._record(change, {"undo": "link_down", "ifname": args["ifname"]})

    def _addr_add(self, change, args) -> None:
        index = _need_index(self.ipr, args["ifname"])
        if _has_address(self.ipr, index, args["address"], args["prefixlen"]):
            self.skipped.append(change.command)
            return
        _netlink(change.command, self.ipr.addr, "add", index=index, address=args["address"],
                 prefixlen=args["prefixlen"], IFA_FLAGS=args.get("flags", 0))
        self._record(change, {"undo": "addr_del", "ifname": args["ifname"], "address": args["address"],
                              "prefixlen": args["prefixlen"]})

    def _addr_del(self, change, args) -> None:
        index = _need_index(self.ipr, args["ifname"])
        if not _has_address(self.ipr, index, args["address"], args["prefixlen"]):
            self.skipped.append(change.command)
            return
        _netlink(change.command, self.ipr.addr, "del", index=index, address=args["address"],
                 prefixlen=args["prefixlen"])
        self._record(change, {"undo": "addr_add", **args})

    def _route_del(self, change, args) -> None:
        if not _has_route(self.ipr, args):
            self.skipped.append(change.command)  # e.g. the kernel took it away with the addresses
            return
        _netlink(change.command, self.ipr.route, "del", **_route_spec(self.ipr, args))
        self._record(change, {"undo": "route_add", **args})


def apply_plan(plan: hostplan.Plan, state: StateFile) -> Applier:
    """Apply all changes; on failure take back this run's changes and re-raise."""
    applier = Applier(state)
    first_new = len(state.steps)
    try:
        for change in plan.changes:
            applier.apply(change)
    except BaseException:
        ours = state.steps[first_new:]
        del state.steps[first_new:]
        undo_steps(ours, applier.ipr)
        if state.steps:
            state.save()
        else:
            state.remove()
        applier.close()
        raise
    applier.close()
    return applier


# --- undo --------------------------------------------------------------------------------------

# phases: what we added goes first, then what we removed comes back, then sysctls, then links
_PHASE = {"addr_del": 0, "addr_add": 1, "route_add": 2, "sysctl": 3, "link_down": 4, "link_del": 5}


def undo_steps(steps: list[dict], ipr: IPRoute | None = None) -> list[str]:
    """Take back recorded steps, newest first within each phase; returns problems (never raises)."""
    own = ipr is None
    ipr = ipr or IPRoute()
    problems = []
    ordered = sorted(reversed(steps), key=lambda step: _PHASE.get(step.get("undo"), 9))
    try:
        for step in ordered:
            try:
                _undo_one(ipr, step)
            except (OSError, NetlinkError, KeyError, ValueError) as exc:
                problems.append(f"{step.get('undo')} {step.get('key') or step.get('address') or step.get('dst') or step.get('ifname')}: {exc}")
    finally:
        if own:
            ipr.close()
    return problems


def _undo_one(ipr: IPRoute, step: dict) -> None:
    kind = step["undo"]
    if kind == "sysctl":
        netlink.write_sysctl(step["key"], step["old"])
        for key, value in step.get("side_effects", {}).items():
            try:
                if netlink.read_sysctl(key) != value:
                    netlink.write_sysctl(key, value)
            except FileNotFoundError:
                pass  # that interface is gone
        return
    if kind in ("link_del", "link_down"):
        index = _index(ipr, step["ifname"])
        if index is not None:
            if kind == "link_del":
                _netlink(f"ip link del {step['ifname']}", ipr.link, "del", index=index)
            else:
                _netlink(f"ip link set {step['ifname']} down", ipr.link, "set", index=index, state="down")
        return
    if kind == "addr_del":
        index = _index(ipr, step["ifname"])
        if index is not None and _has_address(ipr, index, step["address"], step["prefixlen"]):
            _netlink(f"ip -6 addr del {step['address']}/{step['prefixlen']} dev {step['ifname']}",
                     ipr.addr, "del", index=index, address=step["address"], prefixlen=step["prefixlen"])
        return
    if kind == "addr_add":
        index = _need_index(ipr, step["ifname"])
        if _has_address(ipr, index, step["address"], step["prefixlen"]):
            return
        kwargs = dict(index=index, address=step["address"], prefixlen=step["prefixlen"],
                      IFA_FLAGS=step.get("flags", 0) & hostplan.SETTABLE_FLAGS)
        valid = step.get("valid", hostplan.FOREVER)
        preferred = step.get("preferred", hostplan.FOREVER)
        if valid != hostplan.FOREVER or preferred != hostplan.FOREVER:
            kwargs["IFA_CACHEINFO"] = _cacheinfo(max(valid, 1), min(preferred, max(valid, 1)))
        _netlink(f"ip -6 addr add {step['address']}/{step['prefixlen']} dev {step['ifname']}", ipr.addr, "add", **kwargs)
        return
    if kind == "route_add":
        if _has_route(ipr, step):
            return  # came back with its addresses
        spec = _route_spec(ipr, step)
        if spec is None:
            raise ApplyError(errno.ENODEV, f"no interface named {step['ifname']}")
        spec.update(proto=step.get("proto", hostplan.RTPROT_BOOT), type=step.get("type", 1))
        _netlink(f"ip -6 route add {step['dst']}/{step['dst_len']}", ipr.route, "add", **spec)
        return
    raise ValueError(f"unknown undo step {kind!r}")
