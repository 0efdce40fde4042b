"""``AppendFile``: direct-I/O appends give exactly the bytes written, resume at any offset, fall back cleanly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from engine.content_file import AppendFile

_SIZES = (1, 4095, 4096, 4097, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 3, 3 * (1 << 20) + 17)


def _pieces(rng: random.Random, total: int) -> list[bytes]:
    pieces: list[bytes] = []
    while total > 0:
        size = min(total, rng.choice(_SIZES))
        pieces.append(rng.randbytes(size))
        total -= size
    return pieces


@pytest.mark.parametrize("start", [0, 1, 4095, 4096, 5000, (1 << 20) + 1])
def test_appends_are_exact_from_any_existing_length(tmp_path: Path, start: int) -> None:
    rng = random.Random(start)
    path = tmp_path / "data"
    existing = rng.randbytes(start)
    path.write_bytes(existing)
    pieces = _pieces(rng, 5 * (1 << 20) + 123)
    out = AppendFile(path, start)
    for piece in pieces:
        out.write(piece)
    out.flush()
    out.flush()  # idempotent
    os.fsync(out.fileno())
    out.close()
    out.close()
    assert path.read_bytes() == existing + b"".join(pieces)


def test_flush_then_more_writes_then_close(tmp_path: Path) -> None:
    """A flushed tail is written again, identically, by the next aligned write (a resumed close/commit)."""
    path = tmp_path / "data"
    path.write_bytes(b"")
    out = AppendFile(path, 0)
    out.write(b"a" * 10_000)
    out.flush()
    assert path.read_bytes() == b"a" * 10_000
    out.write(b"b" * (2 << 20))
    out.close()
    assert path.read_bytes() == b"a" * 10_000 + b"b" * (2 << 20)


def test_close_keeps_a_partial_file_for_resume(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    out = AppendFile(path, 0)
    out.write(b"x" * 7000)
    out.close()
    again = AppendFile(path, 7000)
    again.write(b"y" * 9000)
    again.close()
    assert path.read_bytes() == b"x" * 7000 + b"y" * 9000


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_filesystems_without_direct_io_get_buffered_writes(tmp_path: Path) -> None:
    directory = Path("/dev/shm") / f"kitebox-test-{os.getpid()}"
    directory.mkdir()
    try:
        path = directory / "data"
        path.write_bytes(b"12")
        out = AppendFile(path, 2)
        out.write(b"3" * (3 << 20))
        out.close()
        assert path.read_bytes() == b"12" + b"3" * (3 << 20)
    finally:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
