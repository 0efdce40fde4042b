"""The terminal's model (no widgets): a pyte screen with scrollback, the alternate screen and replies, the runs a
painter draws, and the mapping from Qt key presses to the bytes an xterm sends.

``pyte`` (a maintained VT100/VT220/xterm emulator) parses the byte stream; :class:`TerminalScreen` adds what a
desktop terminal needs on top of ``pyte.Screen``:

* scrollback: lines scrolled off the top of the main screen (full-width scrolling region only) are kept, up to
  ``scrollback`` lines; the alternate screen never feeds it (``less`` or ``vi`` leave no trace when they exit);
* the alternate screen (private modes 47, 1047, 1049; 1049 also saves and restores the cursor), which pyte lacks;
* replies to the program (device attributes, cursor position reports) collected in ``replies`` for the session;
* resizing that keeps the cursor line on screen (lines pushed out go to the scrollback) instead of pyte's
  "drop the top lines", which would erase a short shell session's prompt;
* ``dirty`` stays *content* dirty: scrolling moves line objects without marking every row, so the painter's
  cache (keyed by line object) only recomputes lines whose characters changed.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Final

import pyte
from PySide6.QtCore import Qt
from pyte.screens import Char, Cursor, Margins, StaticDefaultDict

__all__ = ["BRACKETED_PASTE", "Line", "Run", "TerminalScreen", "colour_index", "key_bytes", "line_runs",
           "wants_application_cursor"]

Line = StaticDefaultDict[int, Char]

_ALTERNATE: Final = frozenset({47, 1047, 1049})
BRACKETED_PASTE: Final = 2004 << 5  # pyte stores private modes shifted left by 5
APPLICATION_CURSOR: Final = 1 << 5  # DECCKM (pyte has no name for it)
_NAMES: Final = ("black", "red", "green", "brown", "blue", "magenta", "cyan", "white")


def colour_index(name: str) -> int | None:
    """pyte's colour name -> ANSI palette index 0-15 (``brown`` is yellow; pyte misspells bright magenta
    background as ``bfightmagenta``); None for ``default`` and for hex colours."""
    bright = name.startswith("bright") or name == "bfightmagenta"
    base = "magenta" if name == "bfightmagenta" else name.removeprefix("bright")
    if base in _NAMES:
        return _NAMES.index(base) + (8 if bright else 0)
    return None


class TerminalScreen(pyte.Screen):
    """A pyte screen with scrollback, the alternate screen and collected replies (see the module docstring)."""

    def __init__(self, columns: int, lines: int, *, scrollback: int = 10_000) -> None:
        if columns < 1 or lines < 1:
            raise ValueError(f"terminal size {lines}x{columns}: rows and columns must be at least 1")
        self.scrollback: deque[Line] = deque(maxlen=scrollback)
        self.pushed = 0  # lines ever pushed to the scrollback (the view keeps its place while output arrives)
        self.replies: list[str] = []
        self.stale: list[Line] = []  # changed lines that left the screen before a paint (painters drop their cache)
        self.alternate = False
        self._main: tuple[dict[int, Line], Cursor] | None = None
        super().__init__(columns, lines)

    def _blank_buffer(self) -> defaultdict[int, Line]:
        return defaultdict(lambda: StaticDefaultDict[int, Char](self.default_char))

    def _push(self, line: Line) -> None:
        self.scrollback.append(line)
        self.pushed += 1

    # -- scrolling keeps `dirty` about content -----------------------------------------------------------------

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y != bottom:
            super().index()
            return
        if top in self.dirty:
            self.stale.append(self.buffer[top])
        if top == 0 and bottom == self.lines - 1 and not self.alternate:
            self._push(self.buffer[top])
        for y in range(top, bottom):
            self.buffer[y] = self.buffer[y + 1]
        self.buffer.pop(bottom, None)
        self.dirty = {y - 1 if top < y <= bottom else y for y in self.dirty if y != top} | {bottom}

    def reverse_index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y != top:
            super().reverse_index()
            return
        for y in range(bottom, top, -1):
            self.buffer[y] = self.buffer[y - 1]
        self.buffer.pop(top, None)
        self.dirty = {y + 1 if top <= y < bottom else y for y in self.dirty if y != bottom} | {top}

    # -- alternate screen --------------------------------------------------------------------------------------

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and _ALTERNATE.intersection(modes):
            self._enter_alternate()
            modes = tuple(m for m in modes if m not in _ALTERNATE)
        if modes:
            super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and _ALTERNATE.intersection(modes):
            self._leave_alternate()
            modes = tuple(m for m in modes if m not in _ALTERNATE)
        if modes:
            super().reset_mode(*modes, **kwargs)

    def _enter_alternate(self) -> None:
        if self.alternate:
            return
        saved = Cursor(self.cursor.x, self.cursor.y, self.cursor.attrs)
        saved.hidden = self.cursor.hidden
        self._main = (self.buffer, saved)
        self.buffer = self._blank_buffer()
        self.alternate = True
        self.dirty.update(range(self.lines))

    def _leave_alternate(self) -> None:
        if not self.alternate or self._main is None:
            return
        self.buffer, saved = self._main
        self._main = None
        self.alternate = False
        for y in [y for y in self.buffer if y >= self.lines]:
            del self.buffer[y]
        self.cursor.x = min(saved.x, self.columns - 1)
        self.cursor.y = min(saved.y, self.lines - 1)
        self.cursor.attrs = saved.attrs
        self.dirty.update(range(self.lines))

    def reset(self) -> None:
        if getattr(self, "alternate", False):
            self._leave_alternate()
        super().reset()

    # -- replies and resizing ----------------------------------------------------------------------------------

    def write_process_input(self, data: str) -> None:
        """What the terminal answers the program (DA, DSR): sent back through the session by the widget."""
        self.replies.append(data)

    def take_replies(self) -> bytes:
        data, self.replies = "".join(self.replies).encode(), []
        return data

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        lines = lines or self.lines
        columns = columns or self.columns
        if lines < self.lines:
            drop = max(0, self.cursor.y - (lines - 1))  # only what keeps the cursor line on screen
            if drop:
                if not self.alternate:
                    for y in range(drop):
                        self.stale.append(self.buffer[y])
                        self._push(self.buffer[y])
                moved = {y - drop: self.buffer[y] for y in range(drop, self.lines) if y in self.buffer}
                self.buffer.clear()
                self.buffer.update(moved)
                self.cursor.y -= drop
            for y in [y for y in self.buffer if y >= lines]:
                del self.buffer[y]
            self.lines = lines  # pyte's resize then only handles columns (and resets the margins)
        if self._main is not None and lines < len(self._main[0]):
            for y in [y for y in self._main[0] if y >= lines]:
                del self._main[0][y]
        super().resize(lines, columns)
        self.cursor.y = min(self.cursor.y, self.lines - 1)
        self.cursor.x = min(self.cursor.x, self.columns)
        self.dirty.update(range(self.lines))

    # -- what the view shows -----------------------------------------------------------------------------------

    def row(self, index: int, offset: int) -> Line:
        """Row ``index`` of the view scrolled back ``offset`` lines (0: the live screen)."""
        position = len(self.scrollback) - offset + index
        if position < len(self.scrollback):
            return self.scrollback[position]
        return self.buffer[position - len(self.scrollback)]

    def text(self, *, with_scrollback: bool = False) -> list[str]:
        """Lines as plain text without trailing spaces (tests, copy)."""
        lines = list(self.scrollback) if with_scrollback else []
        lines += [self.buffer[y] for y in range(self.lines)]
        return [_line_text(line, self.columns) for line in lines]


def _line_text(line: Line, columns: int) -> str:
    return "".join(line[x].data for x in range(columns)).rstrip()


@dataclass(frozen=True, slots=True)
class Run:
    """Characters in one style from column ``column``: what one ``drawText`` paints."""

    column: int
    text: str
    cells: int
    fg: str
    bg: str
    bold: bool
    italics: bool
    underscore: bool
    strikethrough: bool
    reverse: bool


def line_runs(line: Line, columns: int) -> list[Run]:
    """Split a line into styled runs (blank default-styled cells are skipped: the background is already there)."""
    runs: list[Run] = []
    start = 0
    chars: list[str] = []
    key: tuple[Any, ...] | None = None
    for x in range(columns + 1):
        char = line[x] if x < columns else None
        style = None if char is None else (char.fg, char.bg, char.bold, char.italics, char.underscore,
                                           char.strikethrough, char.reverse)
        if style != key:
            if key is not None and chars:
                text = "".join(chars)
                if text.strip() or key[1] != "default" or key[6] or key[4]:
                    runs.append(Run(start, text, x - start, *key))
            key, start, chars = style, x, []
        if char is not None:
            chars.append(char.data)
    return runs


# -- keys -----------------------------------------------------------------------------------------------------

_K = Qt.Key
_CURSOR: Final = {_K.Key_Up: "A", _K.Key_Down: "B", _K.Key_Right: "C", _K.Key_Left: "D", _K.Key_Home: "H",
                  _K.Key_End: "F"}
_TILDE: Final = {_K.Key_Insert: 2, _K.Key_Delete: 3, _K.Key_PageUp: 5, _K.Key_PageDown: 6, _K.Key_F5: 15,
                 _K.Key_F6: 17, _K.Key_F7: 18, _K.Key_F8: 19, _K.Key_F9: 20, _K.Key_F10: 21, _K.Key_F11: 23,
                 _K.Key_F12: 24}
_SS3: Final = {_K.Key_F1: "P", _K.Key_F2: "Q", _K.Key_F3: "R", _K.Key_F4: "S"}
_M = Qt.KeyboardModifier


def _modifier_code(modifiers: Qt.KeyboardModifier) -> int:
    """xterm's modifier parameter: 1 + shift(1) + alt(2) + ctrl(4)."""
    code = 1
    if modifiers & _M.ShiftModifier:
        code += 1
    if modifiers & _M.AltModifier:
        code += 2
    if modifiers & _M.ControlModifier:
        code += 4
    return code


def key_bytes(key: int, modifiers: Qt.KeyboardModifier, text: str, *, application_cursor: bool = False
              ) -> bytes | None:
    """The bytes xterm sends for a key press, or None when the key sends nothing (a lone modifier).

    Cursor keys use SS3 (``ESC O A``) in application cursor mode (DECCKM, set by vi/less/top) and CSI otherwise;
    modified cursor/function keys use xterm's ``CSI 1;<mod> X`` / ``CSI n;<mod> ~``. Ctrl+letter gives the C0
    control, Alt prefixes ESC, Backspace sends DEL, Shift+Tab ``CSI Z``.
    """
    modifier = _modifier_code(modifiers)
    if key in _CURSOR:
        final = _CURSOR[_K(key)]
        if modifier > 1:
            return f"\x1b[1;{modifier}{final}".encode()
        return f"\x1bO{final}".encode() if application_cursor else f"\x1b[{final}".encode()
    if key in _TILDE:
        number = _TILDE[_K(key)]
        return f"\x1b[{number};{modifier}~".encode() if modifier > 1 else f"\x1b[{number}~".encode()
    if key in _SS3:
        final = _SS3[_K(key)]
        return f"\x1b[1;{modifier}{final}".encode() if modifier > 1 else f"\x1bO{final}".encode()
    alt = b"\x1b" if modifiers & _M.AltModifier else b""
    if key in (_K.Key_Return, _K.Key_Enter):
        return alt + b"\r"
    if key == _K.Key_Backspace:
        return alt + (b"\x08" if modifiers & _M.ControlModifier else b"\x7f")
    if key == _K.Key_Backtab or (key == _K.Key_Tab and modifiers & _M.ShiftModifier):
        return b"\x1b[Z"
    if key == _K.Key_Tab:
        return alt + b"\t"
    if key == _K.Key_Escape:
        return alt + b"\x1b"
    if modifiers & _M.ControlModifier:
        if _K.Key_A <= key <= _K.Key_Z:
            return alt + bytes([key - _K.Key_A + 1])
        controls = {_K.Key_Space: 0, _K.Key_At: 0, _K.Key_BracketLeft: 27, _K.Key_Backslash: 28,
                    _K.Key_BracketRight: 29, _K.Key_AsciiCircum: 30, _K.Key_Underscore: 31, _K.Key_Minus: 31,
                    _K.Key_2: 0, _K.Key_3: 27, _K.Key_4: 28, _K.Key_5: 29, _K.Key_6: 30, _K.Key_7: 31,
                    _K.Key_8: 127, _K.Key_Slash: 31, _K.Key_Question: 127}
        if key in controls:
            return alt + bytes([controls[_K(key)]])
    if text:
        return alt + text.encode("utf-8", "replace")
    return None


def wants_application_cursor(screen: TerminalScreen) -> bool:
    """Whether the program asked for application cursor keys (DECCKM)."""
    return APPLICATION_CURSOR in screen.mode
