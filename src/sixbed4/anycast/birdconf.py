"""BIRD 2 configurations: a 6bed4 router host, and an upstream that spreads traffic over them.

Why BIRD: it is what operators run for exactly this (anycast DNS, route
servers), it is in Debian, one small file configures it, it has BFD, and its
kernel protocol *learns* routes from a kernel table, which is how the router
tells it what to announce without a line of BGP of ours.  It also installs
equal routes from several neighbours as one multipath (ECMP) kernel route.

Router host: two kernel protocols learn the router's table (IPv4 and IPv6),
and one BGP session per neighbour exports exactly those routes, tagged with the
large community (local AS, 25790, fingerprint of the shared options: the
routes' metric).  Upstream (for the lab, or an operator's own edge router):
accepts the announced prefixes from every router host, nothing else, and
installs them as one ECMP route.  Both use BFD (100 ms x 3) so that a dead link
or host is noticed in 0.3 s; without BFD, BGP's shortest hold time (3 s).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

COMMUNITY_FUNCTION = 25790  # the middle field of the large community: "6bed4 options fingerprint"


@dataclass(frozen=True)
class Neighbor:
    address: str  # IPv4 or IPv6: the session carries that family's prefixes
    asn: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def protocol(self, role: str) -> str:
        """BIRD's name for the session, e.g. upstream_10_64_0_1, router_2001_db8_64__11."""
        return f"{role}_{re.sub(r'[^0-9A-Za-z]', '_', self.address)}"


@dataclass(frozen=True)
class Speaker:
    """One BIRD: who it is, whom it talks to, what is announced, how fast failures must show."""

    local_as: int
    router_id: str
    neighbors: tuple[Neighbor, ...]
    prefixes: tuple[str, ...]  # the anycast prefixes (announced by router hosts, accepted by the upstream)
    table: int = 0  # router host: the kernel table the router keeps its announcement in
    bfd_interval_ms: int = 100  # 0: no BFD, short BGP timers instead
    bfd_multiplier: int = 3
    log: str = "syslog"  # syslog, stderr, or a file name

    def families(self) -> tuple[int, ...]:
        return tuple(sorted({n.version for n in self.neighbors}))


def _header(speaker: Speaker, comment: str) -> list[str]:
    log = speaker.log if speaker.log in ("syslog", "stderr") else f'"{speaker.log}"'
    lines = [f"# {line}".rstrip() for line in comment.strip().splitlines()]
    return [*lines, f"log {log} all;", f"router id {speaker.router_id};", "",
            "protocol device {", "}", ""]


def _bfd_and_template(speaker: Speaker, name: str, local_as: int) -> list[str]:
    lines = []
    if speaker.bfd_interval_ms:
        interval = speaker.bfd_interval_ms
        lines += [
            "protocol bfd {",
            '\tinterface "*" {',
            f"\t\tmin rx interval {interval} ms;",
            f"\t\tmin tx interval {interval} ms;",
            f"\t\tmultiplier {speaker.bfd_multiplier};",
            "\t};",
            "}",
            "",
        ]
    lines += [f"template bgp {name} {{", f"\tlocal as {local_as};"]
    lines += ["\tbfd on;"] if speaker.bfd_interval_ms else ["\thold time 3;", "\tkeepalive time 1;"]
    lines += [
        "\tconnect delay time 1;",
        "\tconnect retry time 5;",
        "\terror wait time 1, 30;",
        "}",
        "",
    ]
    return lines


def router_host(speaker: Speaker) -> str:
    """BIRD's configuration for a router host running `6bed4router --anycast-table TABLE`."""
    comment = f"""
BIRD 2 on a 6bed4 anycast router host; written by `6bed4 anycast bird-config`.
6bed4router --anycast-table {speaker.table} keeps a route for each of {", ".join(speaker.prefixes)}
in kernel table {speaker.table} while it serves.  BIRD learns them there and announces
them to the upstream, tagged (local AS, {COMMUNITY_FUNCTION}, fingerprint of the options all routers share).
The kernel deletes the routes with the router's TUN device, so a router that stops
or crashes is withdrawn at once; a host or link that fails, by BFD.
"""
    lines = _header(speaker, comment)
    for version in speaker.families():
        lines += [
            f"protocol kernel sixbed4_v{version} {{\t# only learns: BIRD never writes into this table",
            f"\tkernel table {speaker.table};",
            "\tlearn;",
            f"\tipv{version} {{ import all; export none; }};",
            "}",
            "",
        ]
    lines += [
        "filter sixbed4_announce {",
        '\tif proto != "sixbed4_v4" && proto != "sixbed4_v6" then reject;',
        f"\tbgp_large_community.add(({speaker.local_as}, {COMMUNITY_FUNCTION}, krt_metric));",
        "\taccept;",
        "}",
        "",
    ]
    lines += _bfd_and_template(speaker, "sixbed4_upstream", speaker.local_as)
    for neighbor in speaker.neighbors:
        lines += [
            f"protocol bgp {neighbor.protocol('upstream')} from sixbed4_upstream {{",
            f"\tneighbor {neighbor.address} as {neighbor.asn};",
            f"\tipv{neighbor.version} {{ import none; export filter sixbed4_announce; }};",
            "}",
            "",
        ]
    return "\n".join(lines)


def upstream(speaker: Speaker) -> str:
    """BIRD's configuration for the upstream of several router hosts: ECMP over all that announce."""
    comment = """
BIRD 2 on the upstream of 6bed4 anycast router hosts; written by `6bed4 anycast bird-config --upstream`.
Accepts the anycast prefixes from each router host (nothing else) and installs them
as one multipath route over all hosts that announce them (ECMP).
"""
    lines = _header(speaker, comment)
    for version in speaker.families():
        lines += [
            "protocol kernel {\t# ECMP: one route, one next hop per router host that announces",
            f"\tipv{version} {{ import none; export all; }};",
            "\tmerge paths on;",
            "}",
            "",
        ]
    lines += _bfd_and_template(speaker, "sixbed4_router", speaker.local_as)
    for version in speaker.families():
        accepted = [p for p in speaker.prefixes if ipaddress.ip_network(p).version == version]
        accept = f"net ~ [ {', '.join(accepted)} ]" if accepted else "false"
        lines += [f"filter sixbed4_accept_v{version} {{", f"\tif {accept} then accept;", "\treject;", "}", ""]
    for neighbor in speaker.neighbors:
        lines += [
            f"protocol bgp {neighbor.protocol('router')} from sixbed4_router {{",
            f"\tneighbor {neighbor.address} as {neighbor.asn};",
            f"\tipv{neighbor.version} {{ import filter sixbed4_accept_v{neighbor.version}; export none; }};",
            "}",
            "",
        ]
    return "\n".join(lines)
