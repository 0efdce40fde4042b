"""Container verbs: create, start, stop, kill, restart, pause, unpause, rm, rename, wait, ps, inspect, logs, prune.

Every verb follows youki's shape: *refresh* the record from the monitor's files, *check* ``can_<verb>`` on its
state, *act* (through the supervisor), *save* the new state, *publish* an event. The supervisor's monitors hold
the truth about running processes; records are how the engine remembers everything else.

The verbs live here; what they compute lives next door so this module stays small: the create planning
(``CreateOptions``, volumes, tmpfs, the user database, Docker's Config/HostConfig) in
:mod:`engine.container_create` (``CreateOptions``, ``parse_restart_policy`` and ``parse_signal`` stay importable
from here), the inspect document and the export tar in :mod:`engine.container_views`, and the verbs on running
processes and the writable layer (exec, attach, stats, top, diff, commit) in the :mod:`engine.container_exec`
mixin.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import os
import signal as _signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.container_create import (
    CreateOptions,
    config_document,
    host_config_document,
    layers_bottom_up,
    network_mode,
    parse_restart_policy,
    parse_signal,
    parse_tmpfs,
    port_bindings,
    read_user_files,
    resolve_volumes,
    run_options,
)
from engine.container_exec import ContainerExecVerbs
from engine.containers import ContainerRecord, ContainerStore, Status, generate_name, validate_name
from engine.events import Event, EventBus
from engine.start_spec import start_spec, stored_start_spec
from engine.volumes import VolumeStore

if TYPE_CHECKING:
    from engine.content import ContentStore
    from engine.images import ImageRecord, ImageStore
    from engine.logs import LogRecord
    from engine.network import NetworkManager
    from engine.runtime.spec import RuntimeSpec
    from engine.runtime.supervisor import LiveState, Supervisor
    from engine.snapshots import Snapshotter

__all__ = ["ContainerManager", "CreateOptions", "parse_restart_policy", "parse_signal"]

NEVER = "0001-01-01T00:00:00Z"
# Compiled seccomp programs shared by every container of the state root (keyed by profile and libseccomp; the
# store lists only 64-hex directories, so it never sees this one).
SECCOMP_CACHE = ".seccomp"
_IMAGE_CONFIGS_KEPT = 32
_PLANNED_KEPT = 64


class ContainerManager(ContainerExecVerbs):
    def __init__(
        self,
        root: Path,
        *,
        images: ImageStore,
        content: ContentStore,
        bus: EventBus,
        snapshotter: Callable[[], Snapshotter],
        unpack: Callable[[ImageRecord], Any],
        supervisor: Callable[[], Any],
        networks: Callable[[], NetworkManager],
    ) -> None:
        self.store = ContainerStore(root / "containers")
        self.volumes = VolumeStore(root / "volumes")
        self._images = images
        self._content = content
        self._bus = bus
        self._snapshotter = snapshotter
        self._unpack = unpack
        self._supervisor_factory = supervisor
        self._network_manager = networks
        # Image configs by digest: content-addressed, so never stale; a create then reads no blob (bounded).
        self._image_configs: dict[str, bytes] = {}
        # The spec of each container this engine created and has not started yet, as a start reads it back.
        self._planned: dict[str, RuntimeSpec] = {}
        self._exec_ids: dict[str, tuple[str, ...]] = {}  # running exec sessions, as last seen by a refresh

    async def _supervisor(self) -> Supervisor:
        result: Supervisor = await self._supervisor_factory()
        return result

    def _publish(self, record: ContainerRecord, action: str, **attributes: str) -> None:
        self._bus.publish(Event("container", action, record.id,
                                {"name": record.name, "image": record.image, **attributes}))

    # -- reading ---------------------------------------------------------------------------------------------

    async def get(self, text: str) -> ContainerRecord:
        record = self.store.recent(text)
        if record is None:
            record = await asyncio.to_thread(self.store.find, text)
        return await self._refresh(record)

    async def list(self, *, all_containers: bool = False) -> builtins.list[ContainerRecord]:
        records = await asyncio.to_thread(self.store.all)
        refreshed = []
        for record in records:
            with contextlib.suppress(errors.NotFound):  # removed meanwhile (by another client, or --rm)
                refreshed.append(await self._refresh(record))
        # A refresh removes exited --rm containers: they are gone, not listed.
        refreshed = [r for r in refreshed if (all_containers or r.state.running) and
                     self.store.dir(r.id).exists()]
        refreshed.sort(key=lambda r: r.created, reverse=True)
        return refreshed

    async def _refresh(self, record: ContainerRecord, *, live: LiveState | None = None) -> ContainerRecord:
        """Bring the record's state up to date with the monitor's files (or ``live``, a state the monitor just
        gave); handle ``--rm`` of exited ones."""
        if record.state.status in (Status.CREATED, Status.REMOVING):
            return record
        if live is None:
            if record.state.status in (Status.EXITED, Status.DEAD) and not (self.store.dir(record.id) /
                                                                           "monitor.json").exists():
                return record
            supervisor = await self._supervisor()
            live = await supervisor.state(self.store.dir(record.id))
        self._exec_ids[record.id] = live.exec_ids
        updated = _apply_live(record, live)
        if updated != record:
            stopped = record.state.running and not updated.state.running
            if stopped and not self._needs_network_room(record):
                updated = dataclasses.replace(updated, network={})  # nothing to release
            await asyncio.to_thread(self.store.save, updated, sync=False)
            if stopped:
                if self._needs_network_room(record):
                    # Stopped for good (a restart keeps its namespace): its address, veth and ports go; the
                    # exit is on disk first, so a crash in between leaves a release to repeat, not a lost exit.
                    await self._release_network(record)
                    updated = dataclasses.replace(updated, network={})
                    await asyncio.to_thread(self.store.save, updated)
                self._publish(updated, "die", exitCode=str(updated.state.exit_code))
        if (updated.host_config.get("AutoRemove") and updated.state.status in (Status.EXITED, Status.DEAD)
                and not _attached(self.store.dir(record.id))):
            await self._destroy(updated, volumes=True)
        return updated

    async def _current(self, container_id: str) -> ContainerRecord:
        """The record on disk now (from memory when it is still what this engine saved); NotFound once removed."""
        record = self.store.recent(container_id)
        return record if record is not None else await asyncio.to_thread(self.store.load, container_id)

    @contextlib.contextmanager
    def attached(self, container_id: str) -> Iterator[None]:
        """Hold an ``--rm`` container while a foreground client streams it: nobody else removes it meanwhile.

        The hold is a file ``attached-<pid>`` in the container's directory, so other processes (a ``ps`` in
        another terminal) respect it too; a hold whose process died is ignored.
        """
        marker = self.store.dir(container_id) / f"attached-{os.getpid()}"
        marker.touch()
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()

    # -- create ----------------------------------------------------------------------------------------------

    async def create(self, image: ImageRecord, image_ref: str, options: CreateOptions, *,
                     top: str | None = None) -> ContainerRecord:
        """``create``: claim the name, prepare the writable snapshot, plan the runtime spec, save the record.
        ``top``: the image's top snapshot, when the caller has seen it unpacked already.

        The planning (volumes, tmpfs, user database, Docker's documents) is :mod:`engine.container_create`;
        on any failure the snapshot and the container directory are removed again. InvalidArgument for bad
        options, NotFound for an unknown user network, Conflict for a name in use."""
        from engine.logs import parse_log_opts
        from engine.manifest import parse_image_config
        from engine.runtime.plan import plan_container

        restart = parse_restart_policy(options.restart)
        if options.auto_remove and restart[0] != "no":
            raise errors.InvalidArgument("conflicting options: --restart and --rm")
        network = network_mode(options)
        if network not in ("none", "host", "bridge"):
            await self._network_manager().inspect(network)  # NotFound: "network X not found"
        bindings = port_bindings(options)
        cached = self._image_configs.get(image.config_digest)
        if cached is None:
            read: bytes
            read, top = await asyncio.gather(asyncio.to_thread(self._content.read, image.config_digest),
                                             self._unpack(image) if top is None else asyncio.sleep(0, top))
            config_bytes = read
            if len(self._image_configs) >= _IMAGE_CONFIGS_KEPT:
                self._image_configs.clear()
            self._image_configs[image.config_digest] = read
        else:
            config_bytes = cached
            if top is None:
                top = await self._unpack(image)
        image_config = dict(parse_image_config(config_bytes).config)
        snapshotter = self._snapshotter()
        tmpfs = tuple(parse_tmpfs(spec) for spec in options.tmpfs)
        networks = None if network in ("none", "host") else self._network_manager()
        claimed: list[str] = []  # the id, once its directory exists (for the clean-up)
        planned: list[RuntimeSpec] = []

        def build() -> ContainerRecord:
            # One thread hop for the whole blocking part (each hop costs a thread wake-up or two), under the
            # store's lock (an flock: other processes and this one's other threads) from the name check to the
            # record's save, so the name is never claimed twice. Until the record is saved, readers skip the
            # directory (it has no container.json).
            with self.store.locked():
                return build_locked()

        def build_locked() -> ContainerRecord:
            container_id = self.store.new_id()
            records = self.store.all()
            name = validate_name(options.name) if options.name else generate_name({r.name for r in records})
            self.store.check_name_free(name, records)
            bundle = self.store.dir(container_id)
            bundle.mkdir(mode=0o710)
            claimed.append(container_id)
            key = f"container-{container_id}"
            root_mounts = snapshotter.prepare(key, top)
            if options.auto_remove:
                from engine.snapshots import volatile

                root_mounts = volatile(root_mounts)
            layer_dirs = layers_bottom_up(snapshotter, key)
            volumes = resolve_volumes(self.volumes, options, image_config, layer_dirs)
            (bundle / "rootfs").mkdir(exist_ok=True)
            netns_path = None if networks is None else str(networks.netns_path(container_id))
            spec = plan_container(
                container_id=container_id, image_config=image_config,
                options=run_options(options, network=network, netns_path=netns_path, binds=volumes.binds,
                                    tmpfs=tmpfs),
                rootfs=bundle / "rootfs", root_mounts=root_mounts, bundle_dir=bundle,
                seccomp_cache_dir=self.store.root / SECCOMP_CACHE, user_files=read_user_files(layer_dirs),
            )
            planned.append(spec)
            container_config = config_document(options, image_config, image_ref=image_ref,
                                               hostname=spec.hostname, env=spec.process.env)
            record = ContainerRecord(
                id=container_id, name=name, created=_now(), image=image_ref, image_id=image.id,
                config=container_config,
                host_config=host_config_document(options, network=network, restart=restart, tmpfs=tmpfs,
                                                 port_bindings=bindings, anonymous=volumes.anonymous),
                path=spec.process.args[0], args=list(spec.process.args[1:]), snapshot_key=key,
                mounts=volumes.mounts,
            )
            parse_log_opts(options.log_opts)
            (bundle / "spec.json").write_text(spec.to_json())
            # An --rm container is removed when it exits, and by recover() after a host crash: its record needs
            # no fsync (~1 ms on the start path).
            self.store.save(record, sync=not options.auto_remove)
            return record

        try:
            record = await asyncio.to_thread(build)
        except BaseException:
            for container_id in claimed:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(snapshotter.remove, f"container-{container_id}")
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.delete, container_id)
            raise
        if len(self._planned) >= _PLANNED_KEPT:
            self._planned.clear()
        self._planned[record.id] = start_spec(planned[0])
        self._publish(record, "create")
        return record

    # -- start / stop ------------------------------------------------------------------------------------------

    async def start(self, text: str) -> ContainerRecord:
        def look_up() -> tuple[ContainerRecord, RuntimeSpec | None]:
            # A container just created (the usual case) needs no refresh: its spec comes in the same thread hop.
            found = self.store.find(text)
            created = found.state.status == Status.CREATED
            return found, stored_start_spec(self.store.dir(found.id)) if created else None

        # Created by this engine a moment ago (the usual case): the record as saved and the spec as planned.
        recent, spec = self.store.recent(text), self._planned.pop(text, None)
        if (recent is not None and recent.state.status == Status.CREATED and spec is not None
                and (spec.seccomp_program is None or os.path.isfile(spec.seccomp_program))):
            record = recent  # (a seccomp program that left the cache is compiled again by look_up)
        else:
            record, spec = await asyncio.to_thread(look_up)
        record = await self._refresh(record)
        if record.state.status == Status.PAUSED:
            raise errors.Conflict(f"cannot start a paused container {record.name}, try unpause instead")
        if record.state.running:
            return record  # Docker: starting a running container is a no-op
        if not record.state.can_start():
            raise errors.Conflict(f"container {record.name} cannot be started from state {record.state.status}")
        bundle = self.store.dir(record.id)
        policy = record.host_config["RestartPolicy"]
        supervisor = await self._supervisor()
        if spec is None:
            spec = await asyncio.to_thread(stored_start_spec, bundle)
        attachment = await self._attach_network(record, spec.hostname)
        if attachment is not None:
            record = dataclasses.replace(record, network=attachment)
        try:
            live = await supervisor.start(
                bundle, spec, restart_policy=policy["Name"], max_retries=int(policy["MaximumRetryCount"]),
                log_opts=record.host_config["LogConfig"]["Config"], stop_signal=record.config["StopSignal"],
                stdin_open=bool(record.config.get("OpenStdin")),
            )
        except errors.KiteboxError as err:
            await self._release_network(record)
            failed = record.with_state(status=Status.EXITED if record.state.status != Status.CREATED
                                       else Status.CREATED, exit_code=err.exit_code, error=str(err))
            if isinstance(err, errors.CommandNotFound | errors.CommandNotExecutable):
                failed = failed.with_state(status=Status.EXITED, finished_at=_now())
            await asyncio.to_thread(self.store.save, failed)
            raise
        updated = _apply_live(record.with_state(error="", exit_code=0, oom_killed=False), live)
        await asyncio.to_thread(self.store.save, updated, sync=False)
        self._publish(updated, "start")
        return updated

    @staticmethod
    def _needs_network_room(record: ContainerRecord) -> bool:
        """``none``/``host`` without ``--dns``/``--add-host`` need nothing from the network room (not loaded)."""
        host = record.host_config
        return host.get("NetworkMode") not in ("none", "host") or bool(host.get("Dns") or host.get("ExtraHosts"))

    async def _release_network(self, record: ContainerRecord) -> None:
        """Undo ``_attach_network``."""
        if self._needs_network_room(record):
            await self._network_manager().release(record.id)

    async def _attach_network(self, record: ContainerRecord, hostname: str) -> dict[str, Any] | None:
        """Give the container its network before its process starts; returns NetworkSettings for inspect."""
        from engine.network import PortBinding

        host = record.host_config
        mode = host.get("NetworkMode", "none")
        if not self._needs_network_room(record):
            return {"Networks": {mode: {"NetworkID": mode, "EndpointID": "", "Gateway": "", "IPAddress": "",
                                        "IPPrefixLen": 0, "MacAddress": "", "Aliases": None}},
                    "IPAddress": "", "Gateway": "", "MacAddress": "", "Ports": {}}
        attachment = await self._network_manager().prepare(
            record.id, name=record.name, hostname=hostname,
            networks=[(mode, tuple(host.get("NetworkAliases") or ()))],
            ports=[PortBinding.from_json(b) for b in host.get("PortBindings") or []],
            publish_all=bool(host.get("PublishAllPorts")),
            exposed=list((record.config.get("ExposedPorts") or {}).keys()),
            dns=tuple(host.get("Dns") or ()), add_hosts=tuple(host.get("ExtraHosts") or ()),
            container_dir=self.store.dir(record.id),
        )
        return attachment.settings

    async def wait(self, text: str, *, remove: bool = False) -> int:
        """Block until the container stops for good; returns its exit code. ``remove``: then remove it with its
        anonymous volumes, as ``run --rm`` does, in the same pass (its exit is published, not saved first)."""
        found = self.store.recent(text)
        if found is None:
            found = await asyncio.to_thread(self.store.find, text)
        # Running as recorded: ask its monitor for the final state at once (it answers as soon as the container
        # has stopped for good, or has already); a refresh first would be one more round trip to the monitor.
        record = found if found.state.running else await self._refresh(found)
        if not record.state.running:
            if remove:
                await self._destroy(record, volumes=True)
            return record.state.exit_code
        supervisor = await self._supervisor()
        final = await supervisor.wait_state(self.store.dir(record.id))
        if final.exit is None:
            raise errors.RuntimeFailure(f"container {record.name}: no exit recorded")
        if remove:
            with contextlib.suppress(errors.NotFound):  # removed meanwhile by whoever saw it exit first
                stopped = _apply_live(await self._current(record.id), final)
                self._publish(stopped, "die", exitCode=str(stopped.state.exit_code))
                await self._destroy(stopped, volumes=True)
            return final.exit.exit_code
        # The refresh records the exit (and removes an --rm container, so the code comes from the monitor).
        with contextlib.suppress(errors.NotFound):
            await self._refresh(await self._current(record.id), live=final)
        return final.exit.exit_code

    async def stop(self, text: str, *, timeout: float | None = None) -> ContainerRecord:
        record = await self.get(text)
        if not record.state.can_stop():
            return record  # Docker: stopping a stopped container succeeds
        if timeout is None:
            timeout = float(record.config.get("StopTimeout") or 10)
        supervisor = await self._supervisor()
        await supervisor.stop(self.store.dir(record.id), timeout)
        self._publish(record, "stop")
        return await self._refresh(await asyncio.to_thread(self.store.load, record.id))

    async def kill(self, text: str, sig: str | int | None = None) -> ContainerRecord:
        record = await self.get(text)
        number = parse_signal(sig, _signal.SIGKILL)
        if not record.state.can_kill():
            raise errors.Conflict(f"Cannot kill container: {record.name}: Container {record.id} is not running")
        supervisor = await self._supervisor()
        await supervisor.kill(self.store.dir(record.id), number)
        self._publish(record, "kill", signal=str(number))
        return record

    async def restart(self, text: str, *, timeout: float | None = None) -> ContainerRecord:
        await self.stop(text, timeout=timeout)
        return await self.start(text)

    async def pause(self, text: str) -> ContainerRecord:
        record = await self.get(text)
        if not record.state.can_pause():
            raise errors.Conflict(f"Container {record.name} is not running" if not record.state.running
                                  else f"Container {record.name} is already paused")
        await (await self._supervisor()).pause(self.store.dir(record.id))
        updated = record.with_state(status=Status.PAUSED)
        await asyncio.to_thread(self.store.save, updated)
        self._publish(updated, "pause")
        return updated

    async def unpause(self, text: str) -> ContainerRecord:
        record = await self.get(text)
        if not record.state.can_unpause():
            raise errors.Conflict(f"Container {record.name} is not paused")
        await (await self._supervisor()).unpause(self.store.dir(record.id))
        updated = record.with_state(status=Status.RUNNING)
        await asyncio.to_thread(self.store.save, updated)
        self._publish(updated, "unpause")
        return updated

    # -- removal and renaming --------------------------------------------------------------------------------

    async def remove(self, text: str, *, force: bool = False, volumes: bool = False) -> ContainerRecord:
        record = await self.get(text)
        if not record.state.can_remove(force=force):
            raise errors.Conflict(
                f"You cannot remove a {record.state.status} container {record.id}. "
                "Stop the container before attempting removal or force remove"
            )
        if record.state.running:
            supervisor = await self._supervisor()
            await supervisor.stop(self.store.dir(record.id), 0)
        await self._destroy(record, volumes=volumes)
        return record

    async def _destroy(self, record: ContainerRecord, *, volumes: bool) -> None:
        self._planned.pop(record.id, None)
        removing = record.with_state(status=Status.REMOVING)
        anonymous = list(record.host_config.get("AnonymousVolumes") or []) if volumes else []

        def mark() -> None:
            # Not synced: after a host crash the container is back as it was, and removing it again works.
            with contextlib.suppress(errors.NotFound):
                self.store.save(removing, sync=False)

        def discard_layer() -> None:
            with contextlib.suppress(errors.NotFound):
                self._snapshotter().remove(record.snapshot_key)

        if not anonymous and not self._needs_network_room(record):
            def remove_all() -> None:  # the common case in one thread hop (each costs a wake-up or two)
                mark()
                discard_layer()
                self.store.delete(record.id)

            await asyncio.to_thread(remove_all)
        else:
            await asyncio.to_thread(mark)
            await self._release_network(record)
            await asyncio.to_thread(discard_layer)
            for name in anonymous:
                with contextlib.suppress(errors.NotFound, errors.Conflict):
                    users = await self.volume_users(name, exclude=record.id)
                    await asyncio.to_thread(self.volumes.remove, name, in_use_by=users)
            await asyncio.to_thread(self.store.delete, record.id)
        self._publish(record, "destroy")

    async def rename(self, text: str, new_name: str) -> ContainerRecord:
        new_name = validate_name(new_name)
        record = await self.get(text)

        def claim() -> ContainerRecord:
            with self.store.locked():
                self.store.check_name_free(new_name, ignore_id=record.id)
                updated = dataclasses.replace(record, name=new_name)
                self.store.save(updated)
            return updated

        updated = await asyncio.to_thread(claim)
        self._publish(updated, "rename", oldName=record.name)
        return updated

    async def prune(self) -> builtins.list[str]:
        removed = []
        for record in await self.list(all_containers=True):
            if record.state.status in (Status.EXITED, Status.DEAD, Status.CREATED):
                await self._destroy(record, volumes=False)
                removed.append(record.id)
        return removed

    async def volume_users(self, name: str, *, exclude: str | None = None) -> builtins.list[str]:
        users = []
        for record in await asyncio.to_thread(self.store.all):
            if record.id != exclude and any(m.get("Name") == name for m in record.mounts):
                users.append(record.id)
        return users

    async def image_users(self, image_id: str) -> builtins.list[ContainerRecord]:
        return [r for r in await asyncio.to_thread(self.store.all) if r.image_id == image_id]

    # -- stdin and export ------------------------------------------------------------------------------------

    async def write_stdin(self, text: str, data: bytes) -> None:
        record = await self.get(text)
        await (await self._supervisor()).write_stdin(self.store.dir(record.id), data)

    async def close_stdin(self, text: str) -> None:
        record = await self.get(text)
        await (await self._supervisor()).close_stdin(self.store.dir(record.id))

    async def export(self, text: str, out: Path) -> None:
        """``export``: the container's filesystem (image + writable layer) as a tar, written atomically."""
        record = await self.get(text)
        from engine.container_views import export_tree

        await asyncio.to_thread(export_tree, self._snapshotter(), record, self.store.dir(record.id), out)

    # -- logs --------------------------------------------------------------------------------------------------

    def log_path(self, record: ContainerRecord) -> Path:
        from engine.logs import log_file_path

        return log_file_path(self.store.dir(record.id), record.id)

    async def logs(
        self, text: str, *, follow: bool = False, tail: int | None = None, since: float | None = None,
        until: float | None = None,
    ) -> AsyncIterator[LogRecord]:
        from engine.logs import read_logs
        from engine.runtime.protocol import EXIT_FILE, monitor_alive

        # The stored record, refreshed (a request to its monitor) only when it says stopped while a monitor
        # runs (restarted since): whether a running one still runs is asked of the files as the log is followed
        # -- no exit recorded and its monitor alive.
        record = await asyncio.to_thread(self.store.find, text)
        directory = self.store.dir(record.id)
        if not record.state.running and await asyncio.to_thread(monitor_alive, directory):
            record = await self._refresh(record)

        def running() -> bool:
            return record.state.running and not (directory / EXIT_FILE).exists() and monitor_alive(directory)

        async for item in read_logs(self.log_path(record), tail=tail, since=since, until=until,
                                    follow=follow and record.state.running, is_running=running):
            yield item

    # -- inspect -----------------------------------------------------------------------------------------------

    def inspect_document(self, record: ContainerRecord) -> dict[str, Any]:
        """Docker's inspect document of ``record`` (as last refreshed; see :mod:`engine.container_views`)."""
        from engine.container_views import inspect_document

        return inspect_document(record, bundle=self.store.dir(record.id), log_path=self.log_path(record),
                                exec_ids=self._exec_ids.get(record.id, ()))

def _attached(bundle: Path) -> bool:
    try:
        names = os.listdir(bundle)
    except FileNotFoundError:
        return False
    for name in names:
        if name.startswith("attached-") and name[9:].isdigit():
            try:
                os.kill(int(name[9:]), 0)
                return True
            except ProcessLookupError:
                continue
            except PermissionError:
                return True
    return False


def _apply_live(record: ContainerRecord, live: LiveState) -> ContainerRecord:
    status = {
        "running": Status.RUNNING, "paused": Status.PAUSED, "restarting": Status.RESTARTING,
        "exited": Status.EXITED, "dead": Status.DEAD,
    }[live.status]
    changes: dict[str, Any] = {"status": status, "restart_count": live.restart_count}
    if live.pid is not None:
        changes["pid"] = live.pid
    if live.started_at:
        changes["started_at"] = live.started_at
    if live.exit is not None and status in (Status.EXITED, Status.DEAD, Status.RESTARTING):
        changes.update(exit_code=live.exit.exit_code, finished_at=live.exit.finished_at,
                       oom_killed=live.exit.oom_killed, error=live.exit.error or "")
    if status in (Status.EXITED, Status.DEAD):
        changes["pid"] = 0
    return record.with_state(**changes)


def _now() -> str:
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
