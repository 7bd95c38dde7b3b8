"""TOML configuration files, equivalent to the command line.

Each key is a long option name (`v4listen = "192.0.2.1"`, `v6route = [...]`,
`no-prefix-route = true`); the file is turned into arguments placed before the
real command line, so command-line options override it (lists add up).  The
argument parser then validates file and command line alike, so a bad value in
the file gets the same one-line error as on the command line.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from typing import Callable

from .cliutil import UsageError, fail, setup_logging
from .core.addr import AddressError


def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    options = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
        for flag in action.option_strings:
            if flag.startswith("--"):
                options[flag[2:]] = action
    return options


def config_path(argv: list[str]) -> str | None:
    """The value of --config in argv, if any (before full parsing)."""
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def arguments_from_file(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """Read a TOML file into command-line arguments for `parser`."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from None
    options = _long_options(parser)
    args: list[str] = []
    for key, value in data.items():
        action = options.get(key.replace("_", "-"))
        if action is None or key in ("config", "help"):
            raise UsageError(f"config file {path}: unknown setting {key!r}")
        flag = f"--{key.replace('_', '-')}"
        if action.nargs == 0:
            if not isinstance(value, bool):
                raise UsageError(f"config file {path}: {key} must be true or false")
            if value:
                args.append(flag)
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, (dict, list)) or isinstance(item, bool):
                raise UsageError(f"config file {path}: {key} must be a string or number")
            args += [flag, str(item)]
    return args


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file with long option names as keys; command-line options override it")


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv with the settings of --config FILE in front of it."""
    path = config_path(argv)
    prefix = arguments_from_file(path, parser) if path else []
    return parser.parse_args(prefix + argv)


def daemon_main(parser: argparse.ArgumentParser, to_settings: Callable, run: Callable[..., int],
                argv: list[str] | None) -> int:
    """A daemon's main(): options over its --config file, anything wrong is one line and exit 2, then run."""
    try:
        args = parse_with_config(parser, sys.argv[1:] if argv is None else argv)
        settings = to_settings(args)
    except (AddressError, UsageError) as exc:
        return fail(parser.prog, str(exc))
    setup_logging(args.log_level)
    return run(settings, parser.prog)
