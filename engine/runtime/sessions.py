"""Byte-stream sessions with one process in a container, over a connection to the container's monitor.

:class:`ExecSession` is an ``exec``'d process, :class:`AttachSession` the container's main process; both are
returned by :class:`~engine.runtime.supervisor.Supervisor` (``exec`` / ``attach``) once the monitor has accepted
the request, and re-exported from :mod:`engine.runtime.supervisor`. They read output frames
(``{"stream": ...}``), send input, resize and end-of-input frames marked ``quiet`` (the monitor does not answer
them), and end at the monitor's ``exit`` / ``eof`` frame or when the connection goes away.

:func:`_raise_for` turns a monitor's ``{"ok": false, "kind": ..., "message": ...}`` reply into the engine's
error for that kind (``not_found`` -> CommandNotFound, ``not_executable`` -> CommandNotExecutable,
``conflict`` -> Conflict, ``invalid`` -> InvalidArgument, anything else -> RuntimeFailure), naming the container.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from engine.errors import CommandNotExecutable, CommandNotFound, Conflict, InvalidArgument, RuntimeFailure

if TYPE_CHECKING:
    from engine.runtime.helper_client import _Connection
    from engine.runtime.supervisor import Supervisor

__all__ = ["AttachSession", "ExecSession"]


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
