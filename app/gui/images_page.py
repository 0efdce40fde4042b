"""Images view (local images: tags, id, size, created; pull with progress, remove, prune, inspect, layer
history) and Volumes view (list, create, remove). Both are table models over engine values, refreshed on the
engine's image/volume events."""

from __future__ import annotations

from typing import Any, Final

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.gui.inspect_view import InspectView
from app.gui.state import AppState
from app.gui.theme import icon
from engine import ImageRecord

__all__ = ["ImageTableModel", "ImagesPage", "VolumeTableModel", "VolumesPage", "human_size"]

_ROOT = QModelIndex()
_Index = QModelIndex | QPersistentModelIndex


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g} {unit}" if unit != "B" else f"{size} B"
        value /= 1000
    return f"{value:.3g} TB"


def _created(text: str | None) -> str:
    return (text or "")[:19].replace("T", " ")


class _RowsTableModel(QAbstractTableModel):
    """A read-only table over a list of rows: the row/column counts and headers every table here shares."""

    HEADERS: tuple[str, ...] = ()
    _rows: list[Any]

    def rowCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None


class ImageTableModel(_RowsTableModel):
    HEADERS = ("Repository:tag", "Image ID", "Size", "Created")
    RecordRole: Final = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[tuple[str, ImageRecord]] = []

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        name, record = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return (name, record.id.removeprefix("sha256:")[:12], human_size(record.size),
                    _created(record.created))[index.column()]
        if role == self.RecordRole:
            return record
        return None

    def set_images(self, images: list[ImageRecord]) -> None:
        from engine import parse_reference

        rows: list[tuple[str, ImageRecord]] = []
        for record in images:
            names = [parse_reference(t).familiar for t in record.repo_tags] or ["<none>:<none>"]
            rows.extend((name, record) for name in names)
        self.beginResetModel()
        self._rows = sorted(rows, key=lambda r: r[0])
        self.endResetModel()

    def row(self, index: int) -> tuple[str, ImageRecord]:
        return self._rows[index]


class _Page(QWidget):
    def __init__(self, title: str, parent: QWidget | None) -> None:
        super().__init__(parent)
        self.table = QTableView(self)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setDefaultSectionSize(28)
        self.bar = QHBoxLayout()
        heading = QLabel(title, self)
        heading.setObjectName("PageTitle")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(heading)
        layout.addLayout(self.bar)
        layout.addWidget(self.table, 1)

    def button(self, icon_name: str, text: str, tip: str) -> QPushButton:
        button = QPushButton(icon(icon_name), text, self)
        button.setToolTip(tip)
        self.bar.addWidget(button)
        return button

    def current_row(self) -> int | None:
        index = self.table.currentIndex()
        return index.row() if index.isValid() else None

    def confirm(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Yes
                                      | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes


class ImagesPage(_Page):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__("Images", parent)
        self.state = state
        self.model = ImageTableModel(self)
        self.table.setModel(self.model)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.reference = QLineEdit(self)
        self.reference.setPlaceholderText("Pull an image: busybox, registry.lan:5000/team/app:1.2")
        self.bar.addWidget(self.reference, 1)
        pull = self.button("save", "Pull", "Pull the reference (Return)")
        self.bar.addSpacing(12)
        inspect = self.button("inspect", "Inspect", "Inspect the selected image")
        history = self.button("logs", "Layers", "Layer history of the selected image")
        remove = self.button("trash", "Remove", "Remove the selected image (Delete)")
        prune = self.button("prune", "Prune", "Remove images without a tag")
        pull.clicked.connect(lambda _c=False: self.pull())
        self.reference.returnPressed.connect(self.pull)
        inspect.clicked.connect(lambda _c=False: self.inspect())
        history.clicked.connect(lambda _c=False: self.history())
        remove.clicked.connect(lambda _c=False: self.remove())
        remove.setShortcut("Delete")
        prune.clicked.connect(lambda _c=False: self.prune())
        state.imagesChanged.connect(self.refresh)

    def refresh(self) -> None:
        self.state.run(self.state.engine.images(), what="list images", done=self.model.set_images)

    def pull(self) -> None:
        text = self.reference.text().strip()
        if text:
            self.state.pull(text)
            self.reference.clear()

    def _selected(self) -> tuple[str, ImageRecord] | None:
        row = self.current_row()
        return self.model.row(row) if row is not None else None

    def remove(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        name, record = selected
        target = record.id if name.startswith("<none>") else name
        if self.confirm("Remove image", f"Remove {name}? Containers using it keep working."):
            self.state.run(self.state.engine.remove_images([target]), what=f"remove {name}")

    def prune(self) -> None:
        if self.confirm("Prune images", "Remove every image without a tag?"):
            self.state.prune_images()

    def inspect(self) -> None:
        selected = self._selected()
        if selected is not None:
            self.state.run(self.state.engine.inspect_image(selected[1].id), what="inspect image",
                           done=lambda doc: self._show_document(f"Inspect {selected[0]}", doc))

    def history(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        record = selected[1]
        layers = [{"digest": layer.digest, "diff_id": layer.diff_id, "size": human_size(layer.size),
                   "media_type": layer.media_type} for layer in record.layers]

        def show(document: dict[str, Any]) -> None:
            config_history = document.get("Config", {})
            self._show_document(f"Layers of {selected[0]}", {"Layers": layers, "Config": config_history})

        self.state.run(self.state.engine.inspect_image(record.id), what="layer history", done=show)

    def _show_document(self, title: str, document: Any) -> None:
        dialog = QDialog(self)
        dialog.setWindowTitle(title)
        dialog.resize(720, 520)
        view = InspectView(dialog)
        view.set_document(document)
        view.tree.expandAll()
        QVBoxLayout(dialog).addWidget(view)
        dialog.show()


class VolumeTableModel(_RowsTableModel):
    HEADERS = ("Name", "Mount point", "Created")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        volume = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return (volume.get("Name", ""), volume.get("Mountpoint", ""), _created(volume.get("CreatedAt")))[
                index.column()]
        return None

    def set_volumes(self, volumes: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = sorted(volumes, key=lambda v: str(v.get("Name", "")))
        self.endResetModel()

    def name(self, row: int) -> str:
        return str(self._rows[row].get("Name", ""))


class VolumesPage(_Page):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__("Volumes", parent)
        self.state = state
        self.model = VolumeTableModel(self)
        self.table.setModel(self.model)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        create = self.button("plus", "Create", "Create a named volume")
        remove = self.button("trash", "Remove", "Remove the selected volume (Delete)")
        remove.setShortcut("Delete")
        self.bar.addStretch(1)
        create.clicked.connect(lambda _c=False: self.ask_create())
        remove.clicked.connect(lambda _c=False: self.remove())
        state.volumesChanged.connect(self.refresh)

    def refresh(self) -> None:
        self.state.run(self.state.engine.volumes(), what="list volumes", done=self.model.set_volumes)

    def ask_create(self) -> None:
        name, ok = QInputDialog.getText(self, "Create volume", "Name (empty for a generated one):")
        if ok:
            self.state.run(self.state.engine.create_volume(name.strip() or None), what="create volume")

    def remove(self) -> None:
        row = self.current_row()
        if row is None:
            return
        name = self.model.name(row)
        if self.confirm("Remove volume", f"Remove volume {name} and all its data?"):
            self.state.run(self.state.engine.remove_volume(name), what=f"remove volume {name}")

