"""``apply_layer_detached`` in a process of its own: the same contract, another interpreter (and GIL).

Why: a pull applies several layers at once, and applying is mostly Python (tar headers, path resolution, one
metadata call after another). In threads of one process they take turns on the GIL, so on two cores the
biggest layer's thread ran a third of the time. A layer applied by a child process runs in parallel with the
others and with the download. The child is forked by the unpack zygote (``engine.unpack.zygote``: a warm
``python -I`` process with the standard library, the engine's unpack room and its decompressors), never by this
multi-threaded process.

The parent pumps the compressed bytes from ``source`` into the child's stdin (a pipe) and gets back, over a
socket pair, the outcome: the ``ApplyResult`` and what ``DetachedLayer.stack`` needs later -- the directory
times and the implied directories, whose held fds come along with SCM_RIGHTS -- or the error's class and
message (errors are ``KiteboxError``s rebuilt by name; anything else is a RuntimeFailure naming the layer).
The child ends when its parent does (its request, stream and answer all break); a child that dies
without answering is a RuntimeFailure. Safety, limits, whiteouts and the DiffID check are ``apply_layer``'s
own, run in the child.

Wire format (socket pair): one JSON request line from the parent; one JSON reply line from the child, the fds
attached to its first byte.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any, Final

from engine import errors
from engine.config import Limits
from engine.unpack.apply import WhiteoutMode
from engine.unpack.decompress import ByteSource
from engine.unpack.detached import MAX_IMPLIED, DetachedLayer, apply_layer_detached
from engine.unpack.zygote import WorkerZygote, receive_line

__all__ = ["UnpackWorker", "apply_layer_detached_isolated", "main"]

_CHUNK: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031
_MAX_REPLY: Final = 64 * 1024 * 1024


def apply_layer_detached_isolated(
    source: ByteSource,
    media_type: str,
    target: Path,
    *,
    layer_digest: str,
    expected_diff_id: str | None,
    whiteouts: WhiteoutMode,
    limits: Limits,
    use_openat2: bool | None = None,
    niceness: int = 0,
) -> DetachedLayer:
    """:func:`engine.unpack.detached.apply_layer_detached`, applied by a child process (blocking); the child
    runs ``niceness`` steps nicer than this process (a layer off the pull's critical path yields the CPU)."""
    if whiteouts == "delete" or os.geteuid() != 0:  # refused the same way, without starting a process
        return apply_layer_detached(source, media_type, target, layer_digest=layer_digest,
                                    expected_diff_id=expected_diff_id, whiteouts=whiteouts, limits=limits,
                                    use_openat2=use_openat2)
    worker = UnpackWorker(layer_digest, niceness=niceness)
    try:
        return worker.apply(source, media_type, target, expected_diff_id=expected_diff_id, whiteouts=whiteouts,
                            limits=limits, use_openat2=use_openat2)
    finally:
        worker.close()


class UnpackWorker:
    """One worker process for one layer: started early (forked by ``zygote``, or by a zygote of its own when
    none is given, which costs an interpreter start), used once by :meth:`apply`, or ended by :meth:`close`.
    Blocking; root only (detached application chowns)."""

    def __init__(self, layer_digest: str, *, niceness: int = 0, zygote: WorkerZygote | None = None) -> None:
        import tempfile  # the parent's side only: the child does not pay for these imports

        self.layer_digest = layer_digest
        self._own_zygote = WorkerZygote() if zygote is None else None
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdin, self._stdin = os.pipe()
        # A file, not a pipe, for the child's stderr: nobody reads a pipe while the layer is pumped in.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        try:
            self._child = (zygote or self._own_zygote).spawn(  # type: ignore[union-attr]
                (stdin, theirs.fileno(), self._stderr.fileno()), os.getpriority(os.PRIO_PROCESS, 0) + niceness,
                f"layer {layer_digest}")
        except BaseException:
            self._sock.close()
            os.close(self._stdin)
            self._stderr.close()
            if self._own_zygote is not None:
                self._own_zygote.close()
            raise
        finally:
            os.close(stdin)
            theirs.close()
        self._closed = False

    @property
    def pid(self) -> int:
        return self._child.pid

    def apply(self, source: ByteSource, media_type: str, target: Path, *, expected_diff_id: str | None,
              whiteouts: WhiteoutMode, limits: Limits, use_openat2: bool | None = None) -> DetachedLayer:
        """Have the worker apply the layer read from ``source`` into ``target`` (see the module docstring)."""
        assert not self._closed
        try:
            request = {"media_type": media_type, "target": str(target), "layer_digest": self.layer_digest,
                       "expected_diff_id": expected_diff_id, "whiteouts": whiteouts,
                       "limits": dataclasses.asdict(limits), "use_openat2": use_openat2}
            with contextlib.suppress(OSError):  # a child that is gone already answers nothing: reported below
                self._sock.sendall(json.dumps(request).encode() + b"\n")
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._stdin, _F_SETPIPE_SZ, _CHUNK)
            _pump(source, self._stdin)
            self._close_stdin()  # EOF: the end of the layer
            reply, fds = _receive(self._sock)
        except BaseException:
            self.close()
            raise
        stderr = self._finish()
        try:
            return _outcome(reply, fds, self.layer_digest, stderr, target, whiteouts, limits)
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    def _close_stdin(self) -> None:
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1

    def _finish(self) -> bytes:
        """Wait for the child to end; the tail of what it wrote on stderr."""
        if self._closed:
            return b""
        self._closed = True
        self._sock.close()
        self._close_stdin()
        self._child.wait()
        if self._own_zygote is not None:
            self._own_zygote.close()
        self._stderr.seek(0)
        stderr = self._stderr.read()[-4096:]
        self._stderr.close()
        return stderr

    def close(self) -> None:
        """End the worker if it was not used (or is still running): killed, waited for. Idempotent."""
        if not self._closed:
            self._child.kill()
            self._finish()


def _pump(source: ByteSource, fd: int) -> None:
    """Copy the compressed stream into the child; a child that stopped reading (it failed, and says why in
    its reply) ends the copy early."""
    while chunk := source.read(_CHUNK):
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            return


def _receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The child's reply line and the fds that came with it; (None, []) when it died without answering."""
    data, fds = receive_line(sock, MAX_IMPLIED + 1, limit=_MAX_REPLY)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    reply = json.loads(data)
    return (reply if isinstance(reply, dict) else None), fds


def _outcome(reply: dict[str, Any] | None, fds: list[int], layer_digest: str, stderr: bytes, target: Path,
             whiteouts: WhiteoutMode, limits: Limits) -> DetachedLayer:
    if reply is None:
        detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        raise errors.RuntimeFailure(f"layer {layer_digest}: the unpack worker died: {detail[0]}")
    if "error" in reply:
        failure = reply["error"]
        kind = getattr(errors, str(failure.get("type")), None)
        message = str(failure.get("message"))
        if isinstance(kind, type) and issubclass(kind, errors.KiteboxError):
            raise kind(message)
        raise errors.RuntimeFailure(f"layer {layer_digest}: unpack worker: {message}")
    return DetachedLayer.from_state(reply["state"], fds, target, layer_digest, whiteouts, limits)


# --- the child --------------------------------------------------------------------------------------------

def main(sock_fd: int) -> None:
    """The child: read the request, apply the layer from stdin, answer; exit.

    No parent-death signal: it follows the *thread* that started the child, and the engine starts workers
    from pool threads. A dead parent is seen anyway: its end of the request socket and of stdin close, so the
    request, the layer's stream or the answer fails and the child exits."""
    sock = socket.socket(fileno=sock_fd)
    reply: dict[str, Any]
    fds: list[int] = []
    detached: DetachedLayer | None = None
    try:
        with sock.makefile("rb") as lines:
            request = json.loads(lines.readline())
        source = open(0, "rb", buffering=0)  # noqa: SIM115 (the process's stdin, for its whole life)
        detached = apply_layer_detached(
            source, request["media_type"], Path(request["target"]), layer_digest=request["layer_digest"],
            expected_diff_id=request["expected_diff_id"], whiteouts=request["whiteouts"],
            limits=Limits(**request["limits"]), use_openat2=request["use_openat2"])
        state, fds = detached.export_state()
        reply = {"state": state}
    except errors.KiteboxError as err:
        reply = {"error": {"type": type(err).__name__, "message": str(err)}}
    except Exception as err:  # reported to the parent, which names the layer
        reply = {"error": {"type": "", "message": f"{type(err).__name__}: {err}"}}
    data = json.dumps(reply).encode() + b"\n"
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data[:1]], ancillary)
    sock.sendall(data[1:])
    sock.close()
    if detached is not None:
        detached.close()
    os._exit(0)
