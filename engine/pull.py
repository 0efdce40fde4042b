"""Pull orchestration: resolve a reference, download what is missing in parallel, verify, record the image.

The puller owns no storage of its own; it drives the registry client into the content store and then asks the
image store to record the result. Invariants:

* A blob becomes visible in the content store only after its size and sha256 were verified (the store's
  writer checks on commit), so a ``kill -9`` at any moment leaves either a resumable ingest or a whole blob.
* The image record is written last, after every blob it names is committed: an image is never half-visible.
* Two pulls of the same blob in this process share one download (``_inflight``); across processes the content
  store's ingest lock serialises them and the second finds the committed blob.
* Limits (manifest size, layer count, total size) are checked before any layer byte is downloaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.config import Limits
from engine.content import ContentStore
from engine.errors import KiteboxError, LimitExceeded, ManifestInvalid
from engine.events import PullProgress
from engine.images import LayerRecord
from engine.leases import Lease
from engine.manifest import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_image_config,
    parse_manifest,
    select_manifest,
)
from engine.reference import Reference
from engine.registry import RegistryClient
from engine.unpacker import LayerSource, Unpacker, UnpackResult, first_cause

__all__ = ["PullResult", "Puller"]

ProgressSink = Callable[[PullProgress], None]


@dataclass(frozen=True, slots=True)
class PullResult:
    reference: Reference
    manifest_digest: str
    manifest_media_type: str
    index_digest: str | None
    manifest: Manifest
    config_digest: str
    config: ImageConfig
    unpacked: UnpackResult | None


class _Progress:
    """Aggregates per-layer byte counts into per-layer and whole-image progress records."""

    def __init__(self, reference: str, layers: list[Descriptor], sink: ProgressSink | None) -> None:
        self._reference = reference
        self._sink = sink
        self._done: dict[str, int] = {d.digest: 0 for d in layers}
        self._total = sum(d.size for d in layers)
        self._last_emit = 0.0

    def layer(self, digest: str, phase: str, current: int, total: int, *, force: bool = False) -> None:
        self._done[digest] = current
        if self._sink is None:
            return
        now = time.monotonic()
        # Byte progress is throttled to ~20 updates/s; phase changes always go out.
        if not force and now - self._last_emit < 0.05:
            return
        self._last_emit = now
        self._sink(PullProgress(self._reference, digest, phase, current, total))
        self._sink(PullProgress(self._reference, None, "downloading", sum(self._done.values()), self._total))

    def emit(self, phase: str) -> None:
        if self._sink is not None:
            self._sink(PullProgress(self._reference, None, phase, sum(self._done.values()), self._total))


class Puller:
    def __init__(
        self,
        client: RegistryClient,
        content: ContentStore,
        *,
        limits: Limits,
        parallel: int,
        platform: Platform | None = None,
    ) -> None:
        self._client = client
        self._content = content
        self._limits = limits
        self._parallel = asyncio.Semaphore(max(1, parallel))
        self._platform = platform or host_platform()
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def resolve(self, ref: Reference, keep: Callable[[bytes, str], None] | None = None
                      ) -> tuple[Manifest, str, str, str | None, bytes]:
        """Fetch the manifest for ``ref`` (through an index if needed): (manifest, digest, type, index, body).

        An index on the way is handed to ``keep`` (body, digest) to be stored; without it, stored here."""
        body, content_type, digest = await self._client.get_manifest(ref)
        doc = parse_manifest(body, content_type, max_layers=self._limits.max_layers)
        index_digest: str | None = None
        if isinstance(doc, Index):
            index_digest = digest
            if keep is not None:
                keep(body, digest)
            else:
                await asyncio.to_thread(self._content.put, body, digest)
            chosen = select_manifest(doc, self._platform)
            body, content_type, digest = await self._client.get_manifest(ref.with_digest(chosen.digest))
            doc = parse_manifest(body, content_type, max_layers=self._limits.max_layers)
            if isinstance(doc, Index):
                raise ManifestInvalid(f"{ref}: index entry {chosen.digest} is itself an index")
        self._check_limits(ref, doc)
        return doc, digest, doc.media_type, index_digest, body

    def _check_limits(self, ref: Reference, manifest: Manifest) -> None:
        if len(manifest.layers) > self._limits.max_layers:
            raise LimitExceeded(
                f"{ref}: manifest has {len(manifest.layers)} layers; the limit is {self._limits.max_layers}"
            )
        total = sum(layer.size for layer in manifest.layers) + manifest.config.size
        if total > self._limits.max_image_bytes:
            raise LimitExceeded(
                f"{ref}: image is {total} bytes; the limit is {self._limits.max_image_bytes} bytes"
            )
        if manifest.config.size > self._limits.max_manifest_bytes:
            raise LimitExceeded(f"{ref}: config blob is {manifest.config.size} bytes; too large")

    async def pull(
        self,
        ref: Reference,
        *,
        progress: ProgressSink | None = None,
        unpacker: Unpacker | None = None,
        lease: Lease | None = None,
    ) -> PullResult:
        """Download everything ``ref`` needs into the content store and, with ``unpacker``, unpack it.

        Layers are applied bottom-up while later ones are still downloading; a layer downloaded from byte 0 is
        decompressed and untarred as its bytes arrive (see ``engine.unpacker``).

        The small blobs (index, manifest, config) are stored in threads while the pull goes on: each is an
        fsync (1-10 ms) that would otherwise hold the event loop and delay the next fetch. All are stored before
        this returns, so the image record written afterwards names only stored blobs.
        """
        storing: list[asyncio.Future[str]] = []

        def keep(body: bytes, digest: str) -> None:
            storing.append(asyncio.ensure_future(asyncio.to_thread(self._content.put, body, digest)))

        try:
            result = await self._pull(ref, progress, unpacker, lease, keep)
        finally:
            stored = await asyncio.gather(*storing, return_exceptions=True)
        for outcome in stored:
            if isinstance(outcome, BaseException):
                raise outcome
        return result

    async def _pull(self, ref: Reference, progress: ProgressSink | None, unpacker: Unpacker | None,
                    lease: Lease | None, keep: Callable[[bytes, str], None]) -> PullResult:
        if progress is not None:
            progress(PullProgress(str(ref), None, "resolving", 0, 0))
        manifest, digest, media_type, index_digest, body = await self.resolve(ref, keep)
        if lease is not None:
            # Before anything is committed: a concurrent garbage collection must see these as in use.
            lease.add([digest, manifest.config.digest, *(layer.digest for layer in manifest.layers)])
            lease.add([index_digest] if index_digest else [])
        if unpacker is not None:
            await unpacker.start_workers([layer.size for layer in manifest.layers])
        keep(body, digest)
        config_desc = manifest.config
        if self._content.has(config_desc.digest):
            config_body = self._content.read(config_desc.digest)
        else:
            config_body = await self._client.get_blob(ref, config_desc)
            keep(config_body, config_desc.digest)
        config = parse_image_config(config_body)
        if len(config.diff_ids) != len(manifest.layers):
            raise ManifestInvalid(
                f"{ref}: image config lists {len(config.diff_ids)} diff_ids for {len(manifest.layers)} layers"
            )
        tracker = _Progress(str(ref), list(manifest.layers), progress)
        layer_records = [
            LayerRecord(d.digest, d.media_type, d.size, diff_id)
            for d, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        ]
        sources: dict[int, LayerSource] = {}
        if lease is not None:
            from engine.unpacker import chain_ids

            lease.add(chain_ids(config.diff_ids))
        if unpacker is not None:
            missing = await asyncio.to_thread(unpacker.missing, config.diff_ids)
            sources = {i: LayerSource(manifest.layers[i].digest) for i in missing}
        unpacked: list[UnpackResult] = []
        fetches: dict[str, asyncio.Task[None]] = {}

        async def unpack() -> None:
            assert unpacker is not None
            try:
                unpacked.append(
                    await unpacker.unpack(layer_records, sources=sources, progress=progress, reference=str(ref))
                )
            except KiteboxError as err:
                # A stream the unpacker finds corrupt may be a blob that fails its digest, which is then the
                # error to report (and it is why the stream is broken): let that layer's download finish and
                # say so first. The race between the two checks made the reported error depend on timing.
                named = [task for digest, task in fetches.items() if digest in str(err)]
                await asyncio.gather(*named, return_exceptions=True)
                raise

        try:
            async with asyncio.TaskGroup() as group:
                # Downloads are created (and so take download slots) bottom-up, the order the unpacker consumes
                # them in: the lowest unfinished layer always has a slot, so bounded feeds cannot deadlock.
                for position, layer in enumerate(manifest.layers):
                    fetches[layer.digest] = group.create_task(
                        self.fetch_blob(ref, layer, tracker, sources.get(position)))
                if unpacker is not None:
                    group.create_task(unpack())
        except BaseExceptionGroup as group_error:
            raise first_cause(group_error) from None
        tracker.emit("done")
        return PullResult(
            ref, digest, media_type, index_digest, manifest, config_desc.digest, config,
            unpacked[0] if unpacked else None,
        )

    async def fetch_blob(
        self,
        ref: Reference,
        blob: Descriptor,
        tracker: _Progress | None = None,
        source: LayerSource | None = None,
    ) -> None:
        """Make ``blob`` present in the content store, downloading it at most once per process.

        ``source``, when given, is told how the unpacker gets the bytes (live or from the store) and when the
        blob is committed or has failed.
        """
        try:
            if self._content.has(blob.digest):
                if tracker is not None:
                    tracker.layer(blob.digest, "exists", blob.size, blob.size, force=True)
                if source is not None:
                    source.from_store()
                return
            pending = self._inflight.get(blob.digest)
            if pending is not None:
                if tracker is not None:
                    tracker.layer(blob.digest, "waiting", 0, blob.size, force=True)
                await asyncio.shield(pending)
                if tracker is not None:
                    tracker.layer(blob.digest, "exists", blob.size, blob.size, force=True)
                if source is not None:
                    source.from_store()
                return
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inflight[blob.digest] = future
            try:
                await self._download(ref, blob, tracker, source)
            except BaseException as exc:
                future.set_exception(exc)
                # The waiters (if any) re-raise it; mark it retrieved so an unwaited future stays quiet.
                future.exception()
                raise
            else:
                future.set_result(None)
            finally:
                del self._inflight[blob.digest]
        except BaseException as exc:
            if source is not None:
                source.failed(exc)
            raise

    async def _download(
        self, ref: Reference, blob: Descriptor, tracker: _Progress | None, source: LayerSource | None
    ) -> None:
        async with self._parallel:
            writer = await self._content.writer(blob.digest, blob.size)
            try:
                if self._content.has(blob.digest):  # another process committed it while we waited
                    writer.close()
                    if tracker is not None:
                        tracker.layer(blob.digest, "exists", blob.size, blob.size, force=True)
                    if source is not None:
                        source.from_store()
                    return
                done = writer.offset
                live = source is not None and done == 0
                if source is not None and live:
                    source.stream()
                if tracker is not None:
                    tracker.layer(blob.digest, "downloading", done, blob.size, force=True)

                async def sink(chunk: bytes) -> None:
                    nonlocal done
                    await writer.awrite(chunk)
                    if live:
                        assert source is not None
                        await source.feed.feed(chunk)
                    done += len(chunk)
                    if tracker is not None:
                        tracker.layer(blob.digest, "downloading", done, blob.size)

                await self._client.stream_blob(ref, blob, sink, offset=writer.offset)
                if tracker is not None:
                    tracker.layer(blob.digest, "verifying", done, blob.size, force=True)
                await asyncio.to_thread(writer.commit)
            except BaseException:
                # Keep the partial ingest for resume unless the data itself was bad (commit removes it then).
                writer.close()
                raise
            if source is not None:
                if live:
                    source.blob_committed()
                else:
                    source.from_store()
            if tracker is not None:
                tracker.layer(blob.digest, "downloaded", blob.size, blob.size, force=True)
