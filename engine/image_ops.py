"""Image verbs of the ``Engine``: pull (with unpack), list, inspect, rmi, prune, load, save, image mount, df.

A mixin of :class:`engine.engine.Engine`: the attributes declared below are the engine's stores and services.
Blobs and snapshots are collected after every removal; a lease protects what a pull or load in progress needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.config import Config
from engine.content import ContentStore
from engine.digest import is_digest
from engine.events import Event, EventBus, PullProgress
from engine.images import ImageRecord, ImageStore, LayerRecord
from engine.leases import EVERYTHING, Lease, LeaseManager
from engine.reference import Reference, parse_reference

if TYPE_CHECKING:
    from engine.container_manager import ContainerManager
    from engine.pull import PullResult
    from engine.registry import RegistryClient
    from engine.snapshots import Snapshotter
    from engine.unpack.zygote import WorkerZygote

__all__ = ["ImageOps", "RemovedImage", "image_inspect_document"]


@dataclass(frozen=True, slots=True)
class RemovedImage:
    """One line of ``rmi``'s report: ``Untagged: busybox:latest`` or ``Deleted: sha256:...``."""

    action: str  # "Untagged" | "Deleted"
    what: str


class ImageOps:
    """The image half of the engine (see the module docstring)."""

    root: Path
    config: Config
    containers: ContainerManager
    _bus: EventBus
    _content: ContentStore
    _images: ImageStore
    _leases: LeaseManager
    _image_lock: asyncio.Lock
    _unpack_zygote: WorkerZygote | None

    # Declared for the type checker; Engine defines both (it comes first in the method resolution order).
    def _registry(self) -> RegistryClient:
        raise NotImplementedError

    def snapshotter(self) -> Snapshotter:
        raise NotImplementedError

    # -- images ------------------------------------------------------------------------------------------------

    async def pull(
        self, reference: str, *, on_progress: Callable[[PullProgress], None] | None = None
    ) -> ImageRecord:
        """Pull ``reference`` (Docker's grammar) and return the stored image."""
        from engine.pull import Puller
        from engine.unpacker import Unpacker

        ref = parse_reference(reference)
        snapshotter = await asyncio.to_thread(self.snapshotter)
        unpacker = Unpacker(snapshotter, self._content, self.config.limits, zygote=self._zygote())

        def progress(item: PullProgress) -> None:
            self._bus.publish(item)
            if on_progress is not None:
                on_progress(item)

        puller = Puller(
            self._registry(),
            self._content,
            limits=self.config.limits,
            parallel=self.config.registries.parallel_downloads,
        )
        with self._leases.hold() as lease:
            result = await puller.pull(ref, progress=progress, unpacker=unpacker, lease=lease)
            return await self._store_pulled(ref, result)

    async def _store_pulled(self, ref: Reference, result: PullResult) -> ImageRecord:
        layers = tuple(
            LayerRecord(d.digest, d.media_type, d.size, diff_id)
            for d, diff_id in zip(result.manifest.layers, result.config.diff_ids, strict=True)
        )
        record = ImageRecord(
            id=result.config_digest,
            manifest_digest=result.manifest_digest,
            manifest_media_type=result.manifest_media_type,
            index_digest=result.index_digest,
            config_digest=result.config_digest,
            layers=layers,
            created=result.config.created,
            architecture=result.config.architecture,
            os=result.config.os,
            variant=result.config.variant,
            size=await asyncio.to_thread(self._unpacked_size, layers),
            repo_tags=(),
            repo_digests=(),
            added=0.0,
        )
        repo_digest = f"{ref.repository}@{result.index_digest or result.manifest_digest}"
        async with self._image_lock:
            await asyncio.to_thread(self._record_pull, record, ref, repo_digest)
        stored = await asyncio.to_thread(self._images.get, record.id)
        self._bus.publish(Event("image", "pull", stored.id, {"name": str(ref)}))
        return stored

    def _zygote(self) -> WorkerZygote:
        """The engine's unpack zygote (its process starts when a pull or unpack first needs a worker)."""
        if self._unpack_zygote is None:
            from engine.unpack.zygote import WorkerZygote

            self._unpack_zygote = WorkerZygote()
        return self._unpack_zygote

    def _unpacked_size(self, layers: tuple[LayerRecord, ...]) -> int:
        """The image's size on disk: the sum of its layers' snapshots (Docker's SIZE column)."""
        from engine.unpacker import chain_ids

        snapshotter = self.snapshotter()
        return sum(snapshotter.usage(cid) for cid in chain_ids([layer.diff_id for layer in layers]))

    async def unpack(self, text: str) -> str:
        """Make sure every layer of a local image is unpacked (e.g. after ``load``); returns the top ChainID."""
        return await self.unpack_record(await self.image(text))

    async def unpack_record(self, record: ImageRecord) -> str:
        """:meth:`unpack` for an image already looked up. The common case -- unpacked long ago -- is one thread
        hop: opening the snapshotter and finding the top snapshot (its parents are committed too)."""
        from engine.unpacker import Unpacker

        top = _top_chain_id(record)

        def open_and_look() -> tuple[Snapshotter, bool]:
            snapshotter = self.snapshotter()
            return snapshotter, top is not None and snapshotter.exists(top)

        snapshotter, unpacked = await asyncio.to_thread(open_and_look)
        if unpacked and top is not None:
            return top
        result = await Unpacker(snapshotter, self._content, self.config.limits, zygote=self._zygote()
                                ).unpack(record.layers)
        return result.top

    async def image_unpacked(self, text: str) -> tuple[ImageRecord, str | None]:
        """:meth:`image` and, in the same thread hop, the image's top snapshot when it is unpacked already (None:
        not, or no layers; :meth:`unpack_record` then does it). NotFound as :meth:`image`."""
        def look() -> tuple[ImageRecord, str | None]:
            record = self._images.lookup(text)
            top = _top_chain_id(record)
            return record, top if top is not None and self.snapshotter().exists(top) else None

        return await asyncio.to_thread(look)

    async def mount_image(self, text: str, target: Path) -> None:
        """``image mount``: a read-only view of the image's root filesystem at ``target``."""
        from engine.snapshots.mount import mount_all

        top = await self.unpack(text)
        target = target.absolute()
        if not target.is_dir():
            raise errors.InvalidArgument(f"mount point {target} is not a directory")
        key = _view_key(target)
        snapshotter = self.snapshotter()
        mounts = await asyncio.to_thread(snapshotter.view, key, top)
        try:
            await asyncio.to_thread(mount_all, mounts, target)
        except BaseException:
            await asyncio.to_thread(snapshotter.remove, key)
            raise

    async def unmount_image(self, target: Path) -> None:
        """``image unmount``: undo ``mount_image``."""
        from engine.snapshots.mount import is_mountpoint, unmount

        target = target.absolute()
        key = _view_key(target)
        snapshotter = await asyncio.to_thread(self.snapshotter)
        if not snapshotter.exists(key):
            raise errors.NotFound(f"{target}: no image is mounted there by Kitebox")
        if await asyncio.to_thread(is_mountpoint, target):
            await asyncio.to_thread(unmount, target)
        await asyncio.to_thread(snapshotter.remove, key)

    def _record_pull(self, record: ImageRecord, ref: Reference, repo_digest: str) -> None:
        self._images.put(record)
        self._images.add_repo_digest(record.id, repo_digest)
        if ref.tag is not None:
            self._images.tag(record.id, ref)

    async def images(self) -> list[ImageRecord]:
        return await asyncio.to_thread(self._images.list)

    async def image(self, text: str) -> ImageRecord:
        """Look an image up by reference, id, id prefix or repo digest (``NotFound`` otherwise)."""
        return await asyncio.to_thread(self._images.lookup, text)

    async def inspect_image(self, text: str) -> dict[str, Any]:
        """Docker-shaped ``image inspect`` document."""
        record = await self.image(text)
        config_body = await asyncio.to_thread(self._content.read, record.config_digest)
        from engine.manifest import parse_image_config

        config = parse_image_config(config_body)
        return image_inspect_document(record, config.raw)

    async def remove_images(self, texts: list[str], *, force: bool = False) -> list[RemovedImage]:
        """``rmi``: untag, and delete images left with no tag; then collect unreferenced blobs."""
        report: list[RemovedImage] = []
        async with self._image_lock:
            for text in texts:
                report.extend(await asyncio.to_thread(self._remove_one, text, force))
            await self._collect_garbage()
        for item in report:
            action = "untag" if item.action == "Untagged" else "delete"
            self._bus.publish(Event("image", action, item.what))
        return report

    def _remove_one(self, text: str, force: bool) -> list[RemovedImage]:
        record = self._images.lookup(text)
        users = [r for r in self.containers.store.all() if r.image_id == record.id]
        if users and not force:
            raise errors.Conflict(
                f"conflict: unable to remove image {text} (must be forced) - container "
                f"{users[0].id[:12]} is using its referenced image {record.id[7:19]}"
            )
        if users:
            # Forced: untag, but keep the image (and its snapshots) for the containers that use it.
            return [self._untag_text(tag) for tag in record.repo_tags]
        names_by_ref = _is_reference_text(text, record)
        report: list[RemovedImage] = []
        if names_by_ref:
            ref = parse_reference(text)
            if ref.digest is None:
                self._images.untag(ref)
                report.append(RemovedImage("Untagged", ref.familiar))
                record = self._images.get(record.id)
                if record.repo_tags:
                    return report
            else:
                for digest_ref in record.repo_digests:
                    report.append(RemovedImage("Untagged", _familiar_text(digest_ref)))
        elif len(record.repo_tags) > 1 and not force:
            raise errors.Conflict(
                f"conflict: unable to delete {record.id[7:19]} (must be forced) - "
                "image is referenced in multiple repositories"
            )
        for tag in record.repo_tags:
            self._images.untag(parse_reference(tag))
            report.append(RemovedImage("Untagged", _familiar_text(tag)))
        if not names_by_ref or record.repo_digests:
            for digest_ref in record.repo_digests:
                if RemovedImage("Untagged", _familiar_text(digest_ref)) not in report:
                    report.append(RemovedImage("Untagged", _familiar_text(digest_ref)))
        self._images.delete(record.id)
        report.append(RemovedImage("Deleted", record.id))
        return report

    def _untag_text(self, normalised: str) -> RemovedImage:
        self._images.untag(parse_reference(normalised))
        return RemovedImage("Untagged", _familiar_text(normalised))

    async def prune_images(self, *, all_images: bool = False) -> tuple[list[RemovedImage], int]:
        """Remove dangling (untagged) images, or every image with ``all_images``; returns (report, bytes freed)."""
        report: list[RemovedImage] = []
        async with self._image_lock:
            for record in await asyncio.to_thread(self._images.list):
                if record.repo_tags and not all_images:
                    continue
                for tag in record.repo_tags:
                    await asyncio.to_thread(self._images.untag, parse_reference(tag))
                    report.append(RemovedImage("Untagged", _familiar_text(tag)))
                await asyncio.to_thread(self._images.delete, record.id)
                report.append(RemovedImage("Deleted", record.id))
            freed = await self._collect_garbage()
        return report, freed

    async def _collect_garbage(self) -> int:
        """Remove blobs and snapshots no image (and no container) needs; returns the bytes freed."""
        from engine.gc import collect_blobs

        roots = await asyncio.to_thread(self._images.blob_roots)
        leased = await asyncio.to_thread(self._leases.active)
        if EVERYTHING in leased:
            return 0  # a load is in progress somewhere: collect next time
        result = await asyncio.to_thread(collect_blobs, self._content, roots, extra_roots=leased)
        freed = result.freed + await asyncio.to_thread(self._collect_snapshots)
        return freed

    def _snapshot_roots(self) -> set[str]:
        from engine.unpacker import chain_ids

        roots: set[str] = set(self._leases.active())
        for record in self._images.list():
            roots.update(chain_ids([layer.diff_id for layer in record.layers]))
        return roots

    def _collect_snapshots(self) -> int:
        """Remove committed snapshots outside every image's chain, children first; in-use ones stay."""
        snapshotter = self.snapshotter()
        roots = self._snapshot_roots()
        freed = 0
        while True:
            infos = snapshotter.walk()
            parents = {info.parent for info in infos if info.parent}
            victims = [i for i in infos if i.kind == "committed" and i.key not in roots and i.key not in parents]
            if not victims or EVERYTHING in roots:
                return freed
            for info in victims:
                size = snapshotter.usage(info.key)
                snapshotter.remove(info.key)
                freed += size

    async def disk_usage(self) -> dict[str, Any]:
        """``system df``: images, snapshots, blobs and what pruning would reclaim."""
        return await asyncio.to_thread(self._disk_usage)

    def _disk_usage(self) -> dict[str, Any]:
        snapshotter = self.snapshotter()
        images = self._images.list()
        roots = self._snapshot_roots()
        infos = snapshotter.walk()
        committed = [i for i in infos if i.kind == "committed"]
        snap_sizes = {i.key: snapshotter.usage(i.key) for i in committed}
        blob_roots = self._images.blob_roots()
        blobs = list(self._content.digests())
        blob_sizes = {d: self._content.size(d) or 0 for d in blobs}
        dangling = [r for r in images if not r.repo_tags]
        return {
            "Images": {"Total": len(images), "Active": 0, "Size": sum(r.size for r in images),
                       "Reclaimable": sum(r.size for r in dangling)},
            "Snapshots": {"Total": len(committed), "Size": sum(snap_sizes.values()),
                          "Reclaimable": sum(v for k, v in snap_sizes.items() if k not in roots)},
            "Blobs": {"Total": len(blobs), "Size": sum(blob_sizes.values()),
                      "Reclaimable": sum(v for k, v in blob_sizes.items() if k not in blob_roots)},
            "Snapshotter": snapshotter.name,
        }

    async def load(self, source: Path) -> list[str]:
        """``load -i``: import a docker-save or OCI archive; returns the loaded names (or ids when untagged)."""
        with self._leases.hold() as lease:
            return await self._load_leased(source, lease)

    async def _load_leased(self, source: Path, lease: Lease) -> list[str]:
        from engine.archive import load_archive
        from engine.manifest import parse_image_config

        # Which blobs an archive holds is only known as it is read: hold everything until the records exist.
        lease.add([EVERYTHING])
        loaded = await asyncio.to_thread(load_archive, source, self._content, limits=self.config.limits)
        lease.add(d for image in loaded for d in (image.manifest_digest, image.config_digest,
                                                  *(layer.digest for layer in image.layers)))
        names: list[str] = []
        async with self._image_lock:
            for image in loaded:
                config = parse_image_config(await asyncio.to_thread(self._content.read, image.config_digest))
                record = ImageRecord(
                    id=image.config_digest,
                    manifest_digest=image.manifest_digest,
                    manifest_media_type=image.manifest_media_type,
                    index_digest=None,
                    config_digest=image.config_digest,
                    layers=image.layers,
                    created=config.created,
                    architecture=config.architecture,
                    os=config.os,
                    variant=config.variant,
                    size=sum(layer.size for layer in image.layers),
                    repo_tags=(),
                    repo_digests=(),
                    added=0.0,
                )
                await asyncio.to_thread(self._images.put, record)
                if image.repo_tags:
                    for tag in image.repo_tags:
                        ref = parse_reference(tag)
                        await asyncio.to_thread(self._images.tag, record.id, ref)
                        names.append(ref.familiar)
                else:
                    names.append(record.id)
                self._bus.publish(Event("image", "load", record.id))
        return names

    async def save(self, texts: list[str], out: Path) -> None:
        """``save -o``: write the images to an archive ``docker load`` accepts."""
        from engine.archive import save_archive

        records = [await self.image(text) for text in texts]
        if not records:
            raise errors.InvalidArgument("save: name at least one image")
        await asyncio.to_thread(save_archive, records, self._content, out)


def _view_key(target: Path) -> str:
    return f"view {target}"


def _is_reference_text(text: str, record: ImageRecord) -> bool:
    """Did the user name the image by a reference (tag or repo digest) rather than by id or id prefix?"""
    bare = text.removeprefix("sha256:")
    names_id = is_digest(text) or (
        len(bare) >= 4
        and all(c in "0123456789abcdef" for c in bare)
        and record.id.removeprefix("sha256:").startswith(bare)
    )
    return not names_id


def _familiar_text(normalised: str) -> str:
    try:
        return parse_reference(normalised).familiar
    except errors.InvalidReference:
        return normalised


def image_inspect_document(record: ImageRecord, config: Any) -> dict[str, Any]:
    """Docker's ``image inspect`` shape (the fields front ends and scripts read)."""
    raw = config if isinstance(config, dict) else {}
    document: dict[str, Any] = {
        "Id": record.id,
        "RepoTags": [_familiar_text(t) for t in record.repo_tags],
        "RepoDigests": [_familiar_text(d) for d in record.repo_digests],
        "Parent": "",
        "Comment": "",
        "Created": record.created or "",
        "DockerVersion": raw.get("docker_version", ""),
        "Author": raw.get("author", ""),
        "Config": raw.get("config", {}),
        "Architecture": record.architecture,
        "Os": record.os,
        "Size": record.size,
        "RootFS": {"Type": "layers", "Layers": [layer.diff_id for layer in record.layers]},
        "Metadata": {"LastTagTime": ""},
    }
    if record.variant:
        document["Variant"] = record.variant
    return document


def _top_chain_id(record: ImageRecord) -> str | None:
    """The ChainID of the image's top layer: the name of the snapshot its containers start from (None: no layers)."""
    from engine.unpacker import chain_ids

    return chain_ids([layer.diff_id for layer in record.layers])[-1] if record.layers else None
