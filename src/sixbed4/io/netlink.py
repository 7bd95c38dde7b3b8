"""Link, address, route and sysctl changes, through pyroute2 and /proc/sys.

`InterfaceSetup` records every change it makes so that `undo()` removes exactly
those, in reverse order: what the daemon added goes away on exit, what was
there before stays.  `LinkWatch` notices when an interface the daemon depends on
(its TUN device, its uplink) is deleted under it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
NTF_PROXY = 0x08
IFF_UP = 0x1
SYSCTL_ROOT = Path("/proc/sys")


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


class InterfaceSetup:
    """Configure one interface and remember how to take it back."""

    def __init__(self, ifname: str):
        self.ifname = ifname
        self.ipr = IPRoute()
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            self.ipr.close()
            raise NetlinkSetupError(errno.ENODEV, f"no interface named {ifname}")
        self.index = found[0]
        self._undo: list[tuple[str, tuple, dict]] = []

    def _call(self, what: str, method: str, *args, **kwargs) -> None:
        try:
            getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise NetlinkSetupError(exc.code, f"{what} on {self.ifname}: {exc.args[1] if len(exc.args) > 1 else exc}") from None

    def set_sysctl(self, leaf: str, value: str, *, interface: str | None = None) -> None:
        """net.ipv6.conf.<ifname>.<leaf> = value, restored by undo(); `interface` "all" for the namespace-wide one."""
        key = f"net.ipv6.conf.{interface or self.ifname}.{leaf}"
        old = read_sysctl(key)
        if old != value:
            write_sysctl(key, value)
            self._undo.append(("sysctl", (key, old), {}))

    def link_up(self, mtu: int, queue: int = TUN_QUEUE) -> None:
        """MTU, transmit queue length and state up.

        The queue is where packets routed into a TUN device wait for the daemon;
        the kernel's 500 last 1.7 ms at 300,000 packets/s, shorter than a
        scheduling hiccup, so it is as long as the UDP socket's buffer instead.
        """
        self._call("setting MTU, queue length and state up", "link", "set", index=self.index, mtu=mtu,
                   txqlen=queue, state="up")

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

    def add_address(self, address: str, prefixlen: int, *, prefix_route: bool = False) -> None:
        if self.has_address(address, prefixlen):
            return
        flags = IFA_F_NODAD | (0 if prefix_route else IFA_F_NOPREFIXROUTE)
        self._call(
            f"adding address {address}/{prefixlen}",
            "addr",
            "add",
            index=self.index,
            address=address,
            prefixlen=prefixlen,
            IFA_FLAGS=flags,
        )
        self._undo.append(("addr", ("del",), dict(index=self.index, address=address, prefixlen=prefixlen)))

    def _route_spec(self, prefix: str, prefixlen: int, extra: dict) -> dict:
        if extra.get("type") == "unreachable":  # answered with ICMPv6 unreachable: no interface
            return dict(dst=prefix, dst_len=prefixlen, family=AF_INET6, **extra)
        return dict(dst=prefix, dst_len=prefixlen, oif=self.index, family=AF_INET6, **extra)

    def add_route(self, prefix: str, prefixlen: int, **extra) -> None:
        """A route via this interface (or, with type="unreachable", one that answers unreachable)."""
        spec = self._route_spec(prefix, prefixlen, extra)
        try:
            self.ipr.route("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkSetupError(exc.code, f"adding route {prefix}/{prefixlen} via {self.ifname}: {exc}") from None
            return
        self._undo.append(("route", ("del",), spec))

    def _forget(self, kind: str, kwargs: dict) -> bool:
        """Drop the undo entry of a change taken back early; False if it was not ours."""
        for index in range(len(self._undo) - 1, -1, -1):
            if self._undo[index][0] == kind and self._undo[index][2] == kwargs:
                del self._undo[index]
                return True
        return False

    def remove_address(self, address: str, prefixlen: int) -> None:
        """Remove an address that add_address() added (others are left alone)."""
        spec = dict(index=self.index, address=address, prefixlen=prefixlen)
        if self._forget("addr", spec):
            self._call(f"removing address {address}/{prefixlen}", "addr", "del", **spec)

    def remove_route(self, prefix: str, prefixlen: int, **extra) -> None:
        """Remove a route that add_route() added with the same arguments (others are left alone)."""
        spec = self._route_spec(prefix, prefixlen, extra)
        if self._forget("route", spec):
            try:
                self.ipr.route("del", **spec)
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise NetlinkSetupError(exc.code, f"removing route {prefix}/{prefixlen} via {self.ifname}: {exc}") from None

    def add_proxy_neighbour(self, address: str) -> None:
        """Answer Neighbor Solicitations for `address` on this interface (needs proxy_ndp and forwarding)."""
        spec = dict(dst=address, ifindex=self.index, family=AF_INET6, flags=NTF_PROXY)
        try:
            self.ipr.neigh("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkSetupError(exc.code, f"adding proxy neighbour {address} on {self.ifname}: {exc}") from None
            return
        self._undo.append(("neigh", ("del",), spec))

    def remove_proxy_neighbour(self, address: str) -> None:
        spec = dict(dst=address, ifindex=self.index, family=AF_INET6, flags=NTF_PROXY)
        if self._forget("neigh", spec):
            self._call(f"removing proxy neighbour {address}", "neigh", "del", **spec)

    def undo(self) -> None:
        """Take back every recorded change, newest first; never raises."""
        while self._undo:
            kind, args, kwargs = self._undo.pop()
            try:
                if kind == "sysctl":
                    write_sysctl(*args)
                else:
                    getattr(self.ipr, kind)(*args, **kwargs)
            except (OSError, NetlinkError) as exc:
                # the device may be gone already, which removed the change with it
                log.debug("undo %s %s: %s", kind, kwargs or args, exc)

    def close(self) -> None:
        self.ipr.close()


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


class LinkWatch:
    """The interfaces a daemon cannot work without, checked by index (renaming one is fine)."""

    def __init__(self) -> None:
        self.links: dict[int, str] = {}  # index -> what it is, e.g. "uplink eth0"
        self.uplink: str | None = None

    @classmethod
    def tun_and_uplink(cls, setup: InterfaceSetup, ipv4: str) -> "LinkWatch":
        """Watch the device `setup` configures and the uplink towards `ipv4` (see uplink_for)."""
        watch = cls()
        watch.add(setup.index, f"the TUN device {setup.ifname}")
        found = uplink_for(ipv4)
        if found is not None and found[1] != "lo":  # loopback cannot be deleted
            watch.uplink = found[1]
            watch.add(found[0], f"uplink {found[1]}")
        return watch

    def add(self, index: int, what: str) -> None:
        self.links[index] = what

    def missing(self) -> str | None:
        """The first watched interface that no longer exists, or None."""
        for index, what in self.links.items():
            try:
                socket.if_indextoname(index)  # one ioctl: cheap enough for every timer tick
            except OSError:
                return what
        return None

    def check(self) -> None:
        """Raise LinkGone if a watched interface was deleted."""
        gone = self.missing()
        if gone:
            raise LinkGone(f"{gone} was deleted")

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
            return f"{gone} was deleted ({exc})"
        return str(exc)
