"""The content store: blobs addressed by their sha256 digest, written through verified, resumable ingests.

Layout under ``root`` (``<state>/content``), after containerd's local store::

    blobs/sha256/<hex>        committed blobs, read-only (0444); only ever appear by an atomic rename
    ingest/<hex>/lock         flock()ed by the one writer of <hex> (across processes and within one)
    ingest/<hex>/data         the bytes received so far; kept on close() so a later writer resumes
    ingest/put-<random>       temporary file of :meth:`ContentStore.put` / :meth:`ContentStore.put_stream`

Invariants:

* A blob is visible under ``blobs/`` only after its size and sha256 were checked, it was fsynced and made
  read-only; a crash (``kill -9``) at any moment leaves either a resumable ingest or a whole blob, never a
  half-visible one.
* One writer per digest at a time: :meth:`ContentStore.writer` takes an exclusive ``flock`` on the ingest's lock
  file. A second writer waits (in a thread, never blocking the event loop, and cancellably) and then sees the
  committed blob (:attr:`IngestWriter.committed`) or the partial data left by a writer that closed.
* Bad data is never kept: a size or digest mismatch removes the ingest.

Every ``OSError`` is translated with :func:`engine.errors.from_oserror` into a one-line ``StoreError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

from engine.content_file import AppendFile
from engine.digest import is_digest, validate_digest
from engine.errors import Conflict, DigestMismatch, NotFound, StoreError, from_oserror

__all__ = ["ContentStore", "IngestWriter", "Readable"]

_CHUNK = 1 << 20
_WRITE_BUFFER = 1 << 20
_ABANDONED_AFTER = 24 * 3600.0
_PIPELINE_MIN = 64 * 1024  # smaller chunks are written inline: a thread hop would cost more than the write
_WRITE_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_WRITE_POOL_LOCK = threading.Lock()
# Waiting for another writer's lock: poll with a short, growing interval so cancellation is prompt.
_LOCK_POLL_MIN, _LOCK_POLL_MAX = 0.005, 0.1


class Readable(Protocol):
    """Anything :meth:`ContentStore.put_stream` can copy from: a file, a tar member, a decompressor."""

    def read(self, size: int = ..., /) -> bytes: ...


def _write_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that write and hash ingest chunks (shared by every store; one chunk per writer at a time)."""
    global _WRITE_POOL
    with _WRITE_POOL_LOCK:
        if _WRITE_POOL is None:
            _WRITE_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="content-write")
        return _WRITE_POOL


def _hex(digest: str) -> str:
    return validate_digest(digest).split(":", 1)[1]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove an ingest directory (flat: data and lock) if present."""
    for name in ("data", "lock"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


class ContentStore:
    """Committed blobs plus in-progress ingests under one root (see the module docstring).

    The synchronous methods do small filesystem operations and are fine to call from the event loop, except
    :meth:`put_stream`, :meth:`usage` and :meth:`clean_ingest` on large stores, which belong in a thread.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs" / "sha256"
        self._ingest = root / "ingest"
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._ingest.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise from_oserror(err, f"content store {root}") from err

    # --- reading ------------------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / _hex(digest)

    def has(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or ``None`` when it is not in the store."""
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as err:
            raise from_oserror(err, f"blob {digest}") from err

    def path(self, digest: str) -> Path:
        """The committed blob's file (read-only). ``NotFound`` when absent."""
        path = self._blob_path(digest)
        if not path.is_file():
            raise NotFound(f"blob {digest} not found")
        return path

    def read(self, digest: str) -> bytes:
        """The whole blob; meant for manifests and configs, not layers."""
        try:
            return self._blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        except OSError as err:
            raise from_oserror(err, f"blob {digest}") from err

    def digests(self) -> Iterator[str]:
        """Digests of every committed blob (in directory order)."""
        try:
            with os.scandir(self._blobs) as entries:
                names = [e.name for e in entries]
        except OSError as err:
            raise from_oserror(err, f"content store {self.root}") from err
        for name in names:
            digest = "sha256:" + name
            if is_digest(digest):
                yield digest

    def usage(self) -> int:
        """Bytes held by committed blobs."""
        total = 0
        for digest in self.digests():
            total += self.size(digest) or 0
        return total

    # --- writing ------------------------------------------------------------------------------------------

    def _tmp_path(self) -> Path:
        return self._ingest / f"put-{secrets.token_hex(8)}"

    def _install(self, tmp: Path, fd: int, hexdigest: str) -> None:
        """fsync, make read-only and atomically rename an already verified temporary file into blobs/."""
        os.fsync(fd)
        os.fchmod(fd, 0o444)
        os.rename(tmp, self._blobs / hexdigest)
        _fsync_dir(self._blobs)

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store a small blob held in memory and return its digest; idempotent.

        With ``digest`` given the data is verified first (``DigestMismatch`` and nothing written).
        """
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and actual != validate_digest(digest):
            raise DigestMismatch(f"{digest}: content does not match (got {actual})")
        if self.has(actual):
            return actual
        tmp = self._tmp_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                self._install(tmp, fd, actual.split(":", 1)[1])
            finally:
                os.close(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise from_oserror(err, f"blob {actual}") from err
        return actual

    def put_stream(self, stream: Readable, digest: str | None = None, size: int | None = None) -> tuple[str, int]:
        """Copy ``stream`` to its end into the store, hashing as it goes; return ``(digest, size)``.

        For content whose digest may be unknown in advance (a ``docker save`` layer.tar). With ``digest`` or
        ``size`` given they are verified (``DigestMismatch``, nothing kept). Blocking: call from a thread.
        Memory use is one chunk whatever the blob's size.
        """
        if digest is not None:
            validate_digest(digest)
        tmp = self._tmp_path()
        hasher = hashlib.sha256()
        written = 0
        what = digest or "stream"
        try:
            out = open(tmp, "xb", buffering=_WRITE_BUFFER)  # noqa: SIM115 (closed below)
        except OSError as err:
            raise from_oserror(err, f"blob {what}") from err
        try:
            with out:
                # Errors reading ``stream`` are the caller's (a corrupt archive...) and pass through as they are.
                while chunk := stream.read(_CHUNK):
                    hasher.update(chunk)
                    written += len(chunk)
                    if size is not None and written > size:
                        raise DigestMismatch(f"{what}: more than {size} bytes")
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise from_oserror(err, f"blob {what}") from err
                actual = "sha256:" + hasher.hexdigest()
                if size is not None and written != size:
                    raise DigestMismatch(f"{digest or actual}: size {written}, expected {size}")
                if digest is not None and actual != digest:
                    raise DigestMismatch(f"{digest}: content does not match (got {actual})")
                if not self.has(actual):
                    try:
                        out.flush()
                        self._install(tmp, out.fileno(), actual.split(":", 1)[1])
                    except OSError as err:
                        raise from_oserror(err, f"blob {actual}") from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return actual, written

    async def writer(self, digest: str, size: int) -> IngestWriter:
        """Open the one writer of ``digest`` (``size`` bytes), waiting for any other writer to finish.

        The lock is taken in a thread, so the event loop never blocks. If this coroutine is cancelled while
        waiting, the waiting thread stops and any lock it got is released. The returned writer resumes
        existing partial data (:attr:`IngestWriter.offset`). If the blob is already committed, the writer has
        ``committed`` set and ``offset == size``: there is nothing to write and :meth:`IngestWriter.commit`
        is a no-op.
        """
        hexdigest = _hex(digest)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise StoreError(f"blob {digest}: invalid size {size!r}")
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, IngestWriter, self, digest, hexdigest, size, stop)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()

            def release(done: asyncio.Future[IngestWriter]) -> None:
                if not done.cancelled() and done.exception() is None:
                    done.result().close()

            future.add_done_callback(release)
            raise

    # --- removing -----------------------------------------------------------------------------------------

    def delete(self, digest: str) -> int:
        """Remove a committed blob; return the bytes freed (0 if it was absent)."""
        path = self._blob_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        except OSError as err:
            raise from_oserror(err, f"blob {digest}") from err
        return size

    def clean_ingest(self, *, older_than: float = _ABANDONED_AFTER) -> None:
        """Remove abandoned ingests: lock free and untouched for ``older_than`` seconds (a day by default).

        Partial downloads younger than that are kept so an interrupted pull can resume.
        """
        cutoff = time.time() - older_than
        try:
            with os.scandir(self._ingest) as entries:
                found = [(e.name, Path(e.path)) for e in entries]
        except OSError as err:
            raise from_oserror(err, f"content store {self.root}") from err
        for name, path in found:
            try:
                if name.startswith("put-"):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                elif path.is_dir():
                    self._clean_one_ingest(path, cutoff)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise from_oserror(err, f"ingest {path}") from err

    def _clean_one_ingest(self, path: Path, cutoff: float) -> None:
        newest = max(
            (p.stat().st_mtime for p in (path, path / "data", path / "lock") if p.exists()), default=0.0
        )
        if newest >= cutoff:
            return
        try:
            fd = os.open(path / "lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            _remove_tree(path)  # a crash between mkdir and creating the lock
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # someone is writing it right now
            _remove_tree(path)
        finally:
            os.close(fd)


class _Stopped(Exception):
    """The coroutine waiting for this writer was cancelled; the thread gives up waiting for the lock."""


class IngestWriter:
    """The exclusive writer of one blob. Build it with :meth:`ContentStore.writer`.

    Life cycle: ``write``/``awrite`` any number of times, then exactly one of ``commit`` (verify and publish),
    ``close`` (keep the partial data for a later resume) or ``abort`` (discard it). ``close`` is always safe
    to call again, and is what ``with`` does on exit. Not thread-safe: one task drives one writer
    (``awrite`` leaves at most one chunk being written in a thread; every other method waits for it first).
    """

    digest: str
    size: int
    offset: int
    committed: bool

    def __init__(self, store: ContentStore, digest: str, hexdigest: str, size: int, stop: threading.Event) -> None:
        """Runs in a worker thread: takes the lock, then re-hashes existing partial data to resume."""
        self.digest, self.size, self.offset, self.committed = digest, size, 0, False
        self._store = store
        self._dir = store._ingest / hexdigest
        self._final = store._blobs / hexdigest
        self._hash = hashlib.sha256()
        self._data: AppendFile | None = None
        self._lock_fd: int | None = None
        self._inflight: concurrent.futures.Future[None] | None = None  # the write awrite left running
        self._failed: BaseException | None = None  # a background write's error, raised from then on
        try:
            self._lock_fd = self._acquire(stop)
            if self._final.is_file():
                # Someone committed it while we waited: our fresh lock dir (and any stale data) is litter.
                _remove_tree(self._dir)
                self.committed, self.offset = True, size
                return
            self._data = self._open_data()
        except BaseException as err:
            self.close()
            if isinstance(err, OSError):
                raise from_oserror(err, f"ingest of {digest}") from err
            raise

    def _acquire(self, stop: threading.Event) -> int:
        """Lock ``ingest/<hex>/lock``; retry if the file we locked was removed by a committing writer."""
        delay = _LOCK_POLL_MIN
        lock_path = self._dir / "lock"
        while True:
            self._dir.mkdir(exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # the directory vanished between mkdir and open: a writer just committed
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if stop.wait(delay):
                    raise _Stopped from None
                delay = min(delay * 2, _LOCK_POLL_MAX)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # we locked a file the previous holder already unlinked: start over

    def _open_data(self) -> AppendFile:
        data_path = self._dir / "data"
        with open(data_path, "a+b", buffering=_WRITE_BUFFER) as stream:
            stream.seek(0)
            have = 0
            while chunk := stream.read(_CHUNK):
                if have + len(chunk) > self.size:
                    stream.truncate(0)  # longer than the blob can be: not resumable
                    self._hash, have = hashlib.sha256(), 0
                    break
                self._hash.update(chunk)
                have += len(chunk)
        self.offset = have
        return AppendFile(data_path, have)

    # --- writing ------------------------------------------------------------------------------------------

    def _stream(self) -> AppendFile:
        if self.committed:
            raise Conflict(f"blob {self.digest} is already committed")
        if self._failed is not None:
            raise self._failed
        if self._data is None:
            raise StoreError(f"ingest of {self.digest} is closed")
        return self._data

    def _settle(self, *, quiet: bool = False) -> None:
        """Wait for the write :meth:`awrite` left running; raise its error (sticky) unless ``quiet``."""
        pending, self._inflight = self._inflight, None
        if pending is not None:
            try:
                pending.result()
            except BaseException as err:
                self._failed = err
        if self._failed is not None and not quiet:
            raise self._failed

    def _check_room(self, size: int) -> None:
        if self.offset + size > self.size:
            got = self.offset + size
            self.abort()
            raise DigestMismatch(f"{self.digest}: more than {self.size} bytes received ({got})")

    def _append(self, stream: AppendFile, data: bytes | memoryview) -> None:
        try:
            stream.write(data)
        except OSError as err:
            raise from_oserror(err, f"ingest of {self.digest}") from err
        self._hash.update(data)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. Going past ``size`` discards the ingest and raises ``DigestMismatch``."""
        self._settle()
        stream = self._stream()
        self._check_room(len(data))
        self._append(stream, data)
        self.offset += len(data)

    async def awrite(self, data: bytes | memoryview) -> None:
        """:meth:`write`, pipelined: a big chunk is written and hashed in a thread while the caller goes on.

        The call returns once the *previous* chunk is done and this one is handed over, so the download
        receives chunk n+1 while chunk n is written and hashed (one chunk in flight per writer). A failed
        background write is raised by the next ``awrite``/``write``/``commit``; ``offset`` counts the chunk
        in flight. ``data`` must not change afterwards (a mutable buffer is copied).
        """
        if self._inflight is not None:
            if not self._inflight.done():
                await asyncio.wrap_future(self._inflight)
            self._settle()
        stream = self._stream()
        self._check_room(len(data))
        if len(data) < _PIPELINE_MIN:
            self._append(stream, data)
        else:
            if isinstance(data, memoryview) and not data.readonly:
                data = bytes(data)
            self._inflight = _write_pool().submit(self._append, stream, data)
        self.offset += len(data)

    def commit(self) -> None:
        """Check size then sha256, fsync, make read-only and rename into ``blobs/``; release the lock.

        On a mismatch the ingest is removed and ``DigestMismatch`` raised. Blocking (fsync): call it from a
        thread in async code.
        """
        if self.committed:
            self.close()
            return
        try:
            self._settle()
        except BaseException:
            self.close()
            raise
        stream = self._stream()
        if self.offset != self.size:
            offset = self.offset
            self.abort()
            raise DigestMismatch(f"{self.digest}: size {offset}, expected {self.size}")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self.abort()
            raise DigestMismatch(f"{self.digest}: content does not match (got {actual})")
        try:
            stream.flush()
            self._store._install(self._dir / "data", stream.fileno(), self._final.name)
            self.committed = True
            _remove_tree(self._dir)
        except OSError as err:
            self.close()
            raise from_oserror(err, f"blob {self.digest}") from err
        self.close()

    def close(self) -> None:
        """Release the lock, keeping partial data for a resume. Idempotent."""
        self._settle(quiet=True)  # the write in flight (if any) finishes before its file is closed
        data, self._data = self._data, None
        lock, self._lock_fd = self._lock_fd, None
        try:
            if data is not None:
                data.close()
        except OSError as err:
            if err.errno != errno.EBADF:
                raise from_oserror(err, f"ingest of {self.digest}") from err
        finally:
            if lock is not None:
                os.close(lock)

    def abort(self) -> None:
        """Discard the partial data and release the lock."""
        self._settle(quiet=True)
        if self._lock_fd is not None and not self.committed:
            if self._data is not None:
                self._data.close()
                self._data = None
            _remove_tree(self._dir)
        self.close()

    def __enter__(self) -> IngestWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
