"""Man pages generated from the code, so they cannot drift from --help and from what the programs do.

`python -m sixbed4.manpage DIR` writes 6bed4router.8, 6bed4peer.8 and 6bed4.8;
a test regenerates them and compares with the committed copies in man/.
Every section comes from a table the programs themselves use: OPTIONS and
CONFIGURATION from the argument parsers, SIGNALS from the signal tables the
daemons install their handlers from, ENVIRONMENT from the variables the daemons
read (io.service.ENVIRONMENT), EXIT STATUS from the exit code tables,
METRICS from the collectors' own output, FILES from the paths in the code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

from . import cli, cliutil, config
from .core.stats import DROP_REASONS, Counters
from .hostsetup import apply as hostsetup_apply
from .hostsetup import cli as hostsetup_cli
from .io import undo
from .io.metrics import CountersCollector
from .io.service import ENVIRONMENT
from .peer import daemon as peer_daemon
from .router import daemon as router_daemon

PROGRAMS = {
    "6bed4router": ("sixbed4.router.cli", "stateless 6bed4 router: IPv6 over UDP/IPv4 for peers behind NAT"),
    "6bed4peer": ("sixbed4.peer.cli", "6bed4 peer: IPv6 for a host or home gateway behind NAT"),
    "6bed4": ("sixbed4.cli", "tools around 6bed4: addresses, host setup, proxy ND, demo"),
}
UNIT_DIR = "/lib/systemd/system"  # where the Debian package puts the units (contrib/systemd in the source)
UNITS = {"6bed4router": "6bed4router.service", "6bed4peer": "6bed4peer.service", "6bed4": "6bed4-host-setup.service"}
CONFIG_FILES = {"6bed4router": "router.toml", "6bed4peer": "peer.toml", "6bed4": "host-setup.toml"}
SYSUSERS = "/usr/lib/sysusers.d/sixbed4.conf"


def _escape(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _options(parser: argparse.ArgumentParser, headings: bool = True) -> list[str]:
    out: list[str] = []
    for group in parser._action_groups:  # noqa: SLF001 - argparse has no public listing
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]  # noqa: SLF001
        actions = [a for a in actions if not isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if not actions:
            continue
        if headings:
            title = group.title or "options"
            out.append(f".SS {_escape(title[0].upper() + title[1:])}")
        for action in actions:
            if action.option_strings:
                metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else "")
                if action.choices and not action.metavar:
                    metavar = "{" + ",".join(map(str, action.choices)) + "}"
                names = ", ".join(f"\\fB{_escape(flag)}\\fR" for flag in action.option_strings)
                label = f"{names} \\fI{_escape(metavar)}\\fR" if metavar else names
            else:
                label = f"\\fI{_escape(action.metavar or action.dest)}\\fR"
            help_text = action.help or ""
            if "%(" in help_text:
                help_text = help_text % {"default": action.default, "prog": parser.prog}
            out += [".TP", label, _escape(help_text)]
    return out


def _entries(items) -> list[str]:
    """(label, text) pairs as a tagged list."""
    out = []
    for label, text in items:
        out += [".TP", f"\\fB{_escape(str(label))}\\fR", _escape(text)]
    return out


def _configuration(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The TOML keys of a parser that takes --config: one per long option."""
    out = [".PP", _escape(f"{command} --config FILE reads a TOML file whose keys are the long option names. "
                          "An option given on the command line replaces the file's setting, a list "
                          "included. The keys:")]
    seen = set()
    for key, (action, _flag) in config.long_options(parser).items():
        if id(action) in seen:
            continue
        seen.add(id(action))
        flags = ", ".join(action.option_strings)
        if isinstance(action, argparse.BooleanOptionalAction):
            key = next(flag[2:] for flag in action.option_strings if flag.startswith("--") and "--no-" not in flag)
            form, what = "true | false", f"as {flags} (no-{key} = true means {key} = false)"
        elif action.nargs == 0:
            form, what = "true", f"as {flags}; false is the same as leaving it out"
        elif action.choices:
            form, what = " | ".join(f'"{choice}"' for choice in action.choices), f"as {flags}"
        else:
            metavar = action.metavar or action.dest.upper()
            form = f'["{metavar}", ...]' if config.repeatable(action) else f'"{metavar}"'
            what = f"as {flags}" + (" (each value of the list in turn)" if config.repeatable(action) else "")
        out += [".TP", f"\\fB{_escape(key)}\\fR = {_escape(form)}", _escape(what)]
    return out


def _metrics(parts: list[tuple[str, CountersCollector]]) -> list[str]:
    """The families the collectors export (names as scraped), each collector after its intro; the drop reasons."""
    out = []
    for intro, collector in parts:
        out += [".PP", _escape(intro)]
        for family in collector.collect():
            suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
            name = family.name + suffix
            if family.name.endswith("_drops"):
                name += "{reason}"
            out += [".TP", f"\\fB{_escape(name)}\\fR", _escape(f"{family.type}: {family.documentation}")]
    out += [".PP", _escape("The reasons of the drops counters:")]
    reasons = dict.fromkeys(reason for _intro, collector in parts for reason in collector.reasons)
    out += _entries((reason, DROP_REASONS[reason]) for reason in reasons)
    return out


def _collectors(name: str) -> list[tuple[str, CountersCollector]]:
    """Collectors like the program's own, over zero counters (they only name their families here)."""
    from .io.proxynd import ProxyResponder

    from .fastpath.loader import COUNTER_NAMES, FastPathCollector

    proxy = ProxyResponder.metrics_collector(SimpleNamespace(counters=Counters()))  # a responder's, without a socket
    zero = SimpleNamespace(counters=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    with_fast = "With the kernel fast path attached (--fast-path), also (the counters above include its packets):"
    info = dict.fromkeys(("prefix", "address", "router", "fast_path"), "")
    served = "With --metrics HOST:PORT, Prometheus metrics over HTTP at /metrics:"
    if name == "6bed4router":
        return [(served, CountersCollector("sixbed4_router", Counters(), lambda: info, lambda: 0)),
                (with_fast, FastPathCollector("sixbed4_router", zero)),
                ("With --proxy-nd, also those of the proxy ND responder:", proxy)]
    if name == "6bed4peer":
        return [(served, CountersCollector("sixbed4_peer", Counters(), lambda: info)),
                (with_fast, FastPathCollector("sixbed4_peer", zero))]
    return [(f"6bed4 proxy-nd: {served}", proxy)]


def _signals(table: dict) -> list[str]:
    return _entries((signal.Signals(signum).name, text if isinstance(text, str) else text[1])
                    for signum, text in table.items())


def sections(name: str, parser: argparse.ArgumentParser) -> list[tuple[str, list[str]]]:
    """The sections after OPTIONS and COMMANDS, from the tables each program works with."""
    etc = f"{config.CONFIG_DIR}/{CONFIG_FILES[name]}"
    unit = f"{UNIT_DIR}/{UNITS[name]}"
    if name == "6bed4":
        host_setup = cli_command(parser, "host-setup")
        signals = _signals(hostsetup_cli.PROXY_SIGNALS) + _entries(
            [("SIGINT, SIGTERM", "demo: take the lab down (namespaces and processes), exit 130")])
        exits = cli.EXIT_STATUS
        environment = []
        configuration = _configuration(host_setup, "6bed4 host-setup")
        files = [(etc, "the settings 6bed4-host-setup.service gives host-setup (--config)"),
                 (str(hostsetup_apply.DEFAULT_STATE_FILE),
                  "what host-setup apply changed, for undo; in /run, so gone with the changes at a reboot"),
                 (unit, "runs host-setup apply at boot, after the network is up and before 6bed4router.service; "
                        "stopping it runs undo")]
    else:
        daemon = router_daemon if name == "6bed4router" else peer_daemon
        signals = _signals(daemon.SIGNALS)
        exits = cliutil.DAEMON_EXIT_STATUS
        environment = _entries(ENVIRONMENT.items())
        configuration = _configuration(parser, name)
        daemon_name = name.removeprefix("6bed4")
        files = [(etc, f"the settings {UNITS[name]} gives {name} (--config); an example with every key"),
                 ("/dev/net/tun", "opened as root before the switch to --user, so its mode may be 0600"),
                 (unit, f"runs {name} as root with CAP_NET_ADMIN"
                        + (", CAP_NET_RAW" if name == "6bed4router" else "") + ", CAP_BPF, CAP_PERFMON (the fast path)"
                        + ", CAP_SETUID and CAP_SETGID only, then as _sixbed4 with CAP_NET_ADMIN alone; "
                          "Type=notify: ready " + ("when it serves" if name == "6bed4router"
                                                   else "once the router has given it an address")
                        + "; systemctl reload sends SIGHUP; WatchdogSec=: killed and started again when its "
                          "data path stalls (see ENVIRONMENT); ExecStopPost=: 6bed4 take-back "
                        + daemon_name + " once it has ended"),
                 (SYSUSERS, "creates the user _sixbed4 at installation")]
        files.append((f"{undo.RUN_DIR}/{daemon_name}-NETNS-TUN.undo",
                      "the undo record: each change to the kernel (sysctls, link settings, addresses, routes, proxy "
                      "entries) written before it is made; the next start (or 6bed4 take-back " + daemon_name
                      + ") takes back what a killed " + daemon_name + " left; locked while one runs, so that a "
                      "second one for the same device does not start (NETNS: the network namespace's inode, "
                      "TUN: the device's name); in /run, so gone at a reboot with the changes"))
        files.append(("/var/cache/sixbed4", "the kernel fast path's eBPF object, compiled by clang at the first "
                                            "start (the unit's CacheDirectory=; else $XDG_CACHE_HOME/sixbed4 "
                                            "or ~/.cache/sixbed4)"))
    see_also = [f".BR {other} (8)," for other in PROGRAMS if other != name]
    see_also += [".BR systemd.service (5),", ".BR systemd-analyze (1)",
                 ".PP", _escape(", ".join(UNITS.values()))]
    return [
        ("CONFIGURATION", configuration),
        ("SIGNALS", signals),
        *([("ENVIRONMENT", environment)] if environment else []),
        ("EXIT STATUS", _entries(exits.items())),
        ("FILES", _entries(files)),
        ("METRICS", _metrics(_collectors(name))),
        ("SEE ALSO", see_also),
    ]


def cli_command(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return commands.choices[command]


def _commands(prefix: str, parser: argparse.ArgumentParser) -> list[str]:
    """A section per subcommand, and per subcommand of a subcommand (`6bed4 anycast check`)."""
    lines = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub_name, sub in action.choices.items():
                lines += [f".SS {_escape(prefix)} {_escape(sub_name)}", _escape((sub.description or "").strip()),
                          ".PP", ".nf", _escape(sub.format_usage().replace("usage: ", "").strip()), ".fi"]
                lines += _options(sub, headings=False)
                if sub.epilog:
                    lines += [".PP", ".nf", _escape(sub.epilog.strip()), ".fi"]
                lines += _commands(f"{prefix} {sub_name}", sub)
    return lines


def render(name: str, parser: argparse.ArgumentParser, summary: str) -> str:
    usage = parser.format_usage().replace("usage: ", "").strip()
    lines = [
        f'.TH {name.upper()} 8 "" "sixbed4" "6bed4 manual"',
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(summary)}",
        ".SH SYNOPSIS",
        ".nf",
        _escape(usage),
        ".fi",
    ]
    if parser.description:
        lines += [".SH DESCRIPTION", _escape(parser.description.strip())]
    lines += [".SH OPTIONS", *_options(parser)]
    commands = _commands(name, parser)
    if commands:
        lines += [".SH COMMANDS", *commands]
    if parser.epilog:
        lines += [".SH NOTES", ".nf", _escape(parser.epilog.strip()), ".fi"]
    for title, body in sections(name, parser):
        lines += [f".SH {title}", *body]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    os.environ["COLUMNS"] = "80"  # argparse wraps usage to the terminal: fix it for reproducible pages
    result = {}
    for name, (module, summary) in PROGRAMS.items():
        parser = importlib.import_module(module).build_parser()
        result[f"{name}.8"] = render(name, parser, summary)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sixbed4.manpage", description="write the man pages")
    parser.add_argument("directory", nargs="?", default="man", type=Path, help="where to write them (default: man)")
    target = parser.parse_args(argv).directory
    target.mkdir(parents=True, exist_ok=True)
    for filename, text in pages().items():
        (target / filename).write_text(text)
        print(target / filename)
    return 0


if __name__ == "__main__":
    sys.exit(main())
