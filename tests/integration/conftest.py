import os

import pytest

from tests.netlab import Lab


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
