"""What every router behind one anycast address must agree on, and a fingerprint of it.

A peer may be answered by any of the routers, and its address must mean the
same to each of them: the served /64, the IPv4 address and port the peers talk
to (in every address and ND option), the routes announced in RAs (-R), and the
masquerading rules (which host a port of the router's address leads to).  The
prefixes announced by BGP belong here too: a router that announces something
the others do not attracts traffic that the others would not.  Everything else
(-x, --bind, --tun-name, --proxy-nd, --metrics, --user, the kernel table) is
the host's own business.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Iterable, Mapping

from ..core import addr, icmp6
from ..core.router import RouterConfig

PROTOCOL_NAMES = {icmp6.PROTO_TCP: "tcp", icmp6.PROTO_UDP: "udp", icmp6.PROTO_SCTP: "sctp",
                  icmp6.PROTO_ICMPV6: "icmp"}
OPTION_FLAGS = {  # the shared options as the router's command line names them
    "v4listen": "-l", "port": "--port", "v6prefix": "-L", "v6route": "-R",
    "masquerade": "-m/-s/-t/-u/-i", "anycast-prefix": "--anycast-prefix",
}


def shared_options(config: RouterConfig, announced: Iterable[str]) -> dict[str, object]:
    """The options that must be equal on every router, in a canonical form (JSON-ready)."""
    masquerade = []
    for rule in config.masquerade:
        ports = "" if rule.proto == icmp6.PROTO_ICMPV6 else f" {rule.lo}-{rule.hi}"
        masquerade.append(f"{PROTOCOL_NAMES[rule.proto]}{ports} -> {addr.format_address(rule.host)}")
    return {
        "v4listen": addr.format_ipv4(config.ipv4),
        "port": config.port,
        "v6prefix": f"{addr.format_address(config.prefix + bytes(8))}/64",
        "v6route": sorted(f"{addr.format_address(prefix)}/{length}" for prefix, length in config.routes),
        "masquerade": masquerade,  # in order: the first rule that matches wins
        "anycast-prefix": sorted(announced),
    }


def fingerprint(shared: Mapping[str, object]) -> int:
    """31 bits of a hash of the shared options: small enough for a kernel route metric and a BGP community."""
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF or 1


def differences(reports: Mapping[str, Mapping[str, object]]) -> list[str]:
    """One line per shared option on which the routers (name -> shared options) disagree."""
    lines = []
    keys = sorted({key for shared in reports.values() for key in shared})
    for key in keys:
        values = {name: shared.get(key) for name, shared in reports.items()}
        if len({json.dumps(value, sort_keys=True) for value in values.values()}) > 1:
            each = ", ".join(f"{name}: {json.dumps(value)}" for name, value in values.items())
            lines.append(f"{OPTION_FLAGS.get(key, key)} differs ({each})")
    return lines


def announced_prefixes(config: RouterConfig, wanted: Iterable[str] = ()) -> tuple[str, ...]:
    """What a router announces: the /32 of -l and the served /64, or `wanted` if given.

    Each wanted prefix must cover -l or the served /64 (an operator may announce
    the /24 and /48 they hold); anything else would attract traffic the router
    cannot serve.  Raises ValueError naming the prefix.
    """
    ipv4 = ipaddress.IPv4Address(config.ipv4)
    served = ipaddress.IPv6Network((config.prefix + bytes(8), 64))
    if not wanted:
        return (f"{ipv4}/32", str(served))
    prefixes = []
    for text in wanted:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"--anycast-prefix {text}: {exc}") from None
        covers = ipv4 in network if network.version == 4 else served.subnet_of(network)
        if not covers:
            raise ValueError(f"--anycast-prefix {text}: covers neither -l {ipv4} nor the served {served}")
        prefixes.append(str(network))
    return tuple(prefixes)
