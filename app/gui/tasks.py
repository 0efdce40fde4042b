"""Long work the user waits for (pulls, creates, prunes): ``Task`` values, their list model, and notifications.

A pull's progress arrives as the engine's ``PullProgress`` records: per layer (``layer`` set: phase, bytes so
far, total) and for the whole image (``layer`` None). ``Task.apply`` folds them into per-layer fractions and an
overall fraction: downloading counts for 80 % of a layer and extracting for the rest, so the bar moves
steadily instead of jumping from "downloaded" to "done".

When a task finishes or fails, ``Notifier`` tells the desktop (org.freedesktop.Notifications over D-Bus, else
the tray, else nothing) and keeps a history that the status bar and tests read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Final

from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal

from app.gui.qtfix import emit
from engine import PullProgress

__all__ = ["LayerState", "Notifier", "Task", "TaskModel"]

_ROOT = QModelIndex()
_Index = QModelIndex | QPersistentModelIndex
_ids = itertools.count(1)
_DOWNLOAD_SHARE: Final = 0.8


@dataclass
class LayerState:
    phase: str = "waiting"
    current: int = 0
    total: int = 0

    @property
    def fraction(self) -> float:
        if self.phase in ("done", "exists"):
            return 1.0
        part = self.current / self.total if self.total else 0.0
        if self.phase in ("downloading", "waiting", "resolving"):
            return _DOWNLOAD_SHARE * part
        if self.phase in ("verifying", "downloaded"):
            return _DOWNLOAD_SHARE
        if self.phase == "extracting":
            return _DOWNLOAD_SHARE + (1 - _DOWNLOAD_SHARE) * part
        return 0.0


@dataclass
class Task:
    title: str
    kind: str = "pull"  # "pull" | "create" | "prune" | "recreate"
    state: str = "running"  # "running" | "done" | "failed"
    message: str = ""
    phase: str = "Waiting"
    layers: dict[str, LayerState] = field(default_factory=dict)
    finished: bool = False
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if not self.layers:
            return 0.0
        return sum(layer.fraction for layer in self.layers.values()) / len(self.layers)

    @property
    def percent(self) -> int:
        return int(self.fraction * 100)

    def apply(self, item: PullProgress) -> None:
        if item.layer is None:
            self.phase = {"resolving": "Resolving", "done": "Downloaded"}.get(item.phase, self.phase)
            if item.phase == "done":
                for layer in self.layers.values():
                    layer.phase = "done"
            return
        layer = self.layers.setdefault(item.layer, LayerState())
        layer.phase, layer.current, layer.total = item.phase, item.current, item.total
        self.phase = "Downloading" if any(s.phase == "downloading" for s in self.layers.values()) else \
            "Extracting" if any(s.phase == "extracting" for s in self.layers.values()) else self.phase


class TaskModel(QAbstractListModel):
    """Tasks, newest first. ``TaskRole`` gives the ``Task`` itself (the delegate draws its bar)."""

    TaskRole: Final = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tasks: list[Task] = []

    def rowCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._tasks)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._tasks):
            return None
        task = self._tasks[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            status = {"running": f"{task.phase} {task.percent}%", "done": "Done", "failed": "Failed"}[task.state]
            return f"{task.title} — {status}" + (f": {task.message}" if task.message else "")
        if role == self.TaskRole:
            return task
        return None

    def add(self, task: Task) -> Task:
        self.beginInsertRows(_ROOT, 0, 0)
        self._tasks.insert(0, task)
        self.endInsertRows()
        return task

    def changed(self, task: Task) -> None:
        for row, candidate in enumerate(self._tasks):
            if candidate is task:
                index = self.index(row)
                emit(self.dataChanged, index, index)
                return

    def tasks(self) -> list[Task]:
        return list(self._tasks)

    @property
    def running(self) -> int:
        return sum(1 for t in self._tasks if t.state == "running")

    def clear_finished(self) -> None:
        self.beginResetModel()
        self._tasks = [t for t in self._tasks if t.state == "running"]
        self.endResetModel()


class Notifier(QObject):
    """Desktop notifications for finished/failed tasks; ``history`` keeps (title, body) for the UI and tests."""

    notified = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.history: list[tuple[str, str]] = []
        self._dbus: Any = None
        try:
            from PySide6.QtDBus import QDBusConnection, QDBusInterface

            bus = QDBusConnection.sessionBus()
            if bus.isConnected():
                self._dbus = QDBusInterface("org.freedesktop.Notifications", "/org/freedesktop/Notifications",
                                            "org.freedesktop.Notifications", bus)
        except ImportError:
            self._dbus = None

    def notify(self, title: str, body: str) -> None:
        self.history.append((title, body))
        emit(self.notified, title, body)
        if self._dbus is not None and self._dbus.isValid():
            self._dbus.call("Notify", "Kitebox", 0, "kitebox", title, body, [], {}, 5000)
