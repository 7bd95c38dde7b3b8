"""Man pages generated from the argument parsers, so they cannot drift from --help.

`python -m sixbed4.manpage DIR` writes 6bed4router.8, 6bed4peer.8 and 6bed4.8;
a test regenerates them and compares with the committed copies in man/.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

PROGRAMS = {
    "6bed4router": ("sixbed4.router.cli", "stateless 6bed4 router: IPv6 over UDP/IPv4 for peers behind NAT"),
    "6bed4peer": ("sixbed4.peer.cli", "6bed4 peer: IPv6 for a host or home gateway behind NAT"),
    "6bed4": ("sixbed4.cli", "tools around 6bed4: addresses, host setup, proxy ND, demo"),
}
SEE_ALSO = ".BR 6bed4router (8), .BR 6bed4peer (8), .BR 6bed4 (8)"


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
    lines += [".SH SEE ALSO", *SEE_ALSO.replace(", .", "\n.").split("\n")]
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
