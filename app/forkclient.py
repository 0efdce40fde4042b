"""The ``kitebox`` command's fast start: run the command in a process forked from a warm template.

Why: a short command (``kitebox exec NAME true``, ``kitebox run --rm IMAGE true``) is mostly Python start-up
-- importing asyncio and the engine costs ~150 ms on a small machine, several times the container work. So,
like multiprocessing's forkserver, a template process per state root (engine/forkserver.py) imports the CLI
and the engine once, and each command runs in a fork of it that adopts this process's stdin/stdout/stderr
(passed as file descriptors), working directory, umask and environment, runs ``app.cli.main.main(argv)``
and sends back its exit code. This process stays a thin client: it forwards the signals a user sends a
command (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, window size changes) to the command's process and exits with its
code; if this client is killed, the command's process kills itself (a watcher in engine/forkserver.py),
as the command would have died with it.

The template is a cache with the monitor helper's lifetime rules (engine/runtime/helper.py): one per state
root and code version (``<root>/cli-<key>.sock``; ``key`` hashes the interpreter and the sources), started on
demand under an exclusive ``flock`` of ``<root>/helper.lock`` -- the starter binds the socket and hands it over,
so its own command waits in the socket's queue while the template imports --, answering only its own user,
and exiting when no command came for ``KITEBOX_HELPER_IDLE`` seconds (default 600) or when its socket file is
removed. When no template can be reached or started, or it refuses the request before running it, the
command runs in this process as before; ``KITEBOX_FORKSERVER=0`` forces that.

This module is imported by every ``kitebox`` command before anything else, so it uses only modules that are
built into the interpreter (no ``socket``, ``signal`` or ``json`` wrappers: importing those costs more than
the whole client).

Wire format, one connection per command::

    client -> template  "<length>\\n" + fields joined by NUL, with SCM_RIGHTS carrying fds 0, 1, 2:
                        "KB1", cwd, umask (octal), number of arguments, arguments..., environment "K=V"...
    worker -> client    "P<pid>\\n" once the command's process runs, "X<exit code>\\n" when it is done.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module behind ``signal``, built in
import _socket
import fcntl
import os
import sys
import zlib

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would cost more than this module's work
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final

__all__ = [
    "BOOTSTRAP",
    "DISABLE_ENV",
    "LOCK_FILE",
    "MAGIC",
    "PRELOADS",
    "PREPARE",
    "TARGET",
    "command_word",
    "encode_request",
    "run",
    "socket_name",
    "state_root",
]

DISABLE_ENV: Final = "KITEBOX_FORKSERVER"
LOCK_FILE: Final = "helper.lock"  # the monitor helper's: the template retires under it (see _Server._retire)
MAGIC: Final = b"KB1"
_IDLE_ENV: Final = "KITEBOX_HELPER_IDLE"
_IDLE_DEFAULT: Final = "600"
_PROJECT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_SUN_PATH: Final = 107
_FORWARDED: Final = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2")
_GLOBAL_WITH_VALUE: Final = ("--root", "--config")

# ``python -I -c BOOTSTRAP <listen fd> <project dir> <state root> <socket name> <idle seconds> <target>
# <preloads> <prepare>``: the monitor helper's argument layout, so engine.runtime.helper.helper_pids finds both
# kinds.
BOOTSTRAP: Final = (
    "import sys\n"
    "sys.path.insert(0,sys.argv[2])\n"
    "from engine.forkserver import main\n"
    "main(int(sys.argv[1]),sys.argv[3],sys.argv[4],float(sys.argv[5]),sys.argv[6],sys.argv[7],sys.argv[8])\n"
)
TARGET: Final = "app.cli.main:main"
# What a spare worker does before its command arrives: open the state root's engine (see there).
PREPARE: Final = "app.cli.main:prepare_worker"
# The CLI's command modules (the engine's modules are always preloaded) and its parsers, built once.
PRELOADS: Final = ("app.cli.containers,app.cli.exec,app.cli.images,app.cli.networks,app.cli.system,app.cli.volumes,"
                   "app.cli.output,app.cli.progress,app.cli.main:prebuild_parser")


def command_word(argv: Sequence[str]) -> str | None:
    """The command in ``argv``: the first word that is neither a global option nor an option's value."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _GLOBAL_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def state_root(argv: Sequence[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The state root the command will use: ``--root`` (before the command), ``KITEBOX_ROOT``, or the default
    of ``engine.config.default_root`` (kept equal by a test), made absolute as ``Engine.open`` does."""
    root = None
    skip = False
    for index, word in enumerate(argv):
        if skip:
            skip = False
        elif word in _GLOBAL_WITH_VALUE:
            skip = True
            if word == "--root" and index + 1 < len(argv):
                root = argv[index + 1]
        elif word.startswith("--root="):
            root = word.partition("=")[2]
        elif not word.startswith("-"):
            break
    if root is None:
        root = environ.get("KITEBOX_ROOT") or None
    if root is None:
        if os.geteuid() == 0:
            root = "/var/lib/kitebox"
        else:
            data = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
            root = os.path.join(data, "kitebox")
    return os.path.join(os.getcwd(), root)


def socket_name() -> str:
    """``cli-<key>.sock``: ``key`` covers the interpreter and every source file of the CLI and the engine (name,
    size, mtime), so a command never runs in a template holding other code."""
    parts = [sys.executable, _PROJECT]
    pending = [os.path.join(_PROJECT, "app"), os.path.join(_PROJECT, "engine")]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in ("__pycache__", "gui"):
                        pending.append(entry.path)
                elif entry.name.endswith(".py"):
                    st = entry.stat()
                    parts.append(f"{entry.path}:{st.st_size}:{st.st_mtime_ns}")
    data = "\0".join(parts).encode()
    return f"cli-{zlib.crc32(data):08x}{zlib.adler32(data):08x}.sock"


def encode_request(cwd: str, umask: int, argv: Sequence[str], environ: dict[str, str]) -> bytes:
    """The request frame (see the module docstring)."""
    fields = [MAGIC, os.fsencode(cwd), b"%o" % umask, b"%d" % len(argv), *map(os.fsencode, argv),
              *(os.fsencode(f"{key}={value}") for key, value in environ.items())]
    body = b"\0".join(fields)
    return b"%d\n" % len(body) + body


class _Unavailable(Exception):
    """No template could run the command (it is then run in this process)."""


class _ShortPath:
    """A name for ``path`` that fits in ``sun_path``: the path, or ``/proc/self/fd/<dir fd>/<name>``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dirfd = -1

    def __enter__(self) -> str:
        if len(os.fsencode(self.path)) <= _MAX_SUN_PATH:
            return self.path
        self.dirfd = os.open(os.path.dirname(self.path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self.dirfd}/{os.path.basename(self.path)}"

    def __exit__(self, *exc: object) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)


def _connect(path: str) -> _socket.socket | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        with _ShortPath(path) as name:
            sock.connect(name)
    except OSError:
        sock.close()
        return None
    return sock


def _start_template(root: str, path: str, idle: str) -> None:
    """Bind ``path`` and hand the listening socket to a new template (called under the lock)."""
    for name in os.listdir(root):
        # Other templates run other code (or died without retiring): removing their socket retires them (a
        # template exits once its socket file is gone; commands it already forked are not affected).
        if name.startswith("cli-") and name.endswith(".sock"):
            try:  # noqa: SIM105 (contextlib is not imported here: see the module docstring)
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        with _ShortPath(path) as name:
            listener.bind(name)
        os.chmod(path, 0o600)
        listener.listen(64)
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        env = {key: value for key, value in os.environ.items()
               if key == "PATH" or key == "LANG" or key.startswith("LC_")}
        os.posix_spawn(sys.executable, [sys.executable, "-I", "-c", BOOTSTRAP, str(fd), _PROJECT, root,
                                        os.path.basename(path), idle, TARGET, PRELOADS, PREPARE], env,
                       file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                     (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                     (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                       setsid=True)
    finally:
        listener.close()


def _template(root: str, idle: str) -> _socket.socket:
    """A connection to the state root's template, starting one when none answers."""
    path = os.path.join(root, socket_name())
    sock = _connect(path)
    if sock is not None:
        return sock
    try:
        os.makedirs(root, mode=0o711, exist_ok=True)
        lock = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise _Unavailable from err
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)  # started by another command while we waited for the lock?
        if sock is None:
            try:
                _start_template(root, path, idle)
            except OSError as err:
                raise _Unavailable from err
            sock = _connect(path)
        if sock is None:
            raise _Unavailable
        return sock
    finally:
        os.close(lock)


class _Forwarder:
    """Signal handlers that pass what the user sends this client on to the command's process."""

    def __init__(self) -> None:
        self.pid = 0
        self.pending: list[int] = []
        self.forwarded: list[int] = []
        for name in _FORWARDED:
            _signal.signal(getattr(_signal, name), self.handle)
        _signal.signal(_signal.SIGTSTP, self.suspend)

    def handle(self, signum: int, frame: object) -> None:
        if self.pid:
            self.forwarded.append(signum)
            self._send(signum)
        else:
            self.pending.append(signum)

    def suspend(self, signum: int, frame: object) -> None:
        """Ctrl-Z (job control): stop the command with us, and let it go on when the shell continues us (the
        command's process is not in our process group, so the terminal's signals never reach it)."""
        if self.pid:
            self._send(_signal.SIGSTOP)
        _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTSTP)  # stops here until SIGCONT
        _signal.signal(_signal.SIGTSTP, self.suspend)
        if self.pid:
            self._send(_signal.SIGCONT)

    def _send(self, signum: int) -> None:
        try:  # noqa: SIM105
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def started(self, pid: int) -> None:
        self.pid = pid
        while self.pending:
            self.handle(self.pending.pop(0), None)


def _exchange(sock: _socket.socket, request: bytes) -> int:
    """Send the request and stdio, then relay signals until the command's exit code arrives."""
    forwarder = _Forwarder()
    try:
        sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, bytes(_fd_array((0, 1, 2))))])
    except OSError as err:  # a closed stdio fd, a template gone meanwhile: nothing ran yet
        raise _Unavailable from err
    buffer = b""
    pid = 0
    while True:
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            break
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line[:1] == b"P" and line[1:].isdigit():
                pid = int(line[1:])
                forwarder.started(pid)
            elif line[:1] == b"X" and pid:
                return int(line[1:])
    if not pid:
        raise _Unavailable  # the template went away before starting the command: it never ran
    for signum in forwarder.forwarded:  # it died of a signal we passed on: die of it too, as it would have
        if signum not in (_signal.SIGWINCH,):
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)
    os.write(2, b"kitebox: the command's process (pid %d) ended without an exit status\n" % pid)
    return 125


def _fd_array(fds: Sequence[int]) -> bytearray:
    out = bytearray()
    for fd in fds:
        out += fd.to_bytes(4, sys.byteorder, signed=True)
    return out


def run(argv: Sequence[str]) -> int | None:
    """Run the CLI command ``argv`` in a fork of the state root's template; its exit code, or None when this
    process has to run it (no command, the desktop app, fast start disabled or unavailable)."""
    word = command_word(argv)
    if word is None or word == "gui" or os.environ.get(DISABLE_ENV) == "0":
        return None
    idle = os.environ.get(_IDLE_ENV, _IDLE_DEFAULT)
    try:
        if not 0 < float(idle) < 1e9:
            return None  # the engine reports the bad value when it runs the command here
        cwd = os.getcwd()
    except (ValueError, OSError):
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        sock = _template(state_root(argv), idle)
        try:
            return _exchange(sock, encode_request(cwd, umask, argv, dict(os.environ)))
        finally:
            sock.close()
    except _Unavailable:
        for name in (*_FORWARDED, "SIGTSTP"):
            _signal.signal(getattr(_signal, name), _signal.default_int_handler if name == "SIGINT"
                           else _signal.SIG_DFL)
        return None
