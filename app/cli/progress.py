"""Pull progress for the terminal: live bars on a TTY, a few plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from app.cli.output import human_size
from engine import PullProgress

__all__ = ["PullPrinter"]

_PHASE_LABEL = {
    "waiting": "Waiting",
    "downloading": "Downloading",
    "verifying": "Verifying Checksum",
    "downloaded": "Download complete",
    "extracting": "Extracting",
    "exists": "Already exists",
    "done": "Pull complete",
}
_FINAL = {"downloaded", "exists", "done"}


class PullPrinter:
    """Feed it ``PullProgress`` records; it draws Docker-like per-layer lines.

    On a TTY every layer has one line redrawn in place (cursor movement, no full-screen redraw, at most ~20
    redraws a second as the engine throttles progress). Elsewhere only phase changes are printed, so logs of
    CI jobs stay short.
    """

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None) -> None:
        self._out = out or sys.stderr
        self._tty = self._out.isatty() if tty is None else tty
        self._order: list[str] = []
        self._lines: dict[str, str] = {}
        self._phases: dict[str, str] = {}
        self._drawn = 0

    def __call__(self, item: PullProgress) -> None:
        if item.layer is None:
            return
        short = item.layer.split(":", 1)[-1][:12]
        if item.layer not in self._lines:
            self._order.append(item.layer)
        label = _PHASE_LABEL.get(item.phase, item.phase.capitalize())
        if item.phase in ("downloading", "extracting") and item.total:
            line = f"{short}: {label} {_bar(item.current, item.total)} " \
                f"{human_size(item.current)}/{human_size(item.total)}"
        else:
            line = f"{short}: {label}"
        self._lines[item.layer] = line
        changed = self._phases.get(item.layer) != item.phase
        self._phases[item.layer] = item.phase
        if self._tty:
            self._redraw()
        elif changed and (item.phase in _FINAL or item.phase in ("downloading", "extracting", "waiting")):
            self._out.write(line if item.phase not in ("downloading", "extracting") else f"{short}: {label}")
            self._out.write("\n")
            self._out.flush()

    def _redraw(self) -> None:
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}A")
        for layer in self._order:
            self._out.write("\x1b[2K" + self._lines[layer] + "\n")
        self._drawn = len(self._order)
        self._out.flush()


def _bar(current: int, total: int, width: int = 40) -> str:
    filled = min(width, int(width * current / total)) if total else width
    if filled >= width:
        return "[" + "=" * width + "]"
    return "[" + "=" * filled + ">" + " " * (width - filled - 1) + "]"
