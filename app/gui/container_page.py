"""The container page: header (name, image, state, Start/Stop, Restart, Terminal, Remove) and the tabs Home
(live logs, ports with links, volumes with "open folder"), Terminal (shells in the container, several as tabs),
Stats (live plots, sampled only while shown), Settings and Inspect. While a container is still being pulled the
page shows the pull instead: one bar per layer and the overall percentage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.inspect_view import InspectView
from app.gui.logbuffer import LogLine
from app.gui.logpanel import LogPanel
from app.gui.settings_page import SettingsPage
from app.gui.state import AppState
from app.gui.stats_panel import StatsPanel, engine_stats
from app.gui.tasks import Task
from app.gui.terminal_tabs import TerminalArea
from app.gui.theme import DANGER, icon, is_dark, status_colour
from engine import ContainerRecord, Engine

__all__ = ["WEB_PORTS", "ContainerPage", "EngineLogSource", "port_links"]

WEB_PORTS: Final = frozenset({80, 443, 2368, 3000, 5000, 8000, 8080, 8443, 8888, 8983, 9000, 9200})


class EngineLogSource:
    """A container's log through the engine (history then live, seamless: see ``read_logs``)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def follow(self, *, tail: int | None, since: float | None) -> AsyncIterator[LogLine]:
        return self.engine.containers.logs(self.name, follow=True, tail=tail, since=since)

    def history(self) -> AsyncIterator[LogLine]:
        return self.engine.containers.logs(self.name)

    async def before(self, time_ns: int, held: int, count: int) -> list[LogLine]:
        """Reads the file up to ``time_ns`` (``until``), keeping only the last ``count + held`` lines."""
        from collections import deque

        from app.gui.logbuffer import time_ns_of

        window: deque[LogLine] = deque(maxlen=count + held)
        async for line in self.engine.containers.logs(self.name, until=time_ns / 1e9 + 0.001):
            if time_ns_of(line.time) <= time_ns:
                window.append(line)
        kept = list(window)
        while held and kept and time_ns_of(kept[-1].time) == time_ns:
            kept.pop()
            held -= 1
        return kept[-count:] if count else []


def port_links(record: ContainerRecord) -> list[tuple[str, str | None]]:
    """(label, URL or None) for each exposed/published port; web ports published on the host get a link."""
    exposed = record.config.get("ExposedPorts") or {}
    published = (record.network or {}).get("Ports") or {}
    host_network = record.host_config.get("NetworkMode") == "host"
    result: list[tuple[str, str | None]] = []
    for key in sorted(set(exposed) | set(published), key=lambda k: int(k.split("/")[0])):
        port = int(key.split("/")[0])
        proto = key.split("/")[1] if "/" in key else "tcp"
        bindings = published.get(key) or []
        if bindings:
            for binding in bindings:
                host = binding.get("HostIp") or "localhost"
                host = "localhost" if host in ("0.0.0.0", "::") else host
                address = f"{host}:{binding.get('HostPort')}"
                url = f"http://{address}" if port in WEB_PORTS and proto == "tcp" else None
                result.append((f"{key} → {address}", url))
        elif host_network:
            url = f"http://localhost:{port}" if port in WEB_PORTS and proto == "tcp" else None
            result.append((f"{key} → localhost:{port} (host network)", url))
        else:
            result.append((f"{key} (not published)", None))
    return result


class PullView(QWidget):
    """Kitematic's "Downloading image" screen: a bar per layer and the overall percentage."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel(self)
        self.title.setObjectName("PageTitle")
        self.overall = QProgressBar(self)
        self.overall.setRange(0, 100)
        self.phase = QLabel(self)
        self.phase.setObjectName("Subtle")
        self._layers = QGridLayout()
        self._bars: dict[str, QProgressBar] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(40, 40, 40, 40)
        layout.addWidget(self.title)
        layout.addWidget(self.phase)
        layout.addWidget(self.overall)
        layout.addSpacing(12)
        layout.addLayout(self._layers)
        layout.addStretch(1)

    def show_task(self, task: Task) -> None:
        self.title.setText(task.title)
        self.overall.setValue(task.percent)
        self.overall.setFormat(f"{task.percent}%")
        self.phase.setText(task.message if task.state == "failed" else f"{task.phase}…")
        for digest, layer in task.layers.items():
            bar = self._bars.get(digest)
            if bar is None:
                bar = QProgressBar(self)
                bar.setRange(0, 1000)
                bar.setTextVisible(False)
                bar.setMaximumHeight(8)
                row = len(self._bars)
                label = QLabel(digest.split(":")[-1][:12], self)
                label.setObjectName("Subtle")
                self._layers.addWidget(label, row, 0)
                self._layers.addWidget(bar, row, 1)
                self._bars[digest] = bar
            bar.setValue(int(layer.fraction * 1000))
            bar.setToolTip(f"{layer.phase} {layer.current:,}/{layer.total:,} bytes")


class ContainerPage(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.name: str | None = None
        self.record: ContainerRecord | None = None
        self.logs = LogPanel(parent=self)
        self.settings = SettingsPage(state, self)
        self.inspect = InspectView(self)
        self.terminals = TerminalArea(state.engine, self)
        self.stats = StatsPanel(engine_stats(state.engine), self)

        header = QFrame(self)
        header.setObjectName("PageHeader")
        self.title = QLabel(header)
        self.title.setObjectName("PageTitle")
        self.subtitle = QLabel(header)
        self.subtitle.setObjectName("Subtle")
        self.dot = QLabel(header)
        self.start_stop = QPushButton(header)
        self.restart = QPushButton(icon("restart"), "Restart", header)
        self.terminal = QPushButton(icon("terminal"), "Terminal", header)
        self.terminal.setToolTip("Open a shell in the container (a new terminal tab)")
        self.remove = QPushButton(icon("trash", DANGER[is_dark()]), "Remove", header)
        self.remove.setObjectName("Danger")
        self.remove.setToolTip("Remove the container (Delete)")
        titles = QVBoxLayout()
        titles.addWidget(self.title)
        titles.addWidget(self.subtitle)
        row = QHBoxLayout(header)
        row.setContentsMargins(16, 12, 16, 12)
        row.addWidget(self.dot)
        row.addLayout(titles, 1)
        for button in (self.start_stop, self.restart, self.terminal, self.remove):
            row.addWidget(button)

        self.ports_box = QVBoxLayout()
        self.volumes_box = QVBoxLayout()
        side = QWidget(self)
        side_layout = QVBoxLayout(side)
        for title, box in (("Ports", self.ports_box), ("Volumes", self.volumes_box)):
            label = QLabel(f"<b>{title}</b>", side)
            side_layout.addWidget(label)
            side_layout.addLayout(box)
            side_layout.addSpacing(12)
        side_layout.addStretch(1)
        side_scroll = QScrollArea(self)
        side_scroll.setWidget(side)
        side_scroll.setWidgetResizable(True)
        side_scroll.setFrameShape(QFrame.Shape.NoFrame)
        side_scroll.setMinimumWidth(230)
        side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        home = QSplitter(Qt.Orientation.Horizontal, self)
        home.addWidget(self.logs)
        home.addWidget(side_scroll)
        home.setStretchFactor(0, 4)
        home.setStretchFactor(1, 1)
        home.setSizes([720, 240])

        self.tabs = QTabWidget(self)
        self.tabs.addTab(home, icon("logs"), "Home")
        self.tabs.addTab(self.terminals, icon("terminal"), "Terminal")
        self.tabs.addTab(self.stats, icon("inspect"), "Stats")
        self.tabs.addTab(self.settings, icon("settings"), "Settings")
        self.tabs.addTab(self.inspect, icon("inspect"), "Inspect")
        self.pull_view = PullView(self)
        self.body = QStackedWidget(self)
        self.body.addWidget(self.tabs)
        self.body.addWidget(self.pull_view)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(header)
        layout.addWidget(self.body, 1)

        self.start_stop.clicked.connect(lambda _c=False: self.toggle_running())
        self.restart.clicked.connect(lambda _c=False: self._verb("restart"))
        self.remove.clicked.connect(lambda _c=False: self.ask_remove())
        self.terminal.clicked.connect(lambda _c=False: self.open_terminal())
        delete = QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self)
        delete.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        delete.activated.connect(self._delete_key)
        state.containersChanged.connect(self.refresh)
        state.tasks.dataChanged.connect(lambda *_a: self._show_pull())
        state.containerStarted.connect(self._started)
        self.tabs.currentChanged.connect(lambda _i: self._tab_changed())

    # -- showing a container ----------------------------------------------------------------------------------------

    def show_container(self, name: str) -> None:
        if name != self.name:
            self.name = name
            self.record = None
            if self.logs.feed is not None:
                self.logs.feed.stop()
                self.logs.feed = None
                self.logs.model.reset()
        self.refresh()

    def refresh(self) -> None:
        known = {r.id for r in self.state.containers}
        for container_id in [c for c in self.terminals.by_container if c not in known]:
            self.state.spawn(self.terminals.forget(container_id))
        if self.name is None:
            return
        if self.name in self.state.creating:
            self.body.setCurrentWidget(self.pull_view)
            self._show_pull()
            self._header(None)
            return
        record = self.state.find(self.name)
        if record is None:
            return
        first = self.record is None or self.record.id != record.id
        self.record = record
        self.body.setCurrentWidget(self.tabs)
        self._header(record)
        self._fill_home(record)
        self.stats.set_container(record.id)
        self.terminals.show_container(record.id, running=record.state.running)
        if first or self.logs.feed is None:
            self.logs.set_source(EngineLogSource(self.state.engine, record.id))
            self.settings.load(record)
        self._load_inspect()

    def _started(self, name: str) -> None:
        if name == self.name and self.logs.feed is not None:
            self.logs.feed.resume()

    def _show_pull(self) -> None:
        task = self.state.creating.get(self.name or "")
        if task is not None:
            self.pull_view.show_task(task)
        elif self.body.currentWidget() is self.pull_view:
            self.refresh()

    def _header(self, record: ContainerRecord | None) -> None:
        self.title.setText(self.name or "")
        status = record.state.status.value if record else "pulling"
        self.subtitle.setText(f"{record.image if record else ''}  ·  {status}" if record else "Pulling image…")
        colour = status_colour(status, pulling=record is None)
        self.dot.setText(f"<span style='color:{colour.name()}; font-size:20pt'>●</span>")
        running = bool(record and record.state.running)
        self.start_stop.setText("Stop" if running else "Start")
        self.start_stop.setIcon(icon("stop" if running else "play"))
        for button in (self.start_stop, self.restart, self.remove):
            button.setEnabled(record is not None)
        self.terminal.setEnabled(running)

    def _fill_home(self, record: ContainerRecord) -> None:
        for box in (self.ports_box, self.volumes_box):
            while box.count():
                item = box.takeAt(0)
                widget = item.widget() if item is not None else None
                if widget is not None:
                    widget.deleteLater()
        links = port_links(record)
        if not links:
            self.ports_box.addWidget(self._muted("No ports exposed"))
        for label, url in links:
            if url:
                link = QLabel(f"<a href='{url}'>{label}</a>", self)
                link.setOpenExternalLinks(False)
                link.linkActivated.connect(lambda href: QDesktopServices.openUrl(QUrl(href)))
                link.setToolTip(f"Open {url} in the browser")
                self.ports_box.addWidget(link)
            else:
                self.ports_box.addWidget(QLabel(label, self))
        if not record.mounts:
            self.volumes_box.addWidget(self._muted("No volumes"))
        for mount in record.mounts:
            source = str(mount.get("Source", ""))
            name = mount.get("Name") or source
            button = QPushButton(icon("folder"), f"{mount['Destination']}", self)
            button.setFlat(True)
            button.setStyleSheet("text-align: left; padding-left: 0")
            button.setToolTip(f"{mount.get('Type')}: {name}\nOpen {source}")
            button.clicked.connect(lambda _c=False, s=source: QDesktopServices.openUrl(QUrl.fromLocalFile(s)))
            self.volumes_box.addWidget(button)

    def _muted(self, text: str) -> QLabel:
        label = QLabel(text, self)
        label.setObjectName("Subtle")
        return label

    def _tab_changed(self) -> None:
        self._load_inspect()
        record = self.record
        if record is not None and self.tabs.currentWidget() is self.terminals and record.state.running \
                and not self.terminals.tabs_for(record.id).sessions:
            self.open_terminal()

    def open_terminal(self) -> None:
        """A new shell in the container, shown in the Terminal tab."""
        record = self.record
        if record is None or not record.state.running:
            return
        if self.tabs.currentWidget() is not self.terminals:
            self.tabs.blockSignals(True)
            self.tabs.setCurrentWidget(self.terminals)
            self.tabs.blockSignals(False)
        self.terminals.open_terminal(record.id)

    def _load_inspect(self) -> None:
        if self.record is not None and self.tabs.currentWidget() is self.inspect:
            self.inspect.set_document(self.state.engine.containers.inspect_document(self.record))

    async def aclose(self) -> None:
        """End the terminals and the stats stream (the window is closing)."""
        await self.stats.aclose()
        await self.terminals.aclose()

    # -- actions ----------------------------------------------------------------------------------------------------

    def toggle_running(self) -> None:
        if self.record is not None:
            self._verb("stop" if self.record.state.running else "start")

    def _verb(self, verb: str) -> None:
        record = self.record
        if record is None:
            return
        containers = self.state.engine.containers
        call = {"start": containers.start, "stop": containers.stop, "restart": containers.restart}[verb]
        self.state.run(call(record.id), what=f"{verb} {record.name}")

    def _delete_key(self) -> None:
        if not self.logs.search.hasFocus():
            self.ask_remove()

    def ask_remove(self) -> None:
        record = self.record
        if record is None:
            return
        box = QMessageBox(QMessageBox.Icon.Warning, "Remove container",
                          f"Remove {record.name}?", QMessageBox.StandardButton.Cancel, self)
        box.setInformativeText("Its files outside volumes are deleted. Named and anonymous volumes are kept."
                               + (" It is running and will be stopped." if record.state.running else ""))
        remove = box.addButton("Remove", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() is remove:
            self.remove_now()

    def remove_now(self) -> None:
        record = self.record
        if record is None:
            return
        self.state.run(self.state.engine.containers.remove(record.id, force=True), what=f"remove {record.name}")
