"""``ByteFeed``: the bridge between an asyncio producer (a download) and the thread applying the layer.

The download runs on the event loop and calls ``await feed.feed(chunk)``; ``apply_layer`` runs in a worker
thread and calls ``feed.read(n)`` like on a file. The buffer is bounded: when it holds ``max_buffer`` bytes,
``feed()`` waits (without blocking the loop) until the reader has drained some, so a slow disk slows the
download instead of filling memory (back-pressure).

Ending the stream:

* the producer calls ``close()`` at EOF (the reader gets the buffered bytes, then ``b""``);
* the producer calls ``fail(exc)`` when the download failed (the reader raises ``exc`` at its next read:
  a half-downloaded layer is worthless, so buffered bytes are dropped);
* the consumer calls ``abandon(exc)`` when it gave up (a rejected layer, a full disk): the producer's next or
  pending ``feed()`` raises that error at once instead of waiting forever for a reader that is gone, and a
  reader still blocked in ``read()`` (the decompression thread) raises it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from engine.errors import StoreError

__all__ = ["ByteFeed"]


class ByteFeed:
    """A bounded byte pipe: async ``feed`` on one side, blocking ``read`` on the other."""

    def __init__(self, max_buffer: int = 16 * 2**20) -> None:
        if max_buffer <= 0:
            raise ValueError("max_buffer must be positive")
        self._max_buffer = max_buffer
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._chunks: deque[bytes] = deque()
        self._first_at = 0  # bytes of ``_chunks[0]`` already read: consumed prefixes are never re-copied
        self._buffered = 0
        self._closed = False
        self._failure: BaseException | None = None
        self._abandoned: BaseException | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed and not read yet."""
        with self._lock:
            return self._buffered

    async def feed(self, data: bytes) -> None:
        """Append ``data``; waits while the buffer is full. Raises the consumer's error once it abandoned.

        A chunk is accepted whenever the buffer is below its bound, even if the chunk itself is larger, so a
        single oversized chunk can never wait forever.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._abandoned is not None:
                    raise self._abandoned
                if self._closed or self._failure is not None:
                    raise RuntimeError("ByteFeed.feed() after close() or fail()")
                if self._buffered < self._max_buffer:
                    if data:
                        self._chunks.append(bytes(data))
                        self._buffered += len(data)
                        self._readable.notify_all()
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, waiter)
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is not None and self._waiter[1] is waiter:
                        self._waiter = None

    def close(self) -> None:
        """End of stream: the reader gets what is buffered, then ``b""``."""
        with self._lock:
            self._closed = True
            self._readable.notify_all()

    def fail(self, exc: BaseException) -> None:
        """The producer failed: the reader raises ``exc`` at its next ``read``."""
        with self._lock:
            self._failure = exc
            self._chunks.clear()
            self._first_at = 0
            self._buffered = 0
            self._readable.notify_all()

    def abandon(self, exc: BaseException | None = None) -> None:
        """The consumer gave up: pending and later ``feed()`` calls (and readers) raise ``exc`` at once."""
        with self._lock:
            self._abandoned = exc if exc is not None else StoreError("layer stream abandoned by its consumer")
            self._chunks.clear()
            self._first_at = 0
            self._buffered = 0
            self._readable.notify_all()
            self._wake_producer_locked()

    def read(self, n: int = -1) -> bytes:
        """Block until bytes are available; return at most ``n`` of them (all until EOF for ``n < 0``).

        Returns ``b""`` only at end of stream. Raises the producer's ``fail()`` error or the ``abandon()`` error.
        """
        if n < 0:
            parts = []
            while chunk := self.read(2**20 * 16):
                parts.append(chunk)
            return b"".join(parts)
        if n == 0:
            return b""
        with self._lock:
            if not self._wait_readable_locked():
                return b""
            first, at = self._chunks[0], self._first_at
            if at == 0 and len(first) <= n:  # the common case: hand over a whole chunk, no copy
                self._chunks.popleft()
                data = first
            else:
                data = first[at : at + n]
                self._advance_locked(len(data))
            self._consumed_locked(len(data))
            return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """``read`` straight into a caller's buffer (decompressors read this way); 0 at end of stream.

        Copies from the buffered chunks once, possibly from several of them, without an intermediate ``bytes``.
        """
        target = memoryview(buffer).cast("B")
        if not len(target):
            return 0
        with self._lock:
            if not self._wait_readable_locked():
                return 0
            filled = 0
            while self._chunks and filled < len(target):
                first, at = self._chunks[0], self._first_at
                take = min(len(first) - at, len(target) - filled)
                target[filled : filled + take] = memoryview(first)[at : at + take]
                filled += take
                self._advance_locked(take)
            self._consumed_locked(filled)
            return filled

    def readable(self) -> bool:
        return True

    def _wait_readable_locked(self) -> bool:
        """Wait for buffered bytes (True) or the end of the stream (False); raise a failure or abandon."""
        while True:
            if self._abandoned is not None:
                raise self._abandoned
            if self._failure is not None:
                raise self._failure
            if self._chunks:
                return True
            if self._closed:
                return False
            self._readable.wait()

    def _advance_locked(self, n: int) -> None:
        """Mark ``n`` bytes of the first chunk read (at most what it has left)."""
        self._first_at += n
        if self._first_at == len(self._chunks[0]):
            self._chunks.popleft()
            self._first_at = 0

    def _consumed_locked(self, n: int) -> None:
        self._buffered -= n
        if self._buffered < self._max_buffer:
            self._wake_producer_locked()

    def _wake_producer_locked(self) -> None:
        if self._waiter is None:
            return
        loop, waiter = self._waiter
        self._waiter = None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
