"""The fork server: one small single-threaded process per state root that forks container monitors.

Why a helper: the app is multi-threaded (Qt, asyncio worker threads), and forking a multi-threaded process and
then running Python in the child is unsafe (locks held by other threads stay locked forever). So the engine
starts this helper (``python -I -S -c <bootstrap>``: standard library only, no site-packages, and without
running ``engine/__init__.py``, which would import the whole engine), and the helper forks monitors from its
own small, quiet, single-threaded heap, with the runtime already imported. Forked monitors share that heap
copy-on-write, which keeps an idle monitor at a few MB of PSS.

Lifetime: the helper is a cache, not a daemon to install. It serves every engine (app, CLI invocations) opened
on its state root through ``<root>/helper-<key>.sock`` -- ``key`` names the interpreter and the runtime's
source files, so an engine never talks to a helper running other code -- and exits by itself once no engine
has been connected for ``idle`` seconds (``KITEBOX_HELPER_IDLE``, default 10 minutes), when its socket file
is removed or replaced (the state root was deleted), or when asked (``shutdown``). A CLI run therefore pays
for an interpreter start-up only when no helper is running. Starting one is race-free: under an exclusive
``flock`` of ``<root>/helper.lock`` the engine binds the socket itself, passes the listening socket to the new
helper and connects at once (the kernel queues the connection until the helper accepts). The helper retires
under the same lock (unlink the socket, then serve what was already queued), so a connection either reaches a
helper that answers it or fails to connect and starts a new one.

Protocol (frames of :mod:`engine.runtime.protocol`; any number of requests per connection)::

    -> {"op": "spawn", "dir": "<container dir>", "backend": "module:Class"} + the monitor's config (JSON) as payload
    <- {"ok": true, "pid": <monitor pid>}   or   {"ok": false, "message": "..."}
    -> {"op": "ping"}
    <- {"ok": true, "pid": <helper pid>}
    -> {"op": "shutdown"}
    <- {"ok": true, "pid": <helper pid>}    (then the helper exits; its connections see EOF)

Spawning binds ``<dir>/monitor.sock`` first (so a client may connect as soon as the reply arrives) and hands it,
with the monitor's config (in memory: no file is written and read back on the start's path), to a monitor
process: one forked *ahead* (a spare, already detached and waiting on a socket pair for its container, so a start
does not wait for a fork and its set-up: ~2 ms), or, when none is there (or the request names a test backend),
one forked on the spot. The next spare is forked 20 ms after the reply, so that fork does not take a core from
the start just begun; it rehearses parsing the last config while it waits. Either way the monitor calls
``setsid``, in its own session, so it outlives the helper and the app (when the helper exits, its monitors are
reparented to init or the nearest subreaper; while it runs, the kernel reaps the ones that end, as the helper
ignores SIGCHLD); a waiting spare exits with its helper (EOF). Monitors keep the helper's command line but are
named ``kb-monitor`` (``/proc/<pid>/comm``), which is how :func:`helper_pids` tells them apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import selectors
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

from engine.runtime.backend import REAL_BACKEND, Backend, load_backend
from engine.runtime.monitor import Monitor
from engine.runtime.monitor_io import log
from engine.runtime.protocol import SOCKET_FILE, FrameDecoder, ProtocolError, encode_frame

__all__ = ["BOOTSTRAP", "FORKED_PREFIX", "LOCK_FILE", "MONITOR_NAME", "fork_with_channel", "helper_pids", "main",
           "receive_with_fds", "run_monitor", "send_with_fd", "short_unix_path", "spawn_monitor", "stop_helpers"]

_MAX_SUN_PATH: Final = 107
_PR_SET_CHILD_SUBREAPER: Final = 36
LOCK_FILE: Final = "helper.lock"
FORKED_PREFIX: Final = "kb-"
MONITOR_NAME: Final = "kb-monitor"
_CHECK_SECONDS: Final = 2.0  # how often an idle helper checks that its socket file is still its own
_SEND_TIMEOUT: Final = 10.0
_REFILL_DELAY: Final = 0.02  # after a spawn, before forking the next spare monitor
_HANDOFF_HEAD: Final = struct.Struct(">II")  # a spare's container: the sizes of its directory and config

# Run as ``python -I -S -c BOOTSTRAP <listen fd> <project dir> <state root> <socket name> <idle seconds>``. It
# forks at once and the parent exits, so the helper is nobody's child (the starting engine reaps that parent in
# a few ms) and a bare ``engine`` package object stands in for engine/__init__.py so importing engine.runtime.*
# loads only what the monitors need.
BOOTSTRAP: Final = (
    "import os,sys,types\n"
    "if os.fork():os._exit(0)\n"
    "root=sys.argv[2]\n"
    "sys.path.insert(0,root)\n"
    "for name in ('engine','engine.runtime'):\n"
    "    m=types.ModuleType(name);m.__path__=[root+'/'+name.replace('.','/')];sys.modules[name]=m\n"
    "from engine.runtime.helper import main\n"
    "main(int(sys.argv[1]),sys.argv[3],sys.argv[4],float(sys.argv[5]))\n"
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


def _bind_monitor_socket(container_dir: Path) -> socket.socket:
    """Listen on ``<container_dir>/monitor.sock`` (before the monitor exists: a client may connect at once)."""
    sock_path = container_dir / SOCKET_FILE
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_unix_path(sock_path) as name:
            listener.bind(name)
        os.chmod(sock_path, 0o600)
        listener.listen(64)
    except BaseException:
        listener.close()
        raise
    return listener


def spawn_monitor(container_dir: Path, backend: Backend, config: bytes) -> int:
    """Fork a monitor for ``container_dir`` driven by ``config`` (the JSON the supervisor sends); its pid.

    Must be called from a single-threaded process (the helper)."""
    listener = _bind_monitor_socket(container_dir)
    try:
        pid = os.fork()
    except BaseException:
        listener.close()
        raise
    if pid == 0:
        try:
            _detach({listener.fileno()})
        except BaseException:
            os._exit(1)
        run_monitor(container_dir, listener, backend, config)
    listener.close()
    return pid


def _detach(keep: set[int]) -> None:
    """In a freshly forked monitor: its own session and name, stdio on /dev/null, every other inherited fd but
    ``keep`` closed, the signal dispositions a monitor needs, and the subreaper bit for its container's
    orphans."""
    os.setsid()  # its own session: no terminal's signals reach it
    _set_process_name(MONITOR_NAME)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the helper ignores it; the monitor waits for its init
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from engine.runtime.syscalls import prctl

    prctl(_PR_SET_CHILD_SUBREAPER, 1)


def run_monitor(container_dir: Path, listener: socket.socket, backend: Backend, config: bytes,
                netns_fd: int = -1) -> NoReturn:
    """Become ``container_dir``'s monitor in a process :func:`_detach` prepared: log to its ``monitor.log``, then
    serve ``config`` (``netns_fd``: a network namespace made ahead, for the container's first start). Never
    returns."""
    code = 0
    try:
        logfd = os.open(container_dir / "monitor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(logfd, 2)
        os.close(logfd)
        Monitor(container_dir, listener, json.loads(config), backend, netns_fd=netns_fd, config_bytes=config).run()
    except BaseException:
        log("fatal error:\n" + traceback.format_exc())
        code = 1
    os._exit(code)


def fork_with_channel(child: Callable[[socket.socket], object]) -> tuple[int, socket.socket] | None:
    """Fork a process handed one end of a new socket pair (``child`` runs in it and must not return); the pid and
    our end, or None when the pair or the fork could not be made. For single-threaded callers: the helper's
    spare monitors, the CLI template's spare workers."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        ours.close()
        child(theirs)
        os._exit(0)
    theirs.close()
    return pid, ours


def send_with_fd(sock: socket.socket, data: bytes, fd: int) -> bool:
    """Send ``data`` with ``fd`` attached (SCM_RIGHTS); False when the peer is gone."""
    try:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        if sent < len(data):
            sock.sendall(data[sent:])  # the rest of a long message (a signal may cut a send short)
    except OSError:
        return False
    return True


def receive_with_fds(sock: socket.socket, size: int, count: int) -> tuple[bytes, list[int]]:
    """One message of up to ``size`` bytes and the fds attached to it (up to ``count``); (b"", []) at EOF."""
    data, ancillary, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(count * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    return data, fds


class _SpareMonitor(NamedTuple):
    pid: int
    channel: socket.socket  # the helper's end: the spare waits on the other one for its container


def _fork_spare_monitor(backend: Backend, rehearsal: bytes = b"") -> _SpareMonitor | None:
    """A monitor forked (and detached) before its container is known, so a start skips that fork: it waits for
    ``(container dir, config, listening socket)`` on a socket pair (see :func:`_hand_to_spare`) and exits on EOF
    (its helper is gone). ``rehearsal``: a config to parse while it waits (see :func:`_rehearse`)."""

    def wait_for_container(channel: socket.socket) -> NoReturn:
        head = _HANDOFF_HEAD.size
        try:
            _detach({channel.fileno()})
            netns = _fresh_netns()
            _rehearse(backend, rehearsal)
            data, fds = receive_with_fds(channel, 65536, 1)
            whole = head + sum(_HANDOFF_HEAD.unpack_from(data)) if len(data) >= head else 0
            while len(data) < whole:
                more = channel.recv(65536)  # a big config may arrive in pieces
                if not more:
                    break
                data += more
            channel.close()
        except BaseException:
            os._exit(0)
        if len(fds) != 1 or not whole or len(data) != whole:
            os._exit(0)  # EOF (the helper is gone) or not a container: nothing to monitor
        dir_size = _HANDOFF_HEAD.unpack_from(data)[0]
        run_monitor(Path(os.fsdecode(data[head:head + dir_size])), socket.socket(fileno=fds[0]), backend,
                    data[head + dir_size:], netns)

    forked = fork_with_channel(wait_for_container)
    return None if forked is None else _SpareMonitor(*forked)


def _rehearse(backend: Backend, config: bytes) -> object:
    """In a spare: parse ``config`` (the last one the helper handed out) as the spare will parse its own. A spare
    shares the helper's memory copy-on-write, so the first parse in it copies every page it writes (allocator
    pools, the reference counts of the code it runs): ~170 page faults, 0.8 ms of a start on a VM against
    0.15 ms warm. Done now, while the spare waits, they are not on the start's path. Returns the spec parsed
    (None without a config, or when it does not parse: the start then reports why)."""
    if config:
        with contextlib.suppress(Exception):
            return backend.load_spec(json.loads(config)["spec"])
    return None


def _fresh_netns() -> int:
    """In a spare monitor: a new network namespace with its loopback up, for its container's first start (creating
    one is ~0.7 ms of a start); -1 when it cannot be made. The spare itself stays in (or exits for failing to
    return to) its own namespace."""
    from engine.runtime.executor import loopback_up
    from engine.runtime.syscalls import CLONE_NEWNET, setns, unshare

    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            unshare(CLONE_NEWNET)
        except OSError:
            return -1
        try:
            with contextlib.suppress(OSError):
                loopback_up()
                return os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            return -1
        finally:
            setns(own, CLONE_NEWNET)  # raises if it cannot: the spare then exits rather than monitor from there
    finally:
        os.close(own)


def _hand_to_spare(spare: _SpareMonitor, container_dir: Path, config: bytes) -> bool:
    """Give the spare its container: one message of ``_HANDOFF_HEAD`` (the two sizes), the directory and the
    config, with the listening socket attached. False (nothing bound is left behind) when the spare is gone."""
    listener = _bind_monitor_socket(container_dir)
    directory = os.fsencode(str(container_dir))
    try:
        return send_with_fd(spare.channel, _HANDOFF_HEAD.pack(len(directory), len(config)) + directory + config,
                            listener.fileno())
    finally:
        listener.close()


class _Server:
    """The helper's loop: accept engines, answer their requests, retire when idle (see the module docstring)."""

    def __init__(self, listener: socket.socket, root: Path, socket_name: str, idle: float) -> None:
        self.listener = listener
        self.root = root
        self.sock_path = root / socket_name
        self.idle = idle
        self.identity = self._socket_identity()
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, tuple[socket.socket, FrameDecoder]] = {}
        self.backends: dict[str, Backend] = {}
        self.accepting = True
        self.last_activity = time.monotonic()
        self.spare_monitor: _SpareMonitor | None = None
        self.last_config = b""  # the last monitor config handed out: the next spare rehearses parsing it
        self.refill_at: float | None = None  # when to fork the next spare monitor
        self.spares = False  # keep a spare monitor (the helper does; the CLI's template has spares of its own)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, "listen")

    def _socket_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.sock_path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def backend(self, ref: str) -> Backend:
        if ref not in self.backends:
            self.backends[ref] = load_backend(ref)  # imported here once, so forks inherit it loaded
        return self.backends[ref]

    def serve(self) -> None:
        while self.accepting or self.clients:
            timeout: float | None = None
            if not self.clients:
                now = time.monotonic()
                if self.identity is None or self._socket_identity() != self.identity:
                    self._stop_accepting()  # the state root (or our socket) is gone: nobody can reach us
                    continue
                if now - self.last_activity >= self.idle:
                    self._retire()
                    continue
                timeout = min(_CHECK_SECONDS, self.last_activity + self.idle - now)
            if self.refill_at is not None:
                wait = max(0.0, self.refill_at - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            for key, _ in self.sel.select(timeout):
                if key.data == "listen":
                    self._accept()
                elif self._on_readable(key.fileobj) == "shutdown":  # type: ignore[arg-type]
                    return
            if self.refill_at is not None and time.monotonic() >= self.refill_at:
                self.refill_at = None
                self._refill_spare()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.last_activity = time.monotonic()
            self._on_accept(sock)

    def _on_accept(self, sock: socket.socket) -> None:
        """Take a new connection (a subclass may serve it at once instead, as engine.forkserver does)."""
        sock.settimeout(_SEND_TIMEOUT)  # replies are small; a client that never reads is dropped
        self.clients[sock.fileno()] = (sock, FrameDecoder())
        self.sel.register(sock, selectors.EVENT_READ, "client")

    def _drop(self, sock: socket.socket) -> None:
        self.clients.pop(sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        sock.close()
        self.last_activity = time.monotonic()

    def _on_readable(self, sock: socket.socket) -> str | None:
        entry = self.clients.get(sock.fileno())
        if entry is None:
            return None
        try:
            data = sock.recv(65536)
            frames = entry[1].feed(data) if data else []
        except (OSError, ProtocolError):
            data, frames = b"", []
        if not data:
            self._drop(sock)
            return None
        for request, payload in frames:
            self.last_activity = time.monotonic()
            op = request.get("op")
            if op == "shutdown":
                reply = self._shutdown()
            elif op == "ping":
                reply = {"ok": True, "pid": os.getpid()}
            else:
                reply = self._spawn(request, payload)
            try:
                sock.sendall(encode_frame(reply))
            except OSError:
                self._drop(sock)
                return None
            finally:
                if self.spares and self.spare_monitor is None and self.refill_at is None:
                    # Not now: forking (and the spare's set-up) would take a core from the start just begun.
                    self.refill_at = time.monotonic() + _REFILL_DELAY
            if op == "shutdown":
                return "shutdown"
        return None

    def _spawn(self, request: dict[str, object], config: bytes) -> dict[str, object]:
        try:
            if request.get("op") != "spawn":
                raise ValueError(f"unknown request {request.get('op')!r}")
            if not config:
                raise ValueError("spawn: no monitor config sent")
            directory, ref = Path(str(request["dir"])), str(request["backend"])
            spare, self.spare_monitor = self.spare_monitor, None
            if spare is not None and ref == REAL_BACKEND and _hand_to_spare(spare, directory, config):
                pid = spare.pid
            else:
                pid = spawn_monitor(directory, self.backend(ref), config)
            if ref == REAL_BACKEND:
                self.last_config = config
            if spare is not None:
                spare.channel.close()  # handed over, or dead, or not for this backend (then it exits)
        except Exception as err:
            return {"ok": False, "message": str(err) or type(err).__name__}
        return {"ok": True, "pid": pid}

    def _refill_spare(self) -> None:
        """Fork the next spare monitor (of the production runtime) if the last one was used."""
        if self.spares and self.spare_monitor is None and self.accepting:
            with contextlib.suppress(Exception):
                self.spare_monitor = _fork_spare_monitor(self.backend(REAL_BACKEND), self.last_config)
            self._rehearse_request()

    def _rehearse_request(self) -> None:
        """After a fork this process shares its memory with the child copy-on-write: decode a spawn request like
        the last one now, so the pages that decoding writes are copied here and not while the next start waits
        (~150 page faults, ~0.5 ms on a VM)."""
        if self.last_config:
            with contextlib.suppress(Exception):
                request = encode_frame({"op": "spawn", "dir": str(self.root), "backend": REAL_BACKEND},
                                       self.last_config)
                for header, _ in FrameDecoder().feed(request):
                    Path(str(header["dir"]))
                encode_frame({"ok": True, "pid": os.getpid()})

    def _shutdown(self) -> dict[str, object]:
        self._unlink_socket()
        return {"ok": True, "pid": os.getpid()}

    def _unlink_socket(self) -> None:
        if self.identity is not None and self._socket_identity() == self.identity:
            with contextlib.suppress(OSError):
                self.sock_path.unlink()

    def _retire(self) -> None:
        """Idle: under the engines' lock, make the socket unreachable, then serve only what was queued."""
        try:
            lock = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._stop_accepting()
            return
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.last_activity = time.monotonic()  # an engine is starting or checking a helper: stay
                return
            self._unlink_socket()
        finally:
            os.close(lock)
        self._stop_accepting()

    def _stop_accepting(self) -> None:
        if not self.accepting:
            return
        self._drop_spare()
        self._accept()  # connections already queued are served before the helper exits
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.listener)
        self.listener.close()
        self.accepting = False

    def _drop_spare(self) -> None:
        if self.spare_monitor is not None:
            self.spare_monitor.channel.close()  # EOF: the waiting spare exits
            self.spare_monitor = None

    def close(self) -> None:
        self._drop_spare()
        for sock, _ in list(self.clients.values()):
            sock.close()
        self.clients.clear()
        with contextlib.suppress(OSError):
            self.listener.close()
        self.sel.close()


def _set_process_name(name: str) -> None:
    """Name this process (``/proc/<pid>/comm``): forks of the helper keep its command line, and the name is
    what tells a monitor (or a template's worker) from a helper in :func:`helper_pids`."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as handle:
        handle.write(name)


def main(listen_fd: int, state_root: str, socket_name: str, idle: float) -> None:
    """Serve the listening socket ``listen_fd`` (bound at ``<state_root>/<socket_name>``) until retired."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C in the terminal that started us is not for us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are its children until it exits: the kernel reaps
    server = _Server(socket.socket(fileno=listen_fd), Path(state_root), socket_name, idle)
    try:
        with contextlib.suppress(Exception):  # a broken runtime answers every spawn with the reason instead
            server.backend(REAL_BACKEND)
        # Monitors share this heap copy-on-write: keep their garbage collector off the inherited objects, so a
        # collection in a monitor does not copy (and, on a VM, fault in) pages it never otherwise touches.
        gc.collect()
        gc.freeze()
        server.spares = True
        server._refill_spare()
        server.serve()
    finally:
        server.close()
    os._exit(0)


def helper_pids(under: Path, bootstrap: str = BOOTSTRAP) -> list[int]:
    """Pids of the running helpers whose state root is ``under`` or inside it (found by their command line; a
    helper's short-lived starting parent has the same one). ``bootstrap`` names another kind of per-root
    process started with the same argument layout (engine.forkserver's templates)."""
    marker = bootstrap.encode()
    prefix = os.fsencode(str(under.absolute()))
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if marker in argv and len(argv) > argv.index(marker) + 3:
            root = argv[argv.index(marker) + 3]
            if (root == prefix or root.startswith(prefix + b"/")) and _running(int(name)) and not _forked(name):
                found.append(int(name))
    # A monitor or worker in its first microseconds, forked but not named yet (_set_process_name), looks like
    # its helper: it is the one whose parent is in the list. (The helper's starting parent exits at once.)
    return [pid for pid in found if _parent(pid) not in found]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def stop_helpers(under: Path, timeout: float = 5.0, bootstrap: str = BOOTSTRAP) -> list[int]:
    """SIGTERM the helpers of the state roots under ``under`` and wait until they are gone; their pids.

    Monitors are not affected (they are not the helper's children). For tests and ``system`` clean-ups."""
    pids = helper_pids(under, bootstrap)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _running(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"monitor helper {pid} did not exit within {timeout:g}s")
            time.sleep(0.005)
    return pids


def _forked(pid: str) -> bool:
    """A monitor or worker forked from a helper or template (named by :func:`_set_process_name`)."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().startswith(FORKED_PREFIX)
    except OSError:
        return True  # gone meanwhile


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
