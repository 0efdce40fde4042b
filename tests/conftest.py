"""Shared test configuration.

* ``@pytest.mark.root`` tests need root. On CI (``CI`` set) they must run, so a non-root CI run fails them
  instead of skipping; a developer running as a normal user sees them skipped with the reason.
* Qt runs offscreen.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is None or os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("this test needs root and CI must run as root", pytrace=False)
    pytest.skip("needs root")

# Shared fixtures (real registry, image builders, fault-injecting proxy) live in tests/support/fixtures.py.
pytest_plugins = ["tests.support.fixtures"]
