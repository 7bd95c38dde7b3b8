"""The original C 6bed4router and 6bed4peer (github vanrein/6bed4), built for latency.py's "C pair" row.

The C sources are a third-party baseline and never part of this repository: an
operator gets them with `git clone https://github.com/vanrein/6bed4`, and
`bench/latency.py --c-src DIR` builds them from DIR into a temporary directory at
each run, the way the C project's Makefile.in does (`gcc -DLINUX`), with -O2.

The C project leaves `nonstd.h` to the builder (its `nonstd.h.in` has @NAME@
placeholders, "due to an IANA obligation to avoid default builds with
non-standard options").  It names the UDP port and, for the peer, its one
router: a TUN build of 6bed4peer sends every data packet to the compiled-in
SERVER_6BED4_IPV4 (`-s` only chooses where Router Solicitations go), so the
build is for the lab's router address.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
from pathlib import Path

PROGRAMS = ("6bed4router", "6bed4peer")
PORT = 25790  # docs/PROTOCOL.md: the 6bed4 router's UDP port
_PLACEHOLDER = re.compile(r"@([A-Z0-9_]+)@")


class BuildError(RuntimeError):
    """The C pair could not be built from the given tree."""


def find_sources(tree: Path) -> Path:
    """The directory of 6bed4router.c and 6bed4peer.c: src/ (the current layout) or the top (older ones)."""
    for directory in (tree / "src", tree):
        if all((directory / f"{program}.c").is_file() for program in PROGRAMS):
            return directory
    raise BuildError(f"{tree}: no 6bed4router.c and 6bed4peer.c in src/ or at the top"
                     " (expected a clone of https://github.com/vanrein/6bed4)")


def _c_bytes(raw: bytes) -> str:
    return '"' + "".join(f"\\x{byte:02x}" for byte in raw) + '"'


def nonstd_values(router_v4: str, port: int = PORT) -> dict[str, str]:
    """The values of nonstd.h.in's placeholders for a router at router_v4:port."""
    ipv4 = ipaddress.IPv4Address(router_v4).packed
    port_le = port.to_bytes(2, "little")  # ND link-layer options carry the port low byte first
    return {
        "ND_OPT_DESTINATION_LINKADDR": "253",  # the C code's experimental option type (never sent by it)
        "UDP_PORT_6BED4": str(port),
        "SERVER_6BED4_IPV4_TXT": f'"{router_v4}"',
        "SERVER_6BED4_IPV4_INT32": "(" + " | ".join(f"({byte}L << {24 - 8 * i})" for i, byte in enumerate(ipv4)) + ")",
        **{f"SERVER_6BED4_IPV4_INT{i}": str(byte) for i, byte in enumerate(ipv4)},
        "SERVER_6BED4_IPV4_BINSTR": _c_bytes(ipv4),
        "SERVER_6BED4_PORT_TXT": f'"{port}"',
        "SERVER_6BED4_PORT_BINSTR": _c_bytes(port_le),
        "SERVER_6BED4_IPV4_PORT_TXT": f'"{router_v4}:{port}"',
        "SERVER_6BED4_PORT_IPV4_ADDRSTR": _c_bytes(port_le + ipv4),
        "SERVER_6BED4_PORT_IPV4_MACSTR": _c_bytes(port_le + ipv4),
    }


def nonstd_header(tree: Path, sources: Path, values: dict[str, str]) -> str:
    """nonstd.h from the tree's nonstd.h.in, or (trees without one) every known value as a #define."""
    for template in (sources / "nonstd.h.in", tree / "nonstd.h.in"):
        if template.is_file():
            text = template.read_text()
            unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
            if unknown:
                raise BuildError(f"{template}: placeholders this bench cannot fill: {', '.join(unknown)}")
            return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
    return "".join(f"#define {name} {value}\n" for name, value in values.items())


def build(tree: Path, outdir: Path, router_v4: str, port: int = PORT) -> dict[str, Path]:
    """Compile 6bed4router and 6bed4peer from `tree` in `outdir`; {program: binary}.

    The .c files are copied next to the generated nonstd.h, so that their
    `#include "nonstd.h"` finds it and not an older tree's own nonstd.h (which
    stops the build with #error on purpose).
    """
    if shutil.which("gcc") is None:
        raise BuildError("gcc not found (./dev setup installs it)")
    tree = Path(tree).resolve()
    sources = find_sources(tree)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "nonstd.h").write_text(nonstd_header(tree, sources, nonstd_values(router_v4, port)))
    binaries = {}
    for program in PROGRAMS:
        shutil.copyfile(sources / f"{program}.c", outdir / f"{program}.c")
        command = ["gcc", "-DLINUX", "-O2", "-w", "-o", str(outdir / program), str(outdir / f"{program}.c")]
        result = subprocess.run(command, capture_output=True, text=True, cwd=outdir)
        if result.returncode != 0:
            raise BuildError(f"{shlex.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
        binaries[program] = outdir / program
    return binaries
