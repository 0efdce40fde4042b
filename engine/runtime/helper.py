"""The fork server: one small single-threaded process per Engine that forks container monitors.

Why a helper: the app is multi-threaded (Qt, asyncio worker threads), and forking a multi-threaded process and
then running Python in the child is unsafe (locks held by other threads stay locked forever). So the engine
starts this helper once (``python -I -S -c <bootstrap>``: standard library only, no site-packages, and without
running ``engine/__init__.py``, which would import the whole engine), and the helper forks monitors from its
own small, quiet, single-threaded heap. Forked monitors share that heap copy-on-write, which keeps an idle
monitor at a few MB of PSS.

Protocol (frames of :mod:`engine.runtime.protocol` over a socketpair inherited as ``argv[1]``)::

    -> {"op": "spawn", "dir": "<container dir>", "backend": "module:Class"}
    <- {"ok": true, "pid": <monitor pid>}   or   {"ok": false, "message": "..."}

Spawning binds ``<dir>/monitor.sock`` first (so a client may connect as soon as the reply arrives), forks; the
child calls ``setsid`` and forks again, the grandchild becomes the monitor (reparented to init or the nearest
subreaper, in its own session, so it outlives the helper and the app) and the middle process exits at once.
The helper exits when its socket reaches EOF (the engine closed or died); monitors are unaffected.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NoReturn

from engine.runtime.backend import Backend, load_backend
from engine.runtime.monitor import Monitor, log
from engine.runtime.protocol import SOCKET_FILE, ProtocolError, encode_frame, recv_frame

__all__ = ["BOOTSTRAP", "main", "run_monitor", "short_unix_path", "spawn_monitor"]

_MAX_SUN_PATH: Final = 107
_PR_SET_CHILD_SUBREAPER: Final = 36

# Run as ``python -I -S -c BOOTSTRAP <fd> <project dir>``: a bare ``engine`` package object stands in for
# engine/__init__.py so importing engine.runtime.* loads only what the monitors need.
BOOTSTRAP: Final = (
    "import sys,types\n"
    "root=sys.argv[2]\n"
    "sys.path.insert(0,root)\n"
    "for name in ('engine','engine.runtime'):\n"
    "    m=types.ModuleType(name);m.__path__=[root+'/'+name.replace('.','/')];sys.modules[name]=m\n"
    "from engine.runtime.helper import main\n"
    "main(int(sys.argv[1]))\n"
)


@contextlib.contextmanager
def short_unix_path(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sun_path`` (108 bytes): the path itself, or the same file reached
    through ``/proc/self/fd/<dir fd>/`` when the state root is deep."""
    text = str(path)
    if len(os.fsencode(text)) <= _MAX_SUN_PATH:
        yield text
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


def spawn_monitor(container_dir: Path, backend: Backend) -> int:
    """Double-fork a monitor for ``container_dir`` (its ``monitor-config.json`` must exist); its pid.

    Must be called from a single-threaded process (the helper)."""
    sock_path = container_dir / SOCKET_FILE
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_unix_path(sock_path) as name:
            listener.bind(name)
        os.chmod(sock_path, 0o600)
        listener.listen(64)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        listener.close()
        raise
    pid = os.fork()
    if pid == 0:  # the middle process
        status = 0
        try:
            os.close(pid_r)
            os.setsid()
            monitor_pid = os.fork()
            if monitor_pid == 0:
                os.close(pid_w)
                run_monitor(container_dir, listener, backend)
            os.write(pid_w, str(monitor_pid).encode())
        except BaseException:
            status = 1
        os._exit(status)
    os.close(pid_w)
    listener.close()
    data = b""
    try:
        while chunk := os.read(pid_r, 64):
            data += chunk
    finally:
        os.close(pid_r)
        os.waitpid(pid, 0)
    if not data.isdigit():
        raise OSError(f"forking the monitor for {container_dir} failed")
    return int(data)


def run_monitor(container_dir: Path, listener: socket.socket, backend: Backend) -> NoReturn:
    """Become the monitor (in a freshly double-forked process): detach stdio, then serve. Never returns."""
    code = 0
    try:
        null = os.open(os.devnull, os.O_RDWR)
        logfd = os.open(container_dir / "monitor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(logfd, 2)
        keep = {0, 1, 2, listener.fileno()}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from engine.runtime.syscalls import prctl

        prctl(_PR_SET_CHILD_SUBREAPER, 1)
        config = json.loads((container_dir / "monitor-config.json").read_bytes())
        Monitor(container_dir, listener, config, backend).run()
    except BaseException:
        log("fatal error:\n" + traceback.format_exc())
        code = 1
    os._exit(code)


def main(fd: int) -> None:
    """Serve spawn requests on the inherited socket ``fd`` until EOF."""
    sock = socket.socket(fileno=fd)
    backends: dict[str, Backend] = {}
    while True:
        try:
            frame = recv_frame(sock)
        except (ProtocolError, OSError):
            break
        if frame is None:
            break
        request, _ = frame
        try:
            if request.get("op") != "spawn":
                raise ValueError(f"unknown request {request.get('op')!r}")
            ref = str(request["backend"])
            if ref not in backends:
                backends[ref] = load_backend(ref)  # imported here once, so forks inherit it loaded
            pid = spawn_monitor(Path(request["dir"]), backends[ref])
            reply: dict[str, object] = {"ok": True, "pid": pid}
        except Exception as err:
            reply = {"ok": False, "message": str(err) or type(err).__name__}
        try:
            sock.sendall(encode_frame(reply))
        except OSError:
            break
    sock.close()
    sys.exit(0)
