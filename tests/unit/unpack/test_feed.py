"""ByteFeed: back-pressure, EOF, producer failure and consumer abandon, with a real consumer thread."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pytest

from engine.config import Limits
from engine.errors import LayerRejected, StoreError
from engine.unpack import ByteFeed, apply_layer
from tests.unit.unpack.tarbuild import DIGEST, GZIP, D, F, diff_id, gz, layer


async def until(predicate: object, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def test_feed_blocks_when_full_until_the_reader_drains() -> None:
    feed = ByteFeed(max_buffer=10)
    await feed.feed(b"0123456789")  # fills the buffer
    pending = asyncio.ensure_future(feed.feed(b"abc"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not pending.done() and feed.buffered == 10  # back-pressure: waiting, not buffering
    got = await asyncio.to_thread(feed.read, 4)
    assert got == b"0123"
    await asyncio.wait_for(pending, 5)
    assert feed.buffered == 9
    feed.close()
    assert await asyncio.to_thread(feed.read) == b"456789abc"
    assert feed.read(10) == b""


async def test_oversized_chunk_is_accepted_when_buffer_has_room() -> None:
    feed = ByteFeed(max_buffer=4)
    await asyncio.wait_for(feed.feed(b"x" * 100), 5)
    assert feed.read(1000) == b"x" * 100


async def test_reader_blocks_until_data_then_gets_eof() -> None:
    feed = ByteFeed()
    results: list[bytes] = []
    reader = threading.Thread(target=lambda: results.extend([feed.read(5), feed.read(5), feed.read(5)]))
    reader.start()
    await feed.feed(b"hello")
    await feed.feed(b"wor")
    await until(lambda: not feed.buffered, "the reader to take the data")
    feed.close()
    await asyncio.to_thread(reader.join, 5)
    assert results == [b"hello", b"wor", b""]


async def test_fail_is_raised_by_the_reader() -> None:
    feed = ByteFeed()
    await feed.feed(b"partial")
    feed.fail(LayerRejected("registry hung up"))
    with pytest.raises(LayerRejected, match="registry hung up"):
        feed.read(10)


async def test_abandon_wakes_a_waiting_producer_with_the_consumer_error() -> None:
    feed = ByteFeed(max_buffer=1)
    await feed.feed(b"x")
    pending = asyncio.ensure_future(feed.feed(b"y"))
    await asyncio.sleep(0)
    assert not pending.done()
    threading.Thread(target=feed.abandon, args=(LayerRejected("bad layer"),)).start()
    with pytest.raises(LayerRejected, match="bad layer"):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(LayerRejected, match="bad layer"):
        await feed.feed(b"z")


async def test_abandon_without_error_and_blocked_reader() -> None:
    feed = ByteFeed()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            feed.read(1)
        except StoreError as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    feed.abandon()
    await asyncio.to_thread(reader.join, 5)
    assert len(errors) == 1 and "abandoned" in str(errors[0])


async def test_apply_layer_streams_from_a_download(tmp_path: Path) -> None:
    tar = layer(D("d"), *(F(f"d/f{n}", bytes([n]) * 50_000) for n in range(40)))
    blob = gz(tar)
    feed = ByteFeed(max_buffer=64 << 10)
    (tmp_path / "root").mkdir()
    applying = asyncio.ensure_future(asyncio.to_thread(
        apply_layer, feed, GZIP, tmp_path / "root", layer_digest=DIGEST, expected_diff_id=diff_id(tar),
        whiteouts="delete", limits=Limits()))
    for start in range(0, len(blob), 8192):
        await feed.feed(blob[start : start + 8192])
        assert feed.buffered <= (64 << 10) + 8192
    feed.close()
    result = await asyncio.wait_for(applying, 30)
    assert result.entries == 41 and (tmp_path / "root/d/f39").read_bytes() == bytes([39]) * 50_000


async def test_rejected_layer_abandons_the_download(tmp_path: Path) -> None:
    blob = gz(layer(F(".wh..", b"")) + io.BytesIO(bytes(1 << 20)).getvalue())
    feed = ByteFeed(max_buffer=4096)
    (tmp_path / "root").mkdir()
    applying = asyncio.ensure_future(asyncio.to_thread(
        apply_layer, feed, GZIP, tmp_path / "root", layer_digest=DIGEST, expected_diff_id=None,
        whiteouts="delete", limits=Limits()))
    with pytest.raises(LayerRejected, match="invalid whiteout"):
        for _ in range(1000):  # far more than the blob: feeding must stop with the consumer's error
            await feed.feed(blob[:4096] if feed.buffered == 0 else b"\0" * 4096)
            blob = blob[4096:] or bytes(16)
    with pytest.raises(LayerRejected, match="invalid whiteout"):
        await asyncio.wait_for(applying, 30)
