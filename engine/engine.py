"""``Engine``: the one service object every front end talks to.

An engine is opened on a state root (see ``docs/HACKING.md`` for the layout) and owns the stores, the registry
client and the event bus. Every method is a coroutine; blocking work runs in threads. The engine may be opened
by several processes at once (the app and a CLI): the stores use file locks and SQLite's WAL for that.
"""

from __future__ import annotations

import asyncio
import os
import platform as _platform
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.config import Config, default_root, load_config
from engine.content import ContentStore
from engine.digest import is_digest
from engine.events import Event, EventBus, PullProgress
from engine.images import ImageRecord, ImageStore, LayerRecord
from engine.reference import Reference, parse_reference

if TYPE_CHECKING:
    import httpx

    from engine.registry import CredentialStore, RegistryClient

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
        self._client: RegistryClient | None = None
        self._credentials: CredentialStore | None = None
        self._image_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        root: Path | None = None,
        *,
        config: Config | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Engine:
        """Open (creating if needed) the state under ``root`` (default: see ``engine.config.default_root``)."""
        root = (root or default_root()).absolute()
        config = config or load_config()
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o711)
            (root / "tmp").mkdir(exist_ok=True, mode=0o700)
        except OSError as err:
            raise errors.from_oserror(err, f"state root {root}") from err
        engine = await asyncio.to_thread(cls, root, config, transport=transport)
        engine._bus.bind_loop(asyncio.get_running_loop())
        return engine

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._images.close()
        self._bus.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def events(self) -> AsyncIterator[Event | PullProgress]:
        """Every event from now on (lifecycle events and pull progress), until the engine closes."""
        return self._bus.subscribe()

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

    async def logout(self, registry: str) -> bool:
        """Forget the stored credentials for ``registry``; False when there were none."""
        return await asyncio.to_thread(self._credential_store().remove, _registry_domain(registry))

    # -- images ------------------------------------------------------------------------------------------------

    async def pull(
        self, reference: str, *, on_progress: Callable[[PullProgress], None] | None = None
    ) -> ImageRecord:
        """Pull ``reference`` (Docker's grammar) and return the stored image."""
        from engine.pull import Puller

        ref = parse_reference(reference)

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
        result = await puller.pull(ref, progress=progress)
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
            size=sum(layer.size for layer in layers) + result.manifest.config.size,
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
        from engine.gc import collect_blobs

        roots = await asyncio.to_thread(self._images.blob_roots)
        result = await asyncio.to_thread(collect_blobs, self._content, roots)
        return result.freed

    async def load(self, source: Path) -> list[str]:
        """``load -i``: import a docker-save or OCI archive; returns the loaded names (or ids when untagged)."""
        from engine.archive import load_archive
        from engine.manifest import parse_image_config

        loaded = await asyncio.to_thread(load_archive, source, self._content)
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
