"""The LAN gateway's decisions, sans IO (`6bed4peer --lan IF`).

The peer holds a /114: lanid 1 is its own, lanids 2..0x3fff are for the
devices behind it (PROTOCOL.md section 1).  SLAAC needs a /64, so a LAN gets
up to two kinds of addresses, by `--lan-mode`:

  routed  lanids of the /114, handed out by a DHCPv6 server (dnsmasq) and
          routed to the LAN; the Router Advertisement has the Managed flag and
          the /114 as on-link only (L=1, A=0).  For devices that ask by DHCPv6.
  nat66   a stable ULA /64 (RFC 4193) advertised for SLAAC (L=1, A=1); where it
          leaves through the tunnel, nftables masquerades it to the peer's own
          6bed4 address.  For devices that only do SLAAC.
  both    the two at once (the default); RFC 6724 makes a device that has both
          prefer its global address for Internet destinations.

`plan(config, lease)` says what the LAN looks like for a lease (or none yet):
the `Fact`s to put in place (addresses, routes, a proxy neighbour), the range
the DHCPv6 server hands out and what the RAs advertise, with the DNS
resolvers of `--lan-dns` (RFC 8106 in the RAs, and by DHCPv6).  `Changes.between()`
says what to take away and what to add when the lease changes (NAT
rebinding).  `Advertiser` decides when RAs go out and what they say.
`dnsmasq_argv()` and `nft_ruleset()` are the DHCPv6 server's command line and
the translation rules; `ula_prefix()` generates the ULA the IO side keeps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
import struct
from dataclasses import dataclass

from . import addr, icmp6
from .peer import Lease
from .stats import Counters

ROUTED, NAT66, BOTH = "routed", "nat66", "both"
MODES = (ROUTED, NAT66, BOTH)
CLOSED, OPEN = "closed", "open"
INBOUND = (CLOSED, OPEN)  # --lan-inbound
# ICMPv6 from the Internet that passes a closed LAN (RFC 4890 4.3.1: errors, echo)
INBOUND_ICMP = ("destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-request")
SELF = "self"  # --lan-dns self: a resolver on the gateway host, at the gateway's own LAN address
MAX_RESOLVERS = 3  # what clients use of an RDNSS list (RFC 8106 5.3.1)

# Lifetimes, chosen so that renumbering is fast (see docs and README "home gateway"):
DHCP_LEASE = 120  # s: dnsmasq's minimum; clients renew (T1) after 60 s, when the old address is refused
PREFIX_LIFETIME = 1800  # s: valid and preferred lifetime of advertised prefixes
ROUTER_LIFETIME = 1800  # s: how long LAN hosts keep the gateway as default router without a new RA
RESOLVER_LIFETIME = 1800  # s: of the announced DNS resolvers (RFC 8106 5.1: at least 3 x MaxRtrAdvInterval)
# When RAs go out (RFC 4861 section 6.2.4 and 10):
RA_INTERVAL = (200.0, 600.0)  # s: MinRtrAdvInterval, MaxRtrAdvInterval
FAST_ADVERTS = 3  # after a start or a change, this many RAs ...
FAST_INTERVAL = 4.0  # ... this far apart (at least MIN_DELAY_BETWEEN_RAS)
MIN_DELAY_BETWEEN_RAS = 3.0  # s between multicast RAs
MAX_UNICAST_PENDING = 8  # RSs answered by unicast per tick; more wait for the next multicast RA
MAX_WITHDRAWN = 4  # old /114s still announced with zero lifetimes (the newest ones)

# the ICMPv6 types the gateway listens to on the LAN
LAN_ICMP_TYPES = (icmp6.ROUTER_SOLICIT,)

_NFT_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")


def routes_lanids(mode: str) -> bool:
    """Does this mode hand out lanids of the /114 (by DHCPv6)?"""
    return mode in (ROUTED, BOTH)


def translates(mode: str) -> bool:
    """Does this mode advertise a ULA /64 and translate it (nat66)?"""
    return mode in (NAT66, BOTH)


def filters_inbound(mode: str, inbound: str) -> bool:
    """Does the gateway filter what the Internet sends to LAN hosts (their addresses are global, and closed)?"""
    return routes_lanids(mode) and inbound == CLOSED


def uses_nft(mode: str, inbound: str) -> bool:
    """Does the gateway need an nftables table (translation, or the inbound filter)?"""
    return translates(mode) or filters_inbound(mode, inbound)


def parse_resolvers(text: str) -> tuple[str, ...]:
    """--lan-dns: up to MAX_RESOLVERS items, comma-separated, each `self` or a unicast IPv6 address.

    Returns the items (addresses in their short form); ValueError says what is wrong.
    """
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"--lan-dns {text!r}: an empty item; give addresses or self, comma-separated")
    if len(items) > MAX_RESOLVERS:
        raise ValueError(f"--lan-dns {text!r}: at most {MAX_RESOLVERS} resolvers (LAN devices use no more)")
    resolvers = []
    for item in items:
        if item == SELF:
            resolvers.append(SELF)
            continue
        try:
            address = ipaddress.IPv6Address(item)
        except ValueError:
            raise ValueError(f"--lan-dns {item!r}: neither an IPv6 address nor self") from None
        if (address.is_multicast or address.is_link_local or address.is_unspecified or address.is_loopback
                or address.ipv4_mapped is not None):
            raise ValueError(f"--lan-dns {item}: not an address LAN devices can send to "
                             "(use a global or ULA unicast address, or self)")
        resolvers.append(str(address))
    if len(set(resolvers)) != len(resolvers):
        raise ValueError(f"--lan-dns {text!r}: an item given twice")
    return tuple(resolvers)


# --- the ULA prefix (RFC 4193) --------------------------------------------------------


class UlaError(ValueError):
    """A kept ULA prefix that is not usable; str() says why."""


NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def ntp_timestamp(unix_time: float) -> int:
    """A 64-bit NTP timestamp: seconds since 1900 in the high 32 bits, the fraction in the low 32."""
    seconds = int(unix_time) + NTP_EPOCH_OFFSET
    fraction = int((unix_time % 1) * (1 << 32))
    return ((seconds & 0xFFFFFFFF) << 32) | fraction


def eui64(mac: bytes) -> bytes:
    """The modified EUI-64 of a 48-bit MAC (RFC 4291 appendix A): ff:fe in the middle, U/L bit flipped."""
    return bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def ula_prefix(ntp_time: int, eui: bytes, subnet: int = 0) -> bytes:
    """A ULA /64 by RFC 4193 section 3.2.2: fd00::/8, 40 bits of SHA-1(time, EUI-64), a 16-bit subnet."""
    digest = hashlib.sha1(struct.pack("!Q", ntp_time) + eui).digest()
    return b"\xfd" + digest[-5:] + struct.pack("!H", subnet) + bytes(8)


def format_prefix64(prefix: bytes) -> str:
    return f"{ipaddress.IPv6Address(prefix)}/64"


def parse_ula(text: str) -> bytes:
    """A kept ULA: one fd00::/8 /64 (the first line that is not a comment)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UlaError("no prefix in it")
    try:
        network = ipaddress.IPv6Network(lines[0], strict=True)
    except ValueError as exc:
        raise UlaError(f"{lines[0]!r} is not an IPv6 prefix ({exc})") from None
    if network.prefixlen != 64 or not network.subnet_of(ipaddress.IPv6Network("fd00::/8")):
        raise UlaError(f"{lines[0]} is not a ULA /64 (fdxx:xxxx:xxxx:xxxx::/64)")
    return network.network_address.packed


def ula_file_text(prefix: bytes, interface: str) -> str:
    return (f"# the ULA /64 of the LAN on {interface} (RFC 4193), generated once by 6bed4peer and kept:\n"
            "# LAN devices keep their addresses across restarts.  Delete this file for a new one.\n"
            f"{format_prefix64(prefix)}\n")


# --- what the LAN looks like for a lease ------------------------------------------------


@dataclass(frozen=True, order=True)
class Fact:
    """One thing the gateway puts in place, and takes away again.

    kind:  "address"      address/prefixlen on the LAN interface, with its prefix route
           "no-anycast"   not the kernel's Subnet-Router anycast address (RFC 4291 2.6.1) that the
                          address before it brings along on a forwarding interface: that is
                          lanid 0, the router, which must stay on the far side of the tunnel
           "tunnel-route" prefix/prefixlen via the router (fe80::) on the TUN device
           "unreachable"  prefix/prefixlen answered with ICMPv6 unreachable (no loops)
           "proxy"        the gateway answers Neighbor Solicitations for address on the LAN
    """

    order: int  # adding goes up this order, removing down it
    kind: str
    address: str
    prefixlen: int = 128

    def __str__(self) -> str:
        return f"{self.kind} {self.address}/{self.prefixlen}"


def _fact(kind: str, address: bytes, prefixlen: int = 128) -> Fact:
    order = ("address", "no-anycast", "tunnel-route", "unreachable", "proxy").index(kind)
    return Fact(order, kind, addr.format_address(address), prefixlen)


@dataclass(frozen=True)
class LanConfig:
    interface: str
    mode: str = BOTH
    ula: bytes | None = None  # the ULA /64 (16 bytes); needed when the mode translates
    mac: bytes | None = None  # the LAN interface's MAC: the RAs' source link-layer address option
    tunnel: str = "6bed4"  # the TUN device: where translated traffic leaves
    inbound: str = CLOSED  # what the Internet may open to routed LAN hosts
    dns: tuple[str, ...] = ()  # --lan-dns: addresses, or SELF (see parse_resolvers)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"LAN mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.inbound not in INBOUND:
            raise ValueError(f"LAN inbound {self.inbound!r} is not one of {', '.join(INBOUND)}")
        if translates(self.mode) and self.ula is None:
            raise ValueError(f"LAN mode {self.mode} needs a ULA prefix")


@dataclass(frozen=True)
class LanPlan:
    facts: frozenset[Fact] = frozenset()
    dhcp_range: tuple[str, str] | None = None  # first and last address the DHCPv6 server hands out
    prefixes: tuple[icmp6.PrefixInfo, ...] = ()  # what the RAs advertise
    managed: bool = False  # the RAs' M flag: ask DHCPv6 for addresses
    default_router: bool = False  # the RAs' router lifetime is not 0: the tunnel works
    resolvers: tuple[bytes, ...] = ()  # the DNS resolvers announced (RAs and DHCPv6)

    def describe(self) -> str:
        parts = [f"{addr.format_address(p.prefix)}/{p.length}" + (" (SLAAC)" if p.flags & icmp6.PIO_AUTONOMOUS
                                                                   else " (DHCPv6)") for p in self.prefixes]
        if self.resolvers:
            parts.append("DNS " + " ".join(addr.format_address(r) for r in self.resolvers))
        return ", ".join(parts) if parts else "nothing yet"


def gateway_ula_address(config: LanConfig) -> bytes:
    """The gateway's own address in the ULA /64: ::1."""
    return config.ula[:8] + bytes(7) + b"\x01"


def resolvers(config: LanConfig, lease: Lease | None) -> tuple[bytes, ...]:
    """The --lan-dns resolvers as addresses: SELF is the gateway's stable ULA where it has one,
    else its /114 address (lanid 1, which moves with the /114), else none yet."""
    found = []
    for item in config.dns:
        if item != SELF:
            found.append(ipaddress.IPv6Address(item).packed)
        elif translates(config.mode):
            found.append(gateway_ula_address(config))
        elif lease is not None and routes_lanids(config.mode):
            found.append(lease.address)
    return tuple(dict.fromkeys(found))  # self may also be given as an address


def plan(config: LanConfig, lease: Lease | None) -> LanPlan:
    """What the gateway puts on the LAN for `lease` (None: no /114 yet, or withdrawn)."""
    facts: set[Fact] = set()
    prefixes: list[icmp6.PrefixInfo] = []
    dhcp_range = None
    if translates(config.mode):
        facts.add(_fact("address", gateway_ula_address(config), 64))
        prefixes.append(icmp6.PrefixInfo(config.ula, 64, icmp6.PIO_ONLINK | icmp6.PIO_AUTONOMOUS,
                                         PREFIX_LIFETIME, PREFIX_LIFETIME))
    if lease is not None:
        # lanid 0 is the router as this peer sees it: through the tunnel, never on the LAN
        facts.add(_fact("tunnel-route", lease.router_address))
        if routes_lanids(config.mode):
            facts.add(_fact("address", lease.address, 114))  # the /114 is on-link on the LAN
            facts.add(_fact("no-anycast", lease.router_address))
            facts.add(_fact("proxy", lease.router_address))  # so that LAN hosts reach lanid 0 too
            first, last = lease.offer_range
            dhcp_range = (addr.format_address(first), addr.format_address(last))
            prefixes.insert(0, icmp6.PrefixInfo(lease.prefix114, 114, icmp6.PIO_ONLINK,
                                                PREFIX_LIFETIME, PREFIX_LIFETIME))
        else:
            # nobody on the LAN holds lanids: without this, a packet for one would be routed
            # through the tunnel back to the router, and come back, until its hop limit ran out
            facts.add(_fact("unreachable", lease.prefix114, 114))
    return LanPlan(frozenset(facts), dhcp_range, tuple(prefixes),
                   managed=lease is not None and routes_lanids(config.mode), default_router=lease is not None,
                   resolvers=resolvers(config, lease))


@dataclass(frozen=True)
class Changes:
    """From one plan to the next: what to take away (in this order), what to add, and the server."""

    remove: tuple[Fact, ...]
    add: tuple[Fact, ...]
    restart_server: bool  # the DHCPv6 range changed (or appeared, or went), or the resolvers it hands out

    @classmethod
    def between(cls, old: LanPlan, new: LanPlan) -> "Changes":
        return cls(tuple(sorted(old.facts - new.facts, reverse=True)), tuple(sorted(new.facts - old.facts)),
                   old.dhcp_range != new.dhcp_range or old.resolvers != new.resolvers)


# --- the child daemon and the translation ------------------------------------------


def dnsmasq_argv(binary: str, interface: str, dhcp_range: tuple[str, str], lease_file: str, *,
                 resolvers: tuple[bytes, ...] = (), user: str | None = None, verbose: bool = False) -> list[str]:
    """dnsmasq as a DHCPv6 server only: no DNS, no RAs (ours), no pid file, logs on stderr.

    It hands out `resolvers` (DHCPv6 option 23); without them, no DNS option
    (with --port=0 dnsmasq does not name itself).

    It serves the range on `interface` because the gateway's /114 address is
    there (dnsmasq picks a range by the addresses of the interface a request
    came in on).  The lease file outlives a restart for a new range: knowing the
    old leases, dnsmasq answers their renewals with zero lifetimes (RFC 8415
    18.3.4), so hosts drop the old address at once instead of when it expires.
    """
    first, last = dhcp_range
    argv = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--log-facility=-",
            f"--interface={interface}", "--bind-interfaces", f"--dhcp-range={first},{last},114,{DHCP_LEASE}",
            f"--dhcp-leasefile={lease_file}", "--pid-file"]
    if resolvers:
        argv.append("--dhcp-option=option6:dns-server" + "".join(f",[{addr.format_address(r)}]" for r in resolvers))
    if user:
        argv.append(f"--user={user}")
    if verbose:
        argv.append("--log-dhcp")
    return argv


def nft_name_problem(name: str) -> str | None:
    """Why an interface name cannot be written into the nftables rules, or None."""
    if not _NFT_NAME.fullmatch(name):
        return f"interface name {name!r} cannot be used in nftables rules (letters, digits, _ . @ + - only)"
    return None


def nft_table(interface: str) -> str:
    """The table of the gateway on `interface`: one per LAN, so that nothing else is touched."""
    return "sixbed4_lan_" + re.sub(r"[^A-Za-z0-9_]", "_", interface)


def nft_ruleset(config: LanConfig) -> str:
    """The gateway's table: the ULA's translation and the filter of what comes in, as the mode needs them.

    The ULA /64 leaves through the tunnel as the peer's address: masquerade
    rather than snat to a fixed address, because after NAT rebinding the TUN
    device holds the new address, and the kernel forgets the translations of
    the old one when it goes.  The filter sits on the forward hook, which also
    sees what the kernel fast path puts into the TUN device (its packets are
    forwarded by the kernel from there), so it holds with the fast path too.
    """
    table = nft_table(config.interface)
    chains = []
    if translates(config.mode):
        chains.append("\tchain postrouting {\n"
                      "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
                      f'\t\toifname "{config.tunnel}" ip6 saddr {format_prefix64(config.ula)} masquerade\n'
                      "\t}\n")
    if filters_inbound(config.mode, config.inbound):
        inbound = f'iifname "{config.tunnel}" oifname "{config.interface}"'
        chains.append("\tchain forward {\n"
                      "\t\ttype filter hook forward priority filter; policy accept;\n"
                      f"\t\t{inbound} ct state established,related accept\n"
                      f"\t\t{inbound} icmpv6 type {{ {', '.join(INBOUND_ICMP)} }} accept\n"
                      f'\t\t{inbound} counter drop comment "unsolicited, --lan-inbound closed"\n'
                      "\t}\n")
    return f"table ip6 {table} {{\n" + "".join(chains) + "}\n"


def nft_replace(config: LanConfig) -> str:
    """nft -f input that replaces the table atomically (creating it first, so that delete cannot fail)."""
    table = nft_table(config.interface)
    return f"table ip6 {table}\ndelete table ip6 {table}\n" + nft_ruleset(config)


def nft_delete(config: LanConfig) -> str:
    return f"delete table ip6 {nft_table(config.interface)}\n"


# --- Router Advertisements on the LAN ----------------------------------------------


def solicitation_problem(message: bytes, hop_limit: int | None, source: bytes) -> str | None:
    """Why an RS from the LAN must be dropped (a drop reason), or None (RFC 4861 section 6.1.1).

    `message` is the ICMPv6 message as a raw socket delivers it (the kernel
    checked its checksum); `hop_limit` comes from IPV6_HOPLIMIT.
    """
    if hop_limit != 255:
        return "nd_bad_hoplimit"
    if len(message) < 8 or message[0] != icmp6.ROUTER_SOLICIT or message[1] != 0:
        return "nd_malformed"
    try:
        options = icmp6.nd_options(message, 8)
    except icmp6.NdError as error:
        return error.reason
    if source == icmp6.UNSPECIFIED and any(kind == icmp6.OPT_SOURCE_LLADDR for kind, _ in options):
        return "nd_malformed"
    return None


class Advertiser:
    """When Router Advertisements go out on the LAN and what they say (RFC 4861 section 6.2).

    Multicast RAs go out FAST_ADVERTS times after a start or a change, then
    every RA_INTERVAL (random within it), never closer than
    MIN_DELAY_BETWEEN_RAS; an RS from a link-local address is answered by
    unicast at the next tick.  A /114 that is no longer served stays in the RAs
    with zero lifetimes for PREFIX_LIFETIME, so that every host that heard it
    drops it, also one that missed the first RAs after the change; so does a
    resolver no longer announced (the /114 address of `--lan-dns self`), for
    RESOLVER_LIFETIME.
    """

    def __init__(self, mac: bytes | None = None, rng: random.Random | None = None,
                 counters: Counters | None = None):
        self.mac = mac
        self.rng = rng or random.Random()
        self.counters = counters or Counters()
        self.plan = LanPlan()
        self._withdrawn: dict[tuple[bytes, int], tuple[float, icmp6.PrefixInfo]] = {}
        self._withdrawn_resolvers: dict[bytes, float] = {}  # address -> until when
        self._next_multicast: float | None = None
        self._last_multicast = float("-inf")
        self._fast_left = 0
        self._unicast: list[bytes] = []
        self._spoken = False

    def update(self, plan: LanPlan, now: float) -> None:
        """A new plan: advertise it soon and a few times, and withdraw what it no longer has."""
        keep = {(p.prefix, p.length) for p in plan.prefixes}
        for old in self.plan.prefixes:
            if (old.prefix, old.length) not in keep:
                self._withdrawn[(old.prefix, old.length)] = (now + PREFIX_LIFETIME, old)
        for key in keep:
            self._withdrawn.pop(key, None)
        while len(self._withdrawn) > MAX_WITHDRAWN:
            del self._withdrawn[min(self._withdrawn, key=lambda k: self._withdrawn[k][0])]
        for old in self.plan.resolvers:
            if old not in plan.resolvers:
                self._withdrawn_resolvers[old] = now + RESOLVER_LIFETIME
        for address in plan.resolvers:
            self._withdrawn_resolvers.pop(address, None)
        while len(self._withdrawn_resolvers) > MAX_RESOLVERS:
            del self._withdrawn_resolvers[min(self._withdrawn_resolvers, key=self._withdrawn_resolvers.get)]
        self.plan = plan
        self._fast_left = FAST_ADVERTS
        self._multicast_soon(now)

    def solicited(self, message: bytes, hop_limit: int | None, source: bytes, now: float) -> None:
        """An RS arrived on the LAN from `source` (16 bytes)."""
        problem = solicitation_problem(message, hop_limit, source)
        if problem is not None:
            self.counters.drop(problem)
            return
        self.counters.rs_received += 1
        if source[:2] == b"\xfe\x80" and (source in self._unicast or len(self._unicast) < MAX_UNICAST_PENDING):
            if source not in self._unicast:
                self._unicast.append(source)
        else:
            self._multicast_soon(now)

    def _multicast_soon(self, now: float) -> None:
        soon = max(now, self._last_multicast + MIN_DELAY_BETWEEN_RAS)
        if self._next_multicast is None or soon < self._next_multicast:
            self._next_multicast = soon

    def _silent(self) -> bool:
        """Nothing to say yet: no prefix, no routership, nothing said before that needs taking back."""
        return not (self.plan.prefixes or self.plan.default_router or self._withdrawn or self._withdrawn_resolvers
                    or self._spoken)

    def due(self, now: float) -> list[tuple[bytes, bytes]]:
        """The RAs to send now: (destination, ICMPv6 message) pairs; the kernel fills in the checksum."""
        if self._silent():
            self._unicast = []
            return []
        self._spoken = True
        out = []
        if self._unicast:
            message = self.advert(now)
            out = [(source, message) for source in self._unicast]
            self._unicast = []
        if self._next_multicast is not None and now >= self._next_multicast:
            out.append((icmp6.ALL_NODES, self.advert(now)))
            self._last_multicast = now
            if self._fast_left > 0:
                self._fast_left -= 1
            self._next_multicast = now + (FAST_INTERVAL if self._fast_left > 0 else self.rng.uniform(*RA_INTERVAL))
        self.counters.ra_sent += len(out)
        return out

    def advert(self, now: float) -> bytes:
        """The RA for the current plan, with the withdrawn /114s and resolvers (zero lifetimes) first."""
        for key in [k for k, (until, _) in self._withdrawn.items() if until <= now]:
            del self._withdrawn[key]
        for address in [a for a, until in self._withdrawn_resolvers.items() if until <= now]:
            del self._withdrawn_resolvers[address]
        gone = [icmp6.PrefixInfo(p.prefix, p.length, p.flags, 0, 0) for _, p in self._withdrawn.values()]
        plan = self.plan
        resolvers = [icmp6.RdnssInfo(servers, lifetime)
                     for servers, lifetime in ((tuple(self._withdrawn_resolvers), 0),
                                               (plan.resolvers, RESOLVER_LIFETIME)) if servers]
        return self._message(gone + list(plan.prefixes), plan.managed, ROUTER_LIFETIME if plan.default_router else 0,
                             resolvers)

    def final(self) -> bytes:
        """The last RA, on exit: not a router any more (lifetime 0), every prefix and resolver with zero lifetimes."""
        gone = [icmp6.PrefixInfo(p.prefix, p.length, p.flags, 0, 0)
                for p in [p for _, p in self._withdrawn.values()] + list(self.plan.prefixes)]
        servers = tuple(self._withdrawn_resolvers) + self.plan.resolvers
        return self._message(gone, False, 0, [icmp6.RdnssInfo(servers, 0)] if servers else [])

    def _message(self, prefixes, managed: bool, lifetime: int, resolvers) -> bytes:
        body = icmp6.router_advert_body(prefixes, flags=icmp6.RA_MANAGED if managed else 0, lifetime=lifetime,
                                        source_lladdr=self.mac, resolvers=resolvers)
        return struct.pack("!BBH", icmp6.ROUTER_ADVERT, 0, 0) + body
