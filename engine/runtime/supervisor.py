"""The engine side of supervision: start containers under monitors, query and control them, reattach.

The container state machine (``engine/containers.py``) calls this API; each container lives in its own
directory (``<root>/containers/<id>/``) where the monitor keeps ``monitor.sock`` and its state files (see
:mod:`engine.runtime.protocol`). Every call opens a fresh connection to the container's monitor, so a new
:class:`Supervisor` (a restarted app, another CLI invocation) controls containers started by an earlier one
exactly like its own: reattaching is just connecting.

When no monitor answers, the files decide (:meth:`Supervisor.state`): an ``exit.json`` for the last start means
the container exited; a start without an exit means the monitor died with the container running, so whatever
is left in its cgroup is killed and the exit is recorded with the error "monitor died" (exit code 137); state
written under another boot (``boot_id``) means the host restarted (exit code 255).

``--rm`` is the engine's job, not the monitor's: the engine removes the container when :meth:`wait` returns
(and, for containers whose exit it missed, when it next sees them exited).

Monitors are forked by the state root's helper process (:mod:`engine.runtime.helper`), shared by every engine
opened on that root and started by the first one that needs it; it exits by itself once idle. :meth:`close`
only disconnects from it (``stop_helper=True`` stops it, for tests); monitors keep running either way.

Split across three modules: this one (the :class:`Supervisor` API, live state and reconciliation from the
files), :mod:`engine.runtime.helper_client` (connecting to / starting / stopping the shared helper, and the
frame connection) and :mod:`engine.runtime.sessions` (:class:`ExecSession`, :class:`AttachSession`, re-exported
here together with the helper settings, so callers keep importing them from this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import Conflict, InvalidArgument, KernelError, KiteboxError, RuntimeFailure
from engine.logs import log_file_path, parse_log_opts
from engine.runtime.backend import REAL_BACKEND, Backend, load_backend
from engine.runtime.helper import short_unix_path
from engine.runtime.helper_client import (
    HELPER_IDLE_ENV,
    HelperClient,
    _Connection,
    _process_gone,
    helper_idle_seconds,
    helper_socket_name,
)
from engine.runtime.protocol import (
    CONFIG_FILE,
    EXIT_FILE,
    MAX_FRAME,
    MONITOR_FILE,
    SOCKET_FILE,
    STATE_FILE,
    boot_id,
    parse_signal,
    read_json,
    rfc3339nano,
    write_json_atomic,
)
from engine.runtime.sessions import AttachSession, ExecSession, _raise_for

if TYPE_CHECKING:
    from engine.runtime.exec import ExecRequest
    from engine.runtime.spec import RuntimeSpec

# The sessions and the helper names are re-exported: callers import them from here.
__all__ = ["HELPER_IDLE_ENV", "AttachSession", "ExecSession", "ExitInfo", "LiveState", "Supervisor",
           "helper_idle_seconds", "helper_socket_name"]

Status = Literal["running", "paused", "restarting", "exited", "dead"]
_POLICIES = ("no", "always", "unless-stopped", "on-failure")
_QUERY_TIMEOUT = 10.0
_MONITOR_DIED = "monitor died"


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    finished_at: str
    oom_killed: bool
    error: str | None


@dataclass(frozen=True)
class LiveState:
    status: Status
    pid: int | None
    started_at: str | None
    exit: ExitInfo | None
    restart_count: int
    monitor_pid: int | None
    exec_ids: tuple[str, ...] = ()


def _exit_info(raw: Mapping[str, Any] | None) -> ExitInfo | None:
    if raw is None:
        return None
    return ExitInfo(int(raw.get("exit_code", 255)), str(raw.get("finished_at", "")), bool(raw.get("oom_killed")),
                    raw.get("error"))


def _live_state(raw: Mapping[str, Any]) -> LiveState:
    status = str(raw.get("status"))
    if status in ("starting", "created"):  # between fork and exec: a restart in progress, or the first start
        status = "restarting" if int(raw.get("restart_count", 0)) else "running"
    if status not in ("running", "paused", "restarting", "exited", "dead"):
        status = "dead"
    return LiveState(status, raw.get("pid"), raw.get("started_at"), _exit_info(raw.get("exit")),  # type: ignore[arg-type]
                     int(raw.get("restart_count", 0)), raw.get("monitor_pid"),
                     tuple(str(i) for i in raw.get("exec_ids") or ()))


class Supervisor:
    """Starts containers under monitors and talks to the monitors. See the module docstring."""

    def __init__(self, state_root: Path, backend_ref: str) -> None:
        self.state_root = state_root
        self.backend_ref = backend_ref
        self._backend: Backend | None = None
        self._helper = HelperClient(state_root)

    @classmethod
    async def open(cls, state_root: Path, *, backend: str = REAL_BACKEND) -> Supervisor:
        """``backend`` names the runtime the monitors drive (``module:Class``); tests may pass a stand-in."""
        return cls(state_root, backend)

    async def close(self, *, stop_helper: bool = False) -> None:
        """Disconnect from the helper (monitors, and the containers, keep running). With ``stop_helper`` the
        state root's helper is asked to exit (it otherwise exits by itself once idle); returns once it has."""
        if stop_helper:
            await self._helper.stop()
        await self._helper.close()

    # --- helper ----------------------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Connect to the helper now (starting it when none runs) so that the next ``start`` does not wait."""
        await self._helper.warm_up()

    async def helper_pid(self) -> int:
        """The pid of the state root's helper (started when none runs), once it answers."""
        return await self._helper.helper_pid()

    async def _spawn(self, container_dir: Path, config: bytes) -> int:
        return await self._helper.spawn(container_dir, self.backend_ref, config)

    def _runtime(self) -> Backend:
        if self._backend is None:
            self._backend = load_backend(self.backend_ref)
        return self._backend

    # --- talking to monitors ---------------------------------------------------------------------------------

    async def _connect(self, container_dir: Path) -> _Connection | None:
        """A connection to the container's monitor, or None when no monitor is listening."""
        try:
            with short_unix_path(container_dir / SOCKET_FILE) as name:
                reader, writer = await asyncio.open_unix_connection(name, limit=MAX_FRAME)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, NotADirectoryError):
            return None
        except OSError as err:
            raise RuntimeFailure(f"container {container_dir.name}: cannot reach its monitor: {err.strerror}") from err
        return _Connection(reader, writer)

    async def _request(self, container_dir: Path, header: dict[str, Any], payload: bytes = b"",
                       timeout: float | None = _QUERY_TIMEOUT) -> dict[str, Any] | None:
        """Send one request and return the reply; None when no monitor (or it went away before replying)."""
        conn = await self._connect(container_dir)
        if conn is None:
            return None
        try:
            await conn.send(header, payload)
            frame = await asyncio.wait_for(conn.recv(), timeout)
        except TimeoutError as err:
            raise RuntimeFailure(f"container {container_dir.name}: its monitor is not responding") from err
        except ConnectionError:
            return None
        finally:
            conn.close()
        return None if frame is None else frame[0]

    # --- API -------------------------------------------------------------------------------------------------

    async def start(self, container_dir: Path, spec: RuntimeSpec, *, restart_policy: str, max_retries: int,
                    log_opts: Mapping[str, str], stop_signal: str, stdin_open: bool) -> LiveState:
        """Start the container under a new monitor; returns once its command runs.

        Raises CommandNotFound / CommandNotExecutable / RuntimeFailure with the init's message (the monitor has
        then cleaned up the cgroup and recorded the failed exit), InvalidArgument for bad options, Conflict if a
        monitor is already running for this container."""
        name = container_dir.name
        if restart_policy not in _POLICIES:
            raise InvalidArgument(f"invalid restart policy {restart_policy!r}: expected no, always, unless-stopped "
                                  "or on-failure")
        if max_retries < 0 or (max_retries and restart_policy != "on-failure"):
            raise InvalidArgument(f"invalid restart policy max retries {max_retries}: only on-failure takes a "
                                  "non-negative count")
        max_size, max_file = parse_log_opts(log_opts)
        try:
            signum = parse_signal(stop_signal) if stop_signal else signal.SIGTERM
        except ValueError as err:
            raise InvalidArgument(f"stop signal: {err}") from err
        existing = await self._connect(container_dir)
        if existing is not None:
            existing.close()
            raise Conflict(f"container {name} is already running")
        try:
            container_dir.mkdir(parents=True, exist_ok=True)
            for stale in (STATE_FILE, EXIT_FILE, MONITOR_FILE, CONFIG_FILE):
                with contextlib.suppress(FileNotFoundError):
                    (container_dir / stale).unlink()
        except OSError as err:
            raise RuntimeFailure(f"container {name}: cannot write state in {container_dir}: {err.strerror}") from err
        # Sent with the spawn request, straight to the monitor (which keeps it in CONFIG_FILE once the container
        # runs): no file written and read back on the start's path.
        config = json.dumps({
            "spec": spec.to_json(), "restart_policy": restart_policy, "max_retries": max_retries,
            "log_path": str(log_file_path(container_dir, spec.id)), "log_max_size": max_size,
            "log_max_file": max_file, "stop_signal": signum, "stop_signal_set": bool(stop_signal),
            "stdin_open": stdin_open,
        }, separators=(",", ":")).encode()
        monitor_pid = await self._spawn(container_dir, config)
        reply = await self._request(container_dir, {"op": "start"}, timeout=None)
        if reply is None or not reply.get("ok"):
            await _process_gone(monitor_pid)  # a failed start returns once its monitor has cleaned up and exited
        if reply is None:  # the monitor finished before answering: the start failed, exit.json says why
            exit_raw = read_json(container_dir / EXIT_FILE)
            if exit_raw is None:
                raise RuntimeFailure(f"container {name}: its monitor exited without starting it (see "
                                     f"{container_dir / 'monitor.log'})")
            reply = {"ok": False, "kind": exit_raw.get("error_kind") or "failed",
                     "message": exit_raw.get("error") or f"exited with code {exit_raw.get('exit_code')}"}
        _raise_for(name, reply)
        return _live_state(reply["state"])

    async def state(self, container_dir: Path) -> LiveState:
        """The live state from the monitor, else from the files (reconciled; see the module docstring)."""
        reply = await self._request(container_dir, {"op": "state"})
        if reply is not None and reply.get("ok"):
            return _live_state(reply["state"])
        return await asyncio.to_thread(self._reconcile, container_dir)

    async def wait(self, container_dir: Path) -> ExitInfo:
        """Until the container has stopped for good (no restart pending)."""
        return self._final_exit(container_dir, await self.wait_state(container_dir))

    async def wait_state(self, container_dir: Path) -> LiveState:
        """:meth:`wait`, returning the final state (what :meth:`state` would answer next, without asking)."""
        reply = await self._request(container_dir, {"op": "wait"}, timeout=None)
        if reply is not None and reply.get("exit") is not None:
            if reply.get("state") is not None:
                return _live_state(reply["state"])
            return LiveState("exited", None, None, _exit_info(reply["exit"]), 0, None)  # an older monitor
        return await asyncio.to_thread(self._reconcile, container_dir)

    async def kill(self, container_dir: Path, signal: int) -> None:
        reply = await self._request(container_dir, {"op": "kill", "signal": int(signal)})
        if reply is None:
            raise Conflict(f"container {container_dir.name} is not running")
        _raise_for(container_dir.name, reply)

    async def stop(self, container_dir: Path, timeout: float) -> ExitInfo:
        """Stop signal, then SIGKILL after ``timeout`` seconds (negative: wait forever); done by the monitor,
        so it completes even if the caller goes away. Never restarts. Stopping a stopped container returns
        its last exit."""
        reply = await self._request(container_dir, {"op": "stop", "timeout": timeout}, timeout=None)
        if reply is not None and reply.get("exit") is not None:
            info = _exit_info(reply["exit"])
            assert info is not None
            return info
        return self._final_exit(container_dir, await asyncio.to_thread(self._reconcile, container_dir))

    async def pause(self, container_dir: Path) -> None:
        await self._simple(container_dir, "pause")

    async def unpause(self, container_dir: Path) -> None:
        await self._simple(container_dir, "unpause")

    async def write_stdin(self, container_dir: Path, data: bytes) -> None:
        await self._simple(container_dir, "stdin", data)

    async def close_stdin(self, container_dir: Path) -> None:
        await self._simple(container_dir, "close_stdin")

    async def _simple(self, container_dir: Path, op: str, payload: bytes = b"") -> None:
        reply = await self._request(container_dir, {"op": op}, payload)
        if reply is None:
            raise Conflict(f"container {container_dir.name} is not running")
        _raise_for(container_dir.name, reply)

    async def attach_output(self, container_dir: Path) -> AsyncIterator[tuple[str, bytes]]:
        """``("stdout"|"stderr", chunk)`` live from now until the container exits (history: the log file)."""
        conn = await self._connect(container_dir)
        if conn is None:
            return
        try:
            await conn.send({"op": "attach"})
            while (frame := await conn.recv()) is not None:
                header, payload = frame
                if header.get("eof"):
                    return
                if "stream" in header:
                    yield str(header["stream"]), payload
                elif not header.get("ok", True):
                    _raise_for(container_dir.name, header)
        finally:
            conn.close()

    async def exec(self, container_dir: Path, request: ExecRequest) -> ExecSession:
        """Start ``request`` in the running container; returns once it has been exec'd (a detached one's
        session is already closed). CommandNotFound / CommandNotExecutable / Conflict (not running, paused) /
        InvalidArgument / RuntimeFailure otherwise."""
        name = container_dir.name
        conn, reply = await self._open_stream(container_dir, {"op": "exec", "exec": request.to_dict()})
        session = ExecSession(conn, name, request.tty, str(reply["exec_id"]), int(reply["pid"]))
        if request.detach:
            await session.close()
        return session

    async def attach(self, container_dir: Path, *, replay: bool = False, size: tuple[int, int] | None = None
                     ) -> AttachSession:
        """Attach to the container's main process (see :class:`AttachSession`); ``size`` resizes its terminal.
        Conflict when no monitor runs for it."""
        header: dict[str, Any] = {"op": "attach", "replay": replay}
        if size is not None:
            header.update(rows=size[0], cols=size[1])
        conn, reply = await self._open_stream(container_dir, header)
        return AttachSession(conn, container_dir.name, bool(reply.get("tty")), self, container_dir)

    async def _open_stream(self, container_dir: Path, header: dict[str, Any]) -> tuple[_Connection, dict[str, Any]]:
        """A connection to the monitor that has accepted ``header`` (an exec or attach), and its first reply;
        Conflict when no monitor runs, the monitor's error otherwise (the connection closed then)."""
        name = container_dir.name
        conn = await self._connect(container_dir)
        if conn is None:
            raise Conflict(f"container {name} is not running")
        try:
            await conn.send(header)
            frame = await conn.recv()
            if frame is None:
                raise Conflict(f"container {name} is not running")
            _raise_for(name, frame[0])
        except BaseException:
            conn.close()
            raise
        return conn, frame[0]

    async def resize(self, container_dir: Path, rows: int, cols: int) -> None:
        """Resize the terminal of a ``-t`` container (Conflict when it has none or is not running)."""
        reply = await self._request(container_dir, {"op": "resize", "rows": rows, "cols": cols})
        if reply is None:
            raise Conflict(f"container {container_dir.name} is not running")
        _raise_for(container_dir.name, reply)

    # --- files -----------------------------------------------------------------------------------------------

    def _final_exit(self, container_dir: Path, state: LiveState) -> ExitInfo:
        if state.exit is None:
            raise RuntimeFailure(f"container {container_dir.name}: no exit recorded")
        return state.exit

    def _reconcile(self, container_dir: Path) -> LiveState:
        """The state from the files when no monitor answers (blocking: run in a thread)."""
        monitor = read_json(container_dir / MONITOR_FILE) or {}
        started = read_json(container_dir / STATE_FILE)
        exited = read_json(container_dir / EXIT_FILE)
        if started is None:
            return LiveState("exited", None, None, _exit_info(exited), 0, None)
        seq = started.get("start_seq")
        restarts = int(started.get("restart_count", 0))
        if exited is not None and exited.get("start_seq") == seq:
            return LiveState("exited", None, started.get("started_at"), _exit_info(exited), restarts, None)
        status: Status = "exited"
        if monitor.get("boot_id") not in (None, boot_id()):
            code, error = 255, "host rebooted while the container ran"
        else:
            code, error = 137, _MONITOR_DIED
            try:
                self._kill_leftovers(container_dir)
            except KiteboxError as err:
                status, error = "dead", f"{_MONITOR_DIED}; cleaning up failed: {err}"
        record = {"exit_code": code, "finished_at": rfc3339nano(), "oom_killed": False, "error": error,
                  "error_kind": None, "start_seq": seq, "restart_count": restarts}
        with contextlib.suppress(OSError):
            write_json_atomic(container_dir / EXIT_FILE, record)
        return LiveState(status, None, started.get("started_at"), _exit_info(record), restarts, None)

    def _kill_leftovers(self, container_dir: Path) -> None:
        config = read_json(container_dir / CONFIG_FILE)
        if config is None:
            return
        backend = self._runtime()
        spec = backend.load_spec(config["spec"])
        cgroup = backend.cgroup(spec)
        try:
            with contextlib.suppress(KiteboxError):
                cgroup.thaw()
            cgroup.kill_all(signal.SIGKILL)
            cgroup.destroy()
        except OSError as err:
            raise KernelError(f"cgroup of container {container_dir.name}: {err.strerror}") from err
