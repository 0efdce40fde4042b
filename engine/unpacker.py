"""Turning an image's layers into committed snapshots, streaming from the download when it can.

For each layer, bottom up: ChainID ``c = chain_id(parent, diff_id)``; if snapshot ``c`` exists it is shared and
skipped; otherwise a temporary active snapshot is prepared on top of the parent, the layer is applied into its
upper directory (``engine.unpack.apply_layer``, in a worker thread, verifying the DiffID) and the snapshot is
committed as ``c``. A crash leaves only a temporary snapshot that the snapshotter's ``cleanup`` removes: no
partial snapshot is ever visible under a ChainID.

Overlay snapshots (run as root) are unpacked concurrently: each missing layer is applied as its bytes arrive
into a temporary snapshot *without* a parent (``engine.unpack.apply_layer_detached``), up to ``concurrency``
layers at a time, taken bottom-up. Commits stay bottom-up: once a layer's parent is committed, its snapshot is
rebased onto the parent (``OverlaySnapshotter.rebase``, metadata only), finished with the lowers' metadata
(``DetachedLayer.stack``) and committed. A layer that cannot be finished exactly without its lowers (a hard
link into a lower layer...) is discarded and applied again the sequential way from the committed blob. Apply
slots and download slots are both taken bottom-up, so the lowest unfinished layer always has both: bounded
feeds cannot deadlock. The copy snapshotter (whose active snapshots are full copies of the parent) keeps the
sequential path.

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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from engine.config import Limits
from engine.content import ContentStore
from engine.digest import chain_id
from engine.errors import Conflict
from engine.events import PullProgress
from engine.images import LayerRecord
from engine.snapshots import TEMPORARY_LABEL, OverlaySnapshotter, Snapshotter
from engine.unpack import ApplyResult, ByteFeed, apply_layer
from engine.unpack.detached import DetachedLayer, apply_layer_detached, can_apply_detached
from engine.unpack.worker import UnpackWorker
from engine.unpack.zygote import WorkerZygote

__all__ = ["LayerSource", "UnpackResult", "Unpacker", "chain_ids", "first_cause"]

_FEED_BUFFER = 32 * 2**20
ISOLATE_BYTES = 4 * 2**20
"""Layers of at least this many compressed bytes are applied in a worker process when applied detached."""
YIELDING_NICENESS = 10
"""The niceness of the workers of all but the biggest layer (see ``unpack``)."""
_T = TypeVar("_T")


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


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: the first Kitebox error (the root cause), else the first.

    When one layer fails, its siblings are cancelled or fail as a consequence (a feed abandoned, a source
    failed), so the first Kitebox error in the group is the one that names what went wrong.
    """
    from engine.errors import KiteboxError

    flat: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            flat.append(error)

    walk(group)
    for error in flat:
        if isinstance(error, KiteboxError):
            return error
    return flat[0]


async def _settled(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``asyncio.to_thread`` whose cancellation waits for the thread to finish before propagating.

    A cancelled ``to_thread`` returns at once while its thread goes on: a ``prepare`` would then create its
    snapshot *after* the caller's clean-up ran, leaving a temporary snapshot behind. Waiting makes the thread's
    side effect land first, so the clean-up sees (and removes) it.
    """
    job = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await job
        raise


async def _start_worker(layer_digest: str, niceness: int, zygote: WorkerZygote | None) -> UnpackWorker:
    """An ``UnpackWorker`` started in a thread; one that starts while the caller is being cancelled is ended."""
    job = asyncio.ensure_future(asyncio.to_thread(UnpackWorker, layer_digest, niceness=niceness, zygote=zygote))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            worker = await job
            await asyncio.to_thread(worker.close)
        raise


async def _in_thread(work: Callable[[], _T], name: str) -> _T:
    """Run blocking ``work`` in a thread of its own and await its result.

    Not the loop's default executor: a layer application may block for as long as its download is stalled,
    and several of them (several pulls, several layers) must never starve the executor that the rest of the
    engine (snapshot transactions, blob commits) needs to make progress.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(outcome: BaseException | None, value: _T | None) -> None:
        if done.done():
            return
        if outcome is not None:
            done.set_exception(outcome)
        else:
            done.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            value = work()
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits any more
                loop.call_soon_threadsafe(settle, exc, None)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, None, value)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    ids: list[str] = []
    parent: str | None = None
    for diff_id in diff_ids:
        parent = chain_id(parent, diff_id)
        ids.append(parent)
    return ids


def default_concurrency() -> int:
    """Layers applied at once by default: one per core, at most three. Each layer's worker keeps about a core
    busy (decompressing and hashing in one thread, writing files in another); on two cores a third one only took
    turns with the biggest layer, the pull's critical path (bench.pull here, one quiet run each: 1.19 s with 3
    and 1.76 s of CPU, 1.02 s with 2 and 1.53 s of CPU)."""
    return max(1, min(3, os.cpu_count() or 1))


class Unpacker:
    """Unpacks images into ``snapshotter``; ``concurrency``: layers applied at once (overlay, root only);
    ``zygote`` forks the worker processes of big layers (without one, each worker starts an interpreter)."""

    def __init__(
        self, snapshotter: Snapshotter, content: ContentStore, limits: Limits, *, concurrency: int | None = None,
        zygote: WorkerZygote | None = None,
    ) -> None:
        self._snapshotter = snapshotter
        self._content = content
        self._limits = limits
        self._concurrency = max(1, default_concurrency() if concurrency is None else concurrency)
        self._zygote = zygote

    async def start_workers(self, sizes: Sequence[int]) -> None:
        """Start the zygote now if a layer of these compressed ``sizes`` will be applied by a worker process:
        its interpreter then starts while the image's config and first bytes are fetched."""
        if self._zygote is not None and self.concurrent and any(size >= ISOLATE_BYTES for size in sizes):
            await asyncio.to_thread(self._zygote.start)

    def missing(self, diff_ids: Sequence[str]) -> list[int]:
        """Positions of the layers whose snapshot does not exist yet."""
        return [i for i, cid in enumerate(chain_ids(diff_ids)) if not self._snapshotter.exists(cid)]

    @property
    def concurrent(self) -> bool:
        """Whether layers are applied concurrently (overlay snapshotter, privileged process)."""
        return self._concurrency > 1 and isinstance(self._snapshotter, OverlaySnapshotter) and can_apply_detached()

    async def unpack(
        self,
        layers: Sequence[LayerRecord],
        *,
        sources: dict[int, LayerSource] | None = None,
        progress: Callable[[PullProgress], None] | None = None,
        reference: str = "",
    ) -> UnpackResult:
        """Commit a snapshot for every layer; ``sources`` maps positions to live sources (others: the store)."""
        if not layers:
            raise Conflict("image has no layers to unpack")
        cids = chain_ids([layer.diff_id for layer in layers])

        def find_first_missing() -> int:
            # A committed snapshot's parents are committed and cannot be removed under it: the top one present
            # means all are (one look-up for an image unpacked before).
            if self._snapshotter.exists(cids[-1]):
                return len(layers)
            return next((position for position, cid in enumerate(cids) if not self._snapshotter.exists(cid)),
                        len(layers))

        first_missing = await asyncio.to_thread(find_first_missing)
        sources = sources or {}
        if not self.concurrent:
            applied: list[ApplyResult] = []
            for position in range(first_missing, len(layers)):
                parent = cids[position - 1] if position else None
                applied.append(await self._one_sequential(
                    layers[position], parent, cids[position], sources.get(position), progress, reference))
            return UnpackResult(cids[-1], tuple(applied))
        results: dict[int, ApplyResult] = {}
        committed = {position: asyncio.Event() for position in range(first_missing, len(layers))}
        slots = asyncio.Semaphore(self._concurrency)
        # The biggest layer is the pull's critical path (nothing above it commits before it does): its worker
        # keeps the normal priority, the others yield the CPU to it when the cores are busy.
        biggest = max((layer.size for layer in layers[first_missing:]), default=0)

        async def one(position: int) -> None:
            parent = cids[position - 1] if position else None
            below = committed.get(position - 1)
            niceness = 0 if layers[position].size == biggest else YIELDING_NICENESS
            results[position] = await self._one_concurrent(
                layers[position], parent, cids[position], below, sources.get(position), slots, progress, reference,
                niceness)
            committed[position].set()

        try:
            async with asyncio.TaskGroup() as group:
                for position in range(first_missing, len(layers)):  # created bottom-up: slots go bottom-up
                    group.create_task(one(position))
        except BaseExceptionGroup as group_error:
            raise first_cause(group_error) from None
        return UnpackResult(cids[-1], tuple(results[p] for p in sorted(results)))

    async def _one_sequential(
        self, layer: LayerRecord, parent: str | None, cid: str, source: LayerSource | None,
        progress: Callable[[PullProgress], None] | None, reference: str,
    ) -> ApplyResult:
        if progress is not None:
            progress(PullProgress(reference, layer.digest, "extracting", 0, layer.size))
        result = await self._apply_one(layer, parent, cid, source)
        if progress is not None:
            progress(PullProgress(reference, layer.digest, "done", layer.size, layer.size))
        return result

    async def _one_concurrent(
        self, layer: LayerRecord, parent: str | None, cid: str, below: asyncio.Event | None,
        source: LayerSource | None, slots: asyncio.Semaphore, progress: Callable[[PullProgress], None] | None,
        reference: str, niceness: int = 0,
    ) -> ApplyResult:
        """Apply ``layer`` detached (holding an apply slot), then rebase, stack and commit it after ``below``."""
        sn = self._snapshotter
        assert isinstance(sn, OverlaySnapshotter)  # self.concurrent
        key = _temporary_key(cid)
        async with slots:
            if progress is not None:
                progress(PullProgress(reference, layer.digest, "extracting", 0, layer.size))
            # A big layer is applied by a process of its own (its own GIL: engine.unpack.worker), forked by the
            # zygote now so that its start overlaps the snapshot and the wait for the first bytes; a small one
            # is not worth a process.
            worker = (await _start_worker(layer.digest, niceness, self._zygote) if layer.size >= ISOLATE_BYTES
                      else None)
            applied: DetachedLayer | None = None
            try:
                try:
                    await _settled(sn.prepare, key, None, labels={TEMPORARY_LABEL: "1"})
                    upper = await asyncio.to_thread(sn.upper_dir, key)
                    if worker is not None:
                        isolated = worker
                        applied = await self._read_and_apply(layer, source, lambda reader: isolated.apply(
                            reader, layer.media_type, upper, expected_diff_id=layer.diff_id,
                            whiteouts=sn.whiteout_mode, limits=self._limits))
                    else:
                        applied = await self._read_and_apply(layer, source, lambda reader: apply_layer_detached(
                            reader, layer.media_type, upper, layer_digest=layer.digest,
                            expected_diff_id=layer.diff_id, whiteouts=sn.whiteout_mode, limits=self._limits))
                finally:
                    if worker is not None:
                        await _settled(worker.close)  # (already ended when it was used)
            except BaseException:
                # Also when cancelled while the worker was being closed, after a successful apply: the temporary
                # snapshot must not outlive this task (a test saw one left behind now and then).
                if applied is not None:
                    applied.close()
                with contextlib.suppress(Exception):
                    await _settled(sn.remove, key)  # done before this task ends, even if cancelled again
                raise
            assert applied is not None
            detached = applied
        try:
            if below is not None:
                await below.wait()
            stacked = False
            if not detached.needs_lowers:
                await asyncio.to_thread(sn.rebase, key, parent)
                lowers = await asyncio.to_thread(sn.parent_dirs, key)
                stacked = await asyncio.to_thread(detached.stack, lowers)
            if stacked:
                await _blob_verified(source)
                await self._commit(key, cid, detached.result.file_bytes)
                result = detached.result
        except BaseException:
            with contextlib.suppress(Exception):
                await _settled(sn.remove, key)
            raise
        finally:
            detached.close()
        if not stacked:  # apply it again, the sequential way, from the committed blob
            await asyncio.to_thread(sn.remove, key)
            await _blob_verified(source)
            result = await self._apply_one(layer, parent, cid, None)
        if progress is not None:
            progress(PullProgress(reference, layer.digest, "done", layer.size, layer.size))
        return result

    async def _read_and_apply(
        self, layer: LayerRecord, source: LayerSource | None, apply: Callable[[BinaryIO], _T]
    ) -> _T:
        """Run ``apply`` on the layer's compressed bytes (the live feed, else the committed blob) in a thread.

        A streamed layer is not verified yet when this returns: wait for ``_blob_verified`` before committing.
        """
        if source is not None:
            await source.decided.wait()
            if source.error is not None:
                raise source.error
        if source is not None and source.streaming:
            reader: BinaryIO = source.feed  # type: ignore[assignment]
            close_reader: Callable[[], None] = lambda: None  # noqa: E731
        else:
            await _blob_verified(source)
            handle = open(self._content.path(layer.digest), "rb")  # noqa: SIM115 (closed below)
            reader, close_reader = handle, handle.close

        def work() -> _T:
            try:
                return apply(reader)
            finally:
                close_reader()

        thread_job = asyncio.ensure_future(_in_thread(work, f"apply-{layer.digest[7:19]}"))
        try:
            return await asyncio.shield(thread_job)
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

    async def _commit(self, key: str, cid: str, size: int) -> None:
        sn = self._snapshotter
        try:
            await asyncio.to_thread(sn.commit, cid, key, size=size)
        except Conflict:
            # Another pull committed the same ChainID meanwhile: theirs is identical; drop ours.
            if not await asyncio.to_thread(sn.exists, cid):
                raise
            await asyncio.to_thread(sn.remove, key)

    async def _apply_one(
        self, layer: LayerRecord, parent: str | None, cid: str, source: LayerSource | None
    ) -> ApplyResult:
        sn = self._snapshotter
        key = _temporary_key(cid)
        try:
            await _settled(sn.prepare, key, parent, labels={TEMPORARY_LABEL: "1"})
            upper = sn.upper_dir(key)
            lower = sn.parent_dirs(key)
            result = await self._read_and_apply(layer, source, lambda reader: apply_layer(
                reader, layer.media_type, upper, layer_digest=layer.digest, expected_diff_id=layer.diff_id,
                whiteouts=sn.whiteout_mode, lower=lower, limits=self._limits))
            await _blob_verified(source)
            await self._commit(key, cid, result.file_bytes)
            return result
        except BaseException:
            with contextlib.suppress(Exception):
                await _settled(sn.remove, key)
            raise


def _temporary_key(cid: str) -> str:
    return f"extract-{os.getpid()}-{secrets.token_hex(6)} {cid}"


async def _blob_verified(source: LayerSource | None) -> None:
    """Wait until the layer's blob is committed (its digest verified by the content store); raise its failure."""
    if source is not None:
        await source.committed.wait()
        if source.error is not None:
            raise source.error
