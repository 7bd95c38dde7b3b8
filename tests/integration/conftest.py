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


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab
