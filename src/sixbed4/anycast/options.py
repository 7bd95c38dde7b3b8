"""The router's anycast options (--anycast-table, --anycast-prefix, --anycast-drain)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ..cliutil import UsageError
from ..core.router import RouterConfig
from .agreement import announced_prefixes

RESERVED_TABLES = {0, 253, 254, 255}  # unspec, default, main, local


@dataclass(frozen=True)
class AnycastSettings:
    table: int  # the kernel routing table the announcement goes into
    prefixes: tuple[str, ...]  # what is announced, e.g. ("192.0.2.1/32", "2001:db8:9:10::/64")
    drain: float = 2.0  # seconds of serving after the withdrawal on a clean stop


def parse_table(text: str) -> int:
    try:
        table = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--anycast-table {text!r} is not a number") from None
    if not 0 < table < 2**32 or table in RESERVED_TABLES:
        raise argparse.ArgumentTypeError(f"--anycast-table {table}: use 1..4294967295 but not 253-255 "
                                         "(default, main, local)")
    return table


def parse_drain(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and 0 <= seconds <= 600):
        raise argparse.ArgumentTypeError(f"--anycast-drain {text!r}: use seconds from 0 to 600")
    return seconds


def add_router_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("anycast (several routers behind one address; see 6bed4 anycast)")
    group.add_argument("--anycast-table", metavar="TABLE", type=parse_table,
                       help="while serving, keep a route through the TUN device for each announced prefix in "
                            "this kernel routing table, for a BGP daemon to announce; the kernel removes them "
                            "with the device, also when the router crashes")
    group.add_argument("--anycast-prefix", metavar="PREFIX/LEN", action="append", default=[],
                       help="announce this prefix instead of the /32 of -l and the served /64 (repeatable; "
                            "each must cover -l or the /64, e.g. a /24 and a /48 of your own)")
    group.add_argument("--anycast-drain", metavar="SECONDS", type=parse_drain, default=2.0,
                       help="on SIGTERM or SIGINT, withdraw first and go on serving this long, so that no packet "
                            "is lost while the upstream moves the traffic (default: %(default)s)")


def anycast_settings(args: argparse.Namespace, config: RouterConfig) -> AnycastSettings | None:
    """The anycast part of the router's settings; UsageError names a wrong combination."""
    if args.anycast_table is None:
        if args.anycast_prefix:
            raise UsageError("--anycast-prefix needs --anycast-table")
        return None
    if args.tundev:
        raise UsageError("--anycast-table needs a TUN device of the router's own, not -d: a device that "
                         "outlives a crash would keep the announcement alive")
    try:
        prefixes = announced_prefixes(config, args.anycast_prefix)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return AnycastSettings(args.anycast_table, prefixes, args.anycast_drain)
