"""ByteFeed.readinto / read: exact bytes across chunk boundaries, no re-copy of consumed prefixes."""

from __future__ import annotations

import asyncio
import random

from engine.unpack import ByteFeed


async def test_readinto_fills_across_chunks_and_tracks_buffered() -> None:
    feed = ByteFeed(max_buffer=1 << 20)
    for part in (b"abc", b"defgh", b"ij"):
        await feed.feed(part)
    buffer = bytearray(4)
    assert feed.readinto(buffer) == 4 and buffer == b"abcd"
    assert feed.buffered == 6
    assert feed.read(3) == b"efg"  # the rest of a partly read chunk, not beyond it
    big = bytearray(100)
    assert feed.readinto(memoryview(big)) == 3 and big[:3] == b"hij"
    feed.close()
    assert feed.readinto(big) == 0 and feed.read(5) == b""


async def test_whole_chunk_is_handed_over_without_a_copy() -> None:
    feed = ByteFeed()
    chunk = bytes(range(200)) * 100
    await feed.feed(chunk)
    assert feed.read(len(chunk) + 10) is chunk


async def test_random_read_sizes_reassemble_the_stream() -> None:
    rng = random.Random(5)
    data = rng.randbytes(300_000)
    feed = ByteFeed(max_buffer=50_000)

    async def produce() -> None:
        at = 0
        while at < len(data):
            size = rng.randrange(1, 40_000)
            await feed.feed(data[at : at + size])
            at += size
        feed.close()

    def consume() -> bytes:
        parts: list[bytes] = []
        sizes = random.Random(9)
        while True:
            if sizes.random() < 0.5:
                buffer = bytearray(sizes.randrange(1, 70_000))
                got = feed.readinto(buffer)
                part = bytes(buffer[:got])
            else:
                part = feed.read(sizes.randrange(1, 70_000))
            if not part:
                return b"".join(parts)
            parts.append(part)

    producer = asyncio.ensure_future(produce())
    assert await asyncio.wait_for(asyncio.to_thread(consume), 30) == data
    await producer
