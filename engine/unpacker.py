"""Turning an image's layers into committed snapshots, streaming from the download when it can.

For each layer, bottom up: ChainID ``c = chain_id(parent, diff_id)``; if snapshot ``c`` exists it is shared and
skipped; otherwise a temporary active snapshot is prepared on top of the parent, the layer is applied into its
upper directory (``engine.unpack.apply_layer``, in a worker thread, verifying the DiffID) and the snapshot is
committed as ``c``. A crash leaves only a temporary snapshot that the snapshotter's ``cleanup`` removes: no
partial snapshot is ever visible under a ChainID.

Where the bytes come from (``LayerSource``): while a layer is being downloaded from offset 0, its chunks are
teed into a bounded ``ByteFeed`` and decompressed/untarred as they arrive; otherwise (already in the store,
resumed, or downloaded by another pull) the committed blob is read from the content store. A streamed layer
is committed only after the content store has verified the blob's digest as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from engine.config import Limits
from engine.content import ContentStore
from engine.digest import chain_id
from engine.errors import Conflict
from engine.events import PullProgress
from engine.images import LayerRecord
from engine.snapshots import TEMPORARY_LABEL, Snapshotter
from engine.unpack import ApplyResult, ByteFeed, apply_layer

__all__ = ["LayerSource", "UnpackResult", "Unpacker", "chain_ids"]

_FEED_BUFFER = 32 * 2**20


@dataclass(eq=False)
class LayerSource:
    """How the unpacker gets one layer's compressed bytes: a live ``feed``, or the committed blob."""

    digest: str
    feed: ByteFeed = field(default_factory=lambda: ByteFeed(_FEED_BUFFER))
    streaming: bool = False
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    def stream(self) -> None:
        """The download of this blob starts at byte 0: chunks will be fed live."""
        self.streaming = True
        self.decided.set()

    def from_store(self) -> None:
        """The blob is (or will only be) available as a committed file."""
        self.streaming = False
        self.decided.set()
        self.committed.set()

    def blob_committed(self) -> None:
        self.feed.close()
        self.committed.set()

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        if self.streaming:
            self.feed.fail(exc)
        self.decided.set()
        self.committed.set()


@dataclass(frozen=True, slots=True)
class UnpackResult:
    top: str  # ChainID of the top layer
    applied: tuple[ApplyResult, ...]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    ids: list[str] = []
    parent: str | None = None
    for diff_id in diff_ids:
        parent = chain_id(parent, diff_id)
        ids.append(parent)
    return ids


class Unpacker:
    def __init__(self, snapshotter: Snapshotter, content: ContentStore, limits: Limits) -> None:
        self._snapshotter = snapshotter
        self._content = content
        self._limits = limits

    def missing(self, diff_ids: Sequence[str]) -> list[int]:
        """Positions of the layers whose snapshot does not exist yet."""
        return [i for i, cid in enumerate(chain_ids(diff_ids)) if not self._snapshotter.exists(cid)]

    async def unpack(
        self,
        layers: Sequence[LayerRecord],
        *,
        sources: dict[int, LayerSource] | None = None,
        progress: Callable[[PullProgress], None] | None = None,
        reference: str = "",
    ) -> UnpackResult:
        """Commit a snapshot for every layer; ``sources`` maps positions to live sources (others: the store)."""
        applied: list[ApplyResult] = []
        parent: str | None = None
        for position, layer in enumerate(layers):
            cid = chain_id(parent, layer.diff_id)
            if await asyncio.to_thread(self._snapshotter.exists, cid):
                parent = cid
                continue
            source = (sources or {}).get(position)
            if progress is not None:
                progress(PullProgress(reference, layer.digest, "extracting", 0, layer.size))
            result = await self._apply_one(layer, parent, cid, source)
            applied.append(result)
            if progress is not None:
                progress(PullProgress(reference, layer.digest, "done", layer.size, layer.size))
            parent = cid
        if parent is None:
            raise Conflict("image has no layers to unpack")
        return UnpackResult(parent, tuple(applied))

    async def _apply_one(
        self, layer: LayerRecord, parent: str | None, cid: str, source: LayerSource | None
    ) -> ApplyResult:
        sn = self._snapshotter
        key = f"extract-{os.getpid()}-{secrets.token_hex(6)} {cid}"
        await asyncio.to_thread(sn.prepare, key, parent, labels={TEMPORARY_LABEL: "1"})
        try:
            upper = sn.upper_dir(key)
            lower = sn.parent_dirs(key)
            if source is not None:
                await source.decided.wait()
                if source.error is not None:
                    raise source.error
            if source is not None and source.streaming:
                reader: BinaryIO = source.feed  # type: ignore[assignment]
                close_reader: Callable[[], None] = lambda: None  # noqa: E731
            else:
                if source is not None:
                    await source.committed.wait()
                    if source.error is not None:
                        raise source.error
                handle = open(self._content.path(layer.digest), "rb")  # noqa: SIM115 (closed below)
                reader, close_reader = handle, handle.close

            def work() -> ApplyResult:
                try:
                    return apply_layer(
                        reader,
                        layer.media_type,
                        upper,
                        layer_digest=layer.digest,
                        expected_diff_id=layer.diff_id,
                        whiteouts=sn.whiteout_mode,
                        lower=lower,
                        limits=self._limits,
                    )
                finally:
                    close_reader()

            thread_job = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                result = await asyncio.shield(thread_job)
            except asyncio.CancelledError:
                # Wake the worker if it is blocked on the feed, and let it finish before the snapshot goes.
                if source is not None and source.streaming:
                    source.feed.fail(asyncio.CancelledError())
                with contextlib.suppress(BaseException):
                    await thread_job
                raise
            except BaseException as exc:
                if source is not None and source.streaming:
                    source.feed.abandon(exc)
                raise
            if source is not None:
                # A streamed layer is only as good as its blob: wait for the store's digest check too.
                await source.committed.wait()
                if source.error is not None:
                    raise source.error
            try:
                await asyncio.to_thread(sn.commit, cid, key)
            except Conflict:
                # Another pull committed the same ChainID meanwhile: theirs is identical; drop ours.
                if not await asyncio.to_thread(sn.exists, cid):
                    raise
                await asyncio.to_thread(sn.remove, key)
            return result
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sn.remove, key)
            raise
