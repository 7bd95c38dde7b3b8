"""`6bed4peer`: the command line, compatible with the C peer's options."""

from __future__ import annotations

import argparse
import sys

from .. import cliutil, config
from ..core import addr, lan
from ..core.peer import DEFAULT_KEEPALIVE, DEFAULT_KEEPALIVE_TTL, PeerConfig
from ..fastpath import control as fastpath
from ..io.metrics import parse_listen
from .daemon import PeerSettings, run_peer
from .lan import DEFAULT_STATE_DIR, LanSettings

DESCRIPTION = """\
6bed4 peer: IPv6 for a host (or a home network's gateway) that has only IPv4,
maybe behind NAT.  It asks the 6bed4 router named by -s for a /114 prefix,
configures prefix + 1 on the TUN device 6bed4 and carries IPv6 as UDP payload
to and from the router.  It runs in the foreground and logs to stderr.
"""

EPILOG = """\
extension hook (-x SCRIPT): called as `SCRIPT PID add-range-offer START END` (the
addresses of the /114 the peer may hand on, lanids 2..0x3fff),
`SCRIPT PID add-route-offer PREFIX LEN ROUTER` (each extra route the router
announces; ROUTER is the router's address in the peer's /114) and
`SCRIPT PID del-offers` (before new offers, and on exit).

home gateway (--lan IF): the peer advertises itself as the IPv6 router of the
LAN on IF.  --lan-mode routed hands out lanids 2..0x3fff of the /114 by DHCPv6
(dnsmasq, started and stopped by the peer) to devices that ask for them;
nat66 advertises a ULA /64 (generated once, kept in --state-dir) for devices
that only do SLAAC, translated to the peer's own address by nftables; both
(the default) does both.  Routed devices have global addresses: by default
(--lan-inbound closed) the gateway lets in only what belongs to connections
they opened, and ICMPv6 errors and echo requests; open lets in everything.
--lan-dns names the DNS resolvers the LAN's devices get (none by default: a
LAN that also has IPv4 keeps its IPv4 resolver; one without needs this).
When the /114 changes (NAT rebinding), DHCPv6
devices move to the new range within about a minute and a half (their
renewal), translated ones at once.  On exit the peer announces router
lifetime 0 on the LAN and removes all it added.

examples: 6bed4peer -s 192.0.2.1 -r
          6bed4peer -s 192.0.2.1 --lan br-lan
"""


def parse_keepalive(text: str) -> tuple[float, int]:
    """-k PERIOD[,TTL]: seconds between keepalives and their IP TTL."""
    period_text, _, ttl_text = text.partition(",")
    try:
        period = float(period_text)
        ttl = int(ttl_text) if ttl_text else DEFAULT_KEEPALIVE_TTL
    except ValueError:
        raise argparse.ArgumentTypeError(f"keepalive {text!r}: use PERIOD[,TTL], e.g. 30,3") from None
    if not 1 <= period <= 3600:
        raise argparse.ArgumentTypeError(f"keepalive period {period_text} is out of range 1..3600 seconds")
    if not 1 <= ttl <= 255:
        raise argparse.ArgumentTypeError(f"keepalive TTL {ttl} is out of range 1..255")
    return period, ttl


def parse_lan_dns(text: str) -> tuple[str, ...]:
    try:
        return lan.parse_resolvers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--lan-dns ")) from None


def build_parser() -> argparse.ArgumentParser:
    p = cliutil.Parser(
        prog="6bed4peer",
        usage=config.usage("6bed4peer", "-s IPV4"),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-s", "--v4server", metavar="IPV4", help="the 6bed4 router's IPv4 address (required)")
    p.add_argument("--router-port", metavar="PORT", type=cliutil.parse_port, default=addr.PORT_6BED4,
                   help="the router's UDP port (default: %(default)s)")
    p.add_argument("-p", "--port", type=cliutil.parse_port,
                   help="local UDP port (default: a random one; not 25790, the routers' port)")
    p.add_argument("-l", "--v4listen", metavar="IPV4", default="0.0.0.0",
                   help="local IPv4 address to bind (default: %(default)s)")
    p.add_argument("-r", "--default-route", action=argparse.BooleanOptionalAction, default=False,
                   help="route all IPv6 through the router (default route via fe80::, metric 1042)")
    p.add_argument("-k", "--keepalive", metavar="PERIOD[,TTL]", type=parse_keepalive,
                   default=(DEFAULT_KEEPALIVE, DEFAULT_KEEPALIVE_TTL),
                   help=f"keepalive every PERIOD seconds with IP TTL (default: {DEFAULT_KEEPALIVE:.0f},"
                        f"{DEFAULT_KEEPALIVE_TTL}); also how often the peer re-solicits")
    p.add_argument("-x", "--exthook", metavar="SCRIPT", help="extension hook script (see below)")
    p.add_argument("-d", "--tundev", metavar="NAME",
                   help="use this existing TUN device instead of creating '6bed4' (left in place on exit)")
    p.add_argument("-f", "--foreground", action=argparse.BooleanOptionalAction, default=True,
                   help="accepted for compatibility: always in the foreground")
    p.add_argument("-e", "--log-stderr", action=argparse.BooleanOptionalAction, default=True,
                   help="accepted for compatibility: always logs to stderr")
    p.add_argument("--fast-path", choices=fastpath.MODES, default="auto",
                   help="carry the tunnel's packets in the kernel (eBPF on the uplink and the TUN device) once the "
                        "router gave an address: auto uses it where it can be loaded and says why not otherwise, "
                        "on fails if it cannot (default: auto)")
    gateway = p.add_argument_group("home gateway")
    gateway.add_argument("--lan", metavar="IF",
                         help="be the IPv6 gateway of the LAN on interface IF (implies -r): Router Advertisements, "
                              "DHCPv6 and/or nat66 by --lan-mode")
    gateway.add_argument("--lan-mode", choices=lan.MODES, default=lan.BOTH,
                         help="routed: lanids of the /114 by DHCPv6; nat66: a ULA /64 for SLAAC, translated "
                              "to the peer's address; both (default: %(default)s)")
    gateway.add_argument("--lan-inbound", choices=lan.INBOUND, default=lan.CLOSED,
                         help="what the Internet may send to routed LAN devices: closed lets in only replies to "
                              "their own connections and ICMPv6 errors and echo requests (nftables); open lets in "
                              "everything (default: %(default)s)")
    gateway.add_argument("--lan-dns", metavar="ADDR,...|self", type=parse_lan_dns, default=(),
                         help="DNS resolvers to announce on the LAN (Router Advertisements, RFC 8106, and DHCPv6), "
                              "up to 3: IPv6 addresses, or self for a resolver on this host at the gateway's own "
                              "LAN address (default: none)")
    gateway.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                         help="where the LAN's ULA prefix is kept (default: %(default)s)")
    gateway.add_argument("--dnsmasq", metavar="PATH", default="dnsmasq",
                         help="the DHCPv6 server binary (default: %(default)s, from PATH or /usr/sbin)")
    ops = p.add_argument_group("operations")
    ops.add_argument("--metrics", metavar="HOST:PORT", type=parse_listen,
                     help="serve Prometheus metrics over HTTP, e.g. 127.0.0.1:9641")
    ops.add_argument("--user", help="after setup, run as this user, keeping only CAP_NET_ADMIN "
                                    "(to re-address after NAT rebinding; hook scripts get it too)")
    config.add_config_option(ops)
    cliutil.add_logging_option(ops)
    return p


def settings_from_args(args: argparse.Namespace) -> PeerSettings:
    """Turn parsed options into settings; AddressError/UsageError name what is wrong."""
    if not args.v4server:
        raise cliutil.UsageError("no router given: use -s IPV4 (there is no public default router)")
    server = addr.parse_ipv4(args.v4server, "-s")
    if not addr.is_sendable_ipv4(server):
        raise cliutil.UsageError(f"-s {args.v4server}: not a unicast IPv4 address")
    addr.parse_ipv4(args.v4listen, "-l")
    if args.port in (addr.PORT_6BED4, args.router_port):
        raise cliutil.UsageError(f"-p {args.port}: that is a 6bed4 router's port, which routers never serve as a peer")
    period, ttl = args.keepalive
    config = PeerConfig(
        router_ipv4=addr.format_ipv4(server),
        router_port=args.router_port,
        keepalive=period,
        keepalive_ttl=ttl,
        default_route=args.default_route or bool(args.lan),  # the LAN's traffic goes through the tunnel
    )
    gateway = None
    if args.lan:
        gateway = LanSettings(args.lan, mode=args.lan_mode, inbound=args.lan_inbound, dns=args.lan_dns,
                              state_dir=args.state_dir, dnsmasq=args.dnsmasq, user=args.user)
    return PeerSettings(
        config=config,
        bind=(args.v4listen, args.port or 0),
        tun_name=args.tundev or "6bed4",
        create_tun=args.tundev is None,
        hook=args.exthook,
        metrics=args.metrics,
        user=args.user,
        lan=gateway,
        fast_path=args.fast_path,
    )


def main(argv: list[str] | None = None) -> int:
    return config.daemon_main(build_parser(), settings_from_args, run_peer, argv)


if __name__ == "__main__":
    sys.exit(main())
