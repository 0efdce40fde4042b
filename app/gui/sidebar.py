"""The left sidebar: containers (favourites, then pulling, then running, then by name), a filter box, the
favourite star, "+ New", and the Images / Volumes / Tasks entries.

``ContainerListModel`` is a plain list model of ``SidebarEntry`` values rebuilt from ``AppState`` (a few hundred
rows at most; a reset is cheaper than diffing). The sidebar keeps the selection by *name* across resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QKeySequence, QPainter, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.qtfix import emit
from app.gui.state import AppState
from app.gui.theme import icon, status_colour

__all__ = ["ContainerListModel", "Sidebar", "SidebarEntry", "sort_key"]

_ROOT = QModelIndex()
_Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True, slots=True)
class SidebarEntry:
    name: str
    image: str
    status: str  # engine Status value, or "pulling"
    favourite: bool = False
    progress: int = 0  # percent, while pulling

    @property
    def pulling(self) -> bool:
        return self.status == "pulling"

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")


def sort_key(entry: SidebarEntry) -> tuple[bool, bool, bool, str]:
    """Kitematic's order: favourites, pulling, running, then by name."""
    return (not entry.favourite, not entry.pulling, not entry.running, entry.name.lower())


class ContainerListModel(QAbstractListModel):
    EntryRole: Final = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._all: list[SidebarEntry] = []
        self._shown: list[SidebarEntry] = []
        self._filter = ""

    def rowCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._shown)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._shown):
            return None
        entry = self._shown[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return entry.name
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{entry.name}\n{entry.image}\n{entry.status}"
        if role == self.EntryRole:
            return entry
        return None

    def set_entries(self, entries: list[SidebarEntry]) -> None:
        self.beginResetModel()
        self._all = sorted(entries, key=sort_key)
        self._apply()
        self.endResetModel()

    def set_filter(self, text: str) -> None:
        self.beginResetModel()
        self._filter = text.strip().lower()
        self._apply()
        self.endResetModel()

    def _apply(self) -> None:
        needle = self._filter
        self._shown = [e for e in self._all if not needle or needle in e.name.lower() or needle in e.image.lower()]

    def entry(self, row: int) -> SidebarEntry:
        return self._shown[row]

    def row_of(self, name: str) -> int | None:
        return next((i for i, e in enumerate(self._shown) if e.name == name), None)

    def names(self) -> list[str]:
        return [e.name for e in self._shown]


class _EntryDelegate(QStyledItemDelegate):
    """Status dot, name, image, and a star (filled for favourites; clicking it toggles)."""

    STAR: Final = 18

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        return QSize(200, 46)

    def star_rect(self, rect: QRect) -> QRect:
        return QRect(rect.right() - self.STAR - 8, rect.center().y() - self.STAR // 2, self.STAR, self.STAR)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        entry = index.data(ContainerListModel.EntryRole)
        if not isinstance(entry, SidebarEntry):
            return
        rect = QRect(option.rect)
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if selected:
            painter.fillRect(rect, palette.highlight())
        text_colour = palette.highlightedText().color() if selected else palette.text().color()
        muted = QColor(text_colour)
        muted.setAlphaF(0.65)
        dot = status_colour(entry.status, pulling=entry.pulling)
        painter.setBrush(dot)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.drawEllipse(rect.left() + 12, rect.center().y() - 5, 10, 10)
        font = QFont(option.font)
        font.setWeight(QFont.Weight.DemiBold)
        painter.setFont(font)
        painter.setPen(text_colour)
        text_left = rect.left() + 32
        width = rect.width() - 32 - self.STAR - 16
        painter.drawText(QRect(text_left, rect.top() + 5, width, 20), Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(entry.name, Qt.TextElideMode.ElideRight, width))
        painter.setFont(option.font)
        painter.setPen(muted)
        second = f"Pulling {entry.progress}%  ·  {entry.image}" if entry.pulling else f"{entry.status} · {entry.image}"
        painter.drawText(QRect(text_left, rect.top() + 24, width, 18), Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(second, Qt.TextElideMode.ElideRight, width))
        star = icon("star-filled" if entry.favourite else "star", None if entry.favourite else muted.name())
        star.paint(painter, self.star_rect(rect))
        painter.restore()


class Sidebar(QFrame):
    containerSelected = Signal(str)
    newRequested = Signal()
    pageRequested = Signal(str)  # "images" | "volumes" | "tasks"

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Sidebar")
        self.state = state
        self.model = ContainerListModel(self)
        self.filter = QLineEdit(self)
        self.filter.setPlaceholderText("Filter containers")
        self.filter.setClearButtonEnabled(True)
        self.new_button = QPushButton(icon("plus", "#ffffff"), "New", self)
        self.new_button.setObjectName("Primary")
        self.new_button.setToolTip("New container (Ctrl+N)")
        self.list = QListView(self)
        self.list.setModel(self.model)
        self._delegate = _EntryDelegate(self.list)
        self.list.setItemDelegate(self._delegate)
        self.list.setMouseTracking(True)
        self.list.setVerticalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self.selected: str | None = None

        title = QLabel("Containers", self)
        title.setObjectName("Subtle")
        header = QHBoxLayout()
        header.addWidget(title)
        header.addStretch(1)
        header.addWidget(self.new_button)
        nav = QHBoxLayout()
        nav.setSpacing(2)
        for name, label, key in (("images", "Images", "Ctrl+2"), ("volumes", "Volumes", "Ctrl+3"),
                                 ("tasks", "Tasks", "Ctrl+4")):
            button = QToolButton(self)
            button.setText(label)
            button.setIcon(icon({"images": "image", "volumes": "volume", "tasks": "tasks"}[name]))
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            button.setAutoRaise(True)
            button.setToolTip(f"{label} ({key})")
            button.clicked.connect(lambda _c=False, n=name: emit(self.pageRequested, n))
            shortcut = QShortcut(QKeySequence(key), self.window() or self)
            shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
            shortcut.activated.connect(lambda n=name: emit(self.pageRequested, n))
            nav.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 10, 8, 8)
        layout.addLayout(header)
        layout.addWidget(self.filter)
        layout.addWidget(self.list, 1)
        layout.addLayout(nav)

        self.filter.textChanged.connect(self._filter_changed)
        self.new_button.clicked.connect(lambda _c=False: emit(self.newRequested))
        self.list.clicked.connect(self._clicked)
        self.list.selectionModel().currentChanged.connect(self._current_changed)
        state.containersChanged.connect(self.rebuild)
        state.tasks.dataChanged.connect(lambda *_a: self.rebuild())
        self.rebuild()

    def entries(self) -> list[SidebarEntry]:
        favourites = self.state.settings.favourites
        entries = [SidebarEntry(r.name, r.image, r.state.status.value, r.name in favourites)
                   for r in self.state.containers if r.name not in self.state.creating]
        entries += [SidebarEntry(name, task.title.rsplit(" from ", 1)[-1], "pulling", name in favourites,
                                 task.percent) for name, task in self.state.creating.items()]
        return entries

    def rebuild(self) -> None:
        self.model.set_entries(self.entries())
        self._restore_selection()

    def _filter_changed(self, text: str) -> None:
        self.model.set_filter(text)
        self._restore_selection()

    def _restore_selection(self) -> None:
        if self.selected is None:
            return
        row = self.model.row_of(self.selected)
        if row is not None:
            self.list.selectionModel().blockSignals(True)
            self.list.setCurrentIndex(self.model.index(row))
            self.list.selectionModel().blockSignals(False)

    def select(self, name: str) -> None:
        self.selected = name
        self._restore_selection()
        emit(self.containerSelected, name)

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            name = self.model.entry(current.row()).name
            if name != self.selected:
                self.selected = name
                emit(self.containerSelected, name)

    def _clicked(self, index: QModelIndex) -> None:
        entry = self.model.entry(index.row())
        rect = self.list.visualRect(index)
        cursor = self.list.viewport().mapFromGlobal(self.list.cursor().pos())
        if self._delegate.star_rect(rect).contains(cursor):
            self.toggle_favourite(entry.name)

    def toggle_favourite(self, name: str) -> None:
        self.state.settings.toggle_favourite(name)
        self.rebuild()
