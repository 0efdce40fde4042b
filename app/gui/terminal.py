"""``TerminalView``: an xterm-compatible terminal drawn in a Qt widget, over :class:`app.gui.vt.TerminalScreen`.

Painting: a fixed-width font on a cell grid. Each screen line is split into styled runs once and cached by line
object; pyte's ``dirty`` rows (kept content-only by the screen) drop their cache entries before a paint, and
repaints are coalesced to one per frame, so a program printing megabytes costs parsing, not painting.

Scrollback: the vertical scroll bar (or Shift+PgUp/PgDn, the wheel) moves through lines scrolled off the main
screen; a key press returns to the live screen. In the alternate screen (vi, less, top) the wheel sends cursor
keys instead, as xterm does. Selection: drag to select (copied to the X selection), Ctrl+Shift+C copies,
Ctrl+Shift+V (or the middle button) pastes, bracketed when the program asked for it.

The view knows nothing about sessions: it emits ``input`` (bytes for the program) and ``sizeChanged`` (rows,
cols), and takes output through ``feed``. :class:`app.gui.terminal_tabs.TerminalSession` connects it to
``engine.containers.exec``.
"""

from __future__ import annotations

from typing import Final

import pyte
from PySide6.QtCore import QPoint, QRect, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QClipboard,
    QColor,
    QContextMenuEvent,
    QFocusEvent,
    QFont,
    QFontDatabase,
    QFontMetrics,
    QGuiApplication,
    QInputMethodEvent,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QAbstractScrollArea, QMenu, QWidget

from app.gui.qtfix import emit
from app.gui.theme import is_dark, log_colours
from app.gui.vt import BRACKETED_PASTE, Line, Run, TerminalScreen, colour_index, key_bytes, line_runs
from app.gui.vt import wants_application_cursor as _app_cursor

__all__ = ["TerminalView"]

_MARGIN: Final = 4
_FRAME_MS: Final = 16
_Cell = tuple[int, int]  # (absolute row, column)


class TerminalView(QAbstractScrollArea):
    """See the module docstring. ``vt`` is the emulator state (tests read it)."""

    input = Signal(bytes)  # for the program: keys, pastes, terminal replies
    sizeChanged = Signal(int, int)  # rows, columns
    titleChanged = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, rows: int = 24, columns: int = 80,
                 scrollback: int = 10_000) -> None:
        super().__init__(parent)
        self.setObjectName("Terminal")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_InputMethodEnabled, True)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.viewport().setCursor(Qt.CursorShape.IBeamCursor)
        self.vt = TerminalScreen(columns, rows, scrollback=scrollback)
        self._stream = pyte.ByteStream(self.vt)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setStyleHint(QFont.StyleHint.Monospace)
        self._set_font(font)
        self._offset = 0  # lines scrolled back (0: the live screen)
        self._cache: dict[int, tuple[Line, list[Run]]] = {}
        self._fresh: dict[int, tuple[Line, list[Run]]] = {}
        self._anchor: _Cell | None = None
        self._cursor_cell: _Cell | None = None
        self._title = ""
        self.ended_message: str | None = None
        self.painted_frames = 0
        self.colours = log_colours(is_dark())
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(_FRAME_MS)
        self._repaint.timeout.connect(self._frame)
        self.verticalScrollBar().valueChanged.connect(self._scrolled)
        self._update_scrollbar()

    # -- geometry ----------------------------------------------------------------------------------------------

    def _set_font(self, font: QFont) -> None:
        self._font = font
        self._bold = QFont(font)
        self._bold.setBold(True)
        metrics = QFontMetrics(font)
        self.cell_width = max(1, metrics.horizontalAdvance("M"))
        self.line_height = max(1, metrics.height())
        self._ascent = metrics.ascent()

    def grid_size(self) -> tuple[int, int]:
        """(rows, columns) that fit the viewport."""
        size = self.viewport().size()
        return (max(1, (size.height() - 2 * _MARGIN) // self.line_height),
                max(2, (size.width() - 2 * _MARGIN) // self.cell_width))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        rows, columns = self.grid_size()
        if (rows, columns) != (self.vt.lines, self.vt.columns):
            self.vt.resize(rows, columns)
            self._cache.clear()
            self._offset = min(self._offset, len(self.vt.scrollback))
            self._update_scrollbar()
            emit(self.sizeChanged, rows, columns)
        self.viewport().update()

    # -- output ------------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Output of the program. Replies the program asked for (cursor position...) go out through ``input``."""
        pushed = self.vt.pushed
        self._stream.feed(data)
        replies = self.vt.take_replies()
        if replies:
            emit(self.input, replies)
        if self._offset and not self.vt.alternate:  # reading the scrollback: keep the same lines in view
            self._offset = min(self._offset + self.vt.pushed - pushed, len(self.vt.scrollback))
        if self.vt.title != self._title:
            self._title = self.vt.title
            emit(self.titleChanged, self._title)
        if not self._repaint.isActive():
            self._repaint.start()

    def _frame(self) -> None:
        self._update_scrollbar()
        self.viewport().update()

    def show_ended(self, message: str) -> None:
        """A line under the output saying the program ended (the view stays readable)."""
        self.ended_message = message
        self.viewport().update()

    # -- scrolling ---------------------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        return self._offset

    def _update_scrollbar(self) -> None:
        bar = self.verticalScrollBar()
        depth = 0 if self.vt.alternate else len(self.vt.scrollback)
        bar.blockSignals(True)
        bar.setRange(0, depth)
        bar.setPageStep(self.vt.lines)
        bar.setValue(depth - min(self._offset, depth))
        bar.blockSignals(False)

    def _scrolled(self, value: int) -> None:
        depth = 0 if self.vt.alternate else len(self.vt.scrollback)
        self._offset = max(0, depth - value)
        self.viewport().update()

    def scroll_lines(self, lines: int) -> None:
        """Positive: back into the scrollback; negative: towards the live screen."""
        depth = 0 if self.vt.alternate else len(self.vt.scrollback)
        self._offset = max(0, min(depth, self._offset + lines))
        self._update_scrollbar()
        self.viewport().update()

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = round(event.angleDelta().y() / 40)  # three lines per notch
        if not steps:
            return
        if self.vt.alternate:
            arrow = Qt.Key.Key_Up if steps > 0 else Qt.Key.Key_Down
            sequence = key_bytes(arrow, Qt.KeyboardModifier.NoModifier, "", application_cursor=_app_cursor(self.vt))
            emit(self.input, (sequence or b"") * abs(steps))
        else:
            self.scroll_lines(steps)
        event.accept()

    # -- keys and input ----------------------------------------------------------------------------------------

    def focusNextPrevChild(self, next: bool) -> bool:
        return False  # Tab and Shift+Tab belong to the program

    def keyPressEvent(self, event: QKeyEvent) -> None:
        modifiers = event.modifiers()
        ctrl_shift = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
        key = event.key()
        if (modifiers & ctrl_shift) == ctrl_shift and key in (Qt.Key.Key_C, Qt.Key.Key_V):
            self.copy() if key == Qt.Key.Key_C else self.paste()
            return
        if modifiers & Qt.KeyboardModifier.ShiftModifier and key in (Qt.Key.Key_PageUp, Qt.Key.Key_PageDown) \
                and not self.vt.alternate:
            page = max(1, self.vt.lines - 1)
            self.scroll_lines(page if key == Qt.Key.Key_PageUp else -page)
            return
        data = key_bytes(key, modifiers, event.text(), application_cursor=_app_cursor(self.vt))
        if data:
            self.send(data)
        event.accept()

    def inputMethodEvent(self, event: QInputMethodEvent) -> None:
        if event.commitString():
            self.send(event.commitString().encode())
        event.accept()

    def send(self, data: bytes) -> None:
        """Input from the user: back to the live screen, selection dropped."""
        if self._offset:
            self.scroll_lines(-self._offset)
        self._anchor = self._cursor_cell = None
        emit(self.input, data)

    def paste(self, mode: QClipboard.Mode = QClipboard.Mode.Clipboard) -> None:
        text = QGuiApplication.clipboard().text(mode)
        if not text:
            return
        data = text.replace("\r\n", "\r").replace("\n", "\r").encode()
        if BRACKETED_PASTE in self.vt.mode:
            data = b"\x1b[200~" + data.replace(b"\x1b[201~", b"") + b"\x1b[201~"
        self.send(data)

    # -- selection ---------------------------------------------------------------------------------------------

    def _first_absolute(self) -> int:
        """Absolute number of the top row shown (scrollback rows are numbered since the session started)."""
        return self.vt.pushed - self._offset

    def _cell_at(self, point: QPoint) -> _Cell:
        row = max(0, min(self.vt.lines - 1, (point.y() - _MARGIN) // self.line_height))
        column = max(0, min(self.vt.columns, round((point.x() - _MARGIN) / self.cell_width)))
        return self._first_absolute() + row, column

    def selection(self) -> tuple[_Cell, _Cell] | None:
        if self._anchor is None or self._cursor_cell is None or self._anchor == self._cursor_cell:
            return None
        return min(self._anchor, self._cursor_cell), max(self._anchor, self._cursor_cell)

    def select(self, start: _Cell, end: _Cell) -> None:
        """Select from ``start`` to ``end`` (absolute row, column; end exclusive)."""
        self._anchor, self._cursor_cell = start, end
        self.viewport().update()

    def _line_by_absolute(self, row: int) -> Line | None:
        scrollback = self.vt.scrollback
        first = self.vt.pushed - len(scrollback)
        position = row - first
        if position < 0:
            return None
        if position < len(scrollback):
            return scrollback[position]
        if position - len(scrollback) < self.vt.lines:
            return self.vt.buffer.get(position - len(scrollback))
        return None

    def selected_text(self) -> str:
        span = self.selection()
        if span is None:
            return ""
        (row0, col0), (row1, col1) = span
        lines = []
        for row in range(row0, row1 + 1):
            line = self._line_by_absolute(row)
            first = col0 if row == row0 else 0
            last = col1 if row == row1 else self.vt.columns
            text = "" if line is None else "".join(line[x].data for x in range(first, last))
            lines.append(text.rstrip())
        return "\n".join(lines)

    def copy(self) -> None:
        text = self.selected_text()
        if text:
            QGuiApplication.clipboard().setText(text)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            cell = self._cell_at(event.position().toPoint())
            self._anchor = self._cursor_cell = cell
            self.viewport().update()
        elif event.button() == Qt.MouseButton.MiddleButton:
            clipboard = QGuiApplication.clipboard()
            self.paste(QClipboard.Mode.Selection if clipboard.supportsSelection() else QClipboard.Mode.Clipboard)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton and self._anchor is not None:
            self._cursor_cell = self._cell_at(event.position().toPoint())
            self.viewport().update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        clipboard = QGuiApplication.clipboard()
        text = self.selected_text()
        if event.button() == Qt.MouseButton.LeftButton and text and clipboard.supportsSelection():
            clipboard.setText(text, QClipboard.Mode.Selection)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        menu = QMenu(self)
        copy = QAction("Copy\tCtrl+Shift+C", menu)
        copy.setEnabled(self.selection() is not None)
        copy.triggered.connect(lambda _c=False: self.copy())
        paste = QAction("Paste\tCtrl+Shift+V", menu)
        paste.triggered.connect(lambda _c=False: self.paste())
        clear = QAction("Clear scrollback", menu)
        clear.triggered.connect(lambda _c=False: self.clear_scrollback())
        for action in (copy, paste, clear):
            menu.addAction(action)
        menu.exec(event.globalPos())

    def clear_scrollback(self) -> None:
        self.vt.scrollback.clear()
        self._offset = 0
        self._update_scrollbar()
        self.viewport().update()

    def focusInEvent(self, event: QFocusEvent) -> None:
        super().focusInEvent(event)
        self.viewport().update()

    def focusOutEvent(self, event: QFocusEvent) -> None:
        super().focusOutEvent(event)
        self.viewport().update()

    # -- painting ----------------------------------------------------------------------------------------------

    def _colour(self, name: str, default: QColor, *, bold: bool = False) -> QColor:
        if name == "default":
            return default
        index = colour_index(name)
        if index is not None:
            return self.colours.ansi[index + 8 if bold and index < 8 else index]
        try:
            return QColor(int(name[0:2], 16), int(name[2:4], 16), int(name[4:6], 16))
        except ValueError:
            return default

    def _runs(self, line: Line) -> list[Run]:
        entry = self._cache.get(id(line))
        if entry is None or entry[0] is not line:
            entry = (line, line_runs(line, self.vt.columns))
        self._fresh[id(line)] = entry
        return entry[1]

    def paintEvent(self, _event: QPaintEvent) -> None:
        screen = self.vt
        for y in screen.dirty:  # content changed: recompute those lines' runs
            line = screen.buffer.get(y)
            if line is not None:
                self._cache.pop(id(line), None)
        for line in screen.stale:
            self._cache.pop(id(line), None)
        screen.stale.clear()
        screen.dirty.clear()
        self._fresh = {}
        colours = self.colours
        painter = QPainter(self.viewport())
        painter.fillRect(self.viewport().rect(), colours.background)
        cw, lh = self.cell_width, self.line_height
        offset = 0 if screen.alternate else self._offset
        selection = self.selection()
        first_abs = self._first_absolute()
        for index in range(screen.lines):
            y = _MARGIN + index * lh
            line = screen.row(index, offset)
            for run in self._runs(line):
                fg = self._colour(run.fg, colours.foreground, bold=run.bold)
                bg = self._colour(run.bg, colours.background) if run.bg != "default" else None
                if run.reverse:
                    fg, bg = (bg or colours.background), fg
                x = _MARGIN + run.column * cw
                if bg is not None:
                    painter.fillRect(QRect(x, y, run.cells * cw, lh), bg)
                font = self._bold if run.bold else self._font
                if run.italics or run.underscore or run.strikethrough:
                    font = QFont(font)
                    font.setItalic(run.italics)
                    font.setUnderline(run.underscore)
                    font.setStrikeOut(run.strikethrough)
                painter.setFont(font)
                painter.setPen(fg)
                painter.drawText(x, y + self._ascent, run.text)
            if selection is not None:
                (row0, col0), (row1, col1) = selection
                absolute = first_abs + index
                if row0 <= absolute <= row1:
                    start = col0 if absolute == row0 else 0
                    end = col1 if absolute == row1 else screen.columns
                    painter.fillRect(QRect(_MARGIN + start * cw, y, (end - start) * cw, lh), colours.selection)
        self._cache = self._fresh
        if offset == 0 and not screen.cursor.hidden and self.ended_message is None:
            rect = QRect(_MARGIN + min(screen.cursor.x, screen.columns - 1) * cw, _MARGIN + screen.cursor.y * lh,
                         cw, lh)
            cursor_colour = QColor(colours.foreground)
            if self.hasFocus():
                cursor_colour.setAlpha(150)
                painter.fillRect(rect, cursor_colour)
            else:
                painter.setPen(cursor_colour)
                painter.drawRect(rect.adjusted(0, 0, -1, -1))
        if self.ended_message is not None:
            painter.setPen(colours.timestamp)
            painter.setFont(self._font)
            y = _MARGIN + min(screen.lines - 1, screen.cursor.y + 1) * lh
            painter.fillRect(QRect(0, y, self.viewport().width(), lh), colours.background)
            painter.drawText(_MARGIN, y + self._ascent, self.ended_message)
        painter.end()
        self.painted_frames += 1
