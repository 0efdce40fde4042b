"""New container: search images (local, private registries, Docker Hub), pick one and a tag, name it, Create.

Typing waits 250 ms for a pause before searching (debounce); the search service caches and never blocks. Cards
show name, description, stars/pulls where known and an "official" badge. The tag picker lists *every* tag
(Kitematic loaded the first 100 only: #1632 #5310) with a filter. "Create" hands over to ``AppState.create``:
the container appears in the sidebar at once, with its pull progress.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, QRect, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QFont, QPainter
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.recreate import normalise_name
from app.gui.search import ImageHit, SearchResult, SearchService
from app.gui.state import AppState
from app.gui.theme import ACCENT, icon
from engine import KiteboxError

__all__ = ["HitListModel", "NewContainerPage"]

_ROOT = QModelIndex()
_Index = QModelIndex | QPersistentModelIndex
DEBOUNCE_MS: Final = 250


def _count(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}".replace(".0", "")
    return str(value)


class HitListModel(QAbstractListModel):
    HitRole: Final = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._hits: list[ImageHit] = []

    def rowCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._hits)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._hits):
            return None
        hit = self._hits[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return hit.repository
        if role == Qt.ItemDataRole.ToolTipRole:
            return hit.description or hit.repository
        if role == self.HitRole:
            return hit
        return None

    def set_hits(self, hits: list[ImageHit]) -> None:
        self.beginResetModel()
        self._hits = list(hits)
        self.endResetModel()

    def hit(self, row: int) -> ImageHit:
        return self._hits[row]


class _CardDelegate(QStyledItemDelegate):
    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        return QSize(300, 64)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        hit = index.data(HitListModel.HitRole)
        if not isinstance(hit, ImageHit):
            return
        rect = QRect(option.rect).adjusted(4, 3, -4, -3)
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(palette.mid().color() if not selected else QColor(ACCENT))
        painter.setBrush(palette.base() if not selected else QColor(47, 128, 237, 40))
        painter.drawRoundedRect(rect, 6, 6)
        icon("image").paint(painter, QRect(rect.left() + 10, rect.top() + 14, 28, 28))
        left = rect.left() + 48
        width = rect.width() - 58
        font = QFont(option.font)
        font.setWeight(QFont.Weight.DemiBold)
        painter.setFont(font)
        painter.setPen(palette.text().color())
        title_width = painter.fontMetrics().horizontalAdvance(hit.repository)
        painter.drawText(QRect(left, rect.top() + 6, width, 20), Qt.AlignmentFlag.AlignVCenter, hit.repository)
        badge_x = left + min(title_width, width) + 8
        if hit.official:
            painter.setPen(QColor("#27ae60"))
            painter.drawText(QRect(badge_x, rect.top() + 6, 80, 20), Qt.AlignmentFlag.AlignVCenter, "✔ official")
        painter.setFont(option.font)
        muted = QColor(palette.text().color())
        muted.setAlphaF(0.65)
        painter.setPen(muted)
        stats = [hit.source]
        if hit.stars is not None:
            stats.append(f"★ {_count(hit.stars)}")
        if hit.pulls is not None:
            stats.append(f"↓ {_count(hit.pulls)}")
        if hit.local_tags:
            stats.append("tags: " + ", ".join(hit.local_tags[:4]))
        second = "  ·  ".join(stats)
        description = hit.description or ""
        painter.drawText(QRect(left, rect.top() + 26, width, 16), Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(description, Qt.TextElideMode.ElideRight, width))
        painter.drawText(QRect(left, rect.top() + 42, width, 16), Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(second, Qt.TextElideMode.ElideRight, width))
        painter.restore()


class NewContainerPage(QWidget):
    def __init__(self, state: AppState, service: SearchService, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.service = service
        self.hits = HitListModel(self)
        self.query = QLineEdit(self)
        self.query.setPlaceholderText("Search images: local, your registries, Docker Hub")
        self.query.setClearButtonEnabled(True)
        self.query.addAction(icon("search"), QLineEdit.ActionPosition.LeadingPosition)
        self.notes = QLabel(self)
        self.notes.setObjectName("Subtle")
        self.notes.setWordWrap(True)
        self.results = QListView(self)
        self.results.setModel(self.hits)
        self.results.setItemDelegate(_CardDelegate(self.results))
        self.results.setVerticalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self.results.setSpacing(2)

        self.detail_title = QLabel("Choose an image", self)
        self.detail_title.setObjectName("PageTitle")
        self.detail_text = QLabel(self)
        self.detail_text.setWordWrap(True)
        self.detail_text.setObjectName("Subtle")
        self.tag_filter = QLineEdit(self)
        self.tag_filter.setPlaceholderText("Filter tags")
        self.tags = QListWidget(self)
        self.tag_status = QLabel(self)
        self.tag_status.setObjectName("Subtle")
        self.name = QLineEdit(self)
        self.name_preview = QLabel(self)
        self.name_preview.setObjectName("Subtle")
        self.create_button = QPushButton(icon("play", "#ffffff"), "Create", self)
        self.create_button.setObjectName("Primary")
        self.create_button.setEnabled(False)
        self.create_button.setToolTip("Pull (if needed), create and start (Ctrl+Return)")
        self.create_button.setShortcut("Ctrl+Return")

        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.query)
        left_layout.addWidget(self.notes)
        left_layout.addWidget(self.results, 1)
        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(12, 0, 0, 0)
        right_layout.addWidget(self.detail_title)
        right_layout.addWidget(self.detail_text)
        right_layout.addWidget(QLabel("<b>Tag</b>", right))
        right_layout.addWidget(self.tag_filter)
        right_layout.addWidget(self.tags, 1)
        right_layout.addWidget(self.tag_status)
        form = QFormLayout()
        form.addRow("Container name", self.name)
        form.addRow("", self.name_preview)
        right_layout.addLayout(form)
        right_layout.addWidget(self.create_button)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setSizes([560, 340])
        title = QLabel("New container", self)
        title.setObjectName("PageTitle")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        header = QHBoxLayout()
        header.addWidget(title)
        header.addStretch(1)
        layout.addLayout(header)
        layout.addWidget(splitter, 1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.search_now)
        self.query.textChanged.connect(lambda _t: self._debounce.start())
        self.query.returnPressed.connect(self.search_now)
        self.results.selectionModel().currentChanged.connect(lambda cur, _prev: self._chosen(cur))
        self.tag_filter.textChanged.connect(self._filter_tags)
        self.tags.currentTextChanged.connect(lambda _t: self._update_create())
        self.name.textChanged.connect(self._name_changed)
        self.create_button.clicked.connect(lambda _c=False: self.create_container())
        self.selected: ImageHit | None = None
        self._search_task: asyncio.Task[Any] | None = None
        self._tags_task: asyncio.Task[Any] | None = None
        self.searches = 0  # finished searches (tests wait on it)
        self.tag_loads = 0

    def activate(self) -> None:
        """Shown again: focus the search box and refresh (local images may have changed)."""
        self.query.setFocus()
        self.service.invalidate()
        self.search_now()

    def search_now(self) -> None:
        self._debounce.stop()
        if self._search_task is not None:
            self._search_task.cancel()
        self._search_task = self.state.spawn(self._search(self.query.text()))

    async def _search(self, query: str) -> None:
        result: SearchResult = await self.service.search(query)
        self.hits.set_hits(list(result.hits))
        self.notes.setText("  ·  ".join(result.notes))
        self.notes.setVisible(bool(result.notes))
        if self.selected is not None:
            for row in range(self.hits.rowCount()):
                if self.hits.hit(row).repository == self.selected.repository:
                    self.results.setCurrentIndex(self.hits.index(row))
        self.searches += 1

    def choose(self, repository: str) -> None:
        for row in range(self.hits.rowCount()):
            if self.hits.hit(row).repository == repository:
                self.results.setCurrentIndex(self.hits.index(row))
                return
        raise KeyError(f"no search result {repository!r}")

    def _chosen(self, index: QModelIndex) -> None:
        if not index.isValid():
            return
        hit = self.hits.hit(index.row())
        if self.selected is not None and hit.repository == self.selected.repository:
            return
        self.selected = hit
        self.detail_title.setText(hit.repository)
        self.detail_text.setText(hit.description or hit.source)
        self.name.setText(self.state.suggest_name(hit.repository))
        self.tags.clear()
        self.tag_status.setText("Loading tags…")
        if self._tags_task is not None:
            self._tags_task.cancel()
        self._tags_task = self.state.spawn(self._load_tags(hit))
        self._update_create()

    async def _load_tags(self, hit: ImageHit) -> None:
        try:
            tags = await self.service.tags(hit.repository)
        except KiteboxError as err:
            tags = list(hit.local_tags)
            self.tag_status.setText(str(err))
        else:
            self.tag_status.setText(f"{len(tags)} tags")
        if not tags:
            tags = ["latest"]
        self.tags.clear()
        self.tags.addItems(tags)
        self.tags.setCurrentRow(0)
        self._filter_tags(self.tag_filter.text())
        self.tag_loads += 1
        self._update_create()

    def _filter_tags(self, text: str) -> None:
        needle = text.strip().lower()
        for row in range(self.tags.count()):
            item = self.tags.item(row)
            if item is not None:
                item.setHidden(bool(needle) and needle not in item.text().lower())

    def _name_changed(self, text: str) -> None:
        normalised = normalise_name(text)
        taken = normalised in self.state.taken_names()
        if taken:
            self.name_preview.setText(f"{normalised} is taken")
        elif normalised != text:
            self.name_preview.setText(f"Will be created as: {normalised or '(choose a name)'}")
        else:
            self.name_preview.setText("")
        self._update_create()

    def _update_create(self) -> None:
        name = normalise_name(self.name.text())
        item = self.tags.currentItem()
        self.create_button.setEnabled(self.selected is not None and item is not None and bool(name)
                                      and name not in self.state.taken_names())

    def reference(self) -> str | None:
        item = self.tags.currentItem()
        if self.selected is None or item is None:
            return None
        return f"{self.selected.repository}:{item.text()}"

    def create_container(self) -> str | None:
        """Start the create flow; returns the container name (None when the form is incomplete)."""
        reference = self.reference()
        name = normalise_name(self.name.text())
        if reference is None or not name or name in self.state.taken_names():
            return None
        self.state.create(reference, name)
        self.name.setText(self.state.suggest_name(self.selected.repository if self.selected else name))
        return name
