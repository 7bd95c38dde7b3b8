"""Host setup for a 6bed4 router (the seed's walkthrough), as pure logic.

Input: what the host looks like (links, IPv6 addresses, IPv6 routes of the main
table, a few sysctls), as plain data gathered by `sixbed4.hostsetup.inspect`.
Output: a `Plan`, the list of changes that turn the host into one that routes
its /64 into the 6bed4 device while still serving on its own addresses, each
change with the `ip`/`sysctl` command an operator would type and the reason,
plus the misconfigurations found on the way.  Nothing here touches the system.

What the seed gets wrong, and what we do instead:

- the forwarding key is `net.ipv6.conf.IF.forwarding` (there is no
  `ip_forwarding` under net.ipv6.conf);
- `mc_forwarding` is read-only: the kernel sets it while a multicast routing
  daemon holds the multicast routing socket, so it is never written;
- the route the upstream should install is
  `ip -6 route add PREFIX/64 via <this host's link-local> dev <their interface>`
  (the seed's example has a wrong prefix, a mangled link-local and a /64 on it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

from . import addr

MAIN_TABLE = 254
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_RA = 9
SCOPE_GLOBAL = 0
SCOPE_LINK = 253
SCOPE_HOST = 254
FOREVER = 0xFFFFFFFF

IFA_F_TEMPORARY = 0x01  # a privacy address the kernel made from a mngtmpaddr (or SLAAC) address
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_HOMEADDRESS = 0x10
IFA_F_MANAGETEMPADDR = 0x100
IFA_F_NOPREFIXROUTE = 0x200
IFA_F_MCAUTOJOIN = 0x400
# the flags an address can be created with (the others are kernel state: tentative, dadfailed, ...)
SETTABLE_FLAGS = (IFA_F_NODAD | IFA_F_OPTIMISTIC | IFA_F_HOMEADDRESS | IFA_F_MANAGETEMPADDR
                  | IFA_F_NOPREFIXROUTE | IFA_F_MCAUTOJOIN)
_FLAG_WORDS = ((IFA_F_NODAD, "nodad"), (IFA_F_OPTIMISTIC, "optimistic"), (IFA_F_HOMEADDRESS, "home"),
               (IFA_F_MANAGETEMPADDR, "mngtmpaddr"), (IFA_F_NOPREFIXROUTE, "noprefixroute"),
               (IFA_F_MCAUTOJOIN, "autojoin"))

PROTO_NAMES = {RTPROT_KERNEL: "kernel", RTPROT_BOOT: "boot", 4: "static", RTPROT_RA: "ra", 16: "dhcp"}

DUMMY_PREFIXLEN = 112  # "certain to hold at least the port number" (the seed)
HOST_PREFIXLEN = 128

PLACEMENTS = ("dummy", "uplink", "loopback")


class PlanError(ValueError):
    """The host cannot be set up as asked; str() is the one-line reason."""


# --- observed state -------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str | None = None  # "dummy", "veth", ... (None: a physical or unknown device)
    mac: str | None = None
    up: bool = True


@dataclass(frozen=True)
class Address:
    ifname: str
    address: str
    prefixlen: int
    scope: int = SCOPE_GLOBAL
    flags: int = 0
    valid: int = FOREVER
    preferred: int = FOREVER

    @property
    def packed(self) -> bytes:
        return ipaddress.IPv6Address(self.address).packed

    @property
    def settable_flags(self) -> int:
        return self.flags & SETTABLE_FLAGS


@dataclass(frozen=True)
class Route:
    dst: str  # network address, "::" for the default route
    dst_len: int
    ifname: str | None = None
    gateway: str | None = None
    proto: int = RTPROT_BOOT
    metric: int = 1024
    table: int = MAIN_TABLE
    type: int = 1  # RTN_UNICAST

    @property
    def is_default(self) -> bool:
        return self.dst_len == 0


@dataclass
class HostState:
    links: dict[str, Link]
    addresses: list[Address]
    routes: list[Route]
    sysctls: dict[str, str]
    dummy_available: bool | None = None  # None: unknown

    def addresses_on(self, ifname: str) -> list[Address]:
        return [a for a in self.addresses if a.ifname == ifname]

    def link_local(self, ifname: str) -> str | None:
        for a in self.addresses_on(ifname):
            if a.scope == SCOPE_LINK and ipaddress.IPv6Address(a.address).is_link_local:
                return a.address
        return None


@dataclass(frozen=True)
class Options:
    uplink: str
    prefix: bytes  # the 8 bytes of the /64
    local: tuple[str, ...] = ()
    placement: str = "dummy"
    dummy: str = "dumbo0"
    force: bool = False

    @property
    def target(self) -> str:
        """The interface that receives the host's own addresses."""
        return {"dummy": self.dummy, "uplink": self.uplink, "loopback": "lo"}[self.placement]

    @property
    def target_prefixlen(self) -> int:
        return DUMMY_PREFIXLEN if self.placement == "dummy" else HOST_PREFIXLEN

    @property
    def prefix_text(self) -> str:
        return f"{addr.format_address(self.prefix + bytes(8))}/64"


# --- changes --------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One step: `action` and `args` for the applier, `command` and `why` for people."""

    action: str  # sysctl | link_add | link_up | addr_add | addr_del | route_del
    args: dict
    command: str
    why: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # misconfigurations, explained
    notes: list[str] = field(default_factory=list)  # what is fine, what we do not do, and why
    errors: list[str] = field(default_factory=list)  # refusals: nothing may be applied
    upstream_route: str | None = None

    def render(self, options: Options) -> str:
        """The plan as a shell script an operator can read (and run)."""
        lines = [f"# 6bed4 host-setup for {options.uplink}, prefix {options.prefix_text}"]
        lines += [f"# problem: {text}" for text in self.findings]
        lines += [f"# note: {text}" for text in self.notes]
        lines += [f"# REFUSED: {text}" for text in self.errors]
        if not self.changes:
            lines.append("# nothing to change: the host is set up already")
        for change in self.changes:
            lines.append(f"# {change.why}")
            lines.append(change.command)
        if self.upstream_route:
            lines.append("# the upstream router should route the /64 to this host (run on the upstream router):")
            lines.append(f"#   {self.upstream_route}")
        return "\n".join(lines) + "\n"


def in_prefix(packed: bytes, prefix: bytes) -> bool:
    return packed[:8] == prefix


def is_port0(packed: bytes) -> bool:
    """The form xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:0000:xxxx that no 6bed4 peer can have."""
    return addr.port_of(packed) == 0


def flag_words(flags: int) -> str:
    return "".join(f" {word}" for bit, word in _FLAG_WORDS if flags & bit)


def lifetime_words(a: Address) -> str:
    if a.valid == FOREVER and a.preferred == FOREVER:
        return ""
    return f" valid_lft {a.valid} preferred_lft {a.preferred}"


def addr_command(verb: str, address: str, prefixlen: int, ifname: str, flags: int = 0, extra: str = "") -> str:
    return f"ip -6 addr {verb} {address}/{prefixlen} dev {ifname}{flag_words(flags)}{extra}"


def route_text(route: Route) -> str:
    dst = "default" if route.is_default else f"{route.dst}/{route.dst_len}"
    text = dst
    if route.gateway:
        text += f" via {route.gateway}"
    if route.ifname:
        text += f" dev {route.ifname}"
    text += f" proto {PROTO_NAMES.get(route.proto, route.proto)} metric {route.metric}"
    if route.table != MAIN_TABLE:
        text += f" table {route.table}"
    return text


def sysctl_change(key: str, value: str, why: str) -> Change:
    return Change("sysctl", {"key": key, "value": value}, f"sysctl -w {key}={value}", why)


def _collision(packed: bytes) -> str:
    parts = addr.decode(packed)
    return (f"{addr.format_address(packed)} is not in port-0 form (xxxx:...:0000:xxxx): it is the 6bed4 address "
            f"of {parts.ipv4_text} port {parts.port} lanid {parts.lanid:#x} and would collide with a 6bed4 peer")


def compute_plan(state: HostState, options: Options) -> Plan:
    """The changes that make `state` what the seed describes; raises PlanError if impossible."""
    plan = Plan()
    uplink = options.uplink
    prefix = options.prefix
    prefix_text = options.prefix_text
    if uplink not in state.links:
        raise PlanError(f"no interface named {uplink}")
    if options.placement == "dummy" and options.dummy == uplink:
        raise PlanError(f"--dummy {options.dummy} is the uplink; use --on-uplink instead")
    target = options.target
    plen = options.target_prefixlen

    # --- IPv6 on the uplink -----------------------------------------------------------
    if "net.ipv6.conf.all.forwarding" not in state.sysctls:
        raise PlanError("this kernel has no IPv6 (there are no net.ipv6 sysctls: booted with ipv6.disable=1?)")
    key = f"net.ipv6.conf.{uplink}.disable_ipv6"
    if state.sysctls.get(key) == "1":
        plan.errors.append(f"IPv6 is disabled on {uplink} ({key} = 1): the router's native IPv6 goes through it; "
                           f"enable it (sysctl -w {key}=0), check the addresses it gets, and plan again")

    # --- which addresses are the host's own, and where they are -----------------
    in_64 = [a for a in state.addresses if a.scope == SCOPE_GLOBAL and in_prefix(a.packed, prefix)]
    # A /64 on the uplink makes the kernel treat the whole /64 as on-link there: it moves.
    # A shorter one's on-link route is less specific than the router's /64 route: it stays,
    # and keeps the rest of its prefix on the link.
    covering = [a for a in in_64 if a.ifname == uplink and a.prefixlen == 64]
    shorter = [a for a in in_64 if a.ifname == uplink and a.prefixlen < 64]
    bases = [a for a in covering if a.flags & IFA_F_MANAGETEMPADDR]
    # the kernel removes the temporary addresses made from a mngtmpaddr address with it
    temporary = [a for a in covering if a.flags & IFA_F_TEMPORARY] if bases else []
    on_uplink_covering = [a for a in covering if a not in temporary]
    already_off = [a for a in in_64 if a.ifname != uplink or a.prefixlen > 64]
    # the 6bed4 router's own address (the /64, its IPv4 and port) lives on its TUN device
    on_tun = [a for a in already_off if getattr(state.links.get(a.ifname), "kind", None) == "tun"]
    extra = []
    for text in options.local:
        try:
            packed = ipaddress.IPv6Address(text).packed
        except ValueError:
            raise PlanError(f"--local {text!r} is not an IPv6 address") from None
        if not in_prefix(packed, prefix):
            raise PlanError(f"--local {text} is not inside {prefix_text}")
        if any(a.packed == packed for a in in_64):
            continue
        if packed not in extra:
            extra.append(packed)

    own = on_uplink_covering + shorter + [a for a in already_off if a not in on_tun]
    for a in own + [Address(target, addr.format_address(p), plen) for p in extra]:
        if not is_port0(a.packed):
            message = _collision(a.packed)
            if options.force:
                plan.notes.append(message + " (kept because of --force)")
            else:
                plan.errors.append(message + "; renumber it to ...:0000:xxxx, or give --force")
    for a in on_uplink_covering:
        plan.findings.append(
            f"{a.address}/{a.prefixlen} on {uplink} covers the 6bed4 /64: the kernel treats the whole /64 as "
            f"on-link on {uplink}, so 6bed4 peers in it are unreachable; it moves to "
            f"{a.address}/{plen} on {target}")

    # --- misconfigurations: the /64 sent back to the uplink ---------------------------
    uplink_64_routes = [r for r in state.routes if r.table == MAIN_TABLE and r.dst_len == 64
                        and ipaddress.IPv6Address(r.dst).packed[:8] == prefix and r.ifname == uplink]
    for r in uplink_64_routes:
        where = f"back to {r.gateway}" if r.gateway else f"as on-link on {uplink} (to the upstream router)"
        plan.findings.append(
            f"route {route_text(r)}: the /64 is directed {where}; 6bed4 traffic for it must go into the "
            f"6bed4 device instead, so it is removed")
    elsewhere = [r for r in state.routes if r.table == MAIN_TABLE and r.dst_len == 64 and r.ifname != uplink
                 and ipaddress.IPv6Address(r.dst).packed[:8] == prefix]
    for r in elsewhere:
        plan.notes.append(f"route {route_text(r)} already takes the /64 elsewhere (the 6bed4 router's, "
                          "if it is running); left alone")

    # --- sysctls ---------------------------------------------------------------------
    sysctls = state.sysctls
    default_routes = [r for r in state.routes if r.table == MAIN_TABLE and r.is_default]
    ra_default = [r for r in default_routes if r.proto == RTPROT_RA and r.ifname == uplink]
    if ra_default:
        key = f"net.ipv6.conf.{uplink}.accept_ra"
        if sysctls.get(key) != "2":
            plan.changes.append(sysctl_change(
                key, "2", f"the default route ({route_text(ra_default[0])}) was learned from Router "
                          "Advertisements; with forwarding on, the kernel ignores RAs unless accept_ra=2, "
                          "and the default route would expire"))
        key = f"net.ipv6.conf.{uplink}.accept_ra_pinfo"
        if sysctls.get(key) != "0":
            plan.changes.append(sysctl_change(
                key, "0", "keep the RAs' default route but not their prefix information: it would put the "
                          "/64 back on-link on the uplink (and SLAAC addresses in it)"))
    elif not default_routes:
        plan.notes.append("there is no IPv6 default route; the router can only reach what the host reaches")
    for key, why in (
        ("net.ipv6.conf.all.forwarding", "forward IPv6 between the uplink and the 6bed4 device "
                                         "(the seed's 'ip_forwarding' key does not exist)"),
        (f"net.ipv6.conf.{uplink}.forwarding", f"forward IPv6 arriving on {uplink} (set by the line above "
                                              "too; kept explicit so undo knows)"),
    ):
        if sysctls.get(key) != "1":
            plan.changes.append(sysctl_change(key, "1", why))
    plan.notes.append(f"net.ipv6.conf.{uplink}.mc_forwarding is not written (the seed's sysctl -w fails): it is "
                      "read-only, the kernel sets it while a multicast routing daemon (e.g. pim6sd) runs")

    # --- the target interface ---------------------------------------------------------
    moves = on_uplink_covering or extra
    if options.placement == "dummy" and moves:
        link = state.links.get(target)
        if link is None:
            if state.dummy_available is False:
                raise PlanError(dummy_missing_message(options))
            plan.changes.append(Change("link_add", {"ifname": target, "kind": "dummy"},
                                       f"ip link add {target} type dummy",
                                       f"a dummy interface holds the host's own addresses as /{plen}"))
            plan.changes.append(Change("link_up", {"ifname": target}, f"ip link set {target} up",
                                       "addresses on a down interface are not used"))
        elif not link.up:
            plan.changes.append(Change("link_up", {"ifname": target}, f"ip link set {target} up",
                                       "addresses on a down interface are not used"))

    # --- move the own addresses -------------------------------------------------------------
    for a in bases:
        plan.notes.append(f"{a.address}: mngtmpaddr is dropped where it moves (the kernel takes it only on a /64, "
                          "and temporary addresses in the /64 would collide with 6bed4 peers); undo puts it back")
    for a in temporary:
        plan.notes.append(f"{a.address}/{a.prefixlen} on {uplink} is a temporary address made from "
                          f"{', '.join(b.address for b in bases)}: the kernel removes it with that /64 "
                          "(and makes new ones when undo puts it back)")
    for a in on_uplink_covering:
        new_flags = a.settable_flags & ~(IFA_F_NOPREFIXROUTE | IFA_F_MANAGETEMPADDR)
        if target == uplink:
            new_flags |= IFA_F_NODAD  # the host owned it a moment ago: no DAD pause for the servers
        add = Change("addr_add", {"ifname": target, "address": a.address, "prefixlen": plen, "flags": new_flags},
                     addr_command("add", a.address, plen, target, new_flags),
                     f"serve {a.address} as /{plen} on {target}: a longer match than the 6bed4 /64, "
                     "and port 0 keeps it apart from 6bed4 peers")
        delete = Change("addr_del", asdict(a), addr_command("del", a.address, a.prefixlen, uplink),
                        f"take the /{a.prefixlen} off {uplink} (same address, longer prefix follows)"
                        if target == uplink else f"take {a.address}/{a.prefixlen} off {uplink}")
        # make before break where the kernel allows it (an address is unique per interface only)
        plan.changes.extend((delete, add) if target == uplink else (add, delete))
    for packed in extra:
        text = addr.format_address(packed)
        plan.changes.append(Change("addr_add", {"ifname": target, "address": text, "prefixlen": plen,
                                                "flags": IFA_F_NODAD if target == uplink else 0},
                                   addr_command("add", text, plen, target, IFA_F_NODAD if target == uplink else 0),
                                   f"--local {text}: serve it as /{plen} on {target}"))
    for a in shorter:
        plan.notes.append(f"{a.address}/{a.prefixlen} on {uplink} is shorter than /64: it stays (its on-link route is "
                          "less specific than the router's /64 route, so it takes no 6bed4 traffic; removing it "
                          "would take the rest of its prefix off the link)")
    for a in already_off:
        if a in on_tun:
            plan.notes.append(f"{a.address}/{a.prefixlen} on {a.ifname}, a TUN device: the 6bed4 router's own "
                              "address, if it runs; left alone")
        elif a.ifname != uplink:
            plan.notes.append(f"{a.address}/{a.prefixlen} on {a.ifname} is already off the uplink's /64")
        else:
            plan.notes.append(f"{a.address}/{a.prefixlen} on {uplink} is already longer than /64")

    # --- routes left pointing the /64 at the uplink -------------------------------------------
    remaining_covering = {a.address for a in on_uplink_covering}
    for r in uplink_64_routes:
        auto = (r.proto == RTPROT_KERNEL and r.gateway is None and remaining_covering)
        why = ("the prefix route of the /64 addresses (removed by the kernel with them; "
               "deleted here if it is still there)" if auto else f"stop sending the /64 to {uplink}")
        plan.changes.append(Change("route_del", asdict(r), f"ip -6 route del {route_text(r)}", why))

    # --- what the upstream should do -------------------------------------------------------------
    link_local = state.link_local(uplink)
    if link_local:
        plan.upstream_route = f"ip -6 route add {prefix_text} via {link_local} dev IFACE   " \
                              f"(IFACE: the upstream router's interface toward this host's {uplink})"
    else:
        plan.notes.append(f"{uplink} has no link-local address (is it up?): the upstream cannot route the /64 here")
    plan.notes.append("if the upstream treats the /64 as on-link instead of routing it here, run the proxy: "
                      f"6bed4router ... --proxy-nd {uplink}  or  6bed4 proxy-nd --uplink {uplink} --prefix {prefix_text}")
    if sysctls.get(f"net.ipv6.conf.{uplink}.proxy_ndp") == "1":
        plan.notes.append(f"net.ipv6.conf.{uplink}.proxy_ndp is 1: kernel proxy entries cannot cover a /64, "
                          "the proxy-nd responder does not need it")
    return plan


def dummy_missing_message(options: Options) -> str:
    return (f"this kernel has no 'dummy' link type, so {options.dummy} cannot be created; "
            f"use --on-uplink (own addresses as /128 on {options.uplink}) "
            f"or --loopback (as /128 on lo, reachable from {options.uplink} only with the proxy-nd responder)")


def sysctl_keys(uplink: str, links) -> list[str]:
    """The sysctls host-setup reads: what it may change and what `all.forwarding` changes with it."""
    keys = ["net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding"]
    keys += [f"net.ipv6.conf.{uplink}.{leaf}" for leaf in
             ("forwarding", "accept_ra", "accept_ra_pinfo", "mc_forwarding", "proxy_ndp", "disable_ipv6")]
    keys += [f"net.ipv6.conf.{name}.forwarding" for name in links if name != uplink]
    return list(dict.fromkeys(keys))
