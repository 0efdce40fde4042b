"""Content store: verified puts, resumable exclusive ingests, atomic commits, cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.content import ContentStore
from engine.errors import Conflict, DigestMismatch, InvalidArgument, NotFound, StoreError

REPO = Path(__file__).resolve().parents[2]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def ingest_dir(store: ContentStore, digest: str) -> Path:
    return store.root / "ingest" / digest.split(":", 1)[1]


def test_put_read_has_size_delete(store: ContentStore) -> None:
    data = b"hello blob"
    digest = store.put(data)
    assert digest == digest_of(data)
    assert store.has(digest) and store.read(digest) == data and store.size(digest) == len(data)
    assert store.path(digest) == store.root / "blobs" / "sha256" / digest[7:]
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444
    assert store.put(data, digest) == digest  # idempotent
    assert list(store.digests()) == [digest] and store.usage() == len(data)
    assert store.delete(digest) == len(data)
    assert not store.has(digest) and store.size(digest) is None and store.delete(digest) == 0
    with pytest.raises(NotFound, match=f"blob {digest} not found"):
        store.path(digest)
    with pytest.raises(NotFound):
        store.read(digest)


def test_put_refuses_wrong_digest_and_keeps_nothing(store: ContentStore) -> None:
    wrong = digest_of(b"other")
    with pytest.raises(DigestMismatch, match=f"{wrong}: content does not match"):
        store.put(b"data", wrong)
    assert list(store.digests()) == [] and list((store.root / "ingest").iterdir()) == []
    with pytest.raises(InvalidArgument, match="invalid digest"):
        store.put(b"data", "md5:abc")


def test_put_stream_verifies_and_streams(store: ContentStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "src"
    source.write_bytes(data)
    with open(source, "rb") as stream:
        assert store.put_stream(stream) == (digest_of(data), len(data))
    assert store.read(digest_of(data)) == data
    with open(source, "rb") as stream, pytest.raises(DigestMismatch, match="size"):
        store.put_stream(stream, None, len(data) + 1)
    with open(source, "rb") as stream, pytest.raises(DigestMismatch, match="more than 10 bytes"):
        store.put_stream(stream, None, 10)
    with open(source, "rb") as stream, pytest.raises(DigestMismatch, match="content does not match"):
        store.put_stream(stream, digest_of(b"x"))
    assert list((store.root / "ingest").iterdir()) == []


async def test_writer_commit_publishes_read_only_blob(store: ContentStore) -> None:
    data = os.urandom(300_000)
    digest = digest_of(data)
    with await store.writer(digest, len(data)) as writer:
        assert (writer.offset, writer.committed) == (0, False)
        writer.write(data[:1000])
        await writer.awrite(data[1000:])  # big chunk: goes through a thread
        assert not store.has(digest)  # nothing visible before commit
        writer.commit()
        assert writer.committed
    assert store.read(digest) == data
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444
    assert not ingest_dir(store, digest).exists()


async def test_close_keeps_partial_data_and_reopen_resumes(store: ContentStore) -> None:
    data = os.urandom(200_000)
    digest = digest_of(data)
    writer = await store.writer(digest, len(data))
    writer.write(data[:123_457])
    writer.close()
    writer.close()  # idempotent
    assert not store.has(digest)
    writer = await store.writer(digest, len(data))
    assert writer.offset == 123_457
    writer.write(data[123_457:])
    writer.commit()  # the hash covers the bytes written before the resume too
    assert store.read(digest) == data


async def test_mismatch_on_commit_discards_the_ingest(store: ContentStore) -> None:
    data = b"a" * 100
    digest = digest_of(data)
    writer = await store.writer(digest, len(data))
    writer.write(b"b" * 100)
    with pytest.raises(DigestMismatch, match=rf"{digest}: content does not match \(got sha256:"):
        writer.commit()
    writer.close()
    assert not store.has(digest) and not ingest_dir(store, digest).exists()
    writer = await store.writer(digest, len(data))
    assert writer.offset == 0
    writer.write(data[:10])
    with pytest.raises(DigestMismatch, match=f"{digest}: size 10, expected 100"):
        writer.commit()
    assert not ingest_dir(store, digest).exists()


async def test_oversize_write_is_refused_and_discarded(store: ContentStore) -> None:
    digest = digest_of(b"abc")
    writer = await store.writer(digest, 3)
    writer.write(b"ab")
    with pytest.raises(DigestMismatch, match="more than 3 bytes"):
        writer.write(b"cd")
    assert not ingest_dir(store, digest).exists()
    with pytest.raises(StoreError, match="closed"):
        writer.write(b"c")


async def test_abort_removes_partial_data(store: ContentStore) -> None:
    data = b"x" * 1000
    digest = digest_of(data)
    writer = await store.writer(digest, len(data))
    writer.write(data[:500])
    writer.abort()
    assert not store.has(digest) and not ingest_dir(store, digest).exists()
    writer = await store.writer(digest, len(data))
    assert writer.offset == 0
    writer.abort()


async def test_concurrent_writers_serialise_and_second_sees_committed_blob(store: ContentStore) -> None:
    data = os.urandom(4096)
    digest = digest_of(data)
    other = ContentStore(store.root)  # another open file description: like another process
    first = await store.writer(digest, len(data))
    second = asyncio.create_task(other.writer(digest, len(data)))
    done, _ = await asyncio.wait({second}, timeout=0.3)
    assert not done, "the second writer must wait for the first"
    first.write(data)
    await asyncio.to_thread(first.commit)
    later = await asyncio.wait_for(second, 10)
    assert later.committed and later.offset == len(data)
    later.commit()  # nothing to do
    with pytest.raises(Conflict, match="already committed"):
        later.write(b"x")
    later.close()
    assert store.read(digest) == data
    assert not ingest_dir(store, digest).exists()


async def test_cancelled_waiter_releases_nothing_it_does_not_hold(store: ContentStore) -> None:
    data = b"payload"
    digest = digest_of(data)
    first = await store.writer(digest, len(data))
    waiter = asyncio.create_task(store.writer(digest, len(data)))
    done, _ = await asyncio.wait({waiter}, timeout=0.1)
    assert not done
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    first.write(b"pay")
    first.close()
    again = await asyncio.wait_for(store.writer(digest, len(data)), 10)  # the lock is free again
    assert again.offset == 3
    again.write(b"load")
    again.commit()
    assert store.read(digest) == data


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from engine.content import ContentStore

    async def main() -> None:
        store = ContentStore(Path(sys.argv[1]))
        data = bytes.fromhex(sys.argv[2])
        writer = await store.writer(sys.argv[3], len(data))
        writer.write(data[:2])
        writer._data.flush()
        print("locked", flush=True)
        if sys.stdin.readline().strip() == "commit":
            writer.write(data[2:])
            writer.commit()
            print("committed", flush=True)

    asyncio.run(main())
    """
)


def spawn_child(store: ContentStore, data: bytes) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store.root), data.hex(), digest_of(data)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


async def test_writer_lock_is_exclusive_across_processes(store: ContentStore) -> None:
    data = b"cross-process"
    digest = digest_of(data)
    child = spawn_child(store, data)
    try:
        waiting = asyncio.create_task(store.writer(digest, len(data)))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done, "the lock must be held by the other process"
        out, _ = await asyncio.to_thread(child.communicate, "commit\n", 30)
        assert out.strip() == "committed"
        writer = await asyncio.wait_for(waiting, 10)
        assert writer.committed
        writer.close()
    finally:
        if child.returncode is None:
            child.kill()
            child.communicate(timeout=30)
    assert store.read(digest) == data


async def test_kill_9_mid_ingest_leaves_no_visible_blob_and_resumes(store: ContentStore) -> None:
    data = b"killed-in-the-middle"
    digest = digest_of(data)
    child = spawn_child(store, data)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)  # reaps it and closes the pipes
    assert child.returncode == -signal.SIGKILL
    assert not store.has(digest) and list(store.digests()) == []
    writer = await asyncio.wait_for(store.writer(digest, len(data)), 10)  # the dead process's lock is gone
    assert writer.offset == 2
    writer.write(data[2:])
    writer.commit()
    assert store.read(digest) == data


async def test_clean_ingest_removes_only_old_unlocked_ingests(store: ContentStore) -> None:
    old_data, young_data, busy_data = b"old", b"young", b"busy"
    for data in (old_data, young_data, busy_data):
        writer = await store.writer(digest_of(data), 100)
        writer.write(data)
        writer.close()
    busy = await store.writer(digest_of(busy_data), 100)
    long_ago = time.time() - 2 * 24 * 3600
    for data in (old_data, busy_data):
        folder = ingest_dir(store, digest_of(data))
        for path in (folder / "data", folder / "lock", folder):
            os.utime(path, (long_ago, long_ago))
    leftover = store.root / "ingest" / "put-deadbeef"
    leftover.write_bytes(b"tmp")
    os.utime(leftover, (long_ago, long_ago))
    store.clean_ingest()
    assert not ingest_dir(store, digest_of(old_data)).exists()
    assert ingest_dir(store, digest_of(young_data)).exists()
    assert ingest_dir(store, digest_of(busy_data)).exists()
    assert not leftover.exists()
    busy.close()


async def test_writer_validates_its_arguments(store: ContentStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.writer("sha256:xyz", 3)
    with pytest.raises(StoreError, match="invalid size"):
        await store.writer(digest_of(b"x"), -1)


def test_unwritable_root_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=re.escape(str(blocker))):
        ContentStore(blocker / "content")
