"""Starting the desktop app: Qt + the qasync loop, the engine in-process, preflight, the main window.

The window is shown before anything slow happens (the container list loads afterwards, as does the overlay
probe), so it is on screen well within a second. If the engine cannot work on this machine (no root for
namespaces, no overlay and no copy fallback, an unusable state root) a first-run screen says what is missing
and how to fix it, with Retry. Closing the window closes the engine; containers keep running under their
monitors, and creates still pulling are resumed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QApplication, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.gui.qtfix import BROKEN_BINDING_MESSAGE, VOID_STEALS_NONE, EventLoop
from app.gui.theme import apply_theme, icon
from engine import Config, CreateOptions, Engine, KiteboxError, load_config

__all__ = ["Problem", "StartedApp", "open_app", "preflight", "run"]


@dataclass(frozen=True, slots=True)
class Problem:
    what: str
    fix: str


async def preflight(engine: Engine) -> list[Problem]:
    """What keeps containers from running here (an empty list: all good)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(Problem(
            "Containers need root: Kitebox creates namespaces, mounts and cgroups itself.",
            "Start Kitebox as root (sudo -E kitebox). Images can still be browsed and pulled without it."))
    try:
        await asyncio.to_thread(engine.snapshotter)
    except KiteboxError as err:
        problems.append(Problem(
            f"No usable filesystem for container layers: {err}",
            'Load overlayfs (sudo modprobe overlay) or set "snapshotter": "copy" in the configuration file.'))
    return problems


class FirstRun(QWidget):
    """The "what is missing and how to fix it" screen."""

    def __init__(self, problems: list[Problem], *, can_continue: bool) -> None:
        super().__init__()
        self.setWindowTitle("Kitebox: setup needed")
        self.setWindowIcon(icon("kitebox"))
        self.resize(640, 360)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(32, 28, 32, 28)
        title = QLabel("Kitebox cannot run containers on this machine yet", self)
        title.setObjectName("PageTitle")
        layout.addWidget(title)
        for problem in problems:
            box = QLabel(f"<b>{problem.what}</b><br>{problem.fix}", self)
            box.setWordWrap(True)
            box.setObjectName("Warning")
            box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            layout.addWidget(box)
        layout.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.retry = QPushButton("Retry", self)
        self.proceed = QPushButton("Continue anyway", self)
        self.proceed.setObjectName("Primary")
        self.proceed.setVisible(can_continue)
        self.quit = QPushButton("Quit", self)
        for button in (self.quit, self.retry, self.proceed):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.choice: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        for button, value in ((self.retry, "retry"), (self.proceed, "continue"), (self.quit, "quit")):
            button.clicked.connect(lambda _c=False, v=value: self._choose(v))

    def _choose(self, value: str) -> None:
        if not self.choice.done():
            self.choice.set_result(value)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._choose("quit")


@dataclass
class StartedApp:
    """What ``open_app`` built (tests drive it directly)."""

    engine: Engine
    state: object  # AppState (imported lazily)
    window: object  # MainWindow

    async def close(self) -> None:
        from app.gui.state import AppState
        from app.gui.window import MainWindow

        assert isinstance(self.state, AppState) and isinstance(self.window, MainWindow)
        # Engine first: closing the last window may quit the Qt application (and stop the loop) otherwise.
        await self.window.container_page.aclose()
        await self.state.close()
        await self.engine.close()
        self.window.close()
        self.window.deleteLater()


async def open_app(root: Path | None, config: Config, *, settings_path: Path | None = None,
                   hub: bool = True, create_defaults: CreateOptions | None = None) -> StartedApp:
    """Open the engine and show the main window (no preflight: see ``run``).

    ``create_defaults``: the options "Create" starts from (default: the engine's, i.e. the bridge network).
    """
    from app.gui.search import DockerHubProvider, LocalImagesProvider, RegistryProvider, SearchProvider, SearchService
    from app.gui.settings import GuiSettings
    from app.gui.state import AppState
    from app.gui.window import MainWindow

    application = QApplication.instance()
    if isinstance(application, QApplication):
        application.setQuitOnLastWindowClosed(False)  # the loop ends when *we* say so (see _main)
        if application.property("kiteboxTheme") is None:
            apply_theme(application)
    engine = await Engine.open(root, config=config)
    settings = GuiSettings.load(settings_path)
    providers: list[SearchProvider] = [LocalImagesProvider(engine)]
    hosts = list(dict.fromkeys([*settings.registries, *config.registries.insecure]))
    providers += [RegistryProvider(engine, host) for host in hosts]
    if hub:
        providers.append(DockerHubProvider(engine))
    state = AppState(engine, settings, create_defaults=create_defaults)
    window = MainWindow(state, SearchService(providers))
    window.show()
    if settings.load_error:
        window.statusBar().showMessage(settings.load_error, 10_000)
    await state.start()
    return StartedApp(engine, state, window)


async def _main(app: QApplication, root: Path | None, config: Config) -> int:
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    app.lastWindowClosed.connect(lambda: None if closed.done() else closed.set_result(None))
    while True:
        opened = True
        try:
            engine = await Engine.open(root, config=config)
        except KiteboxError as err:
            problems = [Problem(f"The state root cannot be used: {err}",
                                "Choose another one with --root DIR or $KITEBOX_ROOT, or fix its permissions.")]
            opened = False
        else:
            problems = await preflight(engine)
            await engine.close()
        if not problems:
            break
        screen = FirstRun(problems, can_continue=opened)
        screen.show()
        choice = await screen.choice
        screen.hide()
        screen.deleteLater()
        if choice == "quit":
            return 1
        if choice == "continue":
            break
    started = await open_app(root, config)
    await closed
    await started.close()
    return 0


def run(root: Path | None = None, config_path: Path | None = None) -> int:
    """``kitebox`` / ``kitebox gui``: run the desktop app until its window closes; returns the exit code."""
    try:
        config = load_config(config_path) if config_path else load_config()
    except KiteboxError as err:
        print(f"kitebox: {err}", file=sys.stderr)
        return err.exit_code
    if VOID_STEALS_NONE:
        print(f"kitebox: warning: {BROKEN_BINDING_MESSAGE}", file=sys.stderr)
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(sys.argv[:1])
    app.setApplicationName("Kitebox")
    app.setApplicationDisplayName("Kitebox")
    app.setDesktopFileName("io.github.kitebox.Kitebox")
    app.setQuitOnLastWindowClosed(False)
    app.setWindowIcon(icon("kitebox"))
    loop = EventLoop(app)
    asyncio.set_event_loop(loop)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return int(loop.run_until_complete(_main(app, root, config)))
        return 130
    finally:
        # Join the worker threads before the loop (and Qt) go away: a thread still running at exit aborts
        # the process ("QThread destroyed while running").
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
