"""ANSI escape sequences in log lines -> styled runs of plain text (no Qt here: pure, fast, testable).

Only the SGR sequence (``ESC [ ... m``) changes how text looks: 16 colours, the 256-colour cube (``38;5;n``),
truecolour (``38;2;r;g;b``, also the colon forms ``38:2::r:g:b``), bold, dim, italic, underline, inverse, and
their resets. Every other escape (cursor movement, erase-line, OSC titles/hyperlinks) is dropped so it never
shows up as garbage. A carriage return keeps what a terminal would show: the text after the last ``\\r``.
Style does not carry from one line to the next (lines are parsed lazily, only when visible, in any order);
programs that colour a line reset at its end anyway.

Colours are ints: ``0..255`` index the xterm palette (the first 16 are themed by the view), and
``TRUECOLOR | 0xRRGGBB`` is an explicit colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final

__all__ = ["TRUECOLOR", "Run", "Style", "parse_line", "strip_ansi", "xterm_rgb"]

TRUECOLOR: Final = 1 << 24

_ESCAPE_RE: Final = re.compile(
    r"\x1b\[([0-9;:?<=>]*)[ -/]*([@-~])"  # CSI: parameters, intermediates, final byte
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL or ST
    r"|\x1b[@-Z\\-_]"  # two-character escapes
    r"|\x1b"  # a lone ESC at the end of a line
)


@dataclass(frozen=True, slots=True)
class Style:
    """How a run of text looks. ``None`` colours mean the view's default foreground/background."""

    fg: int | None = None
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    inverse: bool = False


PLAIN: Final = Style()


@dataclass(frozen=True, slots=True)
class Run:
    text: str
    style: Style


def strip_ansi(text: str) -> str:
    """The text a terminal would show, without any escape sequence (used for copy, save and search)."""
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    if "\x1b" not in text:
        return text
    return _ESCAPE_RE.sub("", text)


@lru_cache(maxsize=4096)
def parse_line(text: str) -> tuple[Run, ...]:
    """Split one line into styled runs; empty runs are never returned (an empty line gives ``()``).

    Cached: the view repaints the same visible lines many times while scrolling or following.
    """
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    if "\x1b" not in text:
        return (Run(text, PLAIN),) if text else ()
    runs: list[Run] = []
    style = PLAIN
    pos = 0
    for match in _ESCAPE_RE.finditer(text):
        if match.start() > pos:
            runs.append(Run(text[pos : match.start()], style))
        pos = match.end()
        if match.group(2) == "m":
            style = _apply_sgr(style, match.group(1))
    if pos < len(text):
        runs.append(Run(text[pos:], style))
    return tuple(_merge(runs))


def _merge(runs: list[Run]) -> list[Run]:
    merged: list[Run] = []
    for run in runs:
        if merged and merged[-1].style == run.style:
            merged[-1] = Run(merged[-1].text + run.text, run.style)
        else:
            merged.append(run)
    return merged


def _params(text: str) -> list[list[int]]:
    """``"1;38:2::255:0:0"`` -> ``[[1], [38, 2, 0, 255, 0, 0]]`` (empty fields are 0, as terminals read them)."""
    if text.startswith(("?", "<", "=", ">")):
        return []  # private-mode parameters never style text
    groups: list[list[int]] = []
    for field in text.split(";") if text else ["0"]:
        groups.append([int(p) if p.isdigit() else 0 for p in field.split(":")])
    return groups


def _apply_sgr(style: Style, text: str) -> Style:
    groups = _params(text)
    i = 0
    while i < len(groups):
        group = groups[i]
        code = group[0]
        i += 1
        if code in (38, 48, 58):
            # Extended colour: either colon sub-parameters in this group, or the following semicolon fields.
            args = group[1:] if len(group) > 1 else [g[0] for g in groups[i : i + 4]]
            colour, used = _extended_colour(args, colon=len(group) > 1)
            if len(group) == 1:
                i += used
            if code == 38:
                style = replace(style, fg=colour)
            elif code == 48:
                style = replace(style, bg=colour)
            continue
        style = _simple_sgr(style, code)
    return style


def _extended_colour(args: list[int], *, colon: bool) -> tuple[int | None, int]:
    """``5;n`` or ``2;r;g;b`` (colon form may carry a colour-space id: ``2::r:g:b``) -> (colour, fields used)."""
    if not args:
        return None, 0
    if args[0] == 5 and len(args) >= 2:
        return max(0, min(args[1], 255)), 2
    if args[0] == 2:
        rgb = args[1:]
        if colon and len(rgb) >= 4:
            rgb = rgb[1:]  # 38:2:<colour space>:r:g:b
        if len(rgb) >= 3:
            r, g, b = (max(0, min(v, 255)) for v in rgb[:3])
            return TRUECOLOR | (r << 16) | (g << 8) | b, 4
    return None, 1


def _simple_sgr(style: Style, code: int) -> Style:
    if code == 0:
        return PLAIN
    if code == 1:
        return replace(style, bold=True)
    if code == 2:
        return replace(style, dim=True)
    if code == 3:
        return replace(style, italic=True)
    if code in (4, 21):
        return replace(style, underline=True)
    if code == 7:
        return replace(style, inverse=True)
    if code == 22:
        return replace(style, bold=False, dim=False)
    if code == 23:
        return replace(style, italic=False)
    if code == 24:
        return replace(style, underline=False)
    if code == 27:
        return replace(style, inverse=False)
    if 30 <= code <= 37:
        return replace(style, fg=code - 30)
    if code == 39:
        return replace(style, fg=None)
    if 40 <= code <= 47:
        return replace(style, bg=code - 40)
    if code == 49:
        return replace(style, bg=None)
    if 90 <= code <= 97:
        return replace(style, fg=code - 90 + 8)
    if 100 <= code <= 107:
        return replace(style, bg=code - 100 + 8)
    return style  # blink, fonts, frames...: ignored


_CUBE: Final = (0, 95, 135, 175, 215, 255)


def xterm_rgb(index: int) -> int:
    """0xRRGGBB of xterm palette entries 16..255 (the 6x6x6 cube and the grey ramp); 0..15 are themed."""
    if index < 16:
        raise ValueError(f"palette entry {index} is themed, not fixed")
    if index < 232:
        n = index - 16
        return (_CUBE[n // 36] << 16) | (_CUBE[(n // 6) % 6] << 8) | _CUBE[n % 6]
    grey = 8 + (index - 232) * 10
    return (grey << 16) | (grey << 8) | grey
