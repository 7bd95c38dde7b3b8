import os
import subprocess

import pytest

from tests.netlab import ROOT, Lab


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces)")


@pytest.fixture(scope="module", params=["on", "off"], ids=["fast-path-on", "fast-path-off"])
def fast_path(request) -> str:
    """The router's --fast-path: the namespace tests of the router run with the kernel fast path and without."""
    return request.param


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="session")
def package(tmp_path_factory):
    """The Debian package as `./dev deb` builds it (once per run: the package and systemd tests share it)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([str(ROOT / "dev"), "deb", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    found = sorted(out.glob("sixbed4_*_all.deb"))
    assert len(found) == 1, found
    return found[0]
