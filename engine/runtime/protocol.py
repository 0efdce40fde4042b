"""Wire format and state files shared by the supervisor (engine side), the helper and the monitors.

Frames (unix sockets, both directions)::

    u32 header_len | u32 payload_len | header (UTF-8 JSON object) | payload (raw bytes)

The JSON header says what the frame is; the optional payload carries raw container I/O (an attach chunk, a
``stdin`` write) so bytes never go through JSON or base64.

Requests to a monitor (``op`` in the header) and what it answers:

* ``start``       -- start the container (first start only); ``{"ok": true, "state": {...}}`` once exec
  succeeded, or ``{"ok": false, "kind": "not_found"|"not_executable"|"failed"|"conflict", "message": ...}``.
* ``state``       -- ``{"ok": true, "state": {...}}`` (the monitor's live view, see :func:`state_dict`).
* ``kill``        -- ``{"signal": n}``; ``{"ok": true}``; a Conflict-kind error when nothing runs.
* ``stop``        -- ``{"timeout": seconds}``; answered when the container has stopped: ``{"ok": true, "exit": {...}}``.
* ``pause`` / ``unpause`` -- cgroup freezer; ``{"ok": true}``.
* ``wait``        -- answered when the container has stopped for good (no restart pending): ``{"exit": {...}}``.
* ``attach``      -- ``{"ok": true}`` then ``{"stream": "stdout"|"stderr"}`` frames with the bytes as payload,
  live from the moment of attach, and ``{"eof": true}`` when the container exits.
* ``stdin``       -- payload is written to the container's stdin (``stdin_open`` only); ``{"ok": true}``.
* ``close_stdin`` -- closes the container's stdin; ``{"ok": true}``.

State files in the container directory, always replaced atomically (write to a temporary name + rename):
``monitor-config.json`` (what the monitor was started with: the spec, the restart policy...; written by the
monitor, for the engine's clean-up after a monitor died), ``monitor.json`` (``monitor_pid``, ``boot_id``,
``socket``), ``state.json`` per start (``status``, ``pid``,
``started_at``, ``start_seq``, ``restart_count``) and ``exit.json`` per exit (``exit_code``, ``finished_at``,
``oom_killed``, ``error``, ``start_seq``). ``start_seq`` ties an exit to the start it ends, so a reader can tell
"exited" from "the monitor died while it ran". No fsync: after a crash of the host ``boot_id`` differs and the
files are reconciled anyway, so the cost on every start is not worth it.

This module is imported by every monitor: standard library only, nothing heavy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any, Final

from engine.tmpnames import temporary_sibling

__all__ = [
    "CONFIG_FILE",
    "EXIT_FILE",
    "MAX_FRAME",
    "MONITOR_FILE",
    "SOCKET_FILE",
    "STATE_FILE",
    "FrameDecoder",
    "ProtocolError",
    "boot_id",
    "encode_frame",
    "monitor_alive",
    "parse_signal",
    "read_json",
    "recv_frame",
    "rfc3339nano",
    "write_bytes_atomic",
    "write_json_atomic",
]

CONFIG_FILE: Final = "monitor-config.json"
MONITOR_FILE: Final = "monitor.json"
STATE_FILE: Final = "state.json"
EXIT_FILE: Final = "exit.json"
SOCKET_FILE: Final = "monitor.sock"

MAX_FRAME: Final = 16 * 1024 * 1024
_HEAD: Final = struct.Struct(">II")


class ProtocolError(Exception):
    """A peer sent a frame that is not valid (too big, not JSON, not an object). Internal to the runtime."""


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(len(raw), len(payload)) + raw + payload


def _decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"frame header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


class FrameDecoder:
    """Incremental decoder for non-blocking readers: ``feed`` bytes, get the complete frames so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self._buf += data
        frames: list[tuple[dict[str, Any], bytes]] = []
        while len(self._buf) >= _HEAD.size:
            hlen, plen = _HEAD.unpack_from(self._buf)
            if hlen + plen > MAX_FRAME:
                raise ProtocolError(f"frame of {hlen + plen} bytes exceeds {MAX_FRAME}")
            end = _HEAD.size + hlen + plen
            if len(self._buf) < end:
                break
            header = _decode_header(bytes(self._buf[_HEAD.size : _HEAD.size + hlen]))
            frames.append((header, bytes(self._buf[_HEAD.size + hlen : end])))
            del self._buf[:end]
        return frames


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        data = sock.recv(size - len(chunks))
        if not data:
            return None
        chunks += data
    return bytes(chunks)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame; None on a clean EOF before the frame started."""
    head = _recv_exact(sock, _HEAD.size)
    if head is None:
        return None
    hlen, plen = _HEAD.unpack(head)
    if hlen + plen > MAX_FRAME:
        raise ProtocolError(f"frame of {hlen + plen} bytes exceeds {MAX_FRAME}")
    body = _recv_exact(sock, hlen + plen)
    if body is None:
        raise ProtocolError("connection closed in the middle of a frame")
    return _decode_header(body[:hlen]), body[hlen:]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a torn one.

    Two threads of the engine may reconcile one container at once: the temporary file is each one's own."""
    write_bytes_atomic(path, json.dumps(data, separators=(",", ":")).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """:func:`write_json_atomic` for a document already encoded."""
    tmp = temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, torn or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def boot_id() -> str:
    """This boot's id: state written under another boot describes processes that no longer exist."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def monitor_alive(container_dir: Path) -> bool:
    """Is the container's monitor (per its ``monitor.json``) still running, on this boot? Files only: no request,
    so it answers even for a monitor too busy or too stuck to."""
    try:
        info = json.loads((container_dir / MONITOR_FILE).read_bytes())
        if info.get("boot_id") != boot_id():
            return False
        with open(f"/proc/{int(info['monitor_pid'])}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    # A killed monitor may linger as a zombie when nothing reaps orphans (a container as PID 1's child).
    return state not in ("Z", "X")


def rfc3339nano(ns: int | None = None) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction trimmed, no fraction when it is zero."""
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


def parse_signal(value: str | int) -> int:
    """``"SIGTERM"``, ``"TERM"``, ``"term"``, ``"15"`` or ``15`` -> 15; ValueError naming the value otherwise."""
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().upper()
        if text.isdigit():
            number = int(text)
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            member = getattr(signal.Signals, name, None) if name.isidentifier() else None
            if member is None:
                raise ValueError(f"invalid signal: {value!r}")
            number = int(member)
    if not 1 <= number < signal.NSIG:
        raise ValueError(f"invalid signal: {value!r}")
    return number
