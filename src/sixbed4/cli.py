"""`6bed4`: the umbrella command for tools around the daemons."""

from __future__ import annotations

import argparse
import sys

from . import cliutil, config
from .core import addr

DESCRIPTION = "Tools for 6bed4 (IPv6 over UDP/IPv4): addresses, host setup, proxy ND, the live demo."

# Exit codes of the commands (the man page's EXIT STATUS section is made from this table).
EXIT_STATUS = {
    0: "success; host-setup apply or undo with nothing to do is a success too; demo: every check passed",
    cliutil.EXIT_FAILURE: "host-setup apply failed (the changes of that run were taken back) or undo could not "
                          "restore everything (the record is kept, to try again); demo: a check failed",
    cliutil.EXIT_USAGE: "a wrong option, config file setting or address; nothing was changed",
    130: "demo: interrupted (SIGINT or SIGTERM); the lab was taken down",
}


def cmd_addr(args: argparse.Namespace) -> int:
    if args.address is not None:
        if args.prefix or args.ipv4 or args.port is not None:
            raise cliutil.UsageError("give either an ADDRESS to decode or --prefix/--ipv4/--port to encode")
        packed = addr.parse_address(args.address)
        parts = addr.decode(packed)
        print(f"prefix  {addr.format_address(parts.prefix + bytes(8))}/64")
        print(f"ipv4    {parts.ipv4_text}")
        print(f"port    {parts.port}")
        print(f"lanid   {parts.lanid}")
        print(f"/114    {addr.format_address(addr.prefix114(packed))}/114")
        if parts.port == 0:
            print("note    port 0: not a 6bed4 peer, a local address of the router host")
        elif not addr.is_sendable_ipv4(parts.ipv4):
            print("note    the IPv4 address is not unicast: a router never sends there")
        return 0
    if not (args.prefix and args.ipv4 and args.port is not None):
        raise cliutil.UsageError("to encode, give --prefix, --ipv4 and --port")
    network = addr.parse_prefix64(args.prefix)
    print(addr.format_address(addr.encode(network, addr.parse_ipv4(args.ipv4, "--ipv4"), args.port, args.lanid)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run as demo  # imports pyroute2 netns helpers: only when asked

    if args.down:
        removed = demo.Lab.take_down()
        print(f"took down {len(removed)} demo lab(s){': ' if removed else ''}{' '.join(removed)}")
        return 0
    if args.anycast:
        from .demo import anycast

        return anycast.main("6bed4 demo --anycast", keep=args.keep, python=sys.executable)
    return demo.main("6bed4 demo", keep=args.keep, upstream=args.upstream, python=sys.executable,
                     fast_path=args.fast_path)


def cmd_take_back(args: argparse.Namespace) -> int:
    from .io import undo

    for line in undo.take_back_left(args.daemon):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.Parser(prog="6bed4", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = commands.add_parser(
        "addr",
        help="decode a 6bed4 address, or encode one",
        description="Decode a 6bed4 address into prefix, IPv4, port and lanid, or encode one from them.",
    )
    p.add_argument("address", nargs="?", help="the IPv6 address to decode")
    p.add_argument("--prefix", help="the served prefix, e.g. 2001:db8:9:10::/64, to encode")
    p.add_argument("--ipv4", help="the peer's public IPv4 address, to encode")
    p.add_argument("--port", type=cliutil.parse_port, help="the peer's public UDP port, to encode")
    p.add_argument("--lanid", type=lambda t: int(t, 0), default=1,
                   help="the lanid, to encode: 0 is the router, 1 the peer itself (default), 2..0x3fff its LAN")
    p.set_defaults(func=cmd_addr)

    p = commands.add_parser(
        "demo",
        help="run the seed's scenario live in network namespaces (root)",
        description="Build the seed's scenario in network namespaces (hosting upstream, VM with a /64, "
                    "home NAT with a gateway and a laptop behind it, a phone), run host setup, the router and two peers, and print "
                    "who reaches whom. Exit code 0 only if everything passed.",
    )
    p.add_argument("--keep", action="store_true", help="leave the lab running and print how to enter it")
    p.add_argument("--down", action="store_true",
                   help="take down the labs left by --keep or by a demo that was killed (not a running demo's)")
    p.add_argument("--upstream", choices=("on-link", "routed"), default="on-link",
                   help="on-link: the upstream treats the /64 as on-link and the router answers ND for it "
                        "(proxy ND); routed: the upstream routes the /64 to the VM (default: %(default)s)")
    p.add_argument("--fast-path", choices=("auto", "on", "off"), default="auto",
                   help="the kernel fast paths of the router and the peers (their --fast-path; default: %(default)s)")
    p.add_argument("--anycast", action="store_true",
                   help="instead: two router hosts behind one anycast address, announced by BIRD to an upstream "
                        "that spreads the traffic over them (ECMP), and a router killed while flows run")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser(
        "take-back",
        help="take back what a killed 6bed4router or 6bed4peer left in this network namespace (root)",
        description="Undo the changes (sysctls, link settings, addresses, routes, proxy entries) that a killed "
                    "6bed4router or 6bed4peer of this network namespace left, from its undo record in "
                    "/run/sixbed4; a running daemon's record is left alone.  The units run it when the daemon "
                    "has ended (ExecStopPost=), so a daemon that systemd does not start again leaves nothing "
                    "behind; the next start of a daemon does the same.",
    )
    p.add_argument("daemon", choices=("router", "peer"), help="whose records")
    p.set_defaults(func=cmd_take_back)

    from .anycast import cli as anycast_cli
    from .hostsetup import cli as hostsetup_cli  # host-setup, proxy-nd

    hostsetup_cli.add_parsers(commands)
    anycast_cli.add_parsers(commands)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argv through the parser; a command that takes --config reads it with config.parse_with_config."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    command = commands.choices.get(argv[0]) if argv else None
    if command is not None and "--config" in command._option_string_actions:  # noqa: SLF001
        args = config.parse_with_config(command, argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(parser, argv)
        return args.func(args)
    except (addr.AddressError, cliutil.UsageError) as exc:
        command = argv[0] if argv and not argv[0].startswith("-") else ""
        return cliutil.fail(f"{parser.prog} {command}".strip(), str(exc))


if __name__ == "__main__":
    sys.exit(main())
