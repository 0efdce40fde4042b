"""Container page features: the Stats tab (real samples; no sampling while hidden), Settings → Ports into
``CreateOptions``, a settings save that keeps the files written in the container (real engine, root), and log
paging (older lines come back from the log file when the in-memory buffer trimmed them)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtWidgets import QLabel, QTableWidgetItem, QTabWidget
from pytestqt.qtbot import QtBot

from app.gui.container_page import EngineLogSource, port_links
from app.gui.logbuffer import LogBuffer
from app.gui.logmodel import LogModel
from app.gui.logpanel import LogPanel, LogSource
from app.gui.settings import GuiSettings
from app.gui.settings_page import SettingsPage
from app.gui.state import AppState
from app.gui.stats_panel import StatsPanel, engine_stats
from engine import CreateOptions, Engine, InvalidArgument, StatsSample
from tests.gui.fakes import FakeLog
from tests.gui.test_models_and_flows import record as fake_record
from tests.support.wait import async_wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"


wait_for = functools.partial(async_wait_until, timeout=15.0)


async def exec_output(engine: Engine, container: str, *cmd: str) -> tuple[int, bytes]:
    async with await engine.containers.exec(container, list(cmd)) as session:
        output = b""
        while chunk := await session.read():
            output += chunk
        return await session.wait(), output


# -- stats -------------------------------------------------------------------------------------------------------


class FakeStats:
    """A sample stream that records whether it is open (the panel must close it when hidden)."""

    def __init__(self) -> None:
        self.open_streams = 0
        self.opened = 0

    async def stream(self, container: str, interval: float) -> AsyncIterator[StatsSample]:
        self.open_streams += 1
        self.opened += 1
        try:
            n = 0
            while True:
                n += 1
                yield StatsSample(container, container, time.time(), 12.5, n << 20, 64 << 20, n / 0.64, n * 1000,
                                  n * 10, 0, 4096, 3)
                await asyncio.sleep(interval)
        finally:
            self.open_streams -= 1


async def test_stats_sample_only_while_the_tab_is_visible(qtbot: QtBot) -> None:
    fake = FakeStats()
    tabs = QTabWidget()
    qtbot.addWidget(tabs)
    tabs.addTab(QLabel("home"), "Home")
    panel = StatsPanel(fake.stream, interval=0.01)
    tabs.addTab(panel, "Stats")
    panel.set_container("web")
    tabs.show()
    await wait_for(lambda: tabs.isVisible(), "the window")
    assert not panel.sampling and fake.opened == 0  # hidden tab: no stream at all
    tabs.setCurrentWidget(panel)
    await wait_for(lambda: panel.samples >= 3, "samples")
    assert fake.open_streams == 1 and len(panel.cpu.values) == panel.samples
    assert panel.figures["pids"].text() == "3" and "received" in panel.figures["net"].text()
    tabs.setCurrentIndex(0)
    assert not panel.sampling
    await wait_for(lambda: fake.open_streams == 0, "the stream to be closed")
    count = panel.samples
    await asyncio.sleep(0)  # one more loop turn: nothing arrives any more
    assert panel.samples == count
    tabs.setCurrentWidget(panel)
    await wait_for(lambda: panel.samples > count and fake.opened == 2, "sampling again")
    await panel.aclose()


async def running(engine: Engine, image: str, *cmd: str, **options: object) -> str:
    record = await engine.create_container(image, CreateOptions(cmd=cmd, network="none", **options))  # type: ignore[arg-type]
    await engine.containers.start(record.id)
    return record.id


@pytest.mark.root
@pytest.mark.registry
async def test_stats_tab_plots_a_real_container(gui_engine: Engine, busybox_ref: str, qtbot: QtBot) -> None:
    container = await running(gui_engine, busybox_ref, "sh", "-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); "
                              "done; exec sleep 1000")
    panel = StatsPanel(engine_stats(gui_engine), interval=0.25)
    qtbot.addWidget(panel)
    panel.resize(640, 480)
    panel.set_container(container)
    panel.show()
    try:
        await wait_for(lambda: panel.samples >= 4, "samples from the engine")
        assert panel.last is not None and panel.last.pids >= 1 and panel.last.memory_usage > 0
        assert max(panel.cpu.values) > 0
        assert "written" in panel.figures["block"].text()
        ARTIFACTS.mkdir(exist_ok=True)
        assert panel.grab().save(str(ARTIFACTS / "stats.png"))
        panel.hide()
        assert not panel.sampling
    finally:
        await panel.aclose()


# -- settings: ports and recreate ----------------------------------------------------------------------------------


async def test_ports_editing_round_trips_into_create_options(tmp_path: Path, qtbot: QtBot) -> None:
    engine = await Engine.open(tmp_path / "state")
    try:
        state = AppState(engine, GuiSettings.load(tmp_path / "gui.json"))
        page = SettingsPage(state)
        qtbot.addWidget(page)
        bindings = [{"container_port": 80, "protocol": "tcp", "host_ip": "", "host_port": 8080,
                     "host_port_last": 0}]
        current = fake_record(PortBindings=bindings, NetworkMode="bridge")
        page.load(current)
        cells = [[page.ports.item(r, c).text() for c in range(3)]  # type: ignore[union-attr]
                 for r in range(page.ports.rowCount())]
        assert cells == [["80/tcp", "8080", ""]]
        assert page.edited_options().publish == ("8080:80/tcp",)
        assert page.plan().changes == ()  # loading and saving unchanged changes nothing
        row = page.ports.rowCount()
        page.ports.insertRow(row)
        for column, text in enumerate(("53/udp", "auto", "127.0.0.1")):
            page.ports.setItem(row, column, QTableWidgetItem(text))
        page.ports.setItem(0, 1, QTableWidgetItem("9090"))
        page.publish_all.setChecked(True)
        options = page.edited_options()
        assert options.publish == ("9090:80/tcp", "127.0.0.1::53/udp") and options.publish_all
        assert [c.field for c in page.plan().changes] == ["publish", "publish_all"]
        page.ports.setItem(row, 1, QTableWidgetItem("99999"))
        with pytest.raises(InvalidArgument, match=r"port row 2: host port '99999' must be 1-65535"):
            page.edited_options()
        page.ports.setItem(row, 1, QTableWidgetItem(""))
        with pytest.raises(InvalidArgument, match=r"port row 2: a host address needs a host port \(or auto\)"):
            page.edited_options()
        page.ports.setItem(row, 2, QTableWidgetItem(""))
        assert page.edited_options().publish == ("9090:80/tcp",)  # an empty host port: exposed, not published
        page.network.setCurrentText("none")
        with pytest.raises(InvalidArgument, match="publishing needs the bridge network, not none"):
            page.edited_options()
        published = replace(current, network={"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9090"}]}})
        assert port_links(published)[0] == ("80/tcp → localhost:9090", "http://localhost:9090")
    finally:
        await engine.close()


@pytest.mark.root
@pytest.mark.registry
async def test_saving_settings_keeps_files_written_in_the_container(gui_engine: Engine, busybox_ref: str,
                                                                     tmp_path: Path, qtbot: QtBot) -> None:
    state = AppState(gui_engine, GuiSettings.load(tmp_path / "gui.json"))
    await state.refresh_containers()
    record = await gui_engine.create_container(busybox_ref, CreateOptions(
        name="keeper", cmd=("sleep", "1000"), network="none", volumes=("/data",), env=("MODE=one",)))
    old = await gui_engine.containers.start(record.id)
    assert await exec_output(gui_engine, old.id, "sh", "-c", "echo kept > /root/file; echo in-volume > /data/v") \
        == (0, b"")
    page = SettingsPage(state)
    qtbot.addWidget(page)
    page.load(old)
    mode_row = next(r for r in range(page.env.rowCount()) if page.env.item(r, 0).text() == "MODE")  # type: ignore[union-attr]
    page.env.setItem(mode_row, 1, QTableWidgetItem("two"))
    plan = page.plan()
    assert [c.field for c in plan.changes] == ["env"] and plan.saved_image and plan.keep_old_as is None
    created = await state.apply_plan(old, plan)
    try:
        assert created.id != old.id and created.name == "keeper" and created.state.running
        assert created.image == plan.saved_image
        code, output = await exec_output(gui_engine, created.id, "sh", "-c", "cat /root/file /data/v; echo $MODE")
        assert (code, output) == (0, b"kept\nin-volume\ntwo\n")
        names = {r.name for r in await gui_engine.containers.list(all_containers=True)}
        assert names == {"keeper"}  # the old container is gone once the new one exists
    finally:
        await state.close()


# -- log paging ---------------------------------------------------------------------------------------------------


async def page_to_the_top(panel: LogPanel, what: str) -> list[str]:
    """Scroll to the top repeatedly until nothing more comes back; the rows' texts."""
    view, model = panel.view, panel.model
    feed = panel.feed
    assert feed is not None
    while model.can_page_older and model.buffer.room()[0]:
        start = model.buffer.start
        view.verticalScrollBar().setValue(1)
        view.verticalScrollBar().setValue(0)  # the user reaches the top
        shown = model.text(0)
        await wait_for(lambda: not feed.paging, what)
        assert model.buffer.start < start, "no progress"
        assert model.text(view.top_row) == shown  # the lines the user was reading stay in view
    return [model.text(r) for r in range(model.rowCount())]


async def test_scrolling_to_the_top_pages_older_lines_back(qtbot: QtBot) -> None:
    log = FakeLog()
    for i in range(3000):
        log.write(f"line {i}", same_time=i % 7 == 3)  # some lines share a timestamp with the previous one
    log.stop()
    model = LogModel(buffer=LogBuffer(max_lines=1000))
    panel = LogPanel(model=model)
    qtbot.addWidget(panel)
    panel.resize(700, 400)
    panel.show()
    panel.set_source(log)
    await wait_for(lambda: model.ingested == 3000, "ingestion")
    assert model.buffer.paged_out >= 2000 and model.rowCount() <= 1000
    assert "older lines in the log file" in panel.status.text()
    panel.view.set_following(False)
    texts = await page_to_the_top(panel, "a page of older lines")
    first = int(texts[0].split()[1])
    assert texts == [f"line {i}" for i in range(first, 3000)]  # contiguous: nothing lost or repeated
    assert len(texts) == 1000 and log.pages >= 1  # paging stays within the buffer's cap
    log.start()
    log.write("line 3000")  # a live line at the cap trims the oldest (paged) lines first, as before
    model.flush()


@pytest.mark.root
@pytest.mark.registry
async def test_paging_reads_the_engine_log_file(gui_engine: Engine, busybox_ref: str, qtbot: QtBot) -> None:
    container = await running(gui_engine, busybox_ref, "sh", "-c",
                              "i=0; while [ $i -lt 2500 ]; do echo line $i; i=$((i+1)); done")
    await gui_engine.containers.wait(container)
    model = LogModel(buffer=LogBuffer(max_lines=600))
    panel = LogPanel(model=model)
    qtbot.addWidget(panel)
    panel.show()
    source: LogSource = EngineLogSource(gui_engine, container)
    panel.set_source(source)
    await wait_for(lambda: model.ingested == 2500, "ingestion", detail=lambda: model.ingested)
    panel.view.set_following(False)
    model.buffer.max_lines = 2000  # more room: pages come back until the first line of the file
    texts = await page_to_the_top(panel, "older lines from the engine")
    assert texts == [f"line {i}" for i in range(500, 2500)]
