"""Fixtures for the unpack tests: every layer test runs once with openat2 and once with the O_NOFOLLOW walk,
in a sandbox whose outside is checked unchanged at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.unpack.safepath import openat2_available
from tests.unit.unpack.tarbuild import Sandbox


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    use_openat2 = bool(request.param)
    if use_openat2 and not openat2_available():
        pytest.fail("openat2 is not available on this kernel; the walk is tested separately")
    box = Sandbox(tmp_path / "base", use_openat2)
    yield box
    box.assert_untouched()
