"""A warm parent for unpack workers: one ``python -I`` process that imports the unpack room once and forks a
worker per layer.

Why: a worker started as a fresh interpreter costs ~80 ms of wall time and ~50 ms of CPU (the interpreter, the
decompressors, the unpack modules) before it reads its first byte; a pull of five layers paid that four times,
on two cores, while its download and its biggest layer needed them. A fork of a warm, single-threaded process
costs ~1 ms. The engine itself must not be forked (it is multi-threaded: forking it and running Python in the
child can deadlock), so the zygote is exec'd once -- when a pull has its manifest, overlapping the config's
fetch -- and every worker is its fork. It imports only the standard library, the decompressors and the engine's
unpack room, never starts a thread, and ends when the engine closes it or after ``IDLE_SECONDS`` without a worker
or a request (the next pull starts another).

Wire format (a socket pair, one request at a time): the engine sends ``<niceness>\\n`` with three fds attached
(SCM_RIGHTS): the worker's stdin (the layer's compressed bytes), its request/answer socket and its stderr. The
zygote forks; the child makes them its fds 0 and 2 and runs :func:`engine.unpack.worker.main` on the socket.
The zygote answers ``<pid>\\n`` with a pidfd of the child attached: the engine kills the worker and waits for its
end through the pidfd (the worker is the zygote's child, not the engine's, and a pidfd cannot name a recycled
pid). The zygote reaps its children as they end; when the engine goes away (EOF on the socket) it kills and
reaps the ones still running and exits.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, NoReturn

from engine import errors

__all__ = ["IDLE_SECONDS", "WorkerProcess", "WorkerZygote", "receive_line", "serve"]

IDLE_SECONDS: Final = 60.0
_ANSWER_SECONDS: Final = 60.0  # a zygote that does not answer a request in time (hung at its start) is replaced
_EXIT_SECONDS: Final = 5.0  # asked to end (EOF), a zygote that is still there after this is killed
_PROJECT: Final = str(Path(__file__).resolve().parents[2])
# Bare stand-ins for the ``engine`` and ``engine.unpack`` packages, so their __init__ modules (which import
# asyncio for the feed, among others) do not run: the zygote imports only what applying needs (~40 ms less).
_BOOTSTRAP: Final = (
    "import sys,types\n"
    "root=sys.argv[1]\n"
    "sys.path.insert(0,root)\n"
    "for name in ('engine','engine.unpack'):\n"
    "    m=types.ModuleType(name);m.__path__=[root+'/'+name.replace('.','/')];sys.modules[name]=m\n"
    "from engine.unpack.zygote import serve\n"
    "serve(int(sys.argv[2]),float(sys.argv[3]))\n"
)
_FDS_PER_REQUEST: Final = 3  # stdin, socket, stderr


@dataclass(slots=True)
class WorkerProcess:
    """A worker forked by the zygote: its pid (for messages) and a pidfd (owned) to signal it and wait for it."""

    pid: int
    pidfd: int

    def kill(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self) -> None:
        """Block until the worker has ended; release the pidfd. Idempotent."""
        if self.pidfd < 0:
            return
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        while not poller.poll():
            pass
        os.close(self.pidfd)
        self.pidfd = -1


class WorkerZygote:
    """The engine's side: starts the zygote on first use (or :meth:`start`), forks workers through it,
    :meth:`close` ends it. Thread-safe: workers are started from pool threads."""

    def __init__(self, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._stderr: IO[bytes] | None = None

    def start(self) -> None:
        """Start the zygote unless it runs: returns at once (its interpreter starts in parallel; requests wait
        for it in the socket)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._process is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _stop)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, _PROJECT, str(theirs.fileno()), str(self._idle_seconds)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(theirs.fileno(),),
                cwd="/",
                start_new_session=True,  # a terminal's ^C is for the engine, which then cancels (and kills) workers
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        except OSError as err:
            ours.close()
            stderr.close()
            raise errors.RuntimeFailure(f"starting the unpack zygote failed: {err}") from err
        finally:
            theirs.close()
        ours.settimeout(_ANSWER_SECONDS)
        self._sock, self._stderr = ours, stderr

    def spawn(self, fds: tuple[int, int, int], niceness: int, what: str) -> WorkerProcess:
        """Fork a worker with ``fds`` (stdin, socket, stderr: the caller keeps its own copies) at ``niceness``
        (absolute). A zygote that ended meanwhile (idle) is replaced once; ``what`` names the layer in errors."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._start()
                except errors.RuntimeFailure as err:
                    raise errors.RuntimeFailure(f"{what}: {err}") from err
                assert self._sock is not None
                try:
                    self._sock.sendmsg([f"{niceness}\n".encode()],
                                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
                    answer, pidfds = receive_line(self._sock, 1)
                except OSError:
                    answer, pidfds = b"", []
                if answer and len(pidfds) == 1:
                    return WorkerProcess(int(answer), pidfds[0])
                for fd in pidfds:
                    os.close(fd)
                tail = self._stop()
                if attempt == 2 or tail:  # a zygote that said why it died is not one that idled out
                    detail = tail.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
                    raise errors.RuntimeFailure(f"{what}: starting the unpack worker failed: {detail[0]}")
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End the zygote (it kills and reaps workers still running) and wait for it. Idempotent; blocking."""
        with self._lock:
            self._stop()

    def _stop(self) -> bytes:
        """End and reap the zygote; the tail of what it wrote on stderr."""
        process, sock, stderr = self._process, self._sock, self._stderr
        self._process = self._sock = self._stderr = None
        if process is None:
            return b""
        assert sock is not None and stderr is not None
        sock.close()
        try:
            process.wait(_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.seek(0)
        tail = stderr.read()[-4096:]
        stderr.close()
        return tail


def receive_line(sock: socket.socket, max_fds: int, *, limit: int = 4096) -> tuple[bytes, list[int]]:
    """One ``\\n``-ended line (at most ``limit`` bytes) and the fds that came with it (SCM_RIGHTS). At EOF, on
    an error (a reset, a timeout) or past the limit: (b"", the fds received so far), for the caller to close."""
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        try:
            chunk, ancillary, _, _ = sock.recvmsg(min(limit, 65536), socket.CMSG_SPACE(max_fds * 4))
        except OSError:
            return b"", fds
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        data += chunk
        if not chunk or len(data) > limit:
            return b"", fds
    return data, fds


# --- the zygote -------------------------------------------------------------------------------------------

def serve(control_fd: int, idle_seconds: float) -> None:
    """The zygote's loop: fork a worker per request, reap the ones that ended; exit at EOF or after
    ``idle_seconds`` without a worker or a request."""
    import gc

    from engine.unpack import worker  # everything a worker needs, imported once

    control = socket.socket(fileno=control_fd)
    children: dict[int, int] = {}  # pidfd -> pid
    gc.collect()
    gc.freeze()  # the workers' collectors then leave the inherited objects (and their pages) alone
    while True:
        watched = [control.fileno(), *children]
        ready, _, _ = select.select(watched, [], [], None if children else idle_seconds)
        for pidfd in [fd for fd in ready if fd in children]:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(children.pop(pidfd), 0)
            os.close(pidfd)
        if control.fileno() in ready:
            request, fds = receive_line(control, _FDS_PER_REQUEST)
            if not request or len(fds) != _FDS_PER_REQUEST:
                for fd in fds:
                    os.close(fd)
                if request:  # never sent by the engine: say so, and end (the engine starts another zygote)
                    print(f"unpack zygote: bad request {request[:100]!r} with {len(fds)} fds", file=sys.stderr)
                break  # else the engine went away or closed us
            pid = os.fork()
            if pid == 0:
                _become_worker(control, children, fds, int(request), worker.main)
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)  # the child is at least a zombie until we reap it: never a recycled pid
            children[pidfd] = pid
            try:
                control.sendmsg([f"{pid}\n".encode()],
                                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]).tobytes())])
            except OSError:
                break  # the engine went away
        elif not ready and not children:
            break  # idle
    for pidfd, pid in children.items():  # the engine is gone: so is the work it asked for
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    os._exit(0)


def _become_worker(control: socket.socket, children: dict[int, int], fds: list[int], niceness: int,
                   run: Callable[[int], None]) -> NoReturn:
    """In the forked child: the request's fds become stdin, the socket and stderr; run the worker; never
    return."""
    try:
        control.close()
        for pidfd in children:
            os.close(pidfd)
        stdin, sock, stderr = fds
        os.dup2(stdin, 0)
        os.dup2(stderr, 2)
        os.close(stdin)
        os.close(stderr)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        run(sock)  # exits itself
    except BaseException:
        traceback.print_exc()  # the engine reports the tail of the worker's stderr
    os._exit(1)
