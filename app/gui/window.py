"""The main window: sidebar on the left, the current page on the right, the task list in a dock, and the
status bar for one-line notices. Pages: a container, New container, Images, Volumes (and Welcome when there
is nothing yet)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QListView,
    QMainWindow,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.container_page import ContainerPage
from app.gui.images_page import ImagesPage, VolumesPage
from app.gui.new_container import NewContainerPage
from app.gui.search import SearchService
from app.gui.sidebar import Sidebar
from app.gui.state import AppState
from app.gui.theme import icon

__all__ = ["MainWindow"]


class MainWindow(QMainWindow):
    def __init__(self, state: AppState, search: SearchService) -> None:
        super().__init__()
        self.state = state
        self.setWindowTitle("Kitebox")
        self.setWindowIcon(icon("kitebox"))
        self.resize(1180, 760)
        self.sidebar = Sidebar(state, self)
        self.container_page = ContainerPage(state, self)
        self.new_page = NewContainerPage(state, search, self)
        self.images_page = ImagesPage(state, self)
        self.volumes_page = VolumesPage(state, self)
        self.welcome = QWidget(self)
        welcome_layout = QVBoxLayout(self.welcome)
        hello = QLabel("<h2>Welcome to Kitebox</h2><p>Press <b>Ctrl+N</b> (or <b>+ New</b>) to search an image "
                       "and run it.</p>", self.welcome)
        hello.setAlignment(Qt.AlignmentFlag.AlignCenter)
        welcome_layout.addWidget(hello)
        self.pages = QStackedWidget(self)
        for page in (self.welcome, self.container_page, self.new_page, self.images_page, self.volumes_page):
            self.pages.addWidget(page)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self.pages)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([280, 900])
        splitter.setChildrenCollapsible(False)
        self.setCentralWidget(splitter)

        self.tasks_view = QListView(self)
        self.tasks_view.setModel(state.tasks)
        self.tasks_dock = QDockWidget("Tasks", self)
        self.tasks_dock.setObjectName("TasksDock")
        self.tasks_dock.setWidget(self.tasks_view)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.tasks_dock)
        self.tasks_dock.hide()

        self._actions()
        self.sidebar.containerSelected.connect(self.show_container)
        self.sidebar.newRequested.connect(self.show_new)
        self.sidebar.pageRequested.connect(self.show_page)
        state.notice.connect(lambda text: self.statusBar().showMessage(text, 10_000))
        state.notifier.notified.connect(lambda title, body: self.statusBar().showMessage(f"{title}: {body}", 10_000))
        state.tasks.rowsInserted.connect(lambda *_a: self._show_tasks())
        state.containersChanged.connect(self._containers_changed)

    def _actions(self) -> None:
        for text, key, slot in (("New container", QKeySequence.StandardKey.New, self.show_new),
                                ("Quit", QKeySequence.StandardKey.Quit, self.close),
                                ("Images", "Ctrl+2", lambda: self.show_page("images")),
                                ("Volumes", "Ctrl+3", lambda: self.show_page("volumes")),
                                ("Tasks", "Ctrl+4", lambda: self.show_page("tasks")),
                                ("Containers", "Ctrl+1", self.sidebar.list.setFocus)):
            action = QAction(text, self)
            action.setShortcut(QKeySequence(key))
            action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
            action.triggered.connect(lambda _c=False, s=slot: s())
            self.addAction(action)

    def _show_tasks(self) -> None:
        self.tasks_dock.show()
        self.resizeDocks([self.tasks_dock], [96], Qt.Orientation.Vertical)

    def show_container(self, name: str) -> None:
        self.container_page.show_container(name)
        self.pages.setCurrentWidget(self.container_page)

    def show_new(self) -> None:
        self.pages.setCurrentWidget(self.new_page)
        self.new_page.activate()

    def show_page(self, name: str) -> None:
        if name == "images":
            self.images_page.refresh()
            self.pages.setCurrentWidget(self.images_page)
        elif name == "volumes":
            self.volumes_page.refresh()
            self.pages.setCurrentWidget(self.volumes_page)
        elif name == "tasks":
            if self.tasks_dock.isVisible():
                self.tasks_dock.hide()
            else:
                self._show_tasks()

    def _containers_changed(self) -> None:
        current = self.container_page.name
        known = {r.name for r in self.state.containers} | set(self.state.creating)
        if self.pages.currentWidget() is self.container_page and current not in known:
            names = self.sidebar.model.names()
            if names:
                self.sidebar.select(names[0])
            else:
                self.pages.setCurrentWidget(self.welcome)
        elif self.pages.currentWidget() is self.welcome and known:
            self.sidebar.select(self.sidebar.model.names()[0])

    def closeEvent(self, event: QCloseEvent) -> None:
        """Containers keep running (their monitors supervise them); in-flight creates resume next start."""
        event.accept()
