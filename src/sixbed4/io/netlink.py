"""Link, address, route and sysctl changes, through pyroute2 and /proc/sys.

`InterfaceSetup` records every change it makes so that `undo()` removes exactly
those, in reverse order: what the daemon added goes away on exit, what was
there before stays; `restore()` makes its addresses and routes again after the
kernel dropped them (a device set down).  With an undo record (io/undo.py) each
change is also written down before it is made, and `take_back()` removes what
a killed daemon left.  `LinkWatch` notices when an interface
the daemon depends on (its TUN device, its uplink, the router's proxy-ND
interface) is deleted under it, or set down and up again.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

if TYPE_CHECKING:
    from .undo import UndoRecord

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
SYSCTL_ROOT = Path("/proc/sys")
MAIN_TABLE = 254
LOCAL_TABLE = 255
IPV6_METRIC = 1024  # the metric of an IPv6 route added without one
IFF_UP = 0x1
NTF_PROXY = 0x08
RTN_UNICAST, RTN_UNREACHABLE = 1, 7
SIOCGIFFLAGS = 0x8913
TC_INGRESS, TC_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3  # clsact's two hooks (parents ffff:fff2, ffff:fff3)
# where add_bpf_filter puts its filters: after those tc numbers itself (49152 and down), so they run first
BPF_FILTER_PRIORITIES = range(0xFB00, 0xFB40)
BPF_FILTER_HANDLE = 1


class NetlinkSetupError(OSError):
    """A change the kernel refused; str() says which one and why."""


TUN_QUEUE = 2000  # packets: ~7 ms at 300,000 packets/s, ~2.5 MB of 1280-byte packets


def sysctl_path(key: str) -> Path:
    """net.ipv6.conf.eth0.forwarding -> /proc/sys/net/ipv6/conf/eth0/forwarding."""
    parts = key.split(".")
    # interface names may contain dots: net.ipv6.conf.<if>.<leaf>
    if len(parts) > 5 and parts[1] in ("ipv4", "ipv6") and parts[2] == "conf":
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return SYSCTL_ROOT.joinpath(*parts)


def read_sysctl(key: str) -> str:
    return sysctl_path(key).read_text().strip()


def write_sysctl(key: str, value: str) -> None:
    sysctl_path(key).write_text(f"{value}\n")


@dataclass
class _Change:
    """One change InterfaceSetup made: how to take it back, and (addresses, routes) how to make it again."""

    kind: str  # "sysctl", "link" (MTU, queue, state), "addr", "route", "neigh" (a proxy entry), "qdisc"
    #            (clsact) or "filter" (a tc filter that runs a BPF program)
    spec: dict  # sysctl: key and old value; link: the old settings; addr, route: the arguments of add and del;
    #             filter: device, hook, priority, handle and the name that tells it is ours
    extra: dict = field(default_factory=dict)  # what only adding needs (address flags)
    device: list | None = None  # [name, index] of the device it goes with (None: the namespace's own)

    @classmethod
    def from_record(cls, record: dict) -> "_Change":
        return cls(record["kind"], record["spec"], record.get("extra", {}), record.get("device"))

    def record(self) -> dict:
        return dict(kind=self.kind, spec=self.spec, extra=self.extra, device=self.device)


class InterfaceSetup:
    """Configure one interface and remember how to take it back (and how to make it again)."""

    def __init__(self, ifname: str, record: UndoRecord | None = None):
        self.ifname = ifname
        self.ipr = IPRoute()
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            self.ipr.close()
            raise NetlinkSetupError(errno.ENODEV, f"no interface named {ifname}")
        self.index = found[0]
        self._changes: list[_Change] = []
        self.record = record

    def _call(self, what: str, method: str, *args, **kwargs) -> None:
        try:
            getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise NetlinkSetupError(exc.code, f"{what} on {self.ifname}: {_reason(exc)}") from None

    def _change(self, kind: str, spec: dict, extra: dict | None = None, *, on_device: bool = True) -> _Change:
        return _Change(kind, spec, extra or {}, [self.ifname, self.index] if on_device else None)

    def _remember(self, change: _Change) -> None:
        if change not in self._changes:  # made again after the kernel dropped it: one record
            self._changes.append(change)
            if self.record:
                self.record.made(change.record())

    def _drop(self, change: _Change) -> None:
        self._changes.remove(change)
        if self.record:
            self.record.gone(change.record())

    def _make(self, change: _Change, make: Callable[[], bool | None], adopt: bool = False) -> None:
        """Record the change, then make it (`make` returns False if it was in place already).

        Recorded first, so that a kill between the two leaves a record of
        nothing rather than a change without one.  The record goes again if the
        kernel refused the change, or found it in place and it is not `adopt`ed.
        """
        new = change not in self._changes
        self._remember(change)
        try:
            made = make()
        except BaseException:
            if new:
                self._drop(change)
            raise
        if new and made is False and not adopt:
            self._drop(change)

    def set_sysctl(self, leaf: str, value: str, *, interface: str | None = None) -> None:
        """net.ipv6.conf.<ifname>.<leaf> = value, restored by undo(); `interface` "all" for the namespace-wide one."""
        key = f"net.ipv6.conf.{interface or self.ifname}.{leaf}"
        old = read_sysctl(key)
        if old != value:
            change = self._change("sysctl", dict(key=key, old=old), on_device=interface is None)
            self._make(change, lambda: write_sysctl(key, value))

    def link_up(self, mtu: int, queue: int = TUN_QUEUE) -> None:
        """MTU, transmit queue length and state up.

        The queue is where packets routed into a TUN device wait for the daemon;
        the kernel's 500 last 1.7 ms at 300,000 packets/s, shorter than a
        scheduling hiccup, so it is as long as the UDP socket's buffer instead.
        undo() sets back what was different (a device of the host's, -d).
        """
        link = self.ipr.get_links(self.index)[0]
        old = dict(mtu=link.get_attr("IFLA_MTU"), txqlen=link.get_attr("IFLA_TXQLEN"),
                   state="up" if link["flags"] & IFF_UP else "down")
        if old != dict(mtu=mtu, txqlen=queue, state="up"):
            self._make(self._change("link", dict(index=self.index, **old)),
                       lambda: self._call("setting MTU, queue length and state up", "link", "set", index=self.index,
                                          mtu=mtu, txqlen=queue, state="up"))

    def mac(self) -> bytes | None:
        """The interface's 6-byte hardware address, or None (a TUN device has none)."""
        text = self.ipr.get_links(self.index)[0].get_attr("IFLA_ADDRESS")
        raw = bytes.fromhex(text.replace(":", "")) if text else b""
        return raw if len(raw) == 6 else None

    def is_up(self) -> bool:
        return bool(self.ipr.get_links(self.index)[0]["flags"] & IFF_UP)

    def link_local(self) -> str | None:
        """An IPv6 link-local address of the interface (tentative ones count), or None."""
        for entry in self.ipr.get_addr(index=self.index, family=AF_INET6):
            if ipaddress.IPv6Address(entry.get_attr("IFA_ADDRESS")).is_link_local:
                return entry.get_attr("IFA_ADDRESS")
        return None

    def has_address(self, address: str, prefixlen: int) -> bool:
        packed = ipaddress.IPv6Address(address)
        for entry in self.ipr.get_addr(index=self.index, family=AF_INET6):
            if ipaddress.IPv6Address(entry.get_attr("IFA_ADDRESS")) == packed and entry["prefixlen"] == prefixlen:
                return True
        return False

    def add_address(self, address: str, prefixlen: int, *, prefix_route: bool = False, adopt: bool = False) -> None:
        """Add an address; one that is there already is left alone, or with `adopt` taken as ours (undo removes it)."""
        spec = dict(index=self.index, address=address, prefixlen=prefixlen)
        change = self._change("addr", spec, dict(IFA_FLAGS=IFA_F_NODAD | (0 if prefix_route else IFA_F_NOPREFIXROUTE)))
        self._make(change, lambda: self._add_address(change), adopt)

    def _add_address(self, change: _Change) -> bool:
        """Add the address; False if it is there already."""
        spec = change.spec
        if self.has_address(spec["address"], spec["prefixlen"]):
            return False
        self._call(f"adding address {spec['address']}/{spec['prefixlen']}", "addr", "add", **spec, **change.extra)
        return True

    def _route_spec(self, prefix: str, prefixlen: int, extra: dict) -> dict:
        if extra.get("type") == "unreachable":  # answered with ICMPv6 unreachable: no interface
            return dict(dst=prefix, dst_len=prefixlen, family=AF_INET6, **extra)
        return dict(dst=prefix, dst_len=prefixlen, oif=self.index, family=AF_INET6, **extra)

    def add_route(self, prefix: str, prefixlen: int, *, adopt: bool = False, **extra) -> None:
        """Add a route through this interface (kept as it is if this very route exists already; with
        `adopt` also taken as ours, so that undo removes it).

        With type="unreachable" it is a route through no interface that answers
        ICMPv6 unreachable (still one of this setup's changes, undone with them).

        Raises NetlinkSetupError if the kernel refuses it, also when another route
        for the prefix with the same metric is in the way (the kernel says "exists").
        """
        spec = self._route_spec(prefix, prefixlen, extra)
        self._make(self._change("route", spec, on_device="oif" in spec), lambda: self._add_route(spec), adopt)

    def _add_route(self, spec: dict) -> bool:
        """Add the route; False if it is there already."""
        try:
            self.ipr.route("add", **spec)
            return True
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and self.has_route(spec):
                return False
            what = f"adding route {spec['dst']}/{spec['dst_len']} via {self.ifname}"
            if exc.code == errno.EEXIST:
                raise NetlinkSetupError(exc.code, f"{what}: another route for {spec['dst']}/{spec['dst_len']} "
                                                  f"with metric {spec.get('priority', IPV6_METRIC)} is in the way"
                                        ) from None
            raise NetlinkSetupError(exc.code, f"{what}: {_reason(exc)}") from None

    def has_route(self, spec: dict) -> bool:
        """Whether the kernel has this route: prefix, device, gateway and metric as in `spec`."""
        dst = ipaddress.IPv6Address(spec["dst"])
        gateway = spec.get("gateway")
        for entry in self.ipr.get_routes(family=AF_INET6, table=MAIN_TABLE):
            if (entry["dst_len"] == spec["dst_len"] and entry.get_attr("RTA_OIF") == spec.get("oif")
                    and entry["type"] == (RTN_UNREACHABLE if spec.get("type") == "unreachable" else RTN_UNICAST)
                    and ipaddress.IPv6Address(entry.get_attr("RTA_DST") or "::") == dst
                    and (entry.get_attr("RTA_PRIORITY") or 0) == spec.get("priority", IPV6_METRIC)
                    and (gateway is None or entry.get_attr("RTA_GATEWAY") is not None
                         and ipaddress.IPv6Address(entry.get_attr("RTA_GATEWAY")) == ipaddress.IPv6Address(gateway))):
                return True
        return False

    def _forget(self, kind: str, spec: dict) -> bool:
        """Drop the record of a change taken back early; False if it was not ours."""
        for change in reversed(self._changes):
            if change.kind == kind and change.spec == spec:
                self._drop(change)
                return True
        return False

    def remove_address(self, address: str, prefixlen: int) -> None:
        """Remove an address that add_address() added (others are left alone)."""
        spec = dict(index=self.index, address=address, prefixlen=prefixlen)
        if self._forget("addr", spec) and self.has_address(address, prefixlen):
            self._call(f"removing address {address}/{prefixlen}", "addr", "del", **spec)

    def _delete(self, what: str, kind: str, spec: dict) -> None:
        """Delete a route or neighbour entry; one that is gone already is fine."""
        try:
            getattr(self.ipr, kind)("del", **spec)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise NetlinkSetupError(exc.code, f"removing {what} on {self.ifname}: {_reason(exc)}") from None

    def remove_route(self, prefix: str, prefixlen: int, **extra) -> None:
        """Remove a route that add_route() added with the same arguments (others are left alone)."""
        spec = self._route_spec(prefix, prefixlen, extra)
        if self._forget("route", spec):
            self._delete(f"route {prefix}/{prefixlen}", "route", spec)

    def drop_anycast(self, address: str) -> None:
        """Remove the kernel's local anycast route for `address` on this interface, if there is one.

        Not recorded: the kernel made it, with an address whose removal takes it away.
        """
        self._delete(f"the anycast address {address}", "route", dict(
            family=AF_INET6, dst=address, dst_len=128, type="anycast", table=LOCAL_TABLE, oif=self.index))

    def add_proxy_neighbour(self, address: str) -> None:
        """Answer Neighbor Solicitations for `address` on this interface (needs proxy_ndp and forwarding)."""
        change = self._change("neigh", dict(dst=address, ifindex=self.index, family=AF_INET6, flags=NTF_PROXY))
        self._make(change, lambda: self._add_proxy_neighbour(change))

    def _add_proxy_neighbour(self, change: _Change) -> bool:
        """Add the proxy entry; False if it is there already."""
        try:
            self.ipr.neigh("add", **change.spec)
            return True
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise NetlinkSetupError(exc.code, f"adding proxy neighbour {change.spec['dst']} on {self.ifname}: "
                                              f"{_reason(exc)}") from None

    def remove_proxy_neighbour(self, address: str) -> None:
        """Remove a proxy entry that add_proxy_neighbour() added."""
        spec = dict(dst=address, ifindex=self.index, family=AF_INET6, flags=NTF_PROXY)
        if self._forget("neigh", spec):
            self._delete(f"proxy neighbour {address}", "neigh", spec)

    def add_bpf_filter(self, hook: int, prog_fd: int, name: str) -> dict:
        """Run a BPF program (direct action) at tc's ingress or egress hook (TC_INGRESS, TC_EGRESS) of the
        device, as a filter of the clsact qdisc, which is added if the device has none; returns its spec
        (undo() removes both: the qdisc only if it holds no filter then).

        The filter takes the first free priority of BPF_FILTER_PRIORITIES.
        `name` (the program's name and kernel id) tells the filter from one
        that later took its place, for a take-back after a kill: a filter
        stays until it is removed, unlike a tcx link.
        """
        change = self._change("qdisc", dict(index=self.index, kind="clsact"))
        self._make(change, self._add_clsact)
        for prio in BPF_FILTER_PRIORITIES:
            spec = dict(index=self.index, parent=hook, prio=prio, handle=BPF_FILTER_HANDLE, name=name)
            try:
                self._make(self._change("filter", spec), lambda: self._call(
                    f"attaching {name}", "tc", "add-filter", "bpf", self.index, BPF_FILTER_HANDLE, parent=hook,
                    prio=prio, fd=prog_fd, name=name, direct_action=True))
                return spec
            except NetlinkSetupError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        raise NetlinkSetupError(errno.EBUSY, f"attaching {name} on {self.ifname}: tc filter priorities "
                                             f"{BPF_FILTER_PRIORITIES.start}-{BPF_FILTER_PRIORITIES.stop - 1} all taken")

    def _add_clsact(self) -> bool:
        """Add the clsact qdisc; False if the device has one already."""
        try:
            self.ipr.tc("add", "clsact", self.index)
            return True
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise NetlinkSetupError(exc.code, f"adding the clsact qdisc on {self.ifname}: {_reason(exc)}") from None

    def restore(self) -> None:
        """Make again the recorded addresses and routes that are gone; what the kernel refuses is logged.

        Setting a device down removes all its addresses and routes (unless
        keep_addr_on_down); setting it up again brings none of them back.
        """
        for change in list(self._changes):
            try:
                if change.kind == "addr":
                    self._add_address(change)
                elif change.kind == "route":
                    self._add_route(change.spec)
                elif change.kind == "neigh":
                    self._add_proxy_neighbour(change)
            except NetlinkSetupError as exc:
                log.error("%s", exc.strerror)

    def undo(self) -> None:
        """Take back every recorded change, newest first; never raises."""
        while self._changes:
            change = self._changes[-1]
            _take_back_one(self.ipr, change)
            self._drop(change)

    def close(self) -> None:
        self.ipr.close()


def _take_back_one(ipr: IPRoute, change: _Change) -> bool:
    """Undo one change; False if the kernel refused (the device may be gone already, and the change with it)."""
    try:
        if change.kind == "sysctl":
            write_sysctl(change.spec["key"], change.spec["old"])
        elif change.kind == "link":
            ipr.link("set", **change.spec)
        elif change.kind == "filter":
            return _remove_filter(ipr, change.spec)
        elif change.kind == "qdisc":
            return _remove_clsact(ipr, change.spec)
        else:
            getattr(ipr, change.kind)("del", **change.spec)
        return True
    except (OSError, NetlinkError) as exc:
        log.debug("undo %s %s: %s", change.kind, change.spec, exc)
        return False


def _remove_filter(ipr: IPRoute, spec: dict) -> bool:
    """Delete the filter if it is still ours (its name); False if it is gone, or another took its place."""
    for entry in ipr.get_filters(index=spec["index"], parent=spec["parent"]):
        options = entry.get_attr("TCA_OPTIONS")
        if (entry["info"] >> 16 == spec["prio"] and entry["handle"] == spec["handle"] and options is not None
                and options.get_attr("TCA_BPF_NAME") == spec["name"]):
            ipr.tc("del-filter", "bpf", spec["index"], spec["handle"], parent=spec["parent"], prio=spec["prio"])
            return True
    return False


def _remove_clsact(ipr: IPRoute, spec: dict) -> bool:
    """Delete the clsact qdisc unless it holds filters (someone else's, added since); False if it stays."""
    if any(entry["handle"] for hook in (TC_INGRESS, TC_EGRESS) for entry in ipr.get_filters(index=spec["index"],
                                                                                              parent=hook)):
        return False
    ipr.tc("del", "clsact", spec["index"])
    return True


def take_back(records: list[dict]) -> tuple[int, int]:
    """Undo the changes a killed daemon recorded, newest first: (taken back, gone with their device).

    A change on a device counts only while that device (name and index) is
    still there: a deleted device took its addresses, routes and sysctls along.
    """
    undone = gone = 0
    with IPRoute() as ipr:
        for record in reversed(records):
            change = _Change.from_record(record)
            if change.device and ipr.link_lookup(ifname=change.device[0]) != [change.device[1]]:
                gone += 1
                continue
            if _take_back_one(ipr, change):
                undone += 1
            else:
                gone += 1
    return undone, gone


def _reason(exc: NetlinkError) -> str:
    return exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)


class LinkGone(RuntimeError):
    """An interface the daemon depends on was deleted; str() says which."""


def uplink_for(ipv4: str) -> tuple[int, str] | None:
    """(index, name) of the interface holding `ipv4`, else of the one the kernel routes it through."""
    with IPRoute() as ipr:
        held = [a["index"] for a in ipr.get_addr(family=AF_INET) if a.get_attr("IFA_LOCAL") == ipv4]
        if held:
            index = held[0]
        else:
            try:
                index = ipr.route("get", dst=ipv4)[0].get_attr("RTA_OIF")
            except NetlinkError:  # no route (yet)
                return None
        if index is None:
            return None
        return index, ipr.get_links(index)[0].get_attr("IFLA_IFNAME")


def route_to(ipv4: str) -> tuple[str, str] | None:
    """(interface, source address) by which the kernel sends a datagram to `ipv4` now; None without a route."""
    with IPRoute() as ipr:
        try:
            route = ipr.route("get", dst=ipv4)[0]
        except NetlinkError:
            return None
        index, source = route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC")
        if index is None or source is None:
            return None
        return ipr.get_links(index)[0].get_attr("IFLA_IFNAME"), source


def ipv4_addresses(ifname: str) -> list[bytes]:
    """The IPv4 addresses of one interface, packed, primary first."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        return [socket.inet_aton(a.get_attr("IFA_LOCAL")) for a in ipr.get_addr(family=AF_INET, index=found[0])
                if a.get_attr("IFA_LOCAL")]


class LinkWatch:
    """The interfaces a daemon cannot work without, checked by index (renaming one is fine).

    One that is deleted ends the daemon (LinkGone).  One that is set down
    (`ip link set DEV down`) is not dead: that is logged once, and once more
    when it is up again; the kernel dropped its addresses and routes meanwhile,
    so a link with a `restore` callback gets its configuration back then.

    Helper threads a daemon cannot work without (the router's proxy ND
    responder) are watched too: one that ended ends the daemon as a deleted
    interface does.
    """

    def __init__(self) -> None:
        self.links: dict[int, str] = {}  # index -> what it is, e.g. "uplink eth0"
        self.threads: list[tuple[threading.Thread, str]] = []
        self.when_down: dict[int, str] = {}  # index -> what being down means for the daemon
        self.restorers: dict[int, Callable[[], None]] = {}
        self.down: set[int] = set()
        self.uplink: str | None = None
        self._ioctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a handle for SIOCGIFFLAGS

    @classmethod
    def tun_and_uplink(cls, setup: InterfaceSetup, ipv4: str,
                       restore: Callable[[], None] | None = None) -> "LinkWatch":
        """Watch the device `setup` configures and the uplink towards `ipv4` (see uplink_for).

        When the device is up again after being down, `restore` (default:
        setup.restore) makes its configuration again and logs what it cannot.
        """
        watch = cls()
        watch.add(setup.index, f"the TUN device {setup.ifname}",
                  "packets for it are dropped (drop reason tun_down) until it is up again",
                  restore or setup.restore)
        found = uplink_for(ipv4)
        if found is not None and found[1] != "lo":  # loopback cannot be deleted
            watch.uplink = found[1]
            watch.add(found[0], f"uplink {found[1]}", "nothing passes it until it is up again")
        return watch

    def add(self, index: int, what: str, when_down: str, restore: Callable[[], None] | None = None) -> None:
        """Watch interface `index`; `what` names it in the log, `when_down` says what its being down means.

        An interface with two roles (the uplink is the proxy-ND interface too) keeps its first.
        """
        if index in self.links:
            return
        self.links[index] = what
        self.when_down[index] = when_down
        if restore is not None:
            self.restorers[index] = restore

    def add_thread(self, thread: threading.Thread, what: str) -> None:
        self.threads.append((thread, what))

    def missing(self) -> str | None:
        """What is gone, e.g. "uplink eth0 was deleted", or None."""
        for index, what in self.links.items():
            try:
                socket.if_indextoname(index)  # one ioctl: cheap enough for every timer tick
            except OSError:
                return f"{what} was deleted"
        for thread, what in self.threads:
            if not thread.is_alive():
                return f"{what} stopped"
        return None

    def is_up(self, index: int) -> bool | None:
        """The interface's administrative state; None if it cannot be read (gone, or renamed this instant)."""
        flags = self.flags(index)
        return None if flags is None else bool(flags & IFF_UP)

    def flags(self, index: int) -> int | None:
        """The interface's IFF_* flags (one ioctl); None if they cannot be read."""
        try:
            name = socket.if_indextoname(index)
            request = fcntl.ioctl(self._ioctl, SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
        except OSError:
            return None
        return struct.unpack_from("16sH", request)[1]

    def check(self) -> None:
        """Raise LinkGone if a watched interface was deleted (or thread ended); log one that went down or came up."""
        gone = self.missing()
        if gone:
            raise LinkGone(gone)
        for index, what in self.links.items():
            up = self.is_up(index)
            if up is False and index not in self.down:
                self.down.add(index)
                log.warning("%s is down (not deleted): %s", what, self.when_down[index])
            elif up and index in self.down:
                self.down.discard(index)
                self._came_up(index, what)

    def _came_up(self, index: int, what: str) -> None:
        restore = self.restorers.get(index)
        log.warning("%s is up again%s", what, "; making its addresses and routes again" if restore else "")
        if restore is not None:
            restore()

    def guarding(self, on_tick):
        """A datapath on_tick that first checks the watched interfaces: LinkGone ends the datapath."""

        def tick(now: float) -> None:
            self.check()
            on_tick(now)

        return tick

    def explain(self, exc: Exception) -> str:
        """Why the datapath stopped: a deleted interface if there is one, else the error itself."""
        gone = self.missing()
        if gone and not isinstance(exc, LinkGone):
            return f"{gone} ({exc})"
        return str(exc)

    def close(self) -> None:
        self._ioctl.close()
