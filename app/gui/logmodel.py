"""``LogModel``: a Qt list model over a :class:`~app.gui.logbuffer.LogBuffer`, fed in per-frame batches.

Ingestion: ``append(lines)`` only queues (a list append, ~0.1 µs per line); a 16 ms single-shot timer moves the
queue into the buffer and announces it with one ``beginInsertRows``/``endInsertRows`` pair per frame, however
many lines arrived. That is what keeps a container printing 200,000 lines/s from drowning the event loop.

Rows are a window ``[first, end)`` of the buffer's absolute line numbers, or, with a filter, the matching
numbers in that window. The window is the model's own state, changed only between Qt's begin/end calls, so
views and ``qtmodeltester`` always see consistent counts, also when the buffer trims its oldest lines.

``clear()`` hides everything so far by moving ``first`` (nothing is freed), so ``undo_clear()`` is exact.
Search and filter patterns run as bytes regexes over the raw buffer (see ``LogBuffer.search``).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from typing import Any, Final

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    QTimer,
    Signal,
)

from app.gui.ansi import strip_ansi
from app.gui.logbuffer import STDERR, LogBuffer, LogLine
from app.gui.qtfix import emit

__all__ = ["LogModel", "compile_pattern"]

FRAME_MS: Final = 16
_ROOT = QModelIndex()
_Index = QModelIndex | QPersistentModelIndex


def compile_pattern(text: str, *, regex: bool, case_sensitive: bool = False) -> re.Pattern[bytes]:
    """The user's search text -> a bytes pattern over UTF-8 lines. Raises ``ValueError`` with one line."""
    if not text:
        raise ValueError("empty search")
    source = text if regex else re.escape(text)
    flags = re.MULTILINE | (0 if case_sensitive else re.IGNORECASE)
    try:
        return re.compile(source.encode("utf-8"), flags)
    except re.error as err:
        raise ValueError(f"invalid regular expression {text!r}: {err}") from None


class LogModel(QAbstractListModel):
    RawTextRole: Final = Qt.ItemDataRole.UserRole + 1
    StreamRole: Final = Qt.ItemDataRole.UserRole + 2
    TimeNsRole: Final = Qt.ItemDataRole.UserRole + 3
    LineNumberRole: Final = Qt.ItemDataRole.UserRole + 4

    flushed = Signal(int)  # lines ingested by the last flush (rows added may be fewer with a filter)
    filterChanged = Signal()

    def __init__(self, parent: QObject | None = None, *, buffer: LogBuffer | None = None) -> None:
        super().__init__(parent)
        self.buffer = buffer if buffer is not None else LogBuffer()  # (an empty buffer is falsy)
        self._pending: list[LogLine] = []
        self._first = self.buffer.start
        self._end = self.buffer.end
        self._cleared: list[int] = []  # earlier values of _first, for undo
        self._filter: re.Pattern[bytes] | None = None
        self._matches = array("Q")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(FRAME_MS)
        self._timer.timeout.connect(self.flush)
        self._scheduled = False
        self.ingested = 0

    # -- Qt model API ------------------------------------------------------------------------------------------

    def rowCount(self, parent: _Index = _ROOT) -> int:
        if parent.isValid():
            return 0
        return len(self._matches) if self._filter is not None else self._end - self._first

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= self.rowCount():
            return None
        number = self.number(index.row())
        if number < self.buffer.start:
            return None  # trimmed by the buffer, its removal from the rows is being announced (see flush)
        if role == Qt.ItemDataRole.DisplayRole:
            return strip_ansi(self.buffer.text(number))
        if role == self.RawTextRole:
            return self.buffer.text(number)
        if role == self.StreamRole:
            return "stderr" if self.buffer.stream(number) == STDERR else "stdout"
        if role == self.TimeNsRole:
            return self.buffer.time_ns(number)
        if role == self.LineNumberRole:
            return number
        return None

    def roleNames(self) -> dict[int, QByteArray]:
        names = dict(super().roleNames())
        names.update({self.RawTextRole: QByteArray(b"raw"), self.StreamRole: QByteArray(b"stream"),
                      self.TimeNsRole: QByteArray(b"timeNs"), self.LineNumberRole: QByteArray(b"lineNumber")})
        return names

    # -- fast accessors for the view (no QVariant round trip) ----------------------------------------------------

    def number(self, row: int) -> int:
        """The absolute line number shown at ``row``."""
        return self._matches[row] if self._filter is not None else self._first + row

    def text(self, row: int) -> str:
        return self.buffer.text(self.number(row))

    def is_stderr(self, row: int) -> bool:
        return self.buffer.stream(self.number(row)) == STDERR

    def time_ns(self, row: int) -> int:
        return self.buffer.time_ns(self.number(row))

    def plain_lines(self, first: int, last: int) -> list[str]:
        """Rows ``first..last`` (inclusive) as text without ANSI escapes (for copy)."""
        return [strip_ansi(self.text(row)) for row in range(first, last + 1)]

    # -- ingestion ---------------------------------------------------------------------------------------------

    def append(self, lines: Iterable[LogLine]) -> None:
        """Queue lines; they become rows at the next frame (or at ``flush()``)."""
        self._pending.extend(lines)
        if self._pending and not self._scheduled:
            self._scheduled = True
            self._timer.start()

    def append_one(self, line: LogLine) -> None:
        """Queue one line (the hot path of a follow loop: a list append and a bool test)."""
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            self._timer.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Move queued lines into the buffer and announce them: one insert (and maybe one removal) per call."""
        self._timer.stop()
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        old_end = self.buffer.end
        count = self.buffer.extend(batch)
        self.ingested += count
        self._drop_trimmed()
        if self._filter is not None:
            new = array("Q", self.buffer.search(self._filter, max(old_end, self._first), self.buffer.end))
            if new:
                rows = len(self._matches)
                self.beginInsertRows(_ROOT, rows, rows + len(new) - 1)
                self._matches.extend(new)
                self._end = self.buffer.end
                self.endInsertRows()
            else:
                self._end = self.buffer.end
        elif self.buffer.end > self._end:
            rows = self._end - self._first
            self.beginInsertRows(_ROOT, rows, rows + self.buffer.end - self._end - 1)
            self._end = self.buffer.end
            self.endInsertRows()
        emit(self.flushed, count)

    def _drop_trimmed(self) -> None:
        """Remove rows whose lines the buffer has trimmed away."""
        start = self.buffer.start
        if self._first >= start:
            return
        if self._filter is not None:
            gone = 0
            while gone < len(self._matches) and self._matches[gone] < start:
                gone += 1
            if gone:
                self.beginRemoveRows(_ROOT, 0, gone - 1)
                del self._matches[:gone]
                self._first = start
                self.endRemoveRows()
            else:
                self._first = start
        else:
            gone = min(start, self._end) - self._first
            if gone > 0:
                self.beginRemoveRows(_ROOT, 0, gone - 1)
                self._first = start
                self.endRemoveRows()
            else:
                self._first = start
        self._cleared = [max(c, start) for c in self._cleared]

    # -- paging older lines back in --------------------------------------------------------------------------

    @property
    def can_page_older(self) -> bool:
        """Whether older lines were trimmed and the rows start at the buffer's first line (not cleared)."""
        return self.buffer.paged_out > 0 and self._first == self.buffer.start

    def prepend(self, lines: Iterable[LogLine]) -> int:
        """Older lines (just before the first row, oldest first) become rows at the top; returns how many."""
        self.flush()
        if not self.can_page_older:
            return 0
        old_start = self.buffer.start
        count = self.buffer.prepend(lines)
        if not count:
            return 0
        if self._filter is not None:
            new = array("Q", self.buffer.search(self._filter, self.buffer.start, old_start))
            self._first = self.buffer.start
            if new:
                self.beginInsertRows(_ROOT, 0, len(new) - 1)
                self._matches[0:0] = new
                self.endInsertRows()
        else:
            self.beginInsertRows(_ROOT, 0, count - 1)
            self._first = self.buffer.start
            self.endInsertRows()
        return count

    # -- clear / undo ------------------------------------------------------------------------------------------

    def clear(self) -> None:
        """Hide every line received so far (undoable; new lines keep arriving)."""
        self.flush()
        self.beginResetModel()
        self._cleared.append(self._first)
        self._first = self._end
        self._matches = array("Q")
        self.endResetModel()

    @property
    def can_undo_clear(self) -> bool:
        return bool(self._cleared)

    def undo_clear(self) -> None:
        if not self._cleared:
            return
        self.beginResetModel()
        self._first = max(self._cleared.pop(), self.buffer.start)
        self._rematch()
        self.endResetModel()

    def reset(self) -> None:
        """Forget everything (a new tail/since choice reloads the log from the start)."""
        self.beginResetModel()
        self._pending.clear()
        self._timer.stop()
        self._scheduled = False
        self.buffer.clear()
        self._first = self._end = self.buffer.end
        self._cleared.clear()
        self._matches = array("Q")
        self.endResetModel()

    # -- filter and search -------------------------------------------------------------------------------------

    @property
    def filter_pattern(self) -> re.Pattern[bytes] | None:
        return self._filter

    def set_filter(self, pattern: re.Pattern[bytes] | None) -> None:
        """Show only lines matching ``pattern`` (None: every line). Runs over the buffer at C speed."""
        self.flush()
        self.beginResetModel()
        self._filter = pattern
        self._rematch()
        self.endResetModel()
        emit(self.filterChanged)

    def _rematch(self) -> None:
        if self._filter is None:
            self._matches = array("Q")
        else:
            self._matches = array("Q", self.buffer.search(self._filter, self._first, self._end))

    def find(self, pattern: re.Pattern[bytes], after_row: int, *, backwards: bool = False) -> int | None:
        """The next row (after ``after_row``, or before it when ``backwards``) whose line matches; wraps around."""
        rows = self.rowCount()
        if rows == 0:
            return None
        if self._filter is None:
            return self._find_unfiltered(pattern, after_row, backwards=backwards)
        order = (list(range(after_row - 1, -1, -1)) + list(range(rows - 1, after_row - 1, -1)) if backwards
                 else list(range(after_row + 1, rows)) + list(range(0, min(after_row + 1, rows))))
        for row in order:
            if pattern.search(self.buffer.raw(self.number(row))):
                return row
        return None

    def _find_unfiltered(self, pattern: re.Pattern[bytes], after_row: int, *, backwards: bool) -> int | None:
        pivot = self._first + max(-1, min(after_row, self.rowCount()))
        if backwards:
            found = self.buffer.search_backwards(pattern, pivot)
            if found is None or found < self._first:
                found = self.buffer.search_backwards(pattern, self._end)
            return None if found is None or found < self._first else found - self._first
        for number in self.buffer.search(pattern, pivot + 1, self._end):
            return number - self._first
        for number in self.buffer.search(pattern, self._first, pivot + 1):
            return number - self._first
        return None
