"""The whole suite's collection rule: every test that needs a real Ray cluster (marker ``ray``)
goes to one xdist group, so with ``-n 2 --dist loadgroup`` (pyproject's addopts) the Ray tests
run one at a time on one worker — never two Ray clusters at once on this 2-core machine —
while the pure tiers run beside them on the other worker."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the group into the node id
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))
