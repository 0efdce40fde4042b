"""Container verbs on running processes and the writable layer: exec, attach, resize, stats, top, diff, commit.

A mixin of :class:`engine.container_manager.ContainerManager` (kept apart so that module stays small). Same
shape as every verb there: refresh the record, check its state, act through the supervisor / the runtime
rooms, publish an event. Exec and attach return session objects (:class:`~engine.runtime.supervisor.
ExecSession`, :class:`~engine.runtime.supervisor.AttachSession`): byte streams in and out plus resize, for the
CLI and the app's terminal alike.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.containers import ContainerRecord, Status

if TYPE_CHECKING:
    from engine.content import ContentStore
    from engine.images import ImageRecord, ImageStore
    from engine.runtime.changes import Change
    from engine.runtime.spec import RuntimeSpec
    from engine.runtime.stats import Counters, ProcessRow, StatsSample
    from engine.runtime.supervisor import AttachSession, ExecSession, Supervisor
    from engine.snapshots import Snapshotter

__all__ = ["ContainerExecVerbs"]


class ContainerExecVerbs:
    """The verbs; relies on the ContainerManager attributes declared below."""

    if TYPE_CHECKING:
        from engine.containers import ContainerStore

        store: ContainerStore
        _images: ImageStore
        _content: ContentStore

        _snapshotter: Callable[[], Snapshotter]
        async def _supervisor(self) -> Supervisor: ...
        def _publish(self, record: ContainerRecord, action: str, **attributes: str) -> None: ...
        async def get(self, text: str) -> ContainerRecord: ...
        async def list(self, *, all_containers: bool = False) -> builtins.list[ContainerRecord]: ...
        async def pause(self, text: str) -> ContainerRecord: ...
        async def unpause(self, text: str) -> ContainerRecord: ...

    async def _running(self, text: str, verb: str) -> ContainerRecord:
        record = await self.get(text)
        if record.state.status == Status.PAUSED:
            raise errors.Conflict(f"container {record.name} is paused, unpause the container before {verb}")
        if not record.state.can_exec():
            raise errors.Conflict(f"container {record.name} is not running")
        return record

    async def exec(self, text: str, cmd: Sequence[str], *, user: str | None = None, workdir: str | None = None,
                   env: Sequence[str] = (), tty: bool = False, stdin: bool = False, privileged: bool = False,
                   detach: bool = False, size: tuple[int, int] | None = None) -> ExecSession:
        """``exec``: run ``cmd`` in the running container (its namespaces, cgroup, capabilities and confinement,
        all capabilities with ``privileged``). ``user`` is resolved in the container's own /etc/passwd; the
        session's :meth:`~ExecSession.wait` gives the exit code. A detached session is returned closed.

        Conflict when the container is not running or paused; InvalidArgument for a bad user/dir/env/size;
        CommandNotFound (127) / CommandNotExecutable (126) when the command cannot run."""
        from engine.runtime.exec import ExecRequest

        if not cmd or not cmd[0]:
            raise errors.InvalidArgument("exec: no command specified")
        if workdir is not None and not workdir.startswith("/"):
            raise errors.InvalidArgument(f"exec: the working directory {workdir!r} must be an absolute path")
        for item in env:
            if "=" not in item or item.startswith("="):
                raise errors.InvalidArgument(f"exec: invalid environment variable {item!r}: expected KEY=VALUE")
        rows, cols = size or (24, 80)
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise errors.InvalidArgument(f"exec: invalid terminal size {rows}x{cols}")
        record = await self._running(text, "exec")
        uid = gid = None
        gids: tuple[int, ...] | None = None
        if user:
            resolved = await asyncio.to_thread(_resolve_user, record.state.pid, user)
            uid, gid, gids = resolved.uid, resolved.gid, resolved.additional_gids
        request = ExecRequest(tuple(cmd), tuple(env), workdir, uid, gid, gids, tty, stdin, privileged, detach,
                              rows, cols)
        session = await (await self._supervisor()).exec(self.store.dir(record.id), request)
        self._publish(record, f"exec_start: {' '.join(cmd)}", execID=session.id)
        return session

    async def attach(self, text: str, *, replay: bool = False, size: tuple[int, int] | None = None
                     ) -> AttachSession:
        """``attach``: the container's main process as a session (output from now on -- with ``replay``, since it
        started --, input when created with ``-i``). Closing the session detaches; the container keeps running."""
        record = await self.get(text)
        if not record.state.running:
            raise errors.Conflict(f"You cannot attach to a stopped container {record.name}, start it first")
        session = await (await self._supervisor()).attach(self.store.dir(record.id), replay=replay, size=size)
        self._publish(record, "attach")
        return session

    async def resize(self, text: str, rows: int, cols: int) -> None:
        """Resize the terminal of a ``-t`` container."""
        record = await self.get(text)
        await (await self._supervisor()).resize(self.store.dir(record.id), rows, cols)

    def _spec(self, record: ContainerRecord) -> RuntimeSpec:
        from engine.runtime.spec import RuntimeSpec

        path = self.store.dir(record.id) / "spec.json"
        try:
            return RuntimeSpec.from_json(path.read_bytes())
        except OSError as err:
            raise errors.StoreError(f"{path}: unreadable ({err.strerror})") from err

    async def stats(self, names: Sequence[str] = (), *, stream: bool = True, interval: float = 1.0
                    ) -> AsyncIterator[StatsSample]:
        """Samples (one per container per ``interval``) for ``names`` (all running containers when empty), CPU %
        measured over the interval. Without ``stream``, one round after one interval. Stopped containers give
        zeros. Ends when the caller stops iterating (or, streaming, never)."""
        from engine.runtime.cgroups import detect_cgroup_mode, v1_hierarchies
        from engine.runtime.stats import compute, read_counters, zero_sample

        if interval <= 0:
            raise errors.InvalidArgument(f"stats: invalid interval {interval}")
        mode = await asyncio.to_thread(detect_cgroup_mode)
        hierarchies = await asyncio.to_thread(v1_hierarchies) if mode != "v2" else {}
        records = [await self.get(n) for n in names] if names else await self.list()

        async def read(record: ContainerRecord) -> Counters | None:
            fresh = await self.get(record.id)
            if not fresh.state.running:
                return None
            path = self._spec(fresh).cgroup.path
            return await asyncio.to_thread(read_counters, path, fresh.state.pid or None, mode=mode,
                                           hierarchies=hierarchies)

        previous = {r.id: await read(r) for r in records}
        while True:
            await asyncio.sleep(interval)
            for record in records:
                with contextlib.suppress(errors.NotFound):
                    current = await read(record)
                    before = previous.get(record.id)
                    yield (compute(record.id, record.name, before, current) if current is not None
                           else zero_sample(record.id, record.name))
                    previous[record.id] = current
            if not stream:
                return

    async def top(self, text: str) -> builtins.list[ProcessRow]:
        """``top``: the container's processes (host pids), ``ps -ef`` columns."""
        from engine.runtime.cgroups import cgroup_manager
        from engine.runtime.stats import process_table

        record = await self.get(text)
        if not record.state.running:
            raise errors.Conflict(f"container {record.name} is not running")
        spec = self._spec(record)

        def table() -> builtins.list[ProcessRow]:
            return process_table(cgroup_manager(spec.cgroup).pids())

        return await asyncio.to_thread(table)

    async def diff(self, text: str) -> builtins.list[Change]:
        """``diff``: A/C/D changes of the writable layer against the image, by path."""
        from engine.runtime.changes import changes

        record = await self.get(text)
        return await asyncio.to_thread(changes, self._snapshotter(), record.snapshot_key)

    async def commit(self, text: str, reference: str | None = None, *, pause: bool = True,
                     author: str = "", message: str = "") -> ImageRecord:
        """``commit``: the writable layer becomes a new top layer of a new image (tagged ``reference``), with the
        container's command, environment, user and working directory as its config. A running container is
        paused meanwhile unless ``pause`` is False."""
        from engine.reference import parse_reference

        ref = parse_reference(reference) if reference else None
        record = await self.get(text)
        paused_here = pause and record.state.status == Status.RUNNING
        if paused_here:
            await self.pause(record.id)
        try:
            image = await asyncio.to_thread(self._commit_blocking, record, author, message)
        finally:
            if paused_here:
                await self.unpause(record.id)
        if ref is not None:
            await asyncio.to_thread(self._images.tag, image.id, ref)
        stored = await asyncio.to_thread(self._images.get, image.id)
        self._publish(record, "commit", comment=message)
        return stored

    def _commit_blocking(self, record: ContainerRecord, author: str, message: str) -> ImageRecord:
        from engine.runtime.changes import commit_image, write_layer

        base = self._images.get(record.image_id)
        tmp_root = self.store.dir(record.id)
        with tempfile.TemporaryFile(dir=tmp_root) as layer:
            diff_id = write_layer(self._snapshotter(), record.snapshot_key, layer)
            layer.seek(0)
            return commit_image(self._content, self._images, base, record.config, layer, diff_id,
                                author=author, comment=message, created=time.time())


def _resolve_user(pid: int, user: str) -> Any:
    """``-u`` against the running container's own /etc/passwd and /etc/group (read through /proc/<pid>/root,
    resolved inside that root)."""
    from engine.runtime.users import read_in_root, resolve_user

    root = Path(f"/proc/{pid}/root")
    return resolve_user(user, read_in_root(root, "/etc/passwd"), read_in_root(root, "/etc/group"))

