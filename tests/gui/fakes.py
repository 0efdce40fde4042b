"""Test doubles for the GUI: an in-memory container log with the engine's follow semantics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Line:
    """Shaped like the engine's ``LogRecord``."""

    stream: str
    time: str
    data: bytes


def stamp(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


class FakeLog:
    """A log file being written: ``write`` appends, ``follow`` gives history then live lines until ``stop``.

    Like the engine, one follow delivers the history and the live lines with no gap or repeat at the seam;
    ``since`` keeps lines at or after the time (Docker's ``logs --since``).
    """

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.running = True
        self._changed = asyncio.Event()
        self._clock = 1_780_000_000_000_000_000
        self.pages = 0  # calls of ``before``

    def write(self, text: str, stream: str = "stdout", *, same_time: bool = False) -> Line:
        if not same_time:
            self._clock += 1000
        line = Line(stream, stamp(self._clock), text.encode() + b"\n")
        self.lines.append(line)
        self._changed.set()
        return line

    def stop(self) -> None:
        self.running = False
        self._changed.set()

    def start(self) -> None:
        self.running = True

    async def follow(self, *, tail: int | None, since: float | None) -> AsyncIterator[Line]:
        from app.gui.logbuffer import time_ns_of

        position = len(self.lines) - tail if tail is not None else 0
        position = max(0, position)
        while True:
            while position < len(self.lines):
                line = self.lines[position]
                position += 1
                if since is not None and time_ns_of(line.time) / 1e9 < since:
                    continue
                yield line
            if not self.running:
                return
            self._changed.clear()
            await self._changed.wait()

    async def history(self) -> AsyncIterator[Line]:
        for line in list(self.lines):
            yield line

    async def before(self, time_ns: int, held: int, count: int) -> list[Line]:
        from app.gui.logbuffer import time_ns_of

        older = [line for line in self.lines if time_ns_of(line.time) <= time_ns]
        while held and older and time_ns_of(older[-1].time) == time_ns:
            older.pop()
            held -= 1
        self.pages += 1
        return older[-count:] if count else []
