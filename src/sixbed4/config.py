"""TOML configuration files, equivalent to the command line.

Each key is a long option name (`v4listen = "192.0.2.1"`, `v6route = [...]`,
`default-route = true`, `prefix-route = false` or `no-prefix-route = true`).
The command line overrides the file option by option: a value or boolean given
on the command line replaces the file's, and a list given on the command line
(`-R`, `--local`, the masquerading rules) replaces the file's whole list.
Values from the file pass the same type checks as the command line's, so a bad
value gets the same kind of one-line error, naming the file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import sys
import tomllib
from typing import Callable

from .cliutil import UsageError, fail, setup_logging
from .core.addr import AddressError

CONFIG_DIR = "/etc/sixbed4"


def long_options(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    """Config key -> (the action, its long flag): every long option except --help and --config."""
    options = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in ("--help", "--config"):
                options[flag[2:]] = (action, flag)
    return options


def repeatable(action: argparse.Action) -> bool:
    """Whether the option may be given more than once (in a file: a list) and collects every value."""
    return isinstance(action, argparse._AppendAction) or getattr(action, "repeatable", False)  # noqa: SLF001


def read_file(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from None


def _convert(action: argparse.Action, text: str, where: str):
    """A file value through the option's type and choices, as argparse treats a command-line value."""
    try:
        value = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise UsageError(f"{where}: invalid value {text!r}") from None
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def file_namespace(path: str, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The settings of a TOML file as the namespace the same options on a command line give."""
    options = long_options(parser)
    namespace = argparse.Namespace()
    for key, value in read_file(path).items():
        found = options.get(key.replace("_", "-"))
        if found is None:
            raise UsageError(f"config file {path}: unknown setting {key!r}")
        action, flag = found
        where = f"config file {path}: {key}"
        if action.nargs == 0:  # a switch: true or false
            if not isinstance(value, bool):
                raise UsageError(f"{where} must be true or false")
            if isinstance(action, argparse.BooleanOptionalAction):
                setattr(namespace, action.dest, value != flag.startswith("--no-"))
            elif value:  # a switch without a --no- form (e.g. --icmp): false is the same as leaving it out
                action(parser, namespace, None, flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (dict, list, bool)):
                raise UsageError(f"{where} must be a string or number")
            action(parser, namespace, _convert(action, str(item), where), flag)
    return namespace


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """The options argv sets itself, with their values (a copy of the parser that has no defaults reads it).

    argv is parsed as it is first, so that --help and usage errors come from the real parser.
    """
    parser.parse_args(argv)
    probe = copy.deepcopy(parser)
    for action in probe._actions:  # noqa: SLF001
        action.default = argparse.SUPPRESS  # an option that is not given leaves no attribute
    probe._defaults.clear()  # noqa: SLF001 - nor does a parser-wide default (set_defaults)
    return vars(probe.parse_args(argv))


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file whose keys are the long option names; command-line options override it")


def usage(prog: str, required: str, first: str = "") -> str:
    """The usage lines of a program that needs the options `required` on the command line or from --config."""
    prog = f"{prog} {first}" if first else prog
    return f"{prog} {required} [OPTION]...\n       {prog} --config FILE [OPTION]..."


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv over the settings of its --config FILE: what argv gives replaces the file's."""
    given = given_on_command_line(parser, argv)
    settings = file_namespace(given["config"], parser) if given.get("config") else argparse.Namespace()
    for dest in given:
        if hasattr(settings, dest):
            delattr(settings, dest)
    return parser.parse_args(argv, namespace=settings)


def daemon_main(parser: argparse.ArgumentParser, to_settings: Callable, run: Callable[..., int],
                argv: list[str] | None) -> int:
    """A daemon's main(): options over its --config file, anything wrong is one line and exit 2, then run.

    `run(settings, prog, reload)` gets a Reload that re-reads the same command line and file.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_with_config(parser, argv)
        settings = to_settings(args)
    except (AddressError, UsageError) as exc:
        return fail(parser.prog, str(exc))
    setup_logging(args.log_level)
    return run(settings, parser.prog, Reload(parser, to_settings, argv, args))


class Reload:
    """SIGHUP: read the command line and its --config file again, apply the log level, say what else changed.

    The daemon's signal handler calls request(); its timer calls due() and, if
    true, check(current settings), which returns the new settings (the daemon
    applies the parts it can change while running, named in `live`) or None when
    there is no file or it cannot be used.  It never raises: a daemon does not
    stop over a bad edit.
    """

    def __init__(self, parser: argparse.ArgumentParser, to_settings: Callable, argv: list[str],
                 args: argparse.Namespace):
        self.parser = parser
        self.to_settings = to_settings
        self.argv = argv
        self.path = args.config
        self.requested = False
        self.log = logging.getLogger(parser.prog)

    def request(self) -> None:
        self.requested = True

    def due(self) -> bool:
        requested, self.requested = self.requested, False
        return requested

    def check(self, current, live: frozenset[str] = frozenset()):
        if not self.path:
            self.log.info("SIGHUP: no --config file to reload; running on unchanged")
            return None
        try:
            args = parse_with_config(self.parser, self.argv)
            settings = self.to_settings(args)
        except (AddressError, UsageError) as exc:
            self.log.error("SIGHUP: %s; running on unchanged", exc)
            return None
        except SystemExit:  # argparse has printed the one-line error
            self.log.error("SIGHUP: %s has a bad value; running on unchanged", self.path)
            return None
        changed = differences(current, settings)
        now = [name for name in changed if name.split(".")[0] in live]
        later = [name for name in changed if name.split(".")[0] not in live]
        self.log.info("SIGHUP: reloaded %s: log level %s%s%s", self.path, args.log_level,
                      "".join(f", {name} changed" for name in now),
                      f"; changed, but in effect only after a restart: {', '.join(later)}" if later else "")
        logging.getLogger().setLevel(args.log_level.upper())  # after the line above, which a quieter level hides
        return settings


def differences(old, new, prefix: str = "") -> list[str]:
    """Names of the fields that differ between two settings dataclasses (nested ones as a.b)."""
    names = []
    for field in dataclasses.fields(old):
        a, b = getattr(old, field.name), getattr(new, field.name)
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            names += differences(a, b, f"{prefix}{field.name}.")
        elif a != b:
            names.append(prefix + field.name)
    return names
