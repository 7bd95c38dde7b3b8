"""Read the host's state for host-setup: links, IPv6 addresses and routes (pyroute2), sysctls (/proc/sys)."""

from __future__ import annotations

import os
from pathlib import Path

from pyroute2 import IPRoute

from ..core import hostplan
from ..io import netlink

AF_INET6 = 10
IFF_UP = 0x1


def _links(ipr: IPRoute) -> dict[str, hostplan.Link]:
    links = {}
    for msg in ipr.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        links[name] = hostplan.Link(name=name, index=msg["index"], kind=kind, mac=msg.get_attr("IFLA_ADDRESS"),
                                    up=bool(msg["flags"] & IFF_UP))
    return links


def _addresses(ipr: IPRoute, names: dict[int, str]) -> list[hostplan.Address]:
    found = []
    for msg in ipr.get_addr(family=AF_INET6):
        cache = msg.get_attr("IFA_CACHEINFO") or {}
        flags = msg.get_attr("IFA_FLAGS")
        found.append(hostplan.Address(
            ifname=names.get(msg["index"], str(msg["index"])),
            address=msg.get_attr("IFA_ADDRESS"),
            prefixlen=msg["prefixlen"],
            scope=msg["scope"],
            flags=flags if flags is not None else msg["flags"],
            valid=cache.get("ifa_valid", hostplan.FOREVER),
            preferred=cache.get("ifa_preferred", hostplan.FOREVER),
        ))
    return found


def _routes(ipr: IPRoute, names: dict[int, str]) -> list[hostplan.Route]:
    found = []
    for msg in ipr.get_routes(family=AF_INET6, table=hostplan.MAIN_TABLE):
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        if table != hostplan.MAIN_TABLE or msg.get_attr("RTA_MULTIPATH"):
            continue
        oif = msg.get_attr("RTA_OIF")
        found.append(hostplan.Route(
            dst=msg.get_attr("RTA_DST") or "::",
            dst_len=msg["dst_len"],
            ifname=names.get(oif) if oif is not None else None,
            gateway=msg.get_attr("RTA_GATEWAY"),
            proto=msg["proto"],
            metric=msg.get_attr("RTA_PRIORITY") or 0,
            table=table,
            type=msg["type"],
        ))
    return found


def read_sysctls(keys) -> dict[str, str]:
    values = {}
    for key in keys:
        try:
            values[key] = netlink.read_sysctl(key)
        except OSError:
            pass  # an interface without IPv6, or a key this kernel lacks
    return values


def dummy_available() -> bool | None:
    """Whether `ip link add X type dummy` can work here, judged without creating anything."""
    if Path("/sys/module/dummy").exists():
        return True
    moddir = Path("/lib/modules") / os.uname().release
    try:
        for name in ("modules.builtin", "modules.dep"):
            if "/dummy.ko" in (moddir / name).read_text():
                return True
    except OSError:
        return None if moddir.exists() else False
    return False


def host_state(uplink: str) -> hostplan.HostState:
    with IPRoute() as ipr:
        links = _links(ipr)
        names = {link.index: link.name for link in links.values()}
        addresses = _addresses(ipr, names)
        routes = _routes(ipr, names)
    sysctls = read_sysctls(hostplan.sysctl_keys(uplink, links))
    return hostplan.HostState(links, addresses, routes, sysctls, dummy_available())
