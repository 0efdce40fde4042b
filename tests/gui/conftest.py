"""GUI tests run on a qasync loop, so ``await`` inside a test lets Qt paint, time and deliver signals.

pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (scoped to this directory by conftest rules) gives every
async test here a qasync loop (``app.gui.qtfix.EventLoop``) on the one ``QApplication`` of the session (offscreen: see
tests/conftest.py). Synchronous tests use pytest-qt's ``qtbot`` as usual.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest
from PySide6.QtWidgets import QApplication

from app.gui.qtfix import EventLoop

os.environ.setdefault("KITEBOX_THEME", "light")


def _application() -> QApplication:
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app
    return QApplication([])


def _qasync_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = EventLoop(_application())
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"qasync": _qasync_loop}
