"""The desktop app end to end: the real engine (tmp state root) and a real local registry, driven through the
widgets: search -> pick -> tag -> Create -> the sidebar shows the container at once -> it runs -> its logs stream
into the home tab. Screenshots of the main screens go to ``artifacts/`` (gitignored) for review."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PySide6.QtWidgets import QWidget
from pytestqt.qtbot import QtBot

from app.gui.app import StartedApp, open_app
from app.gui.sidebar import SidebarEntry
from app.gui.state import AppState
from app.gui.window import MainWindow
from engine import Config, CreateOptions, RegistryConfig
from tests.support.images import BuiltImage, busybox_image, push_image
from tests.support.registry import RegistryServer
from tests.support.wait import async_wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
NO_NETWORK = CreateOptions(network="none")  # these tests stay independent from container networking

CHATTY = (
    "i=0; while [ $i -lt 60 ]; do i=$((i+1)); "
    r"printf '\033[2m2026-11-30 09:14:%02d\033[0m \033[32mINFO\033[0m GET /api/items/%d \033[1m200\033[0m in %dms\n'"
    " $((i%60)) $i $((i*7%90)); "
    "if [ $((i%9)) -eq 0 ]; then echo \"WARN upstream cache miss for key user:$i\" >&2; fi; done; "
    r"printf '\033[38;5;208mready\033[0m \033[38;2;120;80;255mtruecolor\033[0m \033[4munderlined\033[0m\n'; "
    "exec sleep 1000"
)


wait_for = functools.partial(async_wait_until, timeout=20.0)


def screenshot(widget: QWidget, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert widget.grab().save(str(path)), f"could not write {path}"
    return path


@pytest.fixture
async def started(tmp_path: Path, registry: RegistryServer) -> AsyncIterator[StartedApp]:
    config = Config(registries=RegistryConfig(insecure=(registry.host,)))
    app = await open_app(tmp_path / "root", config, settings_path=tmp_path / "gui.json", hub=False,
                         create_defaults=NO_NETWORK)
    try:
        yield app
    finally:
        for record in await app.engine.containers.list(all_containers=True):
            await app.engine.containers.remove(record.id, force=True, volumes=True)
        await app.close()


def parts(app: StartedApp) -> tuple[AppState, MainWindow]:
    assert isinstance(app.state, AppState) and isinstance(app.window, MainWindow)
    return app.state, app.window


@pytest.mark.root
@pytest.mark.registry
async def test_create_flow_end_to_end_with_screenshots(started: StartedApp, registry: RegistryServer,
                                                       repo_name: str, qtbot: QtBot) -> None:
    image: BuiltImage = busybox_image(config={"Cmd": ["sh", "-c", CHATTY], "ExposedPorts": {"8080/tcp": {}},
                                              "Volumes": {"/data": {}}})
    push_image(registry.url, repo_name, "latest", image)
    push_image(registry.url, repo_name, "1.0", image)
    state, window = parts(started)
    window.resize(1280, 800)

    window.show_new()
    page = window.new_page
    page.query.setText(repo_name.split("/")[-1])
    searches = page.searches
    page.search_now()
    await wait_for(lambda: page.searches > searches and page.hits.rowCount() > 0, "search results")
    repository = f"{registry.host}/{repo_name}"
    page.choose(repository)
    await wait_for(lambda: page.tag_loads > 0, "tags")
    assert sorted(page.tags.item(i).text() for i in range(page.tags.count())) == ["1.0", "latest"]
    assert page.tags.currentItem().text() == "latest"
    screenshot(window, "new-container")
    page.name.setText("web app!")
    assert page.name_preview.text() == "Will be created as: web-app"

    name = page.create_container()
    assert name == "web-app"
    entries = [page_entry for page_entry in window.sidebar.entries() if page_entry.name == "web-app"]
    assert entries and entries[0].status == "pulling"  # in the sidebar at once
    assert window.sidebar.model.names()[0] == "web-app"  # pulling sorts before the rest
    await wait_for(lambda: (r := state.find("web-app")) is not None and r.state.running,
                   "the container to run", detail=lambda: [(t.title, t.state, t.message) for t in state.tasks.tasks()])
    assert not state.settings.pending  # nothing left to resume
    assert any(title == "web-app is running" for title, _ in state.notifier.history)

    window.sidebar.select("web-app")
    container_page = window.container_page
    logs = container_page.logs
    await wait_for(lambda: logs.model.rowCount() >= 67, "the container's log lines", timeout=30)
    texts = [logs.model.text(r) for r in range(logs.model.rowCount())]
    assert any("\x1b[32mINFO" in t for t in texts)
    assert sum(1 for r in range(logs.model.rowCount()) if logs.model.is_stderr(r)) == 6
    assert container_page.start_stop.text() == "Stop"
    screenshot(window, "container-home")

    container_page.tabs.setCurrentWidget(container_page.settings)
    settings = container_page.settings
    assert settings.name.text() == "web-app"
    assert [settings.volumes.item(0, c).text() for c in range(2)][1] == "/data"  # type: ignore[union-attr]
    settings.name.setText("web app 2")
    plan = settings.plan()
    assert plan.rename_only and settings.name_preview.text() == "Will be saved as: web-app-2"
    screenshot(window, "container-settings")
    settings.name.setText("web-app")

    container_page.tabs.setCurrentWidget(container_page.inspect)
    await wait_for(lambda: container_page.inspect.document is not None, "the inspect document")
    assert container_page.inspect.document["Name"] == "/web-app"

    window.show_page("images")
    await wait_for(lambda: window.images_page.model.rowCount() == 1, "the images table")
    screenshot(window, "images")


@pytest.mark.root
@pytest.mark.registry
async def test_interrupted_create_resumes_at_next_start(tmp_path: Path, registry: RegistryServer,
                                                        repo_name: str) -> None:
    push_image(registry.url, repo_name, "latest", busybox_image(config={"Cmd": ["sleep", "1000"]}))
    config = Config(registries=RegistryConfig(insecure=(registry.host,)))
    settings = tmp_path / "gui.json"
    pending = {"pending": [{"image": f"{registry.host}/{repo_name}:latest", "name": "resumed"}]}
    settings.write_text(json.dumps(pending))
    app = await open_app(tmp_path / "root", config, settings_path=settings, hub=False, create_defaults=NO_NETWORK)
    state, window = parts(app)
    try:
        assert any(isinstance(e, SidebarEntry) and e.name == "resumed" for e in window.sidebar.entries())
        await wait_for(lambda: (r := state.find("resumed")) is not None and r.state.running, "the resumed create",
                       detail=lambda: [(t.title, t.state, t.message) for t in state.tasks.tasks()])
        assert '"pending": []' in settings.read_text()
    finally:
        for record in await app.engine.containers.list(all_containers=True):
            await app.engine.containers.remove(record.id, force=True, volumes=True)
        await app.close()


def test_cli_stays_free_of_qt_and_lists_gui() -> None:
    code = ("import sys, app.cli.main as m; m.build_parser(); "
            "assert not any(n.startswith('PySide6') for n in sys.modules), 'Qt imported by the CLI'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env={**os.environ,
                                                                                  "PYTHONPATH": str(REPO_ROOT)})
    from app.cli.main import build_parser

    assert "gui" in build_parser().format_help()
