"""Command-line plumbing shared by all programs: one-line errors, exit code 2, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_FAILURE = 1
EXIT_USAGE = 2

# The daemons' exit codes (the man pages' EXIT STATUS section is made from this table).
DAEMON_EXIT_STATUS = {
    0: "stopped by SIGTERM or SIGINT, after removing what it had set up",
    EXIT_FAILURE: "stopped by a fault while running, after removing what it had set up: an interface it depends on "
                  "was deleted, a helper thread ended, or the datapath failed (the log says which); systemd's "
                  "Restart=on-failure starts it again",
    EXIT_USAGE: "did not start: a wrong option or config file setting, or a setup step failed (TUN device, "
                "socket, permissions); nothing was left changed",
}


class UsageError(Exception):
    """Wrong usage or configuration; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def fail(prog: str, message: str, code: int = EXIT_USAGE) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def setup_logging(level: str) -> None:
    """Log to stderr; without timestamps under systemd (journald adds its own)."""
    under_journald = "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(message)s" if under_journald else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug output is one line per netlink message


def add_logging_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log verbosity on stderr (default: %(default)s)",
    )


def parse_port(text: str, what: str = "port") -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{what} {port} is out of range 1..65535")
    return port
