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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.config import Config, default_root, load_config
from engine.container_manager import ContainerManager, CreateOptions
from engine.containers import ContainerRecord
from engine.content import ContentStore
from engine.events import Event, EventBus, PullProgress
from engine.image_ops import ImageOps, RemovedImage
from engine.images import ImageStore
from engine.leases import LeaseManager

if TYPE_CHECKING:
    import httpx

    from engine.network import NetworkManager
    from engine.registry import CredentialStore, RegistryClient
    from engine.runtime.supervisor import Supervisor
    from engine.snapshots import Snapshotter
    from engine.unpack.zygote import WorkerZygote

__all__ = ["VERSION", "Engine", "RemovedImage"]  # RemovedImage: re-exported from engine.image_ops

VERSION = "0.1.0"


class Engine(ImageOps):
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
        self._unpack_zygote: WorkerZygote | None = None
        self.containers = ContainerManager(
            root,
            images=self._images,
            content=self._content,
            bus=self._bus,
            snapshotter=self.snapshotter,
            unpack=self.unpack_record,
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
        if self._snapshotter is not None:
            self._snapshotter.close()
        if self._unpack_zygote is not None:
            await asyncio.to_thread(self._unpack_zygote.close)
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

    async def warm_up(self) -> None:
        """Open now what a container command uses first -- the snapshotter and its metadata database -- for a front
        end that expects a command soon (the CLI's spare worker opens its engine ahead of the command)."""
        await asyncio.to_thread(self.snapshotter)

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
            top: str | None = None
            try:
                record, top = await self.image_unpacked(image)
            except errors.NotFound:
                if not pull_missing:
                    raise
                record = await self.pull(image, on_progress=on_progress)
            return await self.containers.create(record, image, options, top=top)
        finally:
            with contextlib.suppress(Exception):
                await warm

    async def recover(self) -> list[str]:
        """Reconcile containers after the engine (or the host) went away; restart ``always`` ones.

        Returns the names of containers that were started again.
        """
        from engine.runtime.protocol import monitor_alive

        restarted: list[str] = []
        live: list[str] = []
        for record in await asyncio.to_thread(self.containers.store.all):
            if not record.state.running:
                continue
            if await asyncio.to_thread(monitor_alive, self.containers.store.dir(record.id)):
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
