"""IngestWriter.awrite pipelining: one chunk written in a thread while the caller receives the next one."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.content import ContentStore
from engine.errors import DigestMismatch

REPO = Path(__file__).resolve().parents[2]
CHUNK = 256 * 1024  # above the pipelining threshold


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


async def test_pipelined_chunks_are_written_in_order_and_verified(store: ContentStore) -> None:
    data = bytes(range(256)) * (5 * CHUNK // 256) + b"tail"
    digest = digest_of(data)
    writer = await store.writer(digest, len(data))
    for start in range(0, len(data), CHUNK):
        await writer.awrite(data[start : start + CHUNK])
        assert writer.offset == min(start + CHUNK, len(data))  # counts the chunk still in flight
    writer.commit()
    assert store.read(digest) == data


async def test_mutable_buffer_is_copied_before_it_is_handed_over(store: ContentStore) -> None:
    data = b"a" * CHUNK + b"b" * CHUNK
    writer = await store.writer(digest_of(data), len(data))
    buffer = bytearray(data[:CHUNK])
    await writer.awrite(memoryview(buffer))
    buffer[:] = b"x" * CHUNK  # the caller reuses its buffer at once
    await writer.awrite(data[CHUNK:])
    writer.commit()
    assert store.read(digest_of(data)) == data


async def test_oversize_is_refused_counting_the_chunk_in_flight(store: ContentStore) -> None:
    data = b"z" * (2 * CHUNK)
    digest = digest_of(data)
    writer = await store.writer(digest, 2 * CHUNK - 1)
    await writer.awrite(data[:CHUNK])
    with pytest.raises(DigestMismatch, match="more than"):
        await writer.awrite(data[CHUNK:])
    assert not (store.root / "ingest" / digest.split(":", 1)[1]).exists()


async def test_close_waits_for_the_write_in_flight_and_keeps_it_for_resume(store: ContentStore) -> None:
    data = b"q" * (3 * CHUNK)
    digest = digest_of(data)
    writer = await store.writer(digest, len(data))
    await writer.awrite(data[:CHUNK])
    writer.close()  # the chunk in flight is on disk before the file closes
    again = await store.writer(digest, len(data))
    assert again.offset == CHUNK
    await again.awrite(data[CHUNK:])
    again.commit()
    assert store.read(digest) == data


def test_failed_background_write_surfaces_at_the_next_call_and_on_commit(tmp_path: Path) -> None:
    """A real write error (EFBIG under RLIMIT_FSIZE) in the writer thread is raised later, and stays raised.

    Chunks larger than the file's 1 MiB buffer, so each one reaches write(2) in the thread it was handed to.
    """
    big = 2 * 1024 * 1024
    script = textwrap.dedent(
        f"""
        import asyncio, hashlib, resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from engine.content import ContentStore
        from engine.errors import StoreError

        async def main() -> None:
            store = ContentStore(Path({str(tmp_path / "content")!r}))
            data = b"f" * (4 * {big})
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            writer = await store.writer(digest, len(data))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, ({big} + 1000, resource.RLIM_INFINITY))
            await writer.awrite(data[:{big}])
            await writer.awrite(data[{big}:2 * {big}])  # handed over; fails in the thread
            for attempt in ("awrite", "commit"):
                try:
                    if attempt == "awrite":
                        await writer.awrite(data[2 * {big}:])
                    else:
                        writer.commit()
                except StoreError as err:
                    print(attempt, "StoreError", err)
                else:
                    print(attempt, "no error")
            writer.close()
            print("visible", store.has(digest))

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("awrite StoreError") and "ingest of sha256:" in lines[0]
    assert lines[1].startswith("commit StoreError")
    assert lines[2] == "visible False"
