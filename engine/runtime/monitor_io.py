"""The monitor's byte plumbing: the container's stdio and the clients of ``monitor.sock``.

A mixin of :class:`engine.runtime.monitor.Monitor` (kept apart so that module stays small), running in the
monitor's single-threaded ``selectors`` loop; nothing here blocks. It

* copies the container's output (its stdout/stderr pipes, or its pty master as ``stdout``) into the json-file
  log, into the replay buffer (the last 256 KiB of frames since this start, for ``attach`` with ``replay``) and
  to every attached client; writes buffered ``-i`` input to the container's stdin as it becomes writable;
* accepts connections on ``monitor.sock``, decodes their frames (:class:`~engine.runtime.protocol.FrameDecoder`)
  and hands each request to the monitor's ``_handle``; sends replies and output through a per-client buffer,
  and drops a client whose backlog passes 8 MiB, so a client that does not read never stalls the container;
* on a dropped client, tells the exec sessions (its exec'd processes lose their terminal or pipes) and forgets
  it in the start / stop / final waiter lists.

:func:`log` writes the monitor's diagnostics to its stderr (``<container dir>/monitor.log``). The module imports
only what a forked monitor needs (no asyncio), like the rest of the helper's import graph.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
from typing import TYPE_CHECKING, Any, Final

from engine.runtime.protocol import FrameDecoder, ProtocolError, encode_frame, rfc3339nano
from engine.runtime.pty import read_master

if TYPE_CHECKING:
    import collections

    from engine.logs import StreamLogger
    from engine.runtime.exec import ExecSessions

__all__ = ["MonitorIO", "log"]

_MAX_CLIENT_BACKLOG: Final = 8 * 1024 * 1024
_REPLAY_BYTES: Final = 256 * 1024


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.attached = False
        self.close_when_flushed = False


class MonitorIO:
    """The I/O half of the monitor; relies on the Monitor attributes declared below."""

    if TYPE_CHECKING:
        listener: socket.socket
        sel: selectors.BaseSelector
        clients: dict[int, _Client]
        outputs: dict[int, str]
        loggers: dict[str, StreamLogger]
        recent: collections.deque[bytes]
        recent_bytes: int
        master: int
        stdin_w: int
        stdin_buf: bytearray
        stdin_closing: bool
        execs: ExecSessions
        start_waiters: list[_Client]
        stop_waiters: list[_Client]
        final_waiters: list[_Client]

        def _handle(self, client: _Client, req: dict[str, Any], payload: bytes) -> None: ...

    def _on_output(self, fd: int) -> None:
        data = read_master(fd)
        if data is None:
            return
        if not data:
            self._close_output(fd)
            return
        stream = self.outputs[fd]
        self.loggers[stream].feed(data)
        frame = encode_frame({"stream": stream}, data)
        self.recent.append(frame)
        self.recent_bytes += len(frame)
        while self.recent_bytes > _REPLAY_BYTES:
            self.recent_bytes -= len(self.recent.popleft())
        for client in list(self.clients.values()):
            if client.attached:
                self.send(client, frame)

    def _close_output(self, fd: int) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        del self.outputs[fd]
        if fd == self.master:
            self.master = -1

    def _flush_stdin(self) -> None:
        if self.stdin_w < 0:
            return
        try:
            while self.stdin_buf:
                written = os.write(self.stdin_w, self.stdin_buf)
                del self.stdin_buf[:written]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self.stdin_buf.clear()
        events = selectors.EVENT_WRITE if self.stdin_buf else 0
        registered = self.stdin_w in self.sel.get_map()
        if events and not registered:
            self.sel.register(self.stdin_w, events, "stdin")
        elif not events and registered:
            self.sel.unregister(self.stdin_w)
        if not self.stdin_buf and self.stdin_closing:
            os.close(self.stdin_w)
            self.stdin_w = -1

    def send(self, client: _Client, data: bytes) -> None:
        if len(client.out) > _MAX_CLIENT_BACKLOG:
            self._drop(client)  # a client that does not read must not stall the container
            return
        client.out += data
        self._flush_client(client)

    def _reply(self, client: _Client, header: dict[str, Any]) -> None:
        self.send(client, encode_frame(header))

    def _flush_client(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd < 0:
            return
        try:
            while client.out:
                sent = client.sock.send(client.out)
                del client.out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        self.sel.modify(fd, events, "client")
        if not client.out and client.close_when_flushed:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self.sel.unregister(fd)
            self.clients.pop(fd, None)
        client.sock.close()
        self.execs.client_gone(client)
        for waiters in (self.start_waiters, self.stop_waiters, self.final_waiters):
            if client in waiters:
                waiters.remove(client)

    def _accept_clients(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, OSError):
                break
            sock.setblocking(False)
            client = _Client(sock)
            self.clients[sock.fileno()] = client
            self.sel.register(sock, selectors.EVENT_READ, "client")

    def _on_client(self, client: _Client, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush_client(client)
        if not events & selectors.EVENT_READ or client.sock.fileno() < 0:
            return
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        try:
            frames = client.decoder.feed(data)
        except ProtocolError as err:
            log(f"bad request: {err}")
            self._drop(client)
            return
        for header, payload in frames:
            self._handle(client, header, payload)

def log(message: str) -> None:
    """Diagnostics go to the monitor's stderr, which is ``<container dir>/monitor.log``."""
    with contextlib.suppress(OSError):
        os.write(2, f"{rfc3339nano()} monitor[{os.getpid()}]: {message}\n".encode())
