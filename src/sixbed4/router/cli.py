"""`6bed4router`: the command line, compatible with the C router's options."""

from __future__ import annotations

import argparse
import sys

from .. import cliutil, config
from ..anycast.options import add_router_options as add_anycast_options, anycast_settings
from ..core import addr, icmp6
from ..io.metrics import parse_listen
from ..core.router import MasqRule, RouterConfig
from .daemon import RouterSettings, run_router

DESCRIPTION = """\
Stateless 6bed4 router: gives IPv6 to IPv4-only peers behind NAT by carrying
IPv6 packets as UDP payload over IPv4 (port 25790).  Every peer address encodes
the peer's public IPv4 address and UDP port, so the router keeps no state.
"""

EPILOG = """\
masquerading: -s/-t/-u PORT[:PORT] forward SCTP/TCP/UDP ports that peers send
to the router's address in their own /114 to the last -m host given before
them; -i does the same for ICMPv6 Echo.  Without -m the host is the router's
own global address (the C router's ::1 cannot be reached through the kernel).

example: 6bed4router -l 192.0.2.1 -L 2001:db8:9:10::/64
"""


class _Ordered(argparse.Action):
    """Keep -m/-s/-t/-u/-i in command-line order in `masq`: a port rule takes the last -m before it."""

    repeatable = True  # in a config file too: tcp = ["80", "443"]

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.const, values, option_string))
        setattr(namespace, self.dest, items)


def build_parser() -> argparse.ArgumentParser:
    p = cliutil.Parser(
        prog="6bed4router",
        usage=config.usage("6bed4router", "-l IPV4"),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-l", "--v4listen", metavar="IPV4",
                   help="the router's public IPv4 address (used in addresses and ND; bound unless -x or --bind); "
                        "required")
    p.add_argument("-L", "--v6prefix", metavar="PREFIX/LEN",
                   help="served prefix, completed to a /64: /16 + netid, /32 + IPv4, /48 + netid, /64 as is, "
                        "fd00::/8 shorter than /64 filled pseudo-randomly (default fc64::/16)")
    p.add_argument("-R", "--v6route", metavar="PREFIX/LEN", action="append", default=[],
                   help="extra prefix (/16../128) announced to peers as a route via the router; repeatable")
    p.add_argument("-n", "--netid", metavar="HEX", default="bed", help="network id for /16 and /48 prefixes (default: bed)")
    p.add_argument("-d", "--tundev", metavar="NAME",
                   help="use this existing TUN device instead of creating '6bed4' (it is left in place on exit)")
    p.add_argument("-x", "--xlate", metavar="PORT", type=cliutil.parse_port,
                   help="bind 127.0.0.1:PORT instead (firewall rules redirect the public port there)")
    p.add_argument("--port", type=cliutil.parse_port, default=addr.PORT_6BED4,
                   help="public UDP port (default: %(default)s)")
    p.add_argument("--bind", metavar="IPV4", help="bind this address instead of -l (e.g. 0.0.0.0 behind 1:1 NAT)")
    p.add_argument("--tun-name", default="6bed4", metavar="NAME", help="name of the TUN device to create (default: %(default)s)")
    p.add_argument("--prefix-route", action=argparse.BooleanOptionalAction, default=True,
                   help="route the served /64 into the TUN device; --no-prefix-route: you route it yourself")
    p.add_argument("--proxy-nd", metavar="IF",
                   help="answer Neighbor Solicitations on this uplink for the 6bed4 addresses of the /64 and the "
                        "host's own addresses moved off it (when the upstream treats the /64 as on-link)")
    group = p.add_argument_group("masquerading (as the C router)")
    group.add_argument("-m", "--masqhost", metavar="IPV6", action=_Ordered, dest="masq", const="host",
                       help="host that masqueraded ports go to")
    group.add_argument("-s", "--sctp", metavar="PORT[:PORT]", action=_Ordered, dest="masq", const="sctp",
                       help="masquerade SCTP ports")
    group.add_argument("-t", "--tcp", metavar="PORT[:PORT]", action=_Ordered, dest="masq", const="tcp",
                       help="masquerade TCP ports")
    group.add_argument("-u", "--udp", metavar="PORT[:PORT]", action=_Ordered, dest="masq", const="udp",
                       help="masquerade UDP ports")
    group.add_argument("-i", "--icmp", action=_Ordered, nargs=0, dest="masq", const="icmp",
                       help="masquerade ICMPv6 Echo")
    add_anycast_options(p)
    ops = p.add_argument_group("operations")
    ops.add_argument("--metrics", metavar="HOST:PORT", type=parse_listen,
                     help="serve Prometheus metrics over HTTP, e.g. 127.0.0.1:9640")
    ops.add_argument("--user", help="after setup, run as this user, keeping only CAP_NET_ADMIN")
    config.add_config_option(ops)
    cliutil.add_logging_option(ops)
    return p


def parse_port_range(text: str, option: str = "port range") -> tuple[int, int]:
    """PORT, PORT:PORT, :PORT or PORT: as the C router; errors name `option`."""
    lo_text, sep, hi_text = text.partition(":")
    try:
        if not text:
            raise ValueError(text)
        lo = int(lo_text) if lo_text else 1
        hi = (int(hi_text) if hi_text else 65535) if sep else lo
    except ValueError:
        raise cliutil.UsageError(f"{option} {text!r}: use PORT or PORT:PORT") from None
    if not 1 <= lo <= hi <= 65535:
        raise cliutil.UsageError(f"{option} {text!r}: the port range is empty or outside 1..65535")
    return lo, hi


def masquerade_rules(items, router_address: bytes) -> tuple[MasqRule, ...]:
    protocols = {"sctp": icmp6.PROTO_SCTP, "tcp": icmp6.PROTO_TCP, "udp": icmp6.PROTO_UDP}
    host = router_address
    rules = []
    for kind, value, option in items:
        if kind == "host":
            host = addr.parse_address(value, option)
        elif kind == "icmp":
            rules.append(MasqRule(icmp6.PROTO_ICMPV6, 0, 0, host))
        else:
            lo, hi = parse_port_range(value, option)
            rules.append(MasqRule(protocols[kind], lo, hi, host))
    return tuple(rules)


def settings_from_args(args: argparse.Namespace) -> RouterSettings:
    """Turn parsed options into settings; AddressError/UsageError name what is wrong."""
    if not args.v4listen:
        raise cliutil.UsageError("no public IPv4 address given: use -l IPV4 (or v4listen in the --config file)")
    ipv4 = addr.parse_ipv4(args.v4listen, "-l")
    if not addr.is_sendable_ipv4(ipv4):
        raise cliutil.UsageError(f"-l {args.v4listen}: not a unicast IPv4 address")
    prefix = addr.complete_prefix(args.v6prefix, ipv4, addr.parse_netid(args.netid))
    routes = tuple(addr.parse_route(text) for text in args.v6route)
    base = RouterConfig(prefix=prefix, ipv4=ipv4, port=args.port, routes=routes)
    config = RouterConfig(
        prefix=prefix, ipv4=ipv4, port=args.port, routes=routes,
        masquerade=masquerade_rules(args.masq or [], base.address),
    )
    if args.xlate is not None:
        bind = ("127.0.0.1", args.xlate)
    else:
        bind = (args.bind or args.v4listen, args.port)
        if args.bind:
            addr.parse_ipv4(args.bind, "--bind")
    return RouterSettings(
        config=config,
        bind=bind,
        tun_name=args.tundev or args.tun_name,
        create_tun=args.tundev is None,
        prefix_route=args.prefix_route,
        proxy_nd=args.proxy_nd,
        metrics=args.metrics,
        user=args.user,
        anycast=anycast_settings(args, config),
    )


def main(argv: list[str] | None = None) -> int:
    return config.daemon_main(build_parser(), settings_from_args, run_router, argv)


if __name__ == "__main__":
    sys.exit(main())
