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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from engine.errors import (
    CommandNotExecutable,
    CommandNotFound,
    Conflict,
    InvalidArgument,
    KernelError,
    KiteboxError,
    RuntimeFailure,
)
from engine.logs import log_file_path, parse_log_opts
from engine.runtime.backend import REAL_BACKEND, Backend, load_backend
from engine.runtime.helper import BOOTSTRAP, LOCK_FILE, short_unix_path
from engine.runtime.protocol import (
    CONFIG_FILE,
    EXIT_FILE,
    MAX_FRAME,
    MONITOR_FILE,
    SOCKET_FILE,
    STATE_FILE,
    boot_id,
    encode_frame,
    parse_signal,
    read_json,
    rfc3339nano,
    write_json_atomic,
)

if TYPE_CHECKING:
    from engine.runtime.exec import ExecRequest
    from engine.runtime.spec import RuntimeSpec

__all__ = ["AttachSession", "ExecSession", "ExitInfo", "LiveState", "Supervisor"]

Status = Literal["running", "paused", "restarting", "exited", "dead"]
_POLICIES = ("no", "always", "unless-stopped", "on-failure")
_QUERY_TIMEOUT = 10.0
_HEAD = struct.Struct(">II")
_MONITOR_DIED = "monitor died"
_SPAWN_TIMEOUT = 30.0
HELPER_IDLE_ENV = "KITEBOX_HELPER_IDLE"
_HELPER_IDLE_DEFAULT = 600.0
_PROJECT = Path(__file__).resolve().parents[2]
_helper_name: str | None = None


def helper_socket_name() -> str:
    """``helper-<key>.sock``: ``key`` hashes the interpreter and the runtime's source files (name, size, mtime),
    so an engine only ever talks to a helper running the same code as itself."""
    global _helper_name
    if _helper_name is None:
        parts = [sys.executable, str(_PROJECT)]
        for directory, names in ((_PROJECT / "engine", ("errors.py", "logs.py")),
                                 (_PROJECT / "engine" / "runtime", None)):
            with os.scandir(directory) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.name.endswith(".py") and (names is None or entry.name in names):
                        st = entry.stat()
                        parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
        _helper_name = f"helper-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}.sock"
    return _helper_name


def helper_idle_seconds() -> float:
    """How long an unused helper stays (``KITEBOX_HELPER_IDLE`` seconds, default 600)."""
    text = os.environ.get(HELPER_IDLE_ENV)
    if text is None:
        return _HELPER_IDLE_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise InvalidArgument(f"{HELPER_IDLE_ENV}={text!r}: expected a number of seconds greater than 0")
    return value


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


def _raise_for(name: str, reply: Mapping[str, Any]) -> None:
    if reply.get("ok"):
        return
    kind, message = reply.get("kind", "failed"), f"container {name}: {reply.get('message', 'failed')}"
    if kind == "not_found":
        raise CommandNotFound(message)
    if kind == "not_executable":
        raise CommandNotExecutable(message)
    if kind == "conflict":
        raise Conflict(message)
    if kind == "invalid":
        raise InvalidArgument(message)
    raise RuntimeFailure(message)


class _Connection:
    """One request/response conversation with a monitor."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.writer.write(encode_frame(header, payload))
        await self.writer.drain()

    async def recv(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame, or None when the monitor went away (EOF, reset)."""
        try:
            head = await self.reader.readexactly(_HEAD.size)
            hlen, plen = _HEAD.unpack(head)
            if hlen + plen > MAX_FRAME:
                return None
            body = await self.reader.readexactly(hlen + plen)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        header = json.loads(body[:hlen])
        return (header, body[hlen:]) if isinstance(header, dict) else None

    def close(self) -> None:
        self.writer.close()


class _Session:
    """Byte streams of one process over a monitor connection (see :class:`ExecSession`, :class:`AttachSession`).

    ``read()`` returns the next chunk of output (stdout and stderr alike; a terminal has only one stream) and
    ``b""`` at the end; ``read_stream()`` says which stream it came from. ``write``/``resize``/``close_stdin``
    never wait for the process. One reader at a time; writers may run concurrently with it."""

    _input_op = "stdin"
    _close_op = "close_stdin"

    def __init__(self, conn: _Connection, name: str, tty: bool) -> None:
        self._conn = conn
        self._name = name
        self.tty = tty
        self._ended = False
        self._exit: int | None = None

    async def read_stream(self) -> tuple[str, bytes] | None:
        """``("stdout"|"stderr", bytes)``; None once the process has ended (or the monitor went away)."""
        while not self._ended:
            frame = await self._conn.recv()
            if frame is None:
                self._ended = True
                break
            header, payload = frame
            if "stream" in header:
                return str(header["stream"]), payload
            if "exit" in header:
                self._exit = int(header["exit"])
                self._ended = True
            elif header.get("eof"):
                self._ended = True
            elif header.get("ok") is False:
                _raise_for(self._name, header)
        return None

    async def read(self) -> bytes:
        frame = await self.read_stream()
        return b"" if frame is None else frame[1]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    async def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        try:
            await self._conn.send({**header, "quiet": True}, payload)
        except ConnectionError as err:
            raise Conflict(f"container {self._name}: the session has ended") from err

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the process's stdin (its terminal, with ``tty``)."""
        if data:
            await self._send({"op": self._input_op}, data)

    async def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size (the process gets SIGWINCH)."""
        if not all(isinstance(v, int) and 0 < v < 65536 for v in (rows, cols)):
            raise InvalidArgument(f"invalid terminal size {rows}x{cols}: rows and columns must be 1-65535")
        await self._send({"op": "resize", "rows": rows, "cols": cols})

    async def close_stdin(self) -> None:
        """End of input (``^D`` on a terminal)."""
        await self._send({"op": self._close_op})

    async def close(self) -> None:
        """Disconnect. Idempotent."""
        self._conn.close()
        with contextlib.suppress(ConnectionError):
            await self._conn.writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ExecSession(_Session):
    """An exec'd process: ``id`` (Docker's exec id), ``pid`` (on the host). Closing the session before the
    process ends hangs its terminal up (or closes its pipes), unless :meth:`detach` was called."""

    _input_op = "exec_stdin"
    _close_op = "exec_close_stdin"

    def __init__(self, conn: _Connection, name: str, tty: bool, exec_id: str, pid: int) -> None:
        super().__init__(conn, name, tty)
        self.id = exec_id
        self.pid = pid

    async def wait(self) -> int:
        """The process's exit code (128+n when killed by signal n); output not yet read is discarded."""
        while await self.read_stream() is not None:
            pass
        if self._exit is None:
            raise RuntimeFailure(f"container {self._name}: its monitor went away before exec {self.id[:12]} "
                                 "ended")
        return self._exit

    async def detach(self) -> None:
        """Leave the process running on its own (output discarded from now on), then disconnect."""
        with contextlib.suppress(Conflict):
            await self._send({"op": "exec_detach"})
        await self.close()


class AttachSession(_Session):
    """The container's main process: its output from now on (with ``replay``, also what it printed since it
    started, up to 256 KiB), input when it was created with ``-i``. Closing (detaching) leaves it running."""

    def __init__(self, conn: _Connection, name: str, tty: bool, supervisor: Supervisor, container_dir: Path
                 ) -> None:
        super().__init__(conn, name, tty)
        self._supervisor = supervisor
        self._dir = container_dir

    async def wait(self) -> int:
        """Until the container stops for good; its exit code."""
        while await self.read_stream() is not None:
            pass
        return (await self._supervisor.wait(self._dir)).exit_code


class Supervisor:
    """Starts containers under monitors and talks to the monitors. See the module docstring."""

    def __init__(self, state_root: Path, backend_ref: str) -> None:
        self.state_root = state_root
        self.backend_ref = backend_ref
        self._backend: Backend | None = None
        self._starter: subprocess.Popen[bytes] | None = None  # the helper's parent, which exits at once
        self._helper_conn: _Connection | None = None
        self._helper_lock = asyncio.Lock()

    @classmethod
    async def open(cls, state_root: Path, *, backend: str = REAL_BACKEND) -> Supervisor:
        """``backend`` names the runtime the monitors drive (``module:Class``); tests may pass a stand-in."""
        return cls(state_root, backend)

    async def close(self, *, stop_helper: bool = False) -> None:
        """Disconnect from the helper (monitors, and the containers, keep running). With ``stop_helper`` the
        state root's helper is asked to exit (it otherwise exits by itself once idle); returns once it has."""
        if stop_helper:
            await self._stop_helper()
        if self._helper_conn is not None:
            self._helper_conn.close()
            with contextlib.suppress(ConnectionError):
                await self._helper_conn.writer.wait_closed()  # closed for real: the helper's idle clock starts
            self._helper_conn = None
        if self._starter is not None:
            if self._starter.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self._starter.wait, 5.0)
            self._starter = None

    # --- helper ----------------------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Connect to the helper now (starting it when none runs) so that the next ``start`` does not wait."""
        async with self._helper_lock:
            if self._helper_conn is None:
                await self._connect_helper()

    async def helper_pid(self) -> int:
        """The pid of the state root's helper (started when none runs), once it answers."""
        async with self._helper_lock:
            if self._helper_conn is None:
                await self._connect_helper()
            assert self._helper_conn is not None
            conn = self._helper_conn
            try:
                await conn.send({"op": "ping"})
                frame = await asyncio.wait_for(conn.recv(), _SPAWN_TIMEOUT)
            except (ConnectionError, TimeoutError):
                frame = None
            if frame is None:
                conn.close()
                self._helper_conn = None
                raise RuntimeFailure(f"the monitor helper for {self.state_root} exited unexpectedly")
        return int(frame[0]["pid"])

    async def _spawn(self, container_dir: Path) -> int:
        async with self._helper_lock:
            if self._helper_conn is None:
                await self._connect_helper()
            assert self._helper_conn is not None
            conn = self._helper_conn
            try:
                await conn.send({"op": "spawn", "dir": str(container_dir), "backend": self.backend_ref})
                frame = await asyncio.wait_for(conn.recv(), _SPAWN_TIMEOUT)
            except (ConnectionError, TimeoutError):
                frame = None
            if frame is None:
                conn.close()
                self._helper_conn = None  # the next call connects again (starting a new helper if needed)
                raise RuntimeFailure(f"container {container_dir.name}: the monitor helper exited unexpectedly")
        reply = frame[0]
        if not reply.get("ok"):
            raise RuntimeFailure(f"container {container_dir.name}: starting its monitor failed: {reply.get('message')}")
        return int(reply["pid"])

    async def _connect_helper(self) -> None:
        sock = await asyncio.to_thread(self._helper_socket)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._helper_conn = _Connection(reader, writer)

    def _helper_socket(self) -> socket.socket:
        """A connection to the state root's helper, starting one when none answers (blocking: run in a thread).

        See :mod:`engine.runtime.helper` for why this is race-free."""
        path = self.state_root / helper_socket_name()
        sock = _connect_unix(path)
        if sock is not None:
            return sock
        idle = helper_idle_seconds()
        try:
            self.state_root.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.state_root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise RuntimeFailure(f"monitor helper lock in {self.state_root}: {err.strerror}") from err
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _connect_unix(path)  # started by another engine while we waited for the lock?
            if sock is None:
                self._start_helper(path, idle)
                sock = _connect_unix(path)
            if sock is None:
                raise RuntimeFailure(f"the monitor helper for {self.state_root} did not start")
            return sock
        finally:
            os.close(lock)

    def _start_helper(self, path: Path, idle: float) -> None:
        """Bind ``path`` and hand the listening socket to a new helper (called under the helper lock)."""
        _remove_dead_helper_sockets(self.state_root)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with short_unix_path(path) as name:
                listener.bind(name)
            os.chmod(path, 0o600)
            listener.listen(64)
            self._starter = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOTSTRAP, str(listener.fileno()), str(_PROJECT),
                 str(self.state_root), path.name, repr(idle)],
                pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
        except OSError as err:
            with contextlib.suppress(OSError):
                path.unlink()
            raise RuntimeFailure(f"starting the monitor helper ({sys.executable}) failed: {err.strerror}") from err
        finally:
            listener.close()

    async def _stop_helper(self) -> None:
        async with self._helper_lock:
            conn = self._helper_conn
            self._helper_conn = None
            if conn is None:
                sock = await asyncio.to_thread(_connect_unix, self.state_root / helper_socket_name())
                if sock is None:
                    return
                reader, writer = await asyncio.open_unix_connection(sock=sock)
                conn = _Connection(reader, writer)
            pid: int | None = None
            try:
                await conn.send({"op": "shutdown"})
                async with asyncio.timeout(5.0):
                    while (frame := await conn.recv()) is not None:  # the reply, then EOF as the helper exits
                        pid = frame[0].get("pid", pid)
            except (ConnectionError, TimeoutError):
                pass
            finally:
                conn.close()
            if isinstance(pid, int):
                await _process_gone(pid)

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
            for stale in (STATE_FILE, EXIT_FILE, MONITOR_FILE):
                with contextlib.suppress(FileNotFoundError):
                    (container_dir / stale).unlink()
            write_json_atomic(container_dir / CONFIG_FILE, {
                "spec": spec.to_json(), "restart_policy": restart_policy, "max_retries": max_retries,
                "log_path": str(log_file_path(container_dir, spec.id)), "log_max_size": max_size,
                "log_max_file": max_file, "stop_signal": signum, "stop_signal_set": bool(stop_signal),
                "stdin_open": stdin_open,
            })
        except OSError as err:
            raise RuntimeFailure(f"container {name}: cannot write state in {container_dir}: {err.strerror}") from err
        monitor_pid = await self._spawn(container_dir)
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
        reply = await self._request(container_dir, {"op": "wait"}, timeout=None)
        if reply is not None and reply.get("exit") is not None:
            info = _exit_info(reply["exit"])
            assert info is not None
            return info
        return self._final_exit(container_dir, await asyncio.to_thread(self._reconcile, container_dir))

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
        conn = await self._connect(container_dir)
        if conn is None:
            raise Conflict(f"container {name} is not running")
        try:
            await conn.send({"op": "exec", "exec": request.to_dict()})
            frame = await conn.recv()
            if frame is None:
                raise Conflict(f"container {name} is not running")
            _raise_for(name, frame[0])
        except BaseException:
            conn.close()
            raise
        session = ExecSession(conn, name, request.tty, str(frame[0]["exec_id"]), int(frame[0]["pid"]))
        if request.detach:
            await session.close()
        return session

    async def attach(self, container_dir: Path, *, replay: bool = False, size: tuple[int, int] | None = None
                     ) -> AttachSession:
        """Attach to the container's main process (see :class:`AttachSession`); ``size`` resizes its terminal.
        Conflict when no monitor runs for it."""
        name = container_dir.name
        conn = await self._connect(container_dir)
        if conn is None:
            raise Conflict(f"container {name} is not running")
        header: dict[str, Any] = {"op": "attach", "replay": replay}
        if size is not None:
            header.update(rows=size[0], cols=size[1])
        try:
            await conn.send(header)
            frame = await conn.recv()
            if frame is None:
                raise Conflict(f"container {name} is not running")
            _raise_for(name, frame[0])
        except BaseException:
            conn.close()
            raise
        return AttachSession(conn, name, bool(frame[0].get("tty")), self, container_dir)

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


def _connect_unix(path: Path) -> socket.socket | None:
    """A connected socket to ``path``, or None when nothing listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with short_unix_path(path) as name:
            sock.connect(name)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, NotADirectoryError):
        sock.close()
        return None
    except OSError as err:
        sock.close()
        raise RuntimeFailure(f"monitor helper {path}: {err.strerror}") from err
    return sock


def _remove_dead_helper_sockets(state_root: Path) -> None:
    """Socket files of helpers that died without retiring (killed, host crash) are just clutter."""
    with contextlib.suppress(OSError, KiteboxError):
        for name in os.listdir(state_root):
            if name.startswith("helper-") and name.endswith(".sock"):
                sock = _connect_unix(state_root / name)
                if sock is None:
                    with contextlib.suppress(OSError):
                        (state_root / name).unlink()
                else:
                    sock.close()


async def _process_gone(pid: int, timeout: float = 5.0) -> None:
    """Until process ``pid`` has exited (a zombie counts as exited), at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (OSError, IndexError):
            return
        await asyncio.sleep(0.002)
