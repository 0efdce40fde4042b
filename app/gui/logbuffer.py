"""A compact, append-only store of log lines: one bytes buffer plus arrays of offsets, times and streams.

Why not a list of strings: a million Python ``str`` objects cost ~100 bytes of overhead each and make the
garbage collector crawl. Here a line costs its UTF-8 bytes (+1 newline) and 17 bytes of bookkeeping (8-byte
offset, 8-byte time in ns, 1-byte stream), so 1,000,000 lines of 100 characters fit in ~120 MB.

Lines are numbered *absolutely*: the first line ever appended is 0, and numbers never change, even after the
oldest lines are trimmed (``start`` then moves up). Views and filters keep absolute numbers, which makes
trimming a cheap prefix cut instead of a renumbering of everything. The buffer keeps a ``\\n`` after every
line so a regular expression can run over the whole buffer at C speed (``finditer`` with ``re.MULTILINE``)
and map matches back to lines with a binary search on the offsets.

Paging: lines trimmed by the caps are still in the log file; ``prepend`` puts an older chunk back in front
(numbers count down again), within the caps, so scrolling to the top can page through a log far larger than
memory. ``paged_out`` counts the trimmed lines that could come back this way (``clear`` is not undone by it).

No Qt here: the model (``app.gui.logmodel``) wraps this for views.
"""

from __future__ import annotations

import calendar
import re
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

__all__ = ["STDERR", "STDOUT", "LogBuffer", "LogLine", "time_ns_of"]

STDOUT: Final = 0
STDERR: Final = 1


class LogLine(Protocol):
    """What the buffer ingests: the engine's ``LogRecord`` has exactly these attributes."""

    @property
    def stream(self) -> str: ...

    @property
    def time(self) -> str: ...

    @property
    def data(self) -> bytes: ...


_second_cache: dict[str, int] = {}


def time_ns_of(text: str) -> int:
    """RFC 3339 (the json-file log's ``time``) -> Unix ns. 0 when unparsable.

    Fast path for the writer's own shape ``YYYY-MM-DDTHH:MM:SS[.fffffffff]Z``: the seconds part is cached (a
    chatty container writes thousands of lines per second, all with the same prefix).
    """
    head = text[:19]
    seconds = _second_cache.get(head)
    if seconds is None:
        try:
            seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return _slow_time_ns(text)
        if len(_second_cache) > 4096:
            _second_cache.clear()
        _second_cache[head] = seconds
    rest = text[19:]
    if rest == "Z":
        return seconds * 1_000_000_000
    if rest[:1] == "." and rest[-1:] == "Z" and rest[1:-1].isdigit():
        return seconds * 1_000_000_000 + int(rest[1:-1][:9].ljust(9, "0"))
    return _slow_time_ns(text)


_ZONE_RE: Final = re.compile(r"^(.{19})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")


def _slow_time_ns(text: str) -> int:
    from datetime import datetime

    match = _ZONE_RE.match(text)
    if not match:
        return 0
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        moment = datetime.fromisoformat(match.group(1) + zone)
    except ValueError:
        return 0
    frac = int((match.group(2) or "0").ljust(9, "0"))
    return int(moment.timestamp()) * 1_000_000_000 + frac


class LogBuffer:
    """Append-only log lines with a memory budget; the oldest 10 % are trimmed when a cap is crossed.

    ``max_lines`` / ``max_bytes`` bound what is held in memory; ``trimmed`` counts lines dropped so far (the
    log file on disk still has them: the panel saves from the file, not from here).
    """

    def __init__(self, *, max_lines: int = 1_000_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_lines < 10 or max_bytes < 1024:
            raise ValueError(f"log buffer limits too small: {max_lines} lines, {max_bytes} bytes")
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._data = bytearray()
        self._offsets = array("q")  # absolute byte offset of each held line's start (prepends may go below 0)
        self._times = array("q")
        self._streams = bytearray()
        self._byte_base = 0  # absolute byte offset of _data[0]
        self.start = 0  # absolute number of the first held line
        self.trimmed = 0
        self.paged_out = 0  # lines trimmed by the caps since the last clear (``prepend`` can bring them back)
        self.longest = 0  # longest line seen, in bytes (the view sizes its horizontal scroll bar from it)

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def end(self) -> int:
        """One past the absolute number of the last held line."""
        return self.start + len(self._offsets)

    @property
    def nbytes(self) -> int:
        """Memory held by the buffer's contents (not counting allocator slack)."""
        return len(self._data) + len(self._offsets) * 8 + len(self._times) * 8 + len(self._streams)

    def extend(self, lines: Iterable[LogLine]) -> int:
        """Append lines (a trailing newline in ``data`` is dropped; one is always stored). Returns how many.

        May trim the oldest lines afterwards; callers compare ``start`` before and after.
        """
        chunks: list[bytes] = []
        offsets = self._offsets
        times = self._times
        streams = self._streams
        position = self._byte_base + len(self._data)
        longest = self.longest
        count = 0
        for line in lines:
            data = line.data
            if not data.endswith(b"\n"):
                data += b"\n"
            offsets.append(position)
            position += len(data)
            if len(data) > longest:
                longest = len(data)
            chunks.append(data)
            times.append(time_ns_of(line.time))
            streams.append(STDERR if line.stream == "stderr" else STDOUT)
            count += 1
        self._data += b"".join(chunks)
        self.longest = longest
        if len(offsets) > self.max_lines or len(self._data) > self.max_bytes:
            self._trim()
        return count

    def _trim(self) -> None:
        """Drop the oldest tenth (at least down to the caps) in one prefix cut."""
        keep_lines = int(self.max_lines * 0.9)
        drop = max(len(self._offsets) - keep_lines, len(self._offsets) // 10)
        end_abs = self._byte_base + len(self._data)
        while drop < len(self._offsets) and end_abs - self._offsets[drop] > self.max_bytes * 0.9:
            drop += max(1, len(self._offsets) // 100)
        drop = min(drop, len(self._offsets))
        cut = (self._offsets[drop] - self._byte_base) if drop < len(self._offsets) else len(self._data)
        # Offsets are absolute: cutting the prefix only moves the base, no offset is rewritten.
        del self._data[:cut]
        del self._times[:drop]
        del self._streams[:drop]
        del self._offsets[:drop]
        self._byte_base += cut
        self.start += drop
        self.trimmed += drop
        self.paged_out += drop

    def room(self) -> tuple[int, int]:
        """(lines, bytes) that can still be held before a cap is crossed."""
        return max(0, self.max_lines - len(self._offsets)), max(0, self.max_bytes - len(self._data))

    def prepend(self, lines: Iterable[LogLine]) -> int:
        """Put older lines (the ones just before ``start``, oldest first) back in front; returns how many.

        At most ``paged_out`` lines, and only as many (newest first) as fit under the caps: paging never makes
        the buffer trim (which would drop what was just paged in)."""
        room_lines, room_bytes = self.room()
        chunks: list[bytes] = []
        times = array("q")
        streams = bytearray()
        size = 0
        for line in reversed(list(lines)):
            if len(chunks) >= min(room_lines, self.paged_out):
                break
            data = line.data if line.data.endswith(b"\n") else line.data + b"\n"
            if size + len(data) > room_bytes:
                break
            size += len(data)
            chunks.append(data)
            times.append(time_ns_of(line.time))
            streams.append(STDERR if line.stream == "stderr" else STDOUT)
            self.longest = max(self.longest, len(data))
        if not chunks:
            return 0
        chunks.reverse()
        times.reverse()
        streams.reverse()
        base = self._byte_base - size
        offsets = array("q")
        position = base
        for data in chunks:
            offsets.append(position)
            position += len(data)
        self._data[0:0] = b"".join(chunks)
        self._offsets[0:0] = offsets
        self._times[0:0] = times
        self._streams[0:0] = streams
        self._byte_base = base
        count = len(chunks)
        self.start -= count
        self.trimmed -= count
        self.paged_out -= count
        return count

    def clear(self) -> None:
        """Forget every line (numbering continues where it was)."""
        self.trimmed += len(self._offsets)
        self.paged_out = 0
        self.start = self.end
        self._byte_base += len(self._data)
        self._data = bytearray()
        self._offsets = array("q")
        self._times = array("q")
        self._streams = bytearray()

    # -- reading -----------------------------------------------------------------------------------------------

    def _span(self, number: int) -> tuple[int, int]:
        i = number - self.start
        if i < 0 or i >= len(self._offsets):
            raise IndexError(f"log line {number} is not held (held: {self.start}..{self.end - 1})")
        base = self._byte_base
        begin = self._offsets[i] - base
        end = self._offsets[i + 1] - base if i + 1 < len(self._offsets) else len(self._data)
        return begin, end - 1  # without the stored newline

    def raw(self, number: int) -> bytes:
        begin, end = self._span(number)
        return bytes(self._data[begin:end])

    def text(self, number: int) -> str:
        """The line as text, ANSI escapes included (invalid UTF-8 shown as U+FFFD)."""
        begin, end = self._span(number)
        return self._data[begin:end].decode("utf-8", "replace")

    def stream(self, number: int) -> int:
        return self._streams[number - self.start]

    def time_ns(self, number: int) -> int:
        return self._times[number - self.start]

    def search(self, pattern: re.Pattern[bytes], first: int, last: int) -> Iterator[int]:
        """Absolute numbers of lines in ``[first, last)`` where ``pattern`` matches, in order (each once).

        Runs the pattern over the raw buffer (C speed); a match is attributed to the line it starts in.
        """
        first = max(first, self.start)
        last = min(last, self.end)
        if first >= last:
            return
        base = self._byte_base
        begin = self._offsets[first - self.start] - base
        stop = self._offsets[last - self.start] - base if last < self.end else len(self._data)
        previous = -1
        offsets = self._offsets
        for match in pattern.finditer(self._data, begin, stop):
            if match.start() == match.end() and match.start() == stop:
                break
            index = bisect_right(offsets, match.start() + base) - 1
            if index != previous:
                previous = index
                yield index + self.start

    def search_backwards(self, pattern: re.Pattern[bytes], before: int) -> int | None:
        """The last line before absolute number ``before`` that matches, or None."""
        # Scan windows of growing size backwards, so a match near ``before`` is found without scanning it all.
        window = 4096
        last = min(before, self.end)
        while last > self.start:
            first = max(self.start, last - window)
            found = None
            for number in self.search(pattern, first, last):
                found = number
            if found is not None:
                return found
            last = first
            window *= 4
        return None
