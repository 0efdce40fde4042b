"""Docker's json-file log driver: the writer the monitors use and the reader behind ``kitebox logs``.

Format (byte-compatible with moby's ``jsonfilelog``): one JSON object per line,
``{"log":"...","stream":"stdout","time":"<RFC3339Nano UTC>"}``, escaped the way moby's ``jsonlog`` does it:
``<``, ``>``, ``&`` and control characters as ``\\u00XX`` (only ``\\n``, ``\\r``, ``\\"`` and ``\\\\`` get short
escapes), U+2028/U+2029 escaped, every byte of invalid UTF-8 replaced by ``\\ufffd``. A line longer than 16 KiB is
split into 16 KiB records and only the last one ends in ``\\n``; a final line without a newline is flushed as is
when the stream ends.

Rotation (``max-size``/``max-file``): the size is checked before each write, so a file may exceed max-size by one
record; rotating renames ``.N-1`` to ``.N`` ... and the current file to ``.1``; with ``max-file=1`` the file is
unlinked and recreated. Every rotation therefore gives the path a new inode, which is how a following reader
notices it.

Reading: ``tail`` counts back across the rotated files; ``since`` filters until the first match only and
``until`` stops at the first later record (Docker's semantics, timestamps need not be monotonic). ``follow``
continues from the byte offset where the history ended, so nothing is lost or repeated at the seam; it wakes up
on inotify events of the container directory (log writes, rotations, and the monitor's ``exit.json``), with a
1 s re-check of ``is_running`` as a safety net, and ends once the container has stopped and every complete
record has been delivered.

The writer half is imported by every monitor, so this module imports only the standard library at the top
(``asyncio`` and ``ctypes`` are imported where the reader needs them).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Final

from engine.errors import InvalidArgument, StoreError, from_oserror

__all__ = [
    "MAX_LINE",
    "LogRecord",
    "LogWriter",
    "StreamLogger",
    "encode_entry",
    "log_file_path",
    "parse_log_opts",
    "parse_rfc3339",
    "parse_time_arg",
    "read_logs",
]

MAX_LINE: Final = 16 * 1024
_READ_CHUNK: Final = 1 << 20
_BATCH: Final = 512
_FOLLOW_RECHECK: Final = 1.0


def log_file_path(container_dir: Path, container_id: str) -> Path:
    """Where Docker keeps a container's json-file log: ``<container dir>/<id>-json.log``."""
    return container_dir / f"{container_id}-json.log"


# --- encoding ----------------------------------------------------------------------------------------------


_INVALID: Final = "\udcff"  # a lone surrogate never comes out of a valid decode: marks one invalid byte


def _one_byte_replace(err: UnicodeError) -> tuple[str, int]:
    # Go's utf8.DecodeRune consumes one byte per invalid sequence (Python's "replace" may take several), and
    # moby writes the six characters \ufffd for it (a valid U+FFFD in the input passes through as UTF-8).
    assert isinstance(err, UnicodeDecodeError)
    return _INVALID, err.start + 1


codecs.register_error("kitebox-go-replace", _one_byte_replace)

_ESCAPE_RE: Final = re.compile('[\\x00-\\x1f"\\\\<>&\u2028\u2029\udcff]')
_SHORT: Final = {"\n": "\\n", "\r": "\\r", '"': '\\"', "\\": "\\\\", _INVALID: "\\ufffd"}


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHORT.get(ch) or f"\\u{ord(ch):04x}"


def _go_json_string(data: bytes) -> bytes:
    text = data.decode("utf-8", "kitebox-go-replace")
    return b'"' + _ESCAPE_RE.sub(_escape_char, text).encode() + b'"'


def encode_entry(log: bytes, stream: str, time_text: str) -> bytes:
    """One json-file line, exactly as moby writes it (``log``/``stream`` omitted when empty)."""
    parts = []
    if log:
        parts.append(b'"log":' + _go_json_string(log))
    if stream:
        parts.append(b'"stream":' + _go_json_string(stream.encode()))
    parts.append(b'"time":"' + time_text.encode() + b'"')
    return b"{" + b",".join(parts) + b"}\n"


def _rfc3339nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{base}.{frac:09d}".rstrip("0") + "Z" if frac else base + "Z"


# --- writer ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _rotation_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """``flock`` of ``.<log name>.rotate`` beside the log: the writer holds it exclusively while it shifts the
    rotated files' names (a few renames), a follower shares it while it lists them. The writer creates the file
    at its first rotation (a log that never rotates never has one); until then a rotation is a single rename, so
    a follower that finds no lock file goes on unlocked (as it does in a read-only directory)."""
    import fcntl

    try:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if exclusive else 0)
        fd = os.open(path.with_name(f".{path.name}.rotate"), flags, 0o640)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class LogWriter:
    """Appends records to ``path`` with Docker's rotation. Not thread-safe: one writer (the monitor) per file.

    Each record is one ``write(2)`` of a complete line, so concurrent readers only ever see whole records or
    a not-yet-complete last line, which they leave for later.
    """

    def __init__(self, path: Path, max_size: int | None = None, max_file: int = 1) -> None:
        if max_size is not None and max_size <= 0:
            raise InvalidArgument(f"log max-size must be positive, got {max_size}")
        if max_file < 1:
            raise InvalidArgument(f"log max-file must be at least 1, got {max_file}")
        self.path = path
        self.max_size = max_size
        self.max_file = max_file
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as err:
            raise from_oserror(err, f"log file {self.path}") from err

    def write(self, stream: str, log: bytes, time_ns: int | None = None) -> None:
        """Write one record (the caller splits lines; see :class:`StreamLogger`)."""
        entry = encode_entry(log, stream, _rfc3339nano(time.time_ns() if time_ns is None else time_ns))
        try:
            if self.max_size is not None and self._size >= self.max_size:
                self._rotate()
            os.write(self._fd, entry)
        except OSError as err:
            raise from_oserror(err, f"log file {self.path}") from err
        self._size += len(entry)

    def _rotate(self) -> None:
        if self.max_file == 1:
            # Create the new file before the old one goes, so it gets another inode (a freed inode number is
            # reused at once, and followers detect rotation by the inode changing).
            tmp = self.path.with_name(f".{self.path.name}.new")
            fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            os.replace(tmp, self.path)
            os.close(self._fd)
            self._fd = fd
            self._size = 0
            return
        os.close(self._fd)
        with _rotation_lock(self.path, exclusive=True):  # followers never see the names half shifted
            for n in range(self.max_file - 1, 1, -1):
                older = self.path.with_name(f"{self.path.name}.{n - 1}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StreamLogger:
    """Docker's copier for one stream: bytes in, line records out (16 KiB split, partial line kept)."""

    def __init__(self, writer: LogWriter, stream: str) -> None:
        self.writer = writer
        self.stream = stream
        self._pending = bytearray()

    def feed(self, data: bytes, time_ns: int | None = None) -> None:
        ns = time.time_ns() if time_ns is None else time_ns
        self._pending += data
        start = 0
        while True:
            nl = self._pending.find(b"\n", start)
            if nl < 0:
                break
            self._emit_line(bytes(self._pending[start : nl + 1]), ns)
            start = nl + 1
        del self._pending[:start]
        while len(self._pending) >= MAX_LINE:
            self.writer.write(self.stream, bytes(self._pending[:MAX_LINE]), ns)
            del self._pending[:MAX_LINE]

    def _emit_line(self, line: bytes, ns: int) -> None:
        body = line[:-1]
        while len(body) > MAX_LINE:
            self.writer.write(self.stream, body[:MAX_LINE], ns)
            body = body[MAX_LINE:]
        self.writer.write(self.stream, body + b"\n", ns)

    def flush(self, time_ns: int | None = None) -> None:
        """Write the final partial line, if any (the stream ended without a newline)."""
        if self._pending:
            self.writer.write(self.stream, bytes(self._pending), time.time_ns() if time_ns is None else time_ns)
            self._pending.clear()


_SIZE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_KNOWN_OPTS: Final = frozenset({"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex",
                                "tag"})


def parse_log_opts(opts: Mapping[str, str]) -> tuple[int | None, int]:
    """``--log-opt`` values of the json-file driver -> ``(max_size or None, max_file)``.

    Sizes are Docker's RAM units (binary: ``100k``, ``10m``, ``1g``, ``10MB``). ``compress=true`` is refused
    (not implemented); labels/env/tag options are accepted and have no effect on the file.
    """
    for key in opts:
        if key not in _KNOWN_OPTS:
            raise InvalidArgument(f"log opt {key!r}: unknown option for the json-file log driver")
    max_size: int | None = None
    if "max-size" in opts:
        raw = opts["max-size"].strip()
        match = _SIZE_RE.match(raw)
        if not match:
            raise InvalidArgument(f"log opt max-size: invalid size {raw!r}")
        max_size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
        if max_size <= 0:
            raise InvalidArgument(f"log opt max-size: must be positive, got {raw!r}")
    max_file = 1
    if "max-file" in opts:
        raw = opts["max-file"].strip()
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidArgument(f"log opt max-file: must be an integer of at least 1, got {raw!r}")
        max_file = int(raw)
        if max_file > 1 and max_size is None:
            raise InvalidArgument("log opt max-file: cannot be greater than 1 when max-size is not set")
    if opts.get("compress", "false").strip().lower() not in ("false", "0", ""):
        raise InvalidArgument("log opt compress: compression of rotated logs is not supported")
    return max_size, max_file


# --- time parsing ------------------------------------------------------------------------------------------

_DURATION_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                          "h": 3600.0}
_DURATION_RE: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_RFC3339_RE: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?)?"
    r"([zZ]|[+-]\d{2}:\d{2})?$"
)
_UNIX_RE: Final = re.compile(r"^(\d+)(?:\.(\d{1,9}))?$")


def _parse_go_duration(text: str) -> float | None:
    sign = 1.0
    body = text
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if not body:
        return None
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_RE.match(body, pos)
        if not match:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_rfc3339(text: str) -> float | None:
    """RFC 3339 with optional time, seconds, fraction and zone (local time when no zone) -> Unix seconds."""
    match = _RFC3339_RE.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None
    if zone is None:
        stamp = moment.astimezone().timestamp()  # naive -> the local zone, like Docker's CLI
    else:
        if zone in ("z", "Z"):
            tz = UTC
        else:
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            tz = timezone(-offset if zone[0] == "-" else offset)
        stamp = moment.replace(tzinfo=tz).timestamp()
    return stamp + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


def parse_time_arg(text: str, now: float) -> float:
    """``--since``/``--until`` -> Unix seconds: a Go duration before ``now`` (``10m``, ``1h30m``, ``1.5s``), an
    RFC 3339 date/time (local zone when none is given) or a Unix timestamp with optional fraction."""
    value = text.strip()
    if value and value != "0":
        duration = _parse_go_duration(value)
        if duration is not None:
            return now - duration
    stamp = parse_rfc3339(value)
    if stamp is not None:
        return stamp
    match = _UNIX_RE.match(value)
    if match:
        return int(match.group(1)) + (int(match.group(2).ljust(9, "0")) / 1e9 if match.group(2) else 0.0)
    raise InvalidArgument(f"invalid time {text!r}: expected a duration (10m), an RFC 3339 time or a Unix timestamp")


# --- reader ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record: ``stream`` ("stdout"/"stderr"), ``time`` as written (RFC3339Nano), ``data`` the raw line."""

    stream: str
    time: str
    data: bytes

    @property
    def timestamp(self) -> float:
        return parse_rfc3339(self.time) or 0.0


def _parse_entry(line: bytes) -> LogRecord | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None  # a torn or foreign line: skipped, like Docker's decoder does after an error
    if not isinstance(obj, dict) or not isinstance(obj.get("time"), str):
        return None
    return LogRecord(str(obj.get("stream", "")), obj["time"], str(obj.get("log", "")).encode())


_SCAN_BLOCK: Final = 64 * 1024


def _complete_end(fd: int) -> int:
    """The offset just after the last newline: a trailing partial record is not there yet."""
    pos = os.fstat(fd).st_size
    while pos > 0:
        start = max(0, pos - _SCAN_BLOCK)
        nl = os.pread(fd, pos - start, start).rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def _tail_offset(fd: int, end: int, wanted: int) -> tuple[int, int]:
    """Where the last ``wanted`` records before ``end`` start, scanning backwards in blocks.

    Returns ``(offset, still_wanted)``: when the file holds fewer records, offset is 0 and the rest must come
    from the older file.
    """
    if end == 0:
        return 0, wanted
    found = 0
    scan_end = end - 1  # the newline ending the last record is not a boundary before it
    while scan_end > 0:
        start = max(0, scan_end - _SCAN_BLOCK)
        data = os.pread(fd, scan_end - start, start)
        idx = len(data)
        while (nl := data.rfind(b"\n", 0, idx)) >= 0:
            found += 1
            if found == wanted:
                return start + nl + 1, 0
            idx = nl
        scan_end = start
    return 0, wanted - (found + 1)


class _Cursor:
    """Position in the chain of log files (oldest rotated first, current last). Blocking; run in a thread."""

    def __init__(self, path: Path, tail: int | None) -> None:
        self.path = path
        self._files: list[int] = []
        self._offsets: list[int] = []
        self._index = 0
        self._current_ino: int | None = None
        with _rotation_lock(path, exclusive=False):  # the chain as one consistent picture
            try:
                current = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                current = -1
            except OSError as err:
                raise from_oserror(err, f"log file {path}") from err
            seen = {os.fstat(current).st_ino} if current >= 0 else set()
            for rotated in self._rotated_paths():
                try:
                    fd = os.open(rotated, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                ino = os.fstat(fd).st_ino
                if ino in seen:  # rotated between our two opens (max-file=1 replaces without the lock)
                    os.close(fd)
                    continue
                seen.add(ino)
                self._files.append(fd)
        if current >= 0:
            self._files.append(current)
            self._current_ino = os.fstat(current).st_ino
        self._opened = set(seen)
        self._offsets = [0] * len(self._files)
        if tail is not None:
            self._seek_tail(tail)

    def _rotated_paths(self) -> list[Path]:
        prefix = self.path.name + "."
        numbered: list[tuple[int, Path]] = []
        try:
            names = os.listdir(self.path.parent)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                numbered.append((int(name[len(prefix) :]), self.path.parent / name))
        return [p for _, p in sorted(numbered, reverse=True)]  # .N (oldest) ... .1

    def _seek_tail(self, tail: int) -> None:
        remaining = tail
        for i in range(len(self._files) - 1, -1, -1):
            fd = self._files[i]
            end = _complete_end(fd)
            self._index = i
            if remaining == 0:
                self._offsets[i] = end
                return
            offset, remaining = _tail_offset(fd, end, remaining)
            self._offsets[i] = offset
            if remaining == 0:
                return
        self._index = 0

    def read_batch(self) -> list[LogRecord]:
        """The next complete records (up to a batch); [] when everything written so far has been read."""
        while True:
            if self._index < len(self._files):
                records = self._read_from(self._index)
                if records:
                    return records
                if self._index < len(self._files) - 1:
                    self._index += 1
                    continue
            if not self._rotated_away():
                return []
            # Rotated after our last read: the writer is done with the file, so read its tail first.
            if self._index < len(self._files):
                records = self._read_from(self._index)
                if records:
                    return records
            if not self._open_successor():
                return []

    def _read_from(self, i: int) -> list[LogRecord]:
        fd, offset = self._files[i], self._offsets[i]
        size = _READ_CHUNK
        while True:
            data = os.pread(fd, size, offset)
            end = data.rfind(b"\n") + 1
            if end or len(data) < size:
                break
            size *= 2  # one record larger than the chunk: read more
        records: list[LogRecord] = []
        start = 0
        while start < end and len(records) < _BATCH:
            nl = data.index(b"\n", start)
            record = _parse_entry(data[start:nl])
            if record is not None:
                records.append(record)
            start = nl + 1
        self._offsets[i] = offset + start
        return records

    def _rotated_away(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._current_ino
        except FileNotFoundError:
            return False

    def _chain(self) -> list[tuple[Path, int]]:
        """(path, inode) of the existing files, oldest first (call it under the rotation lock)."""
        current: list[tuple[Path, int]] = []
        for candidate in [*self._rotated_paths(), self.path]:
            with contextlib.suppress(FileNotFoundError):
                current.append((candidate, os.stat(candidate).st_ino))
        return current

    def _open_successor(self) -> bool:
        """Move to the file one rotation newer than ours: if ours is now ``.k`` that is ``.k-1`` (or the path),
        so a writer rotating several times between two reads loses nothing; if ours was deleted (``max-file``
        reached, or ``max-file=1``), the oldest file left. The names are listed and the file opened while the
        writer cannot rotate: a rename cascade seen half done, or a name that moved on before the open, would
        skip a file and its records."""
        with _rotation_lock(self.path, exclusive=False):
            chain = self._chain()
            inodes = [ino for _, ino in chain]
            position = inodes.index(self._current_ino) if self._current_ino in inodes else -1
            fresh = [path for path, ino in chain[position + 1 :] if ino not in self._opened]
            if not fresh:
                return False
            try:
                fd = os.open(fresh[0], os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False  # deleted meanwhile (max-file=1 replaces without the lock): the next call finds it
        if os.fstat(fd).st_ino in (self._current_ino, *self._opened):
            os.close(fd)
            return False
        self._current_ino = os.fstat(fd).st_ino
        self._opened.add(self._current_ino)
        self._files.append(fd)
        self._offsets.append(0)
        self._index = len(self._files) - 1
        return True

    def close(self) -> None:
        for fd in self._files:
            os.close(fd)
        self._files.clear()


class _DirWatch:
    """inotify on a directory, as an asyncio wake-up (None when inotify is unavailable: callers re-check)."""

    _MASK: Final = 0x2 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200  # MODIFY CLOSE_WRITE MOVED_FROM MOVED_TO CREATE DELETE

    def __init__(self, directory: Path) -> None:
        import asyncio
        import ctypes

        self.event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self._fd < 0:
            return
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), self._MASK) < 0:
            os.close(self._fd)
            self._fd = -1
            return
        self._loop.add_reader(self._fd, self._on_ready)

    def _on_ready(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        self.event.set()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            # Closing an inotify descriptor waits for an RCU grace period (up to ~20 ms): do it on the loop's
            # executor so the caller goes on; the loop joins its executor when it shuts down.
            self._loop.run_in_executor(None, os.close, self._fd)
            self._fd = -1


async def read_logs(
    path: Path,
    *,
    tail: int | None = None,
    since: float | None = None,
    until: float | None = None,
    follow: bool = False,
    is_running: Callable[[], bool] | None = None,
) -> AsyncIterator[LogRecord]:
    """Records of the log at ``path`` (and its rotated files), oldest first, with Docker's ``logs`` semantics.

    ``tail`` None means all, 0 none. ``since``/``until`` are Unix seconds. With ``follow`` the history is
    followed by live records until ``is_running()`` turns false and everything has been read (without
    ``is_running`` it follows until cancelled). File reads run in a worker thread.
    """
    import asyncio

    if tail is not None and tail < 0:
        raise InvalidArgument(f"invalid tail {tail}: must be 0 or more")
    try:
        cursor = await asyncio.to_thread(_Cursor, path, tail)
    except OSError as err:
        raise StoreError(f"log file {path}: {err.strerror}") from err
    watch: _DirWatch | None = None
    filtering_since = since is not None
    try:
        if follow:
            watch = _DirWatch(path.parent)  # before the history is read: no event can be missed
        while True:
            if watch is not None:
                watch.event.clear()
            # Sampled before reading: once the container has stopped, the monitor has written every record,
            # so a read that starts after a "stopped" answer sees them all.
            running = is_running() if watch is not None and is_running is not None else True
            batch = await asyncio.to_thread(cursor.read_batch)
            for record in batch:
                stamp = record.timestamp
                if filtering_since and since is not None:
                    if stamp < since:
                        continue
                    filtering_since = False
                if until is not None and stamp > until:
                    return
                yield record
            if batch:
                continue
            if watch is None or not running:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.event.wait(), _FOLLOW_RECHECK)
    finally:
        if watch is not None:
            watch.close()
        cursor.close()
