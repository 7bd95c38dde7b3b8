"""The man pages are generated from the argument parsers: the committed copies must match them."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from sixbed4 import manpage

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `python -m sixbed4.manpage man` and commit man/"


@pytest.mark.parametrize("filename", sorted(manpage.pages()))
def test_committed_page_matches_the_parser(filename):
    committed = ROOT / "man" / filename
    assert committed.exists(), f"man/{filename} is missing: {REGENERATE}"
    assert committed.read_text() == manpage.pages()[filename], f"man/{filename} drifted from --help: {REGENERATE}"


def test_every_page_is_installed_with_the_package():
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert sorted(data_files["share/man/man8"]) == sorted(f"man/{name}" for name in manpage.pages())


@pytest.mark.parametrize("filename", sorted(manpage.pages()))
def test_page_renders_without_warnings(filename):
    result = subprocess.run(["man", "--warnings", "-l", str(ROOT / "man" / filename)], capture_output=True,
                            text=True, env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("filename", sorted(manpage.pages()))
def test_page_lists_every_long_option(filename):
    name = filename.removesuffix(".8")
    module = manpage.PROGRAMS[name][0]
    parser = __import__(module, fromlist=["build_parser"]).build_parser()
    text = (ROOT / "man" / filename).read_text()
    for action in parser._actions:  # noqa: SLF001
        for flag in action.option_strings:
            assert flag.replace("-", "\\-") in text, f"{flag} missing from {filename}"
