"""A concurrent unpack cancelled at its awkward moments leaves no temporary snapshot behind."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

import engine.unpacker
from engine.config import Limits
from engine.content import ContentStore
from engine.snapshots import OverlaySnapshotter
from engine.unpack.worker import UnpackWorker
from engine.unpack.zygote import WorkerZygote
from engine.unpacker import Unpacker
from tests.integration.test_unpack_concurrent import IMAGE, store_image
from tests.support.procs import children

pytestmark = pytest.mark.root


async def test_cancelled_while_a_finished_layers_worker_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window a CI run hit now and then: a layer applied by its worker process, the unpack cancelled
    (another layer had failed) while that worker was being closed. Its temporary snapshot was left behind."""
    monkeypatch.setattr(engine.unpacker, "ISOLATE_BYTES", 0)  # every layer in a worker process
    content = ContentStore(tmp_path / "content")
    sn = OverlaySnapshotter(tmp_path / "snapshots")
    layers = store_image(content, IMAGE)
    entered, release = threading.Event(), threading.Event()
    real_close = UnpackWorker.close

    def held_close(self: UnpackWorker) -> None:
        if self.layer_digest == layers[0].digest:
            entered.set()
            release.wait()
        real_close(self)

    monkeypatch.setattr(UnpackWorker, "close", held_close)
    zygote = WorkerZygote()
    try:
        unpack = asyncio.ensure_future(Unpacker(sn, content, Limits(), concurrency=3, zygote=zygote).unpack(layers))
        try:
            await asyncio.to_thread(entered.wait)  # layer 0 is applied; its worker is being closed
            unpack.cancel()
            await asyncio.sleep(0)  # the cancellation reaches the task while the close is still held
        finally:
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await unpack
    finally:
        await asyncio.to_thread(zygote.close)
    assert [info.key for info in sn.walk()] == []  # nothing committed yet, and no temporary snapshot left
    assert not children(os.getpid())
