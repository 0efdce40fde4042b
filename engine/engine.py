"""``Engine``: the one service object every front end talks to.

An engine is opened on a state root (see ``docs/HACKING.md`` for the layout) and owns the stores, the registry
client and the event bus. Every method is a coroutine; blocking work runs in threads. The engine may be opened
by several processes at once (the app and a CLI): the stores use file locks and SQLite's WAL for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform as _platform
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.config import Config, default_root, load_config
from engine.container_manager import ContainerManager, CreateOptions
from engine.containers import ContainerRecord
from engine.content import ContentStore
from engine.digest import is_digest
from engine.events import Event, EventBus, PullProgress
from engine.images import ImageRecord, ImageStore, LayerRecord
from engine.leases import EVERYTHING, Lease, LeaseManager
from engine.reference import Reference, parse_reference

if TYPE_CHECKING:
    import httpx

    from engine.network import NetworkManager
    from engine.pull import PullResult
    from engine.registry import CredentialStore, RegistryClient
    from engine.runtime.supervisor import Supervisor
    from engine.snapshots import Snapshotter

__all__ = ["VERSION", "Engine", "RemovedImage"]

VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class RemovedImage:
    """One line of ``rmi``'s report: ``Untagged: busybox:latest`` or ``Deleted: sha256:...``."""

    action: str  # "Untagged" | "Deleted"
    what: str


class Engine:
    """The in-process container engine. Open with ``await Engine.open(root)``; close with ``await close()``."""

    def __init__(self, root: Path, config: Config, *, transport: httpx.AsyncBaseTransport | None) -> None:
        self.root = root
        self.config = config
        self._transport = transport
        self._bus = EventBus()
        self._content = ContentStore(root / "content")
        self._images = ImageStore(root / "images.db")
        self._leases = LeaseManager(root / "leases")
        self._client: RegistryClient | None = None
        self._credentials: CredentialStore | None = None
        self._snapshotter: Snapshotter | None = None
        self._supervisor: Supervisor | None = None
        self._supervisor_lock = asyncio.Lock()
        self._image_lock = asyncio.Lock()
        self._networks: NetworkManager | None = None
        self.containers = ContainerManager(
            root,
            images=self._images,
            content=self._content,
            bus=self._bus,
            snapshotter=self.snapshotter,
            unpack=self.unpack,
            supervisor=self._open_supervisor,
            networks=lambda: self.networks,
        )
        """Container verbs (``create``, ``start``, ``stop``, ``list``, ``logs``...): see ``ContainerManager``."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        root: Path | None = None,
        *,
        config: Config | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        recover: bool = True,
    ) -> Engine:
        """Open (creating if needed) the state under ``root`` (default: see ``engine.config.default_root``).

        With ``recover`` (the default) containers whose monitor is gone (the host rebooted, a monitor was
        killed) are reconciled and ``always``/``unless-stopped`` ones started again: see ``recover``.
        """
        root = (root or default_root()).absolute()
        config = config or load_config()
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o711)
            (root / "tmp").mkdir(exist_ok=True, mode=0o700)
        except OSError as err:
            raise errors.from_oserror(err, f"state root {root}") from err
        engine = await asyncio.to_thread(cls, root, config, transport=transport)
        engine._bus.bind_loop(asyncio.get_running_loop())
        if recover:
            try:
                await engine.recover()
            except BaseException:
                await engine.close()
                raise
        return engine

    async def close(self) -> None:
        """Release the engine's resources. Running containers keep running under their monitors."""
        if self._supervisor is not None:
            await self._supervisor.close()
            self._supervisor = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._networks is not None:
            self._networks.close()
        self._images.close()
        self._bus.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def events(self) -> AsyncIterator[Event | PullProgress]:
        """Every event from now on (lifecycle events and pull progress), until the engine closes."""
        return self._bus.subscribe()

    @property
    def networks(self) -> NetworkManager:
        """Networks (``create``, ``list``, ``inspect``, ``remove``, ``connect``...): see ``NetworkManager``.

        Created on first use: commands that never touch a network (``run --network none``) never load it.
        """
        if self._networks is None:
            from engine.network import NetworkManager

            net = self.config.network
            self._networks = NetworkManager(
                self.root,
                default_bridge=net.default_bridge,
                bridge_prefix=net.bridge_prefix,
                table=net.table,
                default_subnet=net.default_subnet or None,
                ip_forward=net.ip_forward,
            )
        return self._networks

    async def _open_supervisor(self) -> Supervisor:
        async with self._supervisor_lock:
            if self._supervisor is None:
                from engine.runtime.supervisor import Supervisor

                self._supervisor = await Supervisor.open(self.root)
            return self._supervisor

    async def _warm_supervisor(self) -> None:
        supervisor = await self._open_supervisor()
        await supervisor.warm_up()

    async def create_container(
        self,
        image: str,
        options: CreateOptions,
        *,
        pull_missing: bool = True,
        on_progress: Callable[[PullProgress], None] | None = None,
    ) -> ContainerRecord:
        """``create``: a container from ``image`` (pulled first when missing and ``pull_missing``)."""
        # A container is usually started right after it is created: warm the supervisor's helper process
        # (an interpreter start-up) while the container is being prepared.
        warm = asyncio.create_task(self._warm_supervisor())
        try:
            try:
                record = await self.image(image)
            except errors.NotFound:
                if not pull_missing:
                    raise
                record = await self.pull(image, on_progress=on_progress)
            return await self.containers.create(record, image, options)
        finally:
            with contextlib.suppress(Exception):
                await warm

    async def recover(self) -> list[str]:
        """Reconcile containers after the engine (or the host) went away; restart ``always`` ones.

        Returns the names of containers that were started again.
        """
        restarted: list[str] = []
        live: list[str] = []
        for record in await asyncio.to_thread(self.containers.store.all):
            if not record.state.running:
                continue
            if await asyncio.to_thread(_monitor_alive, self.containers.store.dir(record.id)):
                live.append(record.id)  # the common case, checked without talking to the monitor
                continue
            refreshed = await self.containers.get(record.id)
            policy = refreshed.host_config.get("RestartPolicy", {}).get("Name")
            if refreshed.state.running:
                live.append(record.id)
            elif policy in ("always", "unless-stopped"):
                await self.containers.start(record.id)
                restarted.append(record.name)
                live.append(record.id)
        # Network leftovers of containers that are gone (veths, leases, port rules, namespaces). Without network
        # state nothing was ever attached (--network none/host only): the network room is not even loaded.
        if await asyncio.to_thread(_stale_attachments, self.root, set(live)):
            await self.networks.repair(live)
        return restarted

    # -- volumes -----------------------------------------------------------------------------------------------

    async def volumes(self) -> list[dict[str, Any]]:
        return [v.inspect() for v in await asyncio.to_thread(self.containers.volumes.list)]

    async def create_volume(self, name: str | None = None, *, labels: dict[str, str] | None = None
                            ) -> dict[str, Any]:
        volume = await asyncio.to_thread(self.containers.volumes.create, name, labels=labels)
        self._bus.publish(Event("volume", "create", volume.name))
        return volume.inspect()

    async def inspect_volume(self, name: str) -> dict[str, Any]:
        return (await asyncio.to_thread(self.containers.volumes.get, name)).inspect()

    async def remove_volume(self, name: str, *, missing_ok: bool = False) -> None:
        users = await self.containers.volume_users(name)
        try:
            await asyncio.to_thread(self.containers.volumes.remove, name, in_use_by=users)
        except errors.NotFound:
            if not missing_ok:
                raise
            return
        self._bus.publish(Event("volume", "destroy", name))

    async def prune_volumes(self, *, all_volumes: bool = False) -> list[str]:
        """Remove volumes no container uses: anonymous ones, or every unused one with ``all_volumes``."""
        removed: list[str] = []
        for volume in await asyncio.to_thread(self.containers.volumes.list):
            if not (volume.anonymous or all_volumes) or await self.containers.volume_users(volume.name):
                continue
            await asyncio.to_thread(self.containers.volumes.remove, volume.name)
            removed.append(volume.name)
        return removed

    # -- registry access ---------------------------------------------------------------------------------------

    def _registry(self) -> RegistryClient:
        # Imported lazily: httpx costs ~0.2 s to import, and many commands (run of a local image, ps, logs)
        # never talk to a registry.
        if self._client is None:
            from engine.registry import RegistryClient

            self._client = RegistryClient(
                self.config.registries,
                self._credential_store(),
                limits=self.config.limits,
                transport=self._transport,
            )
        return self._client

    def _credential_store(self) -> CredentialStore:
        if self._credentials is None:
            from engine.registry import CredentialStore

            self._credentials = CredentialStore(self.root / "credentials.json")
        return self._credentials

    async def login(self, registry: str, username: str, password: str) -> None:
        """Check the credentials against ``registry`` and store them (0600) for later pulls."""
        from engine.registry import Credentials

        domain = _registry_domain(registry)
        creds = Credentials(username, password)
        await self._registry().login(domain, creds)
        await asyncio.to_thread(self._credential_store().set, domain, creds)

    async def catalog(self, registry: str) -> list[str]:
        """Repositories a registry lists (``/v2/_catalog``), for browsing a private registry."""
        return await self._registry().catalog(_registry_domain(registry))

    async def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (Docker's grammar, without tag)."""
        from engine.reference import parse_repository

        return await self._registry().list_tags(parse_repository(repository))

    async def logout(self, registry: str) -> bool:
        """Forget the stored credentials for ``registry``; False when there were none."""
        return await asyncio.to_thread(self._credential_store().remove, _registry_domain(registry))

    def snapshotter(self) -> Snapshotter:
        """The snapshotter (opened on first use: probing overlay mounts a tiny test overlay)."""
        if self._snapshotter is None:
            from engine.snapshots import open_snapshotter

            self._snapshotter = open_snapshotter(self.root / "snapshots", self.config.snapshotter)
        return self._snapshotter

    # -- images ------------------------------------------------------------------------------------------------

    async def pull(
        self, reference: str, *, on_progress: Callable[[PullProgress], None] | None = None
    ) -> ImageRecord:
        """Pull ``reference`` (Docker's grammar) and return the stored image."""
        from engine.pull import Puller
        from engine.unpacker import Unpacker

        ref = parse_reference(reference)
        snapshotter = await asyncio.to_thread(self.snapshotter)
        unpacker = Unpacker(snapshotter, self._content, self.config.limits)

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

    def _unpacked_size(self, layers: tuple[LayerRecord, ...]) -> int:
        """The image's size on disk: the sum of its layers' snapshots (Docker's SIZE column)."""
        from engine.unpacker import chain_ids

        snapshotter = self.snapshotter()
        return sum(snapshotter.usage(cid) for cid in chain_ids([layer.diff_id for layer in layers]))

    async def unpack(self, text: str) -> str:
        """Make sure every layer of a local image is unpacked (e.g. after ``load``); returns the top ChainID."""
        from engine.unpacker import Unpacker

        record = await self.image(text)
        snapshotter = await asyncio.to_thread(self.snapshotter)
        result = await Unpacker(snapshotter, self._content, self.config.limits).unpack(record.layers)
        return result.top

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

    # -- misc --------------------------------------------------------------------------------------------------

    def version(self) -> dict[str, str]:
        return {
            "Version": VERSION,
            "ApiVersion": "1.41",
            "Os": "linux",
            "Arch": _platform.machine(),
            "KernelVersion": _platform.release(),
            "PythonVersion": _platform.python_version(),
            "Root": str(self.root),
            "Pid": str(os.getpid()),
        }


def _stale_attachments(root: Path, live: set[str]) -> bool:
    """Are there network attachments (state entries or pinned namespaces) of containers not running any more?

    Read straight from the files, so the (costly to import) network room loads only when there is something
    to repair; an unreadable state file counts as "maybe": the repair itself will say what is wrong.
    """
    import json

    try:
        pinned = set(os.listdir(root / "netns"))
    except FileNotFoundError:
        pinned = set()
    if pinned - live:
        return True
    try:
        endpoints = json.loads((root / "networks" / "state.json").read_text()).get("endpoints") or {}
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True
    return bool(set(endpoints) - live)


def _monitor_alive(bundle: Path) -> bool:
    """Is the container's monitor (per its ``monitor.json``) still running, on this boot?"""
    import json

    try:
        info = json.loads((bundle / "monitor.json").read_text())
        with open("/proc/sys/kernel/random/boot_id") as handle:
            if info.get("boot_id") != handle.read().strip():
                return False
        with open(f"/proc/{int(info['monitor_pid'])}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    # A killed monitor may linger as a zombie when nothing reaps orphans (a container as PID 1's child).
    return state not in ("Z", "X")


def _view_key(target: Path) -> str:
    return f"view {target}"


def _registry_domain(text: str) -> str:
    """``login``'s REGISTRY argument: a host[:port], optionally with a scheme; Docker Hub's aliases -> docker.io."""
    host = text.strip()
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    host = host.split("/", 1)[0]
    if not host:
        raise errors.InvalidArgument(f"invalid registry {text!r}")
    if host in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return "docker.io"
    return host


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
