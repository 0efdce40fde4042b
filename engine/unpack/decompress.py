"""The uncompressed layer stream: decompress + hash in a background thread, read by the tar parser.

``LayerStream`` reads the *compressed* blob from ``source`` in its own thread, decompresses it (isal for
gzip, which releases the GIL; zstandard for zstd; nothing for plain tar), hashes the uncompressed bytes into
the DiffID and hands ~1 MiB chunks to the thread parsing the tar through a small bounded queue. On two
cores this overlaps decompression with file writing.

Bombs are stopped where the bytes appear: the running total is checked against
``limits.max_uncompressed_layer_bytes`` after every decompressed piece, and decompressors are only ever
asked for bounded output (gzip ``read(n)``; zstd is fed in 4 KiB pieces, ~128 MiB of output at most).

The consumer side looks like a forward-only file (``read``/``tell``/``seek``) for ``tarfile``, plus
``copy_to`` which writes member data straight from the chunks into a file descriptor without copying.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import zstandard
from isal import igzip, isal_zlib

from engine.config import Limits
from engine.errors import KiteboxError, LayerRejected, LimitExceeded, ManifestInvalid, from_oserror
from engine.manifest import layer_compression

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["ByteSource", "LayerStream", "compression_for"]

CHUNK = 1 << 20
_QUEUE_CHUNKS = 8
_ZSTD_PIECE = 4096
_ZSTD_READ = 64 << 10
_MAX_HEADER_READ = 8 << 20  # PAX / GNU long-name bodies are read into memory by tarfile: bound them

def compression_for(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (plain tar); ``engine.manifest`` owns media types (ManifestInvalid if unknown)."""
    return layer_compression(media_type)


class ByteSource(Protocol):
    """What ``apply_layer`` reads the compressed blob from: a binary file, a ``ByteFeed``..."""

    def read(self, n: int = -1, /) -> bytes: ...


class _Readinto(io.RawIOBase):
    """Gives ``readinto`` (which the gzip reader uses) to a source that only has ``read``."""

    def __init__(self, source: ByteSource) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        readinto = getattr(self._source, "readinto", None)
        if readinto is not None:  # files and ByteFeed fill the buffer themselves: one copy, not two
            filled: int = readinto(buffer)
            return filled
        data = self._source.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


class _Abandoned(Exception):
    """The consumer is gone; the producer thread stops."""


class _ChunkQueue:
    """Bounded hand-over of chunks from the producer thread to the consumer thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._done = False
        self._error: BaseException | None = None
        self._abandoned = False

    def put(self, chunk: bytes) -> None:
        with self._cond:
            while len(self._chunks) >= _QUEUE_CHUNKS and not self._abandoned:
                self._cond.wait()
            if self._abandoned:
                raise _Abandoned
            self._chunks.append(chunk)
            self._cond.notify_all()

    def finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._done = True
            self._error = error
            self._cond.notify_all()

    def get(self) -> bytes:
        """The next chunk; ``b""`` at the end; raises the producer's error."""
        with self._cond:
            while not self._chunks and not self._done:
                self._cond.wait()
            if self._chunks:
                chunk = self._chunks.popleft()
                self._cond.notify_all()
                return chunk
            if self._error is not None:
                raise self._error
            return b""

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._chunks.clear()
            self._cond.notify_all()


class LayerStream:
    """The uncompressed bytes of one layer, produced by a background thread. Use as a context manager."""

    def __init__(self, source: ByteSource, compression: str | None, *, layer_digest: str, limits: Limits) -> None:
        if compression not in (None, "gzip", "zstd"):
            raise ManifestInvalid(f"layer {layer_digest}: unsupported compression {compression!r}")
        self._source = source
        self._compression = compression
        self._digest = layer_digest
        self._limit = limits.max_uncompressed_layer_bytes
        self._queue = _ChunkQueue()
        self._thread = threading.Thread(target=self._produce, name=f"unpack-{layer_digest[7:19]}", daemon=True)
        self._diff_id: str | None = None
        self._size = 0
        self._chunk = b""
        self._view = memoryview(b"")
        self._pos = 0  # position in the current chunk
        self._base = 0  # stream offset of the current chunk
        self._eof = False

    # -- producer (background thread) ------------------------------------------------------------------

    def __enter__(self) -> LayerStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.abandon()
        if exc[0] is not None:
            abandon = getattr(self._source, "abandon", None)
            if callable(abandon):  # wake a producer blocked on a live download (ByteFeed)
                abandon(exc[1])
        self._thread.join()

    def _produce(self) -> None:
        try:
            hasher = hashlib.sha256()
            pending: list[bytes] = []
            pending_size = 0
            for piece in self._decompressed():
                self._size += len(piece)
                if self._size > self._limit:
                    raise LimitExceeded(
                        f"layer {self._digest}: uncompressed size exceeds the limit of {self._limit} bytes"
                    )
                hasher.update(piece)
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= CHUNK:
                    self._queue.put(pending[0] if len(pending) == 1 else b"".join(pending))
                    pending, pending_size = [], 0
            if pending:
                self._queue.put(b"".join(pending))
            self._diff_id = "sha256:" + hasher.hexdigest()
            self._queue.finish(None)
        except _Abandoned:
            return
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._queue.finish(self._translate(exc))

    def _decompressed(self) -> Iterator[bytes]:
        if self._compression == "gzip":
            reader = igzip.IGzipFile(fileobj=_Readinto(self._source), mode="rb")  # type: ignore[no-untyped-call]
            while data := reader.read(CHUNK):
                yield data
        elif self._compression == "zstd":
            yield from self._zstd()
        else:
            while data := self._source.read(CHUNK):
                yield data

    def _zstd(self) -> Iterator[bytes]:
        decompressor = zstandard.ZstdDecompressor()
        frame = decompressor.decompressobj()
        in_frame = False
        while raw := self._source.read(_ZSTD_READ):
            for start in range(0, len(raw), _ZSTD_PIECE):
                piece = raw[start : start + _ZSTD_PIECE]
                while piece:
                    in_frame = True
                    out = frame.decompress(piece)
                    if out:
                        yield out
                    piece = b""
                    if frame.eof:
                        piece = frame.unused_data
                        frame = decompressor.decompressobj()
                        in_frame = False
        if in_frame:
            raise zstandard.ZstdError("stream ended in the middle of a frame")

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, KiteboxError):
            return exc
        kind = {"gzip": "gzip", "zstd": "zstd"}.get(self._compression or "", "tar")
        if isinstance(exc, gzip.BadGzipFile | isal_zlib.error | EOFError | zstandard.ZstdError):
            return LayerRejected(f"layer {self._digest}: corrupt {kind} stream: {exc}")
        if isinstance(exc, OSError):
            return from_oserror(exc, f"layer {self._digest}")
        return exc

    # -- consumer (the tar parser's thread) ------------------------------------------------------------

    def _next_chunk(self) -> bool:
        """Move to the next chunk; False at end of stream."""
        if self._eof:
            return False
        chunk = self._queue.get()
        self._base += len(self._chunk)
        self._chunk, self._view, self._pos = chunk, memoryview(chunk), 0
        if not chunk:
            self._eof = True
            return False
        return True

    def _truncated(self) -> LayerRejected:
        return LayerRejected(f"layer {self._digest}: truncated tar stream at offset {self.tell()}")

    def tell(self) -> int:
        return self._base + self._pos

    def read(self, n: int = -1) -> bytes:
        """Read exactly ``n`` header bytes (tarfile's use); a short read means a truncated archive."""
        if n < 0 or n > _MAX_HEADER_READ:
            raise LimitExceeded(f"layer {self._digest}: tar header record of {n} bytes is too large")
        end = self._pos + n
        if end <= len(self._chunk):
            self._pos = end
            return self._chunk[end - n : end]
        parts = []
        while n:
            if self._pos == len(self._chunk) and not self._next_chunk():
                raise self._truncated()
            take = min(n, len(self._chunk) - self._pos)
            parts.append(self._chunk[self._pos : self._pos + take])
            self._pos += take
            n -= take
        return b"".join(parts)

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes ahead without consuming them (fewer only at end of stream)."""
        if self._pos + n <= len(self._chunk):
            return self._chunk[self._pos : self._pos + n]
        parts = [self._chunk[self._pos :]]
        size = len(parts[0])
        while size < n and self._next_chunk():
            parts.append(self._chunk)
            size += len(self._chunk)
        joined = b"".join(parts)
        # Put everything back as one chunk starting at the peeked position.
        self._base = self._base + len(self._chunk) - len(joined)
        self._chunk, self._view, self._pos = joined, memoryview(joined), 0
        if self._eof and joined:
            self._eof = False
        return joined[:n]

    def seek(self, offset: int, whence: int = 0) -> int:
        """Forward seeks (and backward ones within the current chunk)."""
        if whence == 1:
            offset += self.tell()
        elif whence != 0:
            raise OSError("LayerStream can only seek from the start or the current position")
        if offset < self._base:
            raise OSError(f"LayerStream cannot seek back to {offset}")
        self.skip(offset - self.tell())
        return self.tell()

    def skip(self, n: int) -> None:
        while n > 0:
            if self._pos == len(self._chunk) and not self._next_chunk():
                raise self._truncated()
            take = min(n, len(self._chunk) - self._pos)
            self._pos += take
            n -= take
        if n < 0:
            self._pos += n  # within the current chunk (checked by seek)

    def copy_to(self, fd: int, n: int, offset: int | None = None) -> None:
        """Write the next ``n`` bytes to ``fd`` (at ``offset`` with pwrite), straight from the chunks."""
        while n:
            if self._pos == len(self._chunk) and not self._next_chunk():
                raise self._truncated()
            take = min(n, len(self._chunk) - self._pos)
            view = self._view[self._pos : self._pos + take]
            while view:
                written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
                view = view[written:]
                if offset is not None:
                    offset += written
            self._pos += take
            n -= take

    def drain(self) -> None:
        """Consume the rest of the stream (padding after the end-of-archive counts in the DiffID)."""
        self._pos = len(self._chunk)
        while self._next_chunk():
            self._pos = len(self._chunk)

    def result(self) -> tuple[str, int]:
        """``(diff_id, uncompressed_bytes)`` once the stream was drained."""
        self.drain()
        self._thread.join()
        if self._diff_id is None:
            raise RuntimeError("layer stream ended without a digest")
        return self._diff_id, self._size
