"""The engine's side of the state root's shared helper, and the frame connection every runtime socket speaks.

:class:`HelperClient` connects to ``<root>/helper-<key>.sock`` (:func:`helper_socket_name`), starting the helper
when none answers: under an exclusive ``flock`` of ``<root>/helper.lock`` it binds the socket itself and hands
the listening socket to a new ``python -I -S`` process (see :mod:`engine.runtime.helper` for why this is
race-free and why the helper is a separate, small process). One connection per client, guarded by an asyncio
lock; a connection that breaks is dropped and the next call connects again (starting a new helper if needed).
:meth:`HelperClient.close` only disconnects; :meth:`HelperClient.stop` asks the helper to exit and returns once
it has.

:class:`_Connection` is one framed request/response conversation (frames of :mod:`engine.runtime.protocol`),
used for the helper and for the containers' monitors alike. Errors are :class:`~engine.errors.RuntimeFailure`
(naming the state root or container) or :class:`~engine.errors.InvalidArgument` for a bad
``KITEBOX_HELPER_IDLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument, KiteboxError, RuntimeFailure
from engine.runtime.helper import BOOTSTRAP, LOCK_FILE, short_unix_path
from engine.runtime.protocol import MAX_FRAME, encode_frame

__all__ = ["HELPER_IDLE_ENV", "HelperClient", "helper_idle_seconds", "helper_socket_name"]

_HEAD = struct.Struct(">II")
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


class HelperClient:
    """The connection to one state root's helper (see the module docstring)."""

    def __init__(self, state_root: Path) -> None:
        self.state_root = state_root
        self._starter: subprocess.Popen[bytes] | None = None  # the helper's parent, which exits at once
        self._helper_conn: _Connection | None = None
        self._helper_lock = asyncio.Lock()

    async def close(self) -> None:
        """Disconnect from the helper (it keeps running until idle); reap the helper's starter process."""
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

    async def warm_up(self) -> None:
        """Connect to the helper now (starting it when none runs) so that the next ``start`` does not wait."""
        async with self._helper_lock:
            if self._helper_conn is None:
                await self._connect_helper()

    async def helper_pid(self) -> int:
        """The pid of the state root's helper (started when none runs), once it answers."""
        reply = await self._ask({"op": "ping"}, f"the monitor helper for {self.state_root} exited unexpectedly")
        return int(reply["pid"])

    async def spawn(self, container_dir: Path, backend_ref: str, config: bytes) -> int:
        """Have the helper fork a monitor for ``container_dir`` driving ``backend_ref`` with ``config`` (the JSON
        document the monitor runs by); the monitor's pid."""
        reply = await self._ask({"op": "spawn", "dir": str(container_dir), "backend": backend_ref},
                                f"container {container_dir.name}: the monitor helper exited unexpectedly",
                                payload=config)
        if not reply.get("ok"):
            raise RuntimeFailure(f"container {container_dir.name}: starting its monitor failed: {reply.get('message')}")
        return int(reply["pid"])

    async def _ask(self, request: dict[str, Any], gone: str, *, payload: bytes = b"") -> dict[str, Any]:
        """Send ``request`` to the helper (connecting, or starting one, first) and return its reply; a helper that
        went away is a RuntimeFailure saying ``gone`` (the next call connects again, starting a new helper)."""
        async with self._helper_lock:
            if self._helper_conn is None:
                await self._connect_helper()
            assert self._helper_conn is not None
            conn = self._helper_conn
            try:
                await conn.send(request, payload)
                frame = await asyncio.wait_for(conn.recv(), _SPAWN_TIMEOUT)
            except (ConnectionError, TimeoutError):
                frame = None
            if frame is None:
                conn.close()
                self._helper_conn = None
                raise RuntimeFailure(gone)
        return frame[0]

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

    async def stop(self) -> None:
        """Ask the state root's helper to exit (when one runs) and wait until it has."""
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
