"""Warm templates: one process per state root that has a front end and the engine imported and forks a worker
per command -- the ``kitebox`` CLI's fast start (see app/forkclient.py, the client, for why, the wire format
and the lifetime rules). The mechanism is here, the policy is the caller's: the bootstrap names the function a
worker runs (``module:function``, called with the command's arguments, returning its exit code) and the
modules to preload (``module`` to import, ``module:function`` to import and call, e.g. to build parsers).

The template is single-threaded and never opens an engine, an event loop or a file of the state root, so each
fork starts from a clean, quiet heap with everything imported (``gc.freeze`` keeps the workers' garbage
collector from touching, and so copying, the inherited objects). Each worker is forked *before* its command
arrives: the template keeps one spare, which warms up -- writes its inherited heap at once and runs an event
loop once (:func:`_warm_up`) -- and waits; the template hands it the next connection (SCM_RIGHTS) and forks the
next spare. A fresh fork pays ~15 ms more for a short command than a warm one. With no live spare the template
forks a worker on the spot. A worker:

* checks the caller and reads its request (a bad one only ends that worker: the client sees EOF before ``P``
  and runs the command itself);
* takes the client's stdin/stdout/stderr (received with SCM_RIGHTS) as its fds 0-2 and rebuilds ``sys.std*``
  on them (line-buffered on a terminal, as a fresh interpreter would), adopts the client's working directory,
  umask and environment, and restores the signal dispositions a fresh interpreter has;
* reports ``P<pid>`` so the client can forward signals, runs the target with the command's arguments and
  reports ``X<code>``;
* kills itself when the client goes away first (a daemon thread blocked reading the connection sees EOF): the
  command was the client's, and a killed ``kitebox`` leaves nothing running in its name, exactly as when the
  command ran in the client itself.

Only connections from the template's own user are served (``SO_PEERCRED``); the socket file is 0600 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import io
import os
import pkgutil
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple, NoReturn

from engine.runtime.helper import (
    FORKED_PREFIX,
    _Server,
    _set_process_name,
    fork_with_channel,
    receive_with_fds,
    send_with_fd,
)

__all__ = ["MAGIC", "Request", "decode_request", "main", "report_exit"]

MAGIC: Final = b"KB1"  # app/forkclient.py writes it (a test keeps the two equal)

_CREDENTIALS: Final = struct.Struct("3i")
WORKER_NAME: Final = FORKED_PREFIX + "worker"  # not a template, for helper_pids
_RECEIVE_TIMEOUT: Final = 5.0
_MAX_REQUEST: Final = 4 * 1024 * 1024
# Besides the caller's list: every engine module, because front ends load rooms lazily (the point of the
# template is that a command finds nothing left to import), and what asyncio loads on first use.
_ALWAYS: Final = ("asyncio", "concurrent.futures.thread", "sqlite3")


class Request(NamedTuple):
    cwd: str
    umask: int
    argv: list[str]
    env: dict[str, str]


def decode_request(body: bytes) -> Request:
    """The request in ``body`` (without its length line); ValueError when it is malformed."""
    fields = body.split(b"\0")
    if len(fields) < 4 or fields[0] != MAGIC:
        raise ValueError("not a kitebox command request")
    nargs = int(fields[3])
    if not 0 <= nargs <= len(fields) - 4:
        raise ValueError("bad argument count")
    argv = [os.fsdecode(field) for field in fields[4 : 4 + nargs]]
    env: dict[str, str] = {}
    for field in fields[4 + nargs :]:
        key, sep, value = os.fsdecode(field).partition("=")
        if not sep or not key:
            raise ValueError("bad environment entry")
        env[key] = value
    return Request(os.fsdecode(fields[1]), int(fields[2], 8), argv, env)


def _receive(sock: socket.socket) -> tuple[Request, list[int]]:
    """Read one request and the three stdio fds that come with it; ValueError/OSError when it is not one."""
    fds: list[int] = []
    try:
        data, fds = receive_with_fds(sock, 65536, 3)
        if len(fds) != 3:
            raise ValueError("a request must carry exactly three file descriptors")
        head, sep, body = data.partition(b"\n")
        if not sep or not head.isdigit() or int(head) > _MAX_REQUEST:
            raise ValueError("bad request length")
        while len(body) < int(head):
            chunk = sock.recv(min(65536, int(head) - len(body)))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        return decode_request(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


class _Spare(NamedTuple):
    pid: int
    channel: socket.socket  # the template's end: the spare waits on the other one for its connection


class _Template(_Server):
    """The helper's accept/idle/retire loop; each connection is one command, served by a worker forked for it
    ahead of time (a spare: see :func:`_warm_up`), or forked on the spot when no spare is there."""

    target: Callable[[list[str]], int]
    prepare: Callable[[str], None] | None = None
    spare: _Spare | None = None

    def serve(self) -> None:
        self.spare = self._fork_spare(0)
        super().serve()

    def close(self) -> None:
        if self.spare is not None:
            self.spare.channel.close()  # EOF: the waiting spare exits
            self.spare = None
        super().close()

    def _on_accept(self, sock: socket.socket) -> None:
        spare, self.spare = self.spare, None
        handed = spare is not None and _hand_over(spare.channel, sock)
        if spare is not None:
            spare.channel.close()
        worker = spare.pid if handed and spare is not None else self._fork_worker(sock)
        # Closed before the next fork: no process but the worker may hold the client's connection, whose EOF is
        # how the client learns that its command's process died.
        sock.close()
        self.spare = self._fork_spare(worker)

    def _fork_worker(self, sock: socket.socket) -> int:
        try:
            pid = os.fork()
        except OSError:
            return 0  # the client sees EOF before "P" and runs the command itself
        if pid == 0:
            self._serve_connection(sock)
        return pid

    def _fork_spare(self, previous: int) -> _Spare | None:
        """A worker forked before its command arrives; it warms up once ``previous`` (the last worker) is done."""
        forked = fork_with_channel(lambda channel: self._run_spare(channel, previous))
        return None if forked is None else _Spare(*forked)

    def _run_spare(self, channel: socket.socket, previous: int) -> NoReturn:
        try:
            _set_process_name(WORKER_NAME)
            self.sel.close()
            self.listener.close()
            _warm_up(channel, previous, self.prepare, str(self.root))
            _, fds = receive_with_fds(channel, 16, 1)
            channel.close()
        except BaseException:
            os._exit(0)
        if not fds:
            os._exit(0)  # the template retired before handing us a command
        self._serve_connection(socket.socket(fileno=fds[0]))

    def _serve_connection(self, sock: socket.socket) -> NoReturn:
        """In a worker: check the caller and read its request, then run it (exit at once if it is not one)."""
        try:
            _, uid, _ = _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            _CREDENTIALS.size))
            if uid != os.getuid():
                os._exit(0)
            sock.settimeout(_RECEIVE_TIMEOUT)
            request, fds = _receive(sock)
        except (OSError, ValueError):
            os._exit(0)  # the client sees EOF before "P" and runs the command itself
        self._run_worker(sock, request, fds)

    def _run_worker(self, sock: socket.socket, request: Request, fds: list[int]) -> NoReturn:
        code = 125
        try:
            _set_process_name(WORKER_NAME)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.sel.close()
            self.listener.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            _adopt_stdio()
            os.umask(request.umask)
            os.environ.clear()
            os.environ.update(request.env)
            sock.settimeout(None)
            sock.sendall(b"P%d\n" % os.getpid())
            threading.Thread(target=_die_with_client, args=(sock,), name="client-watch", daemon=True).start()
            global _client
            _client = sock
            code = _run_command(self.target, request)
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            report_exit(code)
            os._exit(0)


_client: socket.socket | None = None  # in a worker: the connection its exit code goes back on
_reported = False


def report_exit(code: int) -> None:
    """In a worker: the command is done (its output written, its exit code known): flush its output, let go of
    the client's stdio (a reader of a pipe sees EOF) and send the code -- the client exits with it at once, and the
    command's clean-up (closing its engine, joining its threads) goes on here without anyone waiting. Only the
    first call counts; outside a worker it does nothing."""
    global _reported
    if _client is None or _reported:
        return
    _reported = True
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    with contextlib.suppress(BaseException):
        _client.sendall(b"X%d\n" % code)


def _hand_over(channel: socket.socket, sock: socket.socket) -> bool:
    """Pass the connection to the spare waiting on ``channel``; False when it is gone."""
    return send_with_fd(channel, b"C", sock.fileno())


# --- warming a spare up ------------------------------------------------------------------------------------

_WARM_AFTER_SECONDS: Final = 1.0
_MADV_POPULATE_WRITE: Final = 23  # Linux 5.14


def _warm_up(channel: socket.socket, previous: int, prepare: Callable[[str], None] | None, state_root: str) -> None:
    """Make a spare's command run as fast as a second command in the same process would, not as a fresh fork.

    A fresh fork of the template pays as it goes: a copy-on-write page fault for each page of the inherited heap
    it writes (reference counts make that most pages it reads; ~2,000 faults, ~10 ms for ``run``), and the event
    loop's and executor thread's first set-up. The spare does both before its command exists: it writes the
    whole private heap at once (``MADV_POPULATE_WRITE``: one call per mapping instead of a fault per page; the
    price is that heap, ~25 MB, held by the one waiting spare), then calls the policy's ``prepare`` hook (the CLI
    opens its engine there) or else runs an event loop once with one thread hop. It starts when the previous
    worker has ended (or after a second), so it never competes with that command for the CPU, and stops as soon
    as its own command is waiting."""
    if previous > 0:
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(previous)
            try:
                select.select([pidfd, channel.fileno()], [], [], _WARM_AFTER_SECONDS)
            finally:
                os.close(pidfd)
    if prepare is not None:
        prepare(state_root)
    else:
        asyncio.run(asyncio.to_thread(int))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, end in _private_heap():
        if _pending(channel):
            return
        libc.madvise(start, end - start, _MADV_POPULATE_WRITE)  # kernels before 5.14 refuse: no warm-up then


def _private_heap() -> list[tuple[int, int]]:
    """The private writable anonymous mappings (the interpreter's heap and arenas) of this process."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[1] == "rw-p" and (len(fields) < 6 or fields[5] == "[heap]"):
                start, end = fields[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _pending(channel: socket.socket) -> bool:
    """Has the template handed over a connection (or gone away)?"""
    return bool(select.select([channel], [], [], 0)[0])


def _adopt_stdio() -> None:
    """``sys.stdin/stdout/stderr`` on the new fds 0-2, buffered the way a fresh interpreter would buffer them."""
    encoding = sys.stdout.encoding
    # The new streams live as long as the process (closefd=False: the fds stay the process's 0-2).
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=encoding)  # noqa: SIM115
    out = open(1, "wb", closefd=False)  # noqa: SIM115
    sys.stdout = io.TextIOWrapper(out, encoding=encoding, line_buffering=out.isatty())
    err = open(2, "wb", closefd=False)  # noqa: SIM115
    sys.stderr = io.TextIOWrapper(err, encoding=encoding, errors="backslashreplace", line_buffering=True)


def _run_command(target: Callable[[list[str]], int], request: Request) -> int:
    try:
        os.chdir(request.cwd)
    except OSError as err:
        print(f"kitebox: working directory {request.cwd}: {err.strerror}", file=sys.stderr)
        return 125
    sys.argv = ["kitebox", *request.argv]
    try:
        return target(request.argv)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _die_with_client(sock: socket.socket) -> None:
    """Block until the client's end of the connection closes; if it does before the command reported its exit
    code, end this command's process."""
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass
    if not _reported:
        os.kill(os.getpid(), signal.SIGKILL)


def _resolve(name: str) -> Any:
    """``module`` -> the module; ``module:function`` -> the function (its module imported)."""
    module, _, function = name.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, function) if function else loaded


def preload(names: list[str]) -> None:
    """Import (and for ``module:function``, call) ``names``, then every engine module; freeze the heap."""
    for name in [*_ALWAYS, *names]:
        if ":" in name:
            _resolve(name)()
        else:
            _resolve(name)
    import engine

    for info in pkgutil.walk_packages(engine.__path__, "engine."):
        importlib.import_module(info.name)
    from engine.errors import KernelError
    from engine.runtime import seccomp

    with contextlib.suppress(KernelError):  # a container's create compiles or looks up its seccomp program
        seccomp.preload()
    gc.collect()
    gc.freeze()


def main(listen_fd: int, state_root: str, socket_name: str, idle: float, target: str, preloads: str,
         prepare: str = "") -> None:
    """Serve the listening socket ``listen_fd`` (bound at ``<state_root>/<socket_name>``) until retired: each
    command runs ``target`` (``module:function``) in a fork, after ``preloads`` (comma-separated, see
    :func:`preload`) were loaded here once; each spare worker calls ``prepare`` (``module:function``, with the
    state root) when it has warmed up, before its command arrives."""
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C in the terminal that started us is not for us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    listener = socket.socket(fileno=listen_fd)
    try:
        preload([name for name in preloads.split(",") if name])
        function = _resolve(target)
    except BaseException:
        listener.close()  # queued clients see EOF before "P" and run their commands themselves
        raise
    server = _Template(listener, Path(state_root), socket_name, idle)
    server.target = function
    server.prepare = _resolve(prepare) if prepare else None
    try:
        server.serve()
    finally:
        server.close()
    os._exit(0)
