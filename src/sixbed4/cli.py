"""`6bed4`: the umbrella command for tools around the daemons."""

from __future__ import annotations

import argparse
import sys

from . import cliutil
from .core import addr

DESCRIPTION = "Tools for 6bed4 (IPv6 over UDP/IPv4): decode and encode addresses."


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (addr.AddressError, cliutil.UsageError) as exc:
        return cliutil.fail(f"{parser.prog} {args.command}", str(exc))


if __name__ == "__main__":
    sys.exit(main())
