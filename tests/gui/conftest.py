"""GUI tests run on a qasync loop, so ``await`` inside a test lets Qt paint, time and deliver signals.

pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (scoped to this directory by conftest rules) gives every
async test here a qasync loop (``app.gui.qtfix.EventLoop``) on the one ``QApplication`` of the session (offscreen: see
tests/conftest.py). Synchronous tests use pytest-qt's ``qtbot`` as usual.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from app.gui.qtfix import EventLoop
from engine import Engine, RegistryConfig, load_config
from tests.support.busybox import busybox_layer_tar
from tests.support.images import build_image, push_image
from tests.support.registry import RegistryServer

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


# -- the real engine with a local busybox image (root tests) ------------------------------------------------------


@pytest.fixture
async def gui_engine(tmp_path: Path, registry: RegistryServer) -> AsyncIterator[Engine]:
    """An engine on a fresh state root (the test's own config, the test registry allowed over plain HTTP);
    every container is removed afterwards."""
    config = replace(load_config(), registries=RegistryConfig(insecure=(registry.host,)))
    opened = await Engine.open(tmp_path / "state", config=config)
    try:
        yield opened
    finally:
        for record in await opened.containers.list(all_containers=True):
            await opened.containers.remove(record.id, force=True, volumes=True)
        await opened.close()


@pytest.fixture
async def busybox_ref(gui_engine: Engine, registry: RegistryServer, repo_name: str) -> str:
    """A busybox image (``sh``, ``vi``, ``top``, ``stty``...) pulled into ``gui_engine``."""
    image = build_image([busybox_layer_tar()], compression="gzip", config={"Cmd": ["sh"]})
    push_image(registry.url, repo_name, "latest", image)
    ref = f"{registry.host}/{repo_name}:latest"
    await gui_engine.pull(ref)
    return ref
