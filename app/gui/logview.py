"""``LogView``: a viewport-painting log view over a :class:`~app.gui.logmodel.LogModel`.

Why not ``QListView``: its layout is O(rows) on every insert, which at a million rows and 60 inserts a second
is the freeze Kitematic users reported. This view's scroll bar position *is* the top row; painting touches
only the rows on screen (ANSI parsed lazily and cached per line), so its cost does not grow with the log.

Follow: while the scroll bar is at the bottom new rows keep it there; scrolling up pauses following (the view
stays put while lines arrive), and reaching the bottom again (scrolling, End, or ``set_following(True)``)
resumes it. Selection is a row range (click, shift-click, drag; Ctrl+A); Ctrl+C copies it without escapes.
"""

from __future__ import annotations

from typing import Final

from PySide6.QtCore import QModelIndex, QPoint, QRect, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontDatabase,
    QFontMetrics,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QAbstractScrollArea, QWidget

from app.gui import ansi
from app.gui.logmodel import LogModel
from app.gui.qtfix import emit
from app.gui.theme import LogColours, is_dark, log_colours

__all__ = ["LogView"]

_MARGIN: Final = 8
_TIME_FORMAT_WIDTH: Final = 24  # "2026-11-30 04:51:44.668 " in characters


class LogView(QAbstractScrollArea):
    followingChanged = Signal(bool)
    selectionChanged = Signal()
    topReached = Signal()  # the user scrolled to the first row (the panel pages older lines in)

    def __init__(self, model: LogModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.setObjectName("LogView")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setStyleHint(QFont.StyleHint.Monospace)
        self._set_font(font)
        self._following = True
        self._programmatic = False
        self.show_timestamps = False
        self._anchor: int | None = None
        self._cursor: int | None = None
        self.current_match: int | None = None
        self.highlight: str | None = None  # plain-text regex source highlighted in visible rows
        self._highlight_re: object = None
        self.colours: LogColours = log_colours(is_dark())
        model.rowsInserted.connect(self._rows_inserted)
        model.rowsRemoved.connect(self._rows_removed)
        model.modelReset.connect(self._model_reset)
        self.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.horizontalScrollBar().valueChanged.connect(lambda _v: self.viewport().update())
        self._update_scrollbars()

    # -- geometry -------------------------------------------------------------------------------------------------

    def _set_font(self, font: QFont) -> None:
        self._font = font
        self._bold = QFont(font)
        self._bold.setBold(True)
        metrics = QFontMetrics(font)
        self._metrics = metrics
        self.line_height = metrics.height()
        self._ascent = metrics.ascent()
        self._char = max(1, metrics.horizontalAdvance("M"))
        self.viewport().update()

    def visible_rows(self) -> int:
        return max(1, self.viewport().height() // self.line_height)

    @property
    def top_row(self) -> int:
        return self.verticalScrollBar().value()

    def _update_scrollbars(self) -> None:
        rows = self.model.rowCount()
        bar = self.verticalScrollBar()
        self._programmatic = True
        try:
            bar.setRange(0, max(0, rows - self.visible_rows()))
            bar.setPageStep(self.visible_rows())
            text_width = (self.model.buffer.longest + (_TIME_FORMAT_WIDTH if self.show_timestamps else 0)) * self._char
            hbar = self.horizontalScrollBar()
            hbar.setRange(0, max(0, text_width + 2 * _MARGIN - self.viewport().width()))
            hbar.setPageStep(self.viewport().width())
            hbar.setSingleStep(self._char * 4)
        finally:
            self._programmatic = False

    # -- following ------------------------------------------------------------------------------------------------

    @property
    def following(self) -> bool:
        return self._following

    def set_following(self, on: bool) -> None:
        if on:
            self._scroll_to_bottom()
        if on != self._following:
            self._following = on
            emit(self.followingChanged, on)

    def _scroll_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        self._programmatic = True
        try:
            bar.setValue(bar.maximum())
        finally:
            self._programmatic = False
        self.viewport().update()

    def _scrolled(self, value: int) -> None:
        self.viewport().update()
        if self._programmatic:
            return
        at_bottom = value >= self.verticalScrollBar().maximum()
        if at_bottom != self._following:
            self._following = at_bottom
            emit(self.followingChanged, at_bottom)
        if value == 0 and not at_bottom:
            emit(self.topReached)

    def _rows_inserted(self, _parent: QModelIndex, first: int, last: int) -> None:
        added = last - first + 1
        if first == 0 and self.model.rowCount() > added:  # older lines paged in above: keep the same lines in view
            bar = self.verticalScrollBar()
            keep = bar.value() + added
            self._shift_selection(added)
            self._update_scrollbars()
            self._programmatic = True
            try:
                bar.setValue(keep)
            finally:
                self._programmatic = False
            self.viewport().update()
            return
        self._update_scrollbars()
        if self._following:
            self._scroll_to_bottom()
        else:
            self.viewport().update()

    def _rows_removed(self, _parent: QModelIndex, first: int, last: int) -> None:
        # Trimmed rows vanish from the top: keep the same lines on screen when paused.
        removed = last - first + 1
        bar = self.verticalScrollBar()
        keep = bar.value() - removed
        self._shift_selection(-removed)
        self._update_scrollbars()
        self._programmatic = True
        try:
            bar.setValue(bar.maximum() if self._following else max(0, keep))
        finally:
            self._programmatic = False
        self.viewport().update()

    def _model_reset(self) -> None:
        self._anchor = self._cursor = None
        self.current_match = None
        self._update_scrollbars()
        if self._following:
            self._scroll_to_bottom()
        self.viewport().update()
        emit(self.selectionChanged)

    def _shift_selection(self, delta: int) -> None:
        def shifted(row: int | None) -> int | None:
            return None if row is None or row + delta < 0 else row + delta

        self._anchor, self._cursor = shifted(self._anchor), shifted(self._cursor)
        self.current_match = shifted(self.current_match)

    def scroll_to_row(self, row: int) -> None:
        """Bring ``row`` to the middle of the view (pauses following unless it is at the very end)."""
        bar = self.verticalScrollBar()
        target = max(0, min(row - self.visible_rows() // 2, bar.maximum()))
        bar.setValue(target)  # not programmatic: following follows where we land
        self.viewport().update()

    # -- selection --------------------------------------------------------------------------------------------------

    def selection(self) -> tuple[int, int] | None:
        if self._anchor is None or self._cursor is None:
            return None
        return min(self._anchor, self._cursor), max(self._anchor, self._cursor)

    def select_rows(self, first: int, last: int) -> None:
        rows = self.model.rowCount()
        if rows == 0:
            return
        self._anchor, self._cursor = max(0, min(first, rows - 1)), max(0, min(last, rows - 1))
        self.viewport().update()
        emit(self.selectionChanged)

    def selected_text(self) -> str:
        span = self.selection()
        if span is None:
            return ""
        lines = self.model.plain_lines(*span)
        if self.show_timestamps:
            lines = [f"{self._time_text(row)} {line}" for row, line in zip(range(span[0], span[1] + 1), lines,
                                                                             strict=True)]
        return "\n".join(lines)

    def copy_selection(self) -> None:
        text = self.selected_text()
        if text:
            QGuiApplication.clipboard().setText(text)

    def _row_at(self, point: QPoint) -> int:
        row = self.top_row + point.y() // self.line_height
        return max(0, min(row, self.model.rowCount() - 1))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self.model.rowCount() == 0:
            return super().mousePressEvent(event)
        row = self._row_at(event.position().toPoint())
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier and self._anchor is not None:
            self._cursor = row
        else:
            self._anchor = self._cursor = row
        self.viewport().update()
        emit(self.selectionChanged)
        return None

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton and self._anchor is not None:
            self._cursor = self._row_at(event.position().toPoint())
            self.viewport().update()
            emit(self.selectionChanged)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        bar = self.verticalScrollBar()
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy_selection()
        elif event.matches(QKeySequence.StandardKey.SelectAll):
            self.select_rows(0, self.model.rowCount() - 1)
        elif event.key() == Qt.Key.Key_End:
            self.set_following(True)
        elif event.key() == Qt.Key.Key_Home:
            bar.setValue(0)
            if bar.value() == 0 and self.model.rowCount():
                emit(self.topReached)
        elif event.key() == Qt.Key.Key_PageUp:
            bar.setValue(bar.value() - bar.pageStep())
        elif event.key() == Qt.Key.Key_PageDown:
            bar.setValue(bar.value() + bar.pageStep())
        elif event.key() == Qt.Key.Key_Up:
            bar.setValue(bar.value() - 1)
        elif event.key() == Qt.Key.Key_Down:
            bar.setValue(bar.value() + 1)
        else:
            super().keyPressEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier or event.angleDelta().x():
            hbar = self.horizontalScrollBar()
            delta = event.angleDelta().x() or event.angleDelta().y()
            hbar.setValue(hbar.value() - int(delta / 120 * hbar.singleStep()))
        else:
            bar = self.verticalScrollBar()
            bar.setValue(bar.value() - int(steps * 3))
        event.accept()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._update_scrollbars()
        if self._following:
            self._scroll_to_bottom()

    def set_show_timestamps(self, on: bool) -> None:
        self.show_timestamps = on
        self._update_scrollbars()
        self.viewport().update()

    def set_highlight(self, pattern: str | None) -> None:
        """Highlight matches of ``pattern`` (a Python regex over the visible plain text) in painted rows."""
        import re

        self.highlight = pattern
        try:
            self._highlight_re = re.compile(pattern, re.IGNORECASE) if pattern else None
        except re.error:
            self._highlight_re = None
        self.viewport().update()

    # -- painting ---------------------------------------------------------------------------------------------------

    def _time_text(self, row: int) -> str:
        import time

        ns = self.model.time_ns(row)
        seconds, frac = divmod(ns, 1_000_000_000)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{frac // 1_000_000:03d}"

    def _colour(self, value: int | None, default: QColor) -> QColor:
        if value is None:
            return default
        if value & ansi.TRUECOLOR:
            return QColor((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)
        if value < 16:
            return self.colours.ansi[value]
        rgb = ansi.xterm_rgb(value)
        return QColor((rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF)

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self.viewport())
        colours = self.colours
        width = self.viewport().width()
        painter.fillRect(self.viewport().rect(), colours.background)
        rows = self.model.rowCount()
        top = self.top_row
        lh = self.line_height
        selection = self.selection()
        x0 = _MARGIN - self.horizontalScrollBar().value()
        for i in range(min(self.visible_rows() + 1, rows - top)):
            row = top + i
            y = i * lh
            line_rect = QRect(0, y, width, lh)
            if self.model.is_stderr(row):
                painter.fillRect(line_rect, colours.stderr_background)
                painter.fillRect(QRect(0, y, 3, lh), colours.stderr_marker)
            if row == self.current_match:
                painter.fillRect(line_rect, colours.match)
            if selection is not None and selection[0] <= row <= selection[1]:
                painter.fillRect(line_rect, colours.selection)
            x = x0
            if self.show_timestamps:
                painter.setFont(self._font)
                painter.setPen(colours.timestamp)
                stamp = self._time_text(row)
                painter.drawText(x, y + self._ascent, stamp)
                x += (len(stamp) + 1) * self._char
            self._paint_runs(painter, self.model.text(row), x, y)
        painter.end()

    def _paint_runs(self, painter: QPainter, text: str, x: int, y: int) -> None:
        colours = self.colours
        runs = ansi.parse_line(text.expandtabs(8) if "\t" in text else text)
        plain_x = x
        baseline = y + self._ascent
        for run in runs:
            style = run.style
            fg = self._colour(style.fg if not (style.bold and style.fg is not None and style.fg < 8)
                              else style.fg + 8, colours.foreground)
            bg = self._colour(style.bg, colours.background) if style.bg is not None else None
            if style.inverse:
                fg, bg = (bg or colours.background), fg
            font = self._bold if style.bold else self._font
            if style.italic or style.underline:
                font = QFont(font)
                font.setItalic(style.italic)
                font.setUnderline(style.underline)
            advance = QFontMetrics(font).horizontalAdvance(run.text) if font is not self._font \
                else self._metrics.horizontalAdvance(run.text)
            if bg is not None:
                painter.fillRect(QRect(x, y, advance, self.line_height), bg)
            if style.dim:
                fg = QColor(fg)
                fg.setAlphaF(0.6)
            painter.setFont(font)
            painter.setPen(fg)
            painter.drawText(x, baseline, run.text)
            x += advance
        pattern = self._highlight_re
        if pattern is not None:
            import re

            assert isinstance(pattern, re.Pattern)
            plain = "".join(run.text for run in runs)
            for match in pattern.finditer(plain):
                if match.end() > match.start():
                    left = plain_x + self._metrics.horizontalAdvance(plain[: match.start()])
                    span = self._metrics.horizontalAdvance(match.group())
                    painter.fillRect(QRect(left, y, span, self.line_height), self.colours.current_match)
