"""How `./dev test` spreads the suite over pytest-xdist's workers (`--dist loadgroup`).

Each test file is one group, and so one worker: a module's fixtures (a lab, its daemons) are built
once.  A file whose lab is parametrized by the router's fast path is two groups, one per value,
because the two labs are independent.  Tests marked `alone` run afterwards, one at a time, in a run
of their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


def _group(item: pytest.Item) -> str:
    path = Path(str(item.fspath))
    callspec = getattr(item, "callspec", None)  # only parametrized tests have one
    fast_path = callspec.params.get("fast_path") if callspec else None
    return f"{path.parent.name}/{path.stem}" + (f"[{fast_path}]" if fast_path else "")
