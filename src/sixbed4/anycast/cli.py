"""`6bed4 anycast`: BIRD's configuration from the router's own options, and the agreement check."""

from __future__ import annotations

import argparse
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import cliutil, config
from . import agreement, birdconf

BIRD_CONFIG_EPILOG = """\
The router's options follow `--`, exactly as 6bed4router gets them (or
`-- --config /etc/6bed4/router.toml`); they must include --anycast-table.

example, router host:
  6bed4 anycast bird-config --as 64512 --neighbor 10.64.0.1 --neighbor 2001:db8:64::1 \\
      --neighbor-as 64500 -- -l 192.0.2.1 -L 2001:db8:9:10::/64 --anycast-table 6464 \\
      > /etc/bird/bird.conf
example, the upstream of two router hosts:
  6bed4 anycast bird-config --upstream --as 64500 --neighbor 10.64.0.11 --neighbor 10.64.0.12 \\
      --neighbor 2001:db8:64::11 --neighbor 2001:db8:64::12 --neighbor-as 64512 \\
      -- -l 192.0.2.1 -L 2001:db8:9:10::/64 --anycast-table 6464
"""

CHECK_EPILOG = """\
Each URL is a router's metrics address (--metrics); /ready is added if the URL
has no path.  Exit code 0 only if every router serves and all agree.
"""


def _asn(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 0 < value < 2**32:
        raise argparse.ArgumentTypeError(f"AS number {text!r}: use 1..4294967295")
    return value


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--router-id {text!r}: use an IPv4 address of this host") from None


def add_parsers(commands) -> None:
    parent = commands.add_parser(
        "anycast",
        help="several routers behind one anycast address: BIRD's configuration, the agreement check",
        description="Several 6bed4 routers behind one anycast address, announced by BIRD only while each "
                    "router serves (6bed4router --anycast-table).",
    )
    sub = parent.add_subparsers(dest="anycast_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "bird-config",
        help="print BIRD's configuration for this router host (or for their upstream)",
        description="Print a BIRD 2 configuration that announces what 6bed4router --anycast-table keeps in "
                    "its kernel table (the /32 of -l and the served /64) to the upstream while the router serves, "
                    "with BFD; or, with --upstream, one that spreads traffic over all router hosts (ECMP).",
        epilog=BIRD_CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--upstream", action="store_true",
                   help="the upstream's configuration: the neighbours are the router hosts")
    p.add_argument("--as", dest="local_as", metavar="ASN", type=_asn, required=True, help="this BIRD's AS number")
    p.add_argument("--neighbor", metavar="ADDR", type=_address, action="append", required=True,
                   help="a BGP neighbour (IPv4: a session for the IPv4 prefix, IPv6: for the IPv6 prefix); repeatable")
    p.add_argument("--neighbor-as", metavar="ASN", type=_asn, required=True, help="the neighbours' AS number")
    p.add_argument("--router-id", metavar="IPV4", type=_ipv4,
                   help="BIRD's router id, unique per host (default: this host's address towards the first "
                        "IPv4 neighbour; never the anycast address, which every router host has)")
    p.add_argument("--bfd-interval", metavar="MS", type=int, default=100,
                   help="BFD interval; failures show after 3 intervals (default: %(default)s; 0: no BFD, "
                        "BGP hold time 3 s instead)")
    p.add_argument("--log", default="syslog", metavar="WHERE", help="syslog, stderr or a file (default: %(default)s)")
    p.add_argument("router", nargs=argparse.REMAINDER, metavar="-- ROUTER-OPTIONS",
                   help="the router's options (6bed4router's command line)")
    p.set_defaults(func=cmd_bird_config)

    p = sub.add_parser(
        "check",
        help="compare what several routers serve: each must serve, all must agree",
        description="Read each router's /ready and compare the options that must be equal on every router "
                    "behind one anycast address (-l, --port, -L, -R, masquerading, --anycast-prefix).",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="e.g. http://10.64.0.11:9640")
    p.set_defaults(func=cmd_check)


# --- bird-config --------------------------------------------------------------


def router_settings(argv: list[str]):
    """The router's settings from its own command line (what follows `--`)."""
    from ..router import cli as router_cli  # the router's parser and its checks, exactly

    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise cliutil.UsageError("give the router's options after `--` (e.g. -- -l 192.0.2.1 -L ... --anycast-table N)")
    parser = router_cli.build_parser()
    try:
        args = config.parse_with_config(parser, argv)
    except SystemExit:  # argparse said what was wrong on stderr
        raise cliutil.UsageError("the router's options after `--` are wrong (see above)") from None
    return router_cli.settings_from_args(args)


def source_address_towards(neighbor: str) -> str | None:
    """This host's address for talking to `neighbor` (the kernel's choice), if it has a route there."""
    with IPRoute() as ipr:
        try:
            route = ipr.route("get", dst=neighbor)[0]
        except NetlinkError:
            return None
        return route.get_attr("RTA_PREFSRC")


def speaker_from_args(args: argparse.Namespace) -> birdconf.Speaker:
    settings = router_settings(args.router)
    if settings.anycast is None:
        raise cliutil.UsageError("the router's options have no --anycast-table: the router would never announce")
    if not 0 <= args.bfd_interval <= 10000:
        raise cliutil.UsageError(f"--bfd-interval {args.bfd_interval}: use 0 (no BFD) to 10000 ms")
    neighbors = tuple(birdconf.Neighbor(address, args.neighbor_as) for address in args.neighbor)
    families = {n.version for n in neighbors}
    unannounced = [p for p in settings.anycast.prefixes if ipaddress.ip_network(p).version not in families]
    if unannounced:
        raise cliutil.UsageError(f"no IPv{ipaddress.ip_network(unannounced[0]).version} neighbour: "
                                 f"{', '.join(unannounced)} would never be announced")
    router_id = args.router_id
    if router_id is None:
        ipv4 = [n.address for n in neighbors if n.version == 4]
        router_id = source_address_towards(ipv4[0]) if ipv4 else None
        if router_id is None:
            raise cliutil.UsageError("give --router-id (an IPv4 address unique to this host)")
    anycast_v4 = {str(n.network_address) for n in map(ipaddress.ip_network, settings.anycast.prefixes)
                  if n.version == 4 and n.prefixlen == 32}
    if router_id in anycast_v4:
        raise cliutil.UsageError(f"--router-id {router_id} is the anycast address: every router host has it")
    return birdconf.Speaker(args.local_as, router_id, neighbors, settings.anycast.prefixes, settings.anycast.table,
                            args.bfd_interval, log=args.log)


def cmd_bird_config(args: argparse.Namespace) -> int:
    speaker = speaker_from_args(args)
    text = birdconf.upstream(speaker) if args.upstream else birdconf.router_host(speaker)
    print(text, end="")
    return 0


# --- check ----------------------------------------------------------------------


def ready_url(url: str) -> str:
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    return url if parts.path not in ("", "/") else urllib.parse.urlunsplit(parts._replace(path="/ready"))


def fetch_ready(url: str, timeout: float = 5) -> dict:
    """A router's /ready document (also when it says 503); OSError/ValueError if there is none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("shared"), dict):
        raise ValueError("not a 6bed4router /ready document")
    return document


def cmd_check(args: argparse.Namespace) -> int:
    reports, problems = {}, []
    for url in args.urls:
        target = ready_url(url)
        try:
            document = fetch_ready(target)
        except (OSError, ValueError) as exc:
            problems.append(f"{url}: no answer from {target} ({getattr(exc, 'reason', exc)})")
            continue
        reports[url] = document["shared"]
        state = document.get("state", "?")
        print(f"{url}  {state}  fingerprint {document.get('fingerprint', '?')}  "
              f"announced {', '.join(document.get('announced') or ['nothing'])}")
        if not document.get("ready"):
            problems.append(f"{url}: not serving ({state})")
    problems += agreement.differences(reports)
    for line in problems:
        print(f"problem: {line}")
    if problems:
        return 1
    print(f"all {len(reports)} routers serve and agree")
    return 0

