"""``LogPanel``: the log view with its toolbar (search, filter, timestamps, tail/since, follow, clear, copy, save)
and ``LogFeed``, the task that streams a container's log into the model.

The feed consumes ``engine.containers.logs(name, follow=True)``, which already delivers history then live
records with no gap or repeat at the seam. When the container stops the stream ends; ``LogFeed.resume()`` (the
container page calls it on the container's next ``start`` event) re-attaches from the last record received:
it asks for records since 1 ms before it and skips what it already has (same ns time, counted), so a restart
loses and repeats nothing either.

Paging: the in-memory buffer holds at most its caps (1,000,000 lines / 256 MiB by default); scrolling to the top
when older lines were trimmed asks the source for the chunk just before the first held line
(``LogSource.before``) and puts it back at the top, within the caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.aio import cancel_and_wait
from app.gui.ansi import strip_ansi
from app.gui.logbuffer import LogLine, time_ns_of
from app.gui.logmodel import LogModel, compile_pattern
from app.gui.logview import LogView
from app.gui.qtfix import emit
from app.gui.theme import icon

__all__ = ["HISTORY_CHOICES", "History", "LogFeed", "LogPanel", "LogSource"]


@dataclass(frozen=True, slots=True)
class History:
    """How much history to show before live lines: the last ``tail`` lines and/or since ``seconds`` ago."""

    label: str
    tail: int | None = None
    seconds: float | None = None


HISTORY_CHOICES: Final = (
    History("All history"),
    History("Last 1,000 lines", tail=1000),
    History("Last 10,000 lines", tail=10_000),
    History("Last 100,000 lines", tail=100_000),
    History("Last 10 minutes", seconds=600),
    History("Last hour", seconds=3600),
    History("Last 24 hours", seconds=86400),
)


class LogSource(Protocol):
    """Where a panel's lines come from (the engine for a container; a fake in tests)."""

    def follow(self, *, tail: int | None, since: float | None) -> AsyncIterator[LogLine]:
        """History (``tail``/``since`` as in ``docker logs``) then live lines, until the container stops."""
        ...

    def history(self) -> AsyncIterator[LogLine]:
        """Every line in the log file (for Save: the file holds more than the in-memory buffer)."""
        ...

    async def before(self, time_ns: int, held: int, count: int) -> Sequence[LogLine]:
        """Up to ``count`` lines logged just before the first held line, oldest first. That line has time
        ``time_ns`` and is the first of ``held`` held lines with that same time (lines sharing it that precede
        them in the file are returned too)."""
        ...


PAGE_LINES: Final = 20_000


class LogFeed(QObject):
    """Owns the asyncio task that moves a source's lines into a model."""

    ended = Signal()
    failed = Signal(str)
    paged = Signal(int)  # older lines put back at the top

    def __init__(self, source: LogSource, model: LogModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.source = source
        self.model = model
        self.history = HISTORY_CHOICES[0]
        self._task: asyncio.Task[None] | None = None
        self._paging: asyncio.Task[int] | None = None
        self._last_ns = 0
        self._same_ns = 0  # records received with time == _last_ns

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, history: History | None = None) -> None:
        """(Re)load from scratch with ``history``."""
        self.stop()
        if history is not None:
            self.history = history
        self.model.reset()
        self._last_ns = self._same_ns = 0
        since = time.time() - self.history.seconds if self.history.seconds is not None else None
        self._task = asyncio.ensure_future(self._run(self.history.tail, since, skip_until=(0, 0)))

    def resume(self) -> None:
        """Continue after the stream ended (container restarted): no line lost, none repeated."""
        if self.running:
            return
        if self._last_ns == 0:
            self.start()
            return
        since = self._last_ns / 1e9 - 0.001
        self._task = asyncio.ensure_future(self._run(None, since, skip_until=(self._last_ns, self._same_ns)))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._paging is not None:
            self._paging.cancel()
            self._paging = None

    @property
    def paging(self) -> bool:
        return self._paging is not None and not self._paging.done()

    def load_older(self, count: int = PAGE_LINES) -> asyncio.Task[int] | None:
        """Page the chunk before the first row back in (when lines were trimmed); the task gives how many."""
        if self.paging or not self.model.can_page_older:
            return None
        self._paging = asyncio.ensure_future(self._load_older(count))
        return self._paging

    async def _load_older(self, count: int) -> int:
        from engine import KiteboxError

        self.model.flush()
        buffer = self.model.buffer
        first_ns = buffer.time_ns(buffer.start)
        held = 0
        while buffer.start + held < buffer.end and buffer.time_ns(buffer.start + held) == first_ns:
            held += 1
        try:
            lines = await self.source.before(first_ns, held, min(count, buffer.paged_out))
        except KiteboxError as err:
            emit(self.failed, str(err))
            return 0
        added = self.model.prepend(lines)
        emit(self.paged, added)
        return added

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self, tail: int | None, since: float | None, *, skip_until: tuple[int, int]) -> None:
        from engine import KiteboxError

        skip_ns, skip_same = skip_until
        append = self.model.append_one
        try:
            async for line in self.source.follow(tail=tail, since=since):
                ns = time_ns_of(line.time)
                if skip_ns:
                    if ns < skip_ns or (ns == skip_ns and skip_same > 0):
                        skip_same -= ns == skip_ns
                        continue
                    skip_ns = 0
                if ns == self._last_ns:
                    self._same_ns += 1
                else:
                    self._last_ns, self._same_ns = ns, 1
                append(line)
        except KiteboxError as err:
            emit(self.failed, str(err))
        self.model.flush()
        emit(self.ended)


class LogPanel(QWidget):
    """Toolbar + :class:`LogView` + status line. Every action has a shortcut (see ``_shortcuts``)."""

    statusChanged = Signal(str)

    def __init__(self, source: LogSource | None = None, parent: QWidget | None = None,
                 *, model: LogModel | None = None) -> None:
        super().__init__(parent)
        self.model = model if model is not None else LogModel(self)
        self.view = LogView(self.model, self)
        self.feed: LogFeed | None = None
        self._pattern_text = ""
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search logs  (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.search.setObjectName("LogSearch")
        self.search.setMinimumWidth(240)
        self.regex = QCheckBox(".*", self)
        self.regex.setToolTip("Regular expression")
        self.only_matching = QCheckBox("Matching lines only", self)
        self.timestamps = QCheckBox("Timestamps", self)
        self.prev_button = self._tool("chevron-up", "Previous match (Shift+Enter)", self.find_previous)
        self.next_button = self._tool("chevron-down", "Next match (Enter)", self.find_next)
        self.history_box = QComboBox(self)
        for choice in HISTORY_CHOICES:
            self.history_box.addItem(choice.label)
        self.history_box.setToolTip("History to load before live lines")
        self.follow_button = self._tool("follow", "Follow new lines (End)", lambda: self.view.set_following(True))
        self.follow_button.setCheckable(True)
        self.follow_button.setChecked(True)
        self.clear_button = self._tool("clear", "Clear (Ctrl+L)", self.clear)
        self.undo_button = self._tool("undo", "Undo clear (Ctrl+Z)", self.undo_clear)
        self.undo_button.setEnabled(False)
        self.copy_button = self._tool("copy", "Copy selected lines (Ctrl+C), or all", self.copy)
        self.save_button = self._tool("save", "Save the whole log to a file (Ctrl+S)", self.ask_save)
        self.status = QLabel(self)
        self.status.setObjectName("Subtle")

        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.setSpacing(4)
        left: tuple[QWidget, ...] = (self.search, self.prev_button, self.next_button, self.regex, self.only_matching)
        for widget in left:
            bar.addWidget(widget)
        bar.addStretch(1)
        right: tuple[QWidget, ...] = (self.timestamps, self.history_box, self.follow_button, self.clear_button,
                                      self.undo_button, self.copy_button, self.save_button)
        for widget in right:
            bar.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(self._apply_search)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.search.returnPressed.connect(self.find_next)
        self.regex.toggled.connect(lambda _on: self._apply_search())
        self.only_matching.toggled.connect(lambda _on: self._apply_search())
        self.timestamps.toggled.connect(self.view.set_show_timestamps)
        self.history_box.activated.connect(self._history_chosen)
        self.view.followingChanged.connect(self._following_changed)
        self.view.topReached.connect(self.load_older)
        self.model.flushed.connect(lambda _n: self._update_status())
        self.model.modelReset.connect(self._update_status)
        self._shortcuts()
        if source is not None:
            self.set_source(source)
        self._update_status()

    def _tool(self, icon_name: str, tip: str, slot: Callable[[], object]) -> QToolButton:
        button = QToolButton(self)
        button.setIcon(icon(icon_name))
        button.setToolTip(tip)
        button.setAutoRaise(True)
        button.clicked.connect(lambda _checked=False: slot())
        return button

    def _shortcuts(self) -> None:
        context = Qt.ShortcutContext.WidgetWithChildrenShortcut
        bindings: list[tuple[QKeySequence | QKeySequence.StandardKey | str, Callable[[], object]]] = [
            (QKeySequence.StandardKey.Find, self.focus_search),
            (QKeySequence.StandardKey.FindNext, self.find_next),
            (QKeySequence.StandardKey.FindPrevious, self.find_previous),
            ("Shift+Return", self.find_previous),
            ("Ctrl+L", self.clear),
            (QKeySequence.StandardKey.Undo, self.undo_clear),
            (QKeySequence.StandardKey.Save, self.ask_save),
            ("Ctrl+T", self.timestamps.toggle),
            ("Escape", self._escape),
        ]
        for key, slot in bindings:
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(context)
            shortcut.activated.connect(slot)

    # -- source ---------------------------------------------------------------------------------------------------

    def set_source(self, source: LogSource) -> None:
        if self.feed is not None:
            self.feed.stop()
            self.feed.deleteLater()
        self.feed = LogFeed(source, self.model, self)
        self.feed.failed.connect(lambda message: self._update_status(message))
        self.feed.ended.connect(self._update_status)
        self.feed.paged.connect(lambda n: self._update_status(f"loaded {n:,} older lines from the log file"))
        self.feed.start(HISTORY_CHOICES[self.history_box.currentIndex()])

    def load_older(self) -> None:
        """The view reached the top: page older lines back in when the buffer trimmed some."""
        if self.feed is not None and self.feed.load_older() is not None:
            self._update_status("loading older lines…")

    def _history_chosen(self, index: int) -> None:
        if self.feed is not None:
            self.feed.start(HISTORY_CHOICES[index])

    # -- actions --------------------------------------------------------------------------------------------------

    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def _escape(self) -> None:
        if self.search.text():
            self.search.clear()
        self.view.setFocus()

    def _compiled(self) -> object:
        text = self.search.text()
        if not text:
            return None
        try:
            return compile_pattern(text, regex=self.regex.isChecked())
        except ValueError as err:
            return str(err)

    def _apply_search(self) -> None:
        self._debounce.stop()
        compiled = self._compiled()
        invalid = isinstance(compiled, str)
        self.search.setProperty("invalid", invalid)
        self.search.setToolTip(compiled if isinstance(compiled, str) else "")
        self.search.style().unpolish(self.search)
        self.search.style().polish(self.search)
        import re

        pattern = compiled if isinstance(compiled, re.Pattern) else None
        text = self.search.text()
        self.view.set_highlight((text if self.regex.isChecked() else re.escape(text)) if pattern else None)
        wanted = pattern if self.only_matching.isChecked() else None
        if wanted is not self.model.filter_pattern and (wanted is None or self.model.filter_pattern is None
                                                         or wanted.pattern != self.model.filter_pattern.pattern
                                                         or wanted.flags != self.model.filter_pattern.flags):
            self.model.set_filter(wanted)
        self._update_status(compiled if isinstance(compiled, str) else None)

    def find_next(self) -> int | None:
        return self._find(backwards=False)

    def find_previous(self) -> int | None:
        return self._find(backwards=True)

    def _find(self, *, backwards: bool) -> int | None:
        if self._debounce.isActive():
            self._apply_search()
        self.model.flush()
        import re

        compiled = self._compiled()
        if not isinstance(compiled, re.Pattern):
            return None
        start = self.view.current_match
        if start is None:
            start = self.view.top_row + (self.view.visible_rows() if backwards else -1)
            start = max(-1, min(start, self.model.rowCount()))
        row = self.model.find(compiled, start, backwards=backwards)
        self.view.current_match = row
        if row is not None:
            self.view.scroll_to_row(row)
            self.view.select_rows(row, row)
        self._update_status(None if row is not None else "no match")
        return row

    def clear(self) -> None:
        self.model.clear()
        self.undo_button.setEnabled(self.model.can_undo_clear)
        self._update_status()

    def undo_clear(self) -> None:
        self.model.undo_clear()
        self.undo_button.setEnabled(self.model.can_undo_clear)
        self._update_status()

    def copy(self) -> None:
        """The selected lines, or every shown line when nothing is selected."""
        if self.view.selection() is None and self.model.rowCount():
            self.view.select_rows(0, self.model.rowCount() - 1)
        self.view.copy_selection()

    def ask_save(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(self, "Save log", str(Path.home() / "container.log"),
                                                    "Log files (*.log *.txt);;All files (*)")
        if path:
            task = asyncio.ensure_future(self.save_to(Path(path)))
            task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is None
                                   else self._update_status(f"save failed: {t.exception()}"))

    async def save_to(self, path: Path) -> int:
        """Write the whole log file (not only what is in memory) as plain text; returns the lines written."""
        if self.feed is None:
            raise ValueError("this log panel has no source to save")
        show_times = self.timestamps.isChecked()
        count = 0
        tmp = path.with_name(f".{path.name}.part")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                async for line in self.feed.source.history():
                    text = strip_ansi(line.data.decode("utf-8", "replace").rstrip("\n"))
                    out.write(f"{line.time} {text}\n" if show_times else text + "\n")
                    count += 1
            tmp.replace(path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ValueError(f"cannot save the log to {path}: {err.strerror}") from None
        self._update_status(f"saved {count:,} lines to {path}")
        return count

    def _following_changed(self, on: bool) -> None:
        self.follow_button.setChecked(on)
        self._update_status()

    def _update_status(self, message: str | None = None) -> None:
        rows = self.model.rowCount()
        parts = [f"{rows:,} lines" if self.model.filter_pattern is None else f"{rows:,} matching lines"]
        if self.model.buffer.paged_out and self.model.can_page_older:
            room = "scroll to the top to load them" if self.model.buffer.room()[0] else "Save has them"
            parts.append(f"{self.model.buffer.paged_out:,} older lines in the log file ({room})")
        if not self.view.following:
            parts.append("paused: scroll to the bottom or press End to follow")
        if message:
            parts.append(message)
        text = "  ·  ".join(parts)
        self.status.setText(text)
        emit(self.statusChanged, text)
