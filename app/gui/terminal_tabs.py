"""Terminals of containers: ``TerminalSession`` joins a :class:`~app.gui.terminal.TerminalView` to an
``engine.containers.exec`` session; ``TerminalTabs`` holds one container's terminals (several, as tabs);
``TerminalArea`` keeps each container's tabs alive while the user looks at other containers.

A session runs the image's shell: ``bash`` when the image has one, else ``sh`` (CommandNotFound moves to the
next). Output is fed to the emulator in slices of at most 16 KiB with a yield to the event loop between them,
so a program flooding its terminal cannot starve the UI; input and size changes go out in order through one
writer task (a size is sent once it settles: only the latest pending size is sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QLabel, QStackedWidget, QTabWidget, QToolButton, QVBoxLayout, QWidget

from app.gui.aio import cancel_and_wait
from app.gui.qtfix import emit
from app.gui.terminal import TerminalView
from app.gui.theme import icon
from engine import CommandNotFound, Engine, ExecSession, KiteboxError

__all__ = ["DEFAULT_SHELLS", "TerminalArea", "TerminalSession", "TerminalTabs"]

DEFAULT_SHELLS: Final = (("bash",), ("sh",))
_SLICE: Final = 16 * 1024
_Resize = tuple[int, int]


class TerminalSession(QObject):
    """One shell in one container, shown in ``view``. ``start()`` opens it; ``aclose()`` ends it."""

    opened = Signal(str)  # the shell command that runs
    ended = Signal(str)  # why it ended, one line

    def __init__(self, engine: Engine, container: str, view: TerminalView, parent: QObject | None = None, *,
                 shells: Sequence[Sequence[str]] = DEFAULT_SHELLS) -> None:
        super().__init__(parent)
        self.engine = engine
        self.container = container
        self.view = view
        self.shells = [tuple(shell) for shell in shells]
        self.session: ExecSession | None = None
        self.shell: tuple[str, ...] | None = None
        self.exit_code: int | None = None
        self.sent_sizes: list[_Resize] = []
        self._outbox: asyncio.Queue[bytes | _Resize] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        view.input.connect(self._outbox.put_nowait)
        view.sizeChanged.connect(lambda rows, columns: self._outbox.put_nowait((rows, columns)))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _open(self) -> ExecSession:
        size = (self.view.vt.lines, self.view.vt.columns)
        for shell in self.shells:
            try:
                session = await self.engine.containers.exec(self.container, list(shell), tty=True, stdin=True,
                                                            size=size)
            except CommandNotFound:
                if shell == self.shells[-1]:
                    raise
                continue
            self.shell = shell
            self.sent_sizes.append(size)
            emit(self.opened, " ".join(shell))
            return session
        raise CommandNotFound(f"container {self.container}: no shell to run")

    async def _run(self) -> None:
        try:
            session = await self._open()
        except KiteboxError as err:
            self._finish(f"[could not start a shell: {err}]")
            return
        self.session = session
        writer = asyncio.ensure_future(self._write(session))
        message = "[session ended]"
        try:
            while data := await session.read():
                for start in range(0, len(data), _SLICE):
                    if start:
                        await asyncio.sleep(0)
                    self.view.feed(data[start:start + _SLICE])
            self.exit_code = await session.wait()
            message = f"[process exited with code {self.exit_code}]"
        except KiteboxError as err:
            message = f"[session ended: {err}]"
        finally:
            await cancel_and_wait(writer)
            await session.close()
        self._finish(message)

    def _finish(self, message: str) -> None:
        self.view.show_ended(message)
        emit(self.ended, message)

    async def _write(self, session: ExecSession) -> None:
        """Keys and pastes in order; of several queued sizes only the last is sent."""
        while True:
            item = await self._outbox.get()
            chunks: list[bytes] = []
            size: _Resize | None = None
            while True:
                if isinstance(item, bytes):
                    chunks.append(item)
                else:
                    size = item
                if self._outbox.empty():
                    break
                item = self._outbox.get_nowait()
            try:
                if size is not None and size != self.sent_sizes[-1]:
                    await session.resize(*size)
                    self.sent_sizes.append(size)
                if chunks:
                    await session.write(b"".join(chunks))
            except KiteboxError:
                return  # the process is gone; the reader reports how it ended

    async def aclose(self) -> None:
        """End the shell (its terminal is hung up) and wait for the reader."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.session is not None:
            await self.session.close()


class TerminalTabs(QWidget):
    """One container's terminals, as closable tabs, with a "new terminal" button."""

    def __init__(self, engine: Engine, container: str, parent: QWidget | None = None, *,
                 shells: Sequence[Sequence[str]] = DEFAULT_SHELLS) -> None:
        super().__init__(parent)
        self.engine = engine
        self.container = container
        self.shells = shells
        self.sessions: list[TerminalSession] = []
        self._opened = 0
        self.tabs = QTabWidget(self)
        self.tabs.setTabsClosable(True)
        self.tabs.setMovable(True)
        self.tabs.setDocumentMode(True)
        self.new_button = QToolButton(self)
        self.new_button.setIcon(icon("plus"))
        self.new_button.setToolTip("New terminal")
        self.new_button.setAutoRaise(True)
        self.tabs.setCornerWidget(self.new_button, Qt.Corner.TopRightCorner)
        self.empty = QLabel("No terminal open. Press + to open a shell in the container.", self)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setObjectName("Subtle")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.empty, 1)
        self.new_button.clicked.connect(lambda _c=False: self.open_terminal())
        self.tabs.tabCloseRequested.connect(self.close_terminal)
        self._update_empty()

    def _update_empty(self) -> None:
        self.empty.setVisible(self.tabs.count() == 0)
        self.tabs.setVisible(True)

    def open_terminal(self) -> TerminalView:
        """A new tab with a shell; returns its view (focused)."""
        view = TerminalView(self.tabs)
        session = TerminalSession(self.engine, self.container, view, self, shells=self.shells)
        self.sessions.append(session)
        self._opened += 1
        number = self._opened
        index = self.tabs.addTab(view, icon("terminal"), f"Terminal {number}")
        self.tabs.setCurrentIndex(index)
        session.opened.connect(lambda shell, v=view, n=number: self._retitle(v, f"{shell} {n}"))
        session.ended.connect(lambda _m, v=view, n=number: self._retitle(v, f"Terminal {n} (ended)"))
        view.titleChanged.connect(lambda title, v=view, n=number: self._retitle(v, title or f"Terminal {n}"))
        session.start()
        view.setFocus()
        self._update_empty()
        return view

    def _retitle(self, view: TerminalView, title: str) -> None:
        index = self.tabs.indexOf(view)
        if index >= 0:
            self.tabs.setTabText(index, title[:40])

    def close_terminal(self, index: int) -> None:
        view = self.tabs.widget(index)
        session = next((s for s in self.sessions if s.view is view), None)
        self.tabs.removeTab(index)
        if session is not None:
            self.sessions.remove(session)
            task = asyncio.ensure_future(session.aclose())
            task.add_done_callback(lambda _t: _dispose(view, session))
        self._update_empty()

    async def aclose(self) -> None:
        sessions, self.sessions = self.sessions, []
        for session in sessions:
            await session.aclose()


def _dispose(*objects: QObject | None) -> None:
    for item in objects:
        if item is not None:
            item.deleteLater()


class TerminalArea(QStackedWidget):
    """Each container's :class:`TerminalTabs`, kept while other containers are shown (keyed by container id)."""

    def __init__(self, engine: Engine, parent: QWidget | None = None, *,
                 shells: Sequence[Sequence[str]] = DEFAULT_SHELLS) -> None:
        super().__init__(parent)
        self.engine = engine
        self.shells = shells
        self.by_container: dict[str, TerminalTabs] = {}
        self.placeholder = QLabel("Start the container to open a terminal in it.", self)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setObjectName("Subtle")
        self.addWidget(self.placeholder)

    def tabs_for(self, container_id: str) -> TerminalTabs:
        tabs = self.by_container.get(container_id)
        if tabs is None:
            tabs = TerminalTabs(self.engine, container_id, self, shells=self.shells)
            self.by_container[container_id] = tabs
            self.addWidget(tabs)
        return tabs

    def show_container(self, container_id: str, *, running: bool) -> None:
        tabs = self.by_container.get(container_id)
        if tabs is None and not running:
            self.setCurrentWidget(self.placeholder)
            return
        self.setCurrentWidget(tabs or self.tabs_for(container_id))

    def open_terminal(self, container_id: str) -> TerminalView:
        tabs = self.tabs_for(container_id)
        self.setCurrentWidget(tabs)
        return tabs.open_terminal()

    async def forget(self, container_id: str) -> None:
        """The container is gone: end its terminals."""
        tabs = self.by_container.pop(container_id, None)
        if tabs is not None:
            await tabs.aclose()
            self.removeWidget(tabs)
            tabs.deleteLater()

    async def aclose(self) -> None:
        for container_id in list(self.by_container):
            await self.forget(container_id)
