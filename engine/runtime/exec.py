"""``exec``: run one more process inside a running container, from its monitor.

Two halves, both in the monitor's process tree:

* :class:`ExecSessions` lives in the monitor (single-threaded, the container's parent and subreaper). An
  ``exec`` request on a monitor connection makes it allocate the process's stdio (pipes; for ``-t`` the socket
  on which the child, once in the container's mount namespace, sends the master of the terminal it allocates
  from the container's own /dev/pts -- :mod:`engine.runtime.pty` -- taken with the start verdict),
  point its own ``pid_for_children`` at the container's pid namespace (``setns(CLONE_NEWPID)``: only children
  are affected, which is why the fork follows) and fork. The child is a direct child of the monitor, so the
  monitor reaps it and knows its exit code. The process's output goes to the requesting connection only (never
  the container log); the connection's later ``exec_stdin`` / ``exec_close_stdin`` / ``resize`` frames drive it.
  When the connection goes away the process loses its terminal (the master is closed: SIGHUP) or its pipes.
* :func:`run_exec` runs in that child: join the container's cgroup (host paths, so first), open and join its
  ipc/uts/net/cgroup/mount namespaces (``setns`` of ``/proc/<init>/ns/*``; namespaces the container shares with
  the host are skipped), then apply the container's confinement exactly as the executor does for init --
  rlimits, no_new_privs, bounding set, user, capabilities (every capability the engine holds with
  ``--privileged``), working directory checked to be inside the root, parent-death signal, every other fd
  closed -- and ``execve`` the container's binary (never a host interpreter). Failures are one JSON line on the
  error pipe, like the executor's (``not_found`` -> 127, ``not_executable`` -> 126).

Wire (see :mod:`engine.runtime.protocol`): ``{"op": "exec", "exec": {...ExecRequest...}}`` ->
``{"ok": true, "exec_id": id, "pid": pid}`` then ``{"stream": ..., "exec_id": id}`` frames with the bytes, and
finally ``{"exit": code, "exec_id": id}``; or ``{"ok": false, "kind": ..., "message": ...}``.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import resource
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, Protocol

from engine.errors import RuntimeFailure
from engine.runtime.backend import Backend, CgroupLike
from engine.runtime.protocol import encode_frame
from engine.runtime.pty import become_console, check_size, console_pair, read_master, recv_master, set_winsize

__all__ = ["ExecRequest", "ExecSessions", "child_guard", "run_exec"]

_CLONE_NEWPID: Final = 0x20000000
_DRAIN_SECONDS: Final = 2.0
_EXIT_CODES: Final = {"not_found": 127, "not_executable": 126}
_NAMESPACES: Final = (("ipc", 0x08000000), ("uts", 0x04000000), ("net", 0x40000000), ("cgroup", 0x02000000),
                      ("mnt", 0x00020000))


@dataclass(frozen=True)
class ExecRequest:
    """One exec, as sent to the monitor. ``env`` entries override the container's environment; ``cwd``/``uid``
    /``gid``/``additional_gids`` of None mean "the container's"; ``rows``/``cols`` size a ``tty``."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str | None = None
    uid: int | None = None
    gid: int | None = None
    additional_gids: tuple[int, ...] | None = None
    tty: bool = False
    stdin: bool = False
    privileged: bool = False
    detach: bool = False
    rows: int = 24
    cols: int = 80

    def to_dict(self) -> dict[str, Any]:
        return {"args": list(self.args), "env": list(self.env), "cwd": self.cwd, "uid": self.uid, "gid": self.gid,
                "additional_gids": None if self.additional_gids is None else list(self.additional_gids),
                "tty": self.tty, "stdin": self.stdin, "privileged": self.privileged, "detach": self.detach,
                "rows": self.rows, "cols": self.cols}

    @classmethod
    def from_dict(cls, raw: object) -> ExecRequest:
        """Parse what :meth:`to_dict` wrote; ValueError naming the bad field otherwise."""
        if not isinstance(raw, dict):
            raise ValueError("exec request must be an object")
        args = raw.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args) or not args[0]:
            raise ValueError("exec request: args must be a non-empty list of strings")
        env = raw.get("env", [])
        if not isinstance(env, list) or not all(isinstance(e, str) and e and not e.startswith("=") for e in env):
            raise ValueError("exec request: env must be a list of KEY=VALUE strings")
        cwd = raw.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
            raise ValueError(f"exec request: working directory {cwd!r} must be an absolute path")
        ids = [raw.get("uid"), raw.get("gid"), *(raw.get("additional_gids") or [])]
        if not all(i is None or (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32) for i in ids):
            raise ValueError("exec request: uid/gid must be non-negative integers")
        flags = {k: raw.get(k, False) for k in ("tty", "stdin", "privileged", "detach")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise ValueError("exec request: tty/stdin/privileged/detach must be booleans")
        rows, cols = check_size(raw.get("rows", 24), raw.get("cols", 80))
        gids = raw.get("additional_gids")
        return cls(tuple(args), tuple(env), cwd, raw.get("uid"), raw.get("gid"),
                   None if gids is None else tuple(gids), rows=rows, cols=cols, **flags)


# --- the child ---------------------------------------------------------------------------------------------------

def child_guard(error_fd: int, body: Callable[[], NoReturn]) -> NoReturn:
    """Run ``body`` in a child just forked from the monitor: default signal dispositions, nothing may unwind
    into the monitor's loop, and any failure becomes one JSON line on ``error_fd``."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        body()
    except BaseException as err:
        with contextlib.suppress(BaseException):
            os.write(error_fd, json.dumps({"kind": "failed", "message": f"container process: {err}"}).encode())
    os._exit(125)


def run_exec(spec: Any, request: ExecRequest, *, init_pid: int, cgroup: CgroupLike, stdin_fd: int, stdout_fd: int,
             stderr_fd: int, error_fd: int, console_fd: int = -1) -> NoReturn:
    """Become ``request``'s process inside the container whose init is ``init_pid`` (see the module docstring).

    Must run in a child forked with ``pid_for_children`` set to the container's pid namespace. With a
    ``console_fd`` the process's 0-2 become a terminal of the container's /dev/pts. Never returns."""
    from engine.errors import KiteboxError
    from engine.runtime.executor import ContainerStartError

    try:
        os.set_inheritable(error_fd, False)
        _exec(spec, request, init_pid, cgroup, stdin_fd, stdout_fd, stderr_fd, error_fd, console_fd)
    except ContainerStartError as err:
        _report(error_fd, err.kind, str(err))
        os._exit(_EXIT_CODES.get(err.kind, 125))
    except KiteboxError as err:
        _report(error_fd, "failed", str(err))
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        _report(error_fd, "failed", f"{err.strerror or err}{where}")
    except BaseException as err:
        _report(error_fd, "failed", f"{type(err).__name__}: {err}")
    os._exit(125)


def _report(error_fd: int, kind: str, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(error_fd, (json.dumps({"kind": kind, "message": message}) + "\n").encode())


def _exec(spec: Any, request: ExecRequest, init_pid: int, cgroup: CgroupLike, stdin_fd: int, stdout_fd: int,
          stderr_fd: int, error_fd: int, console_fd: int) -> NoReturn:
    from engine.runtime import syscalls
    from engine.runtime.caps import ALL_CAPS
    from engine.runtime.executor import ContainerStartError, _setup_stdio, become_and_exec, seccomp_program_of
    from engine.runtime.plan import _merge_env
    from engine.runtime.spec import CapabilitySet

    error_fd = _setup_stdio(stdin_fd, stdout_fd, stderr_fd, error_fd)
    # Seccomp: the container's filter (Docker applies it to exec'd processes too, --privileged or not); get the
    # program before joining the container's mount namespace hides the host's libseccomp.
    seccomp_program = seccomp_program_of(spec)
    if os.readlink("/proc/self/ns/pid") != os.readlink(f"/proc/{init_pid}/ns/pid"):
        raise ContainerStartError("failed", "exec: not forked into the container's pid namespace")
    cgroup.join_self()
    joins: list[tuple[int, int]] = []
    try:
        for name, flag in _NAMESPACES:
            theirs = f"/proc/{init_pid}/ns/{name}"
            if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue  # shared with the host (--network host): nothing to join
            joins.append((os.open(theirs, os.O_RDONLY | os.O_CLOEXEC), flag))
        for fd, flag in joins:
            syscalls.setns(fd, flag)
    finally:
        for fd, _ in joins:
            os.close(fd)
    os.chdir("/")
    if console_fd >= 0:  # the container's /dev/pts is ours only now; replaces the placeholder 0-2
        become_console(console_fd, request.rows, request.cols)

    process = spec.process
    for name, soft, hard in process.rlimits:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    base = list(process.env)
    if request.tty and not any(e.startswith("TERM=") for e in base):
        base.append("TERM=xterm")
    env = _merge_env(base, request.env)
    privileged = bool(request.privileged)
    become_and_exec(
        error_fd=error_fd, no_new_privileges=process.no_new_privileges, seccomp_program=seccomp_program,
        caps=CapabilitySet(ALL_CAPS, ALL_CAPS, ALL_CAPS) if privileged else process.capabilities,
        drop_bounding_set=not privileged,
        groups=process.additional_gids if request.additional_gids is None else request.additional_gids,
        gid=process.gid if request.gid is None else request.gid,
        uid=process.uid if request.uid is None else request.uid,
        clamp_to_held=privileged or spec.privileged, cwd=request.cwd or process.cwd, args=request.args, env=env)


# --- the monitor's side ------------------------------------------------------------------------------------------

class Host(Protocol):
    """What :class:`ExecSessions` uses of the monitor that owns it."""

    sel: selectors.BaseSelector
    backend: Backend
    spec: Any
    pid: int | None
    status: str
    cgroup: CgroupLike | None
    own_pidns: int
    timers: list[tuple[float, str]]

    def send(self, client: Any, data: bytes) -> None: ...


@dataclass(eq=False)
class _Exec:
    id: str
    requester: Any  # the connection awaiting the start verdict
    client: Any  # the connection receiving output (None when detached or gone)
    tty: bool
    pid: int = 0
    console: socket.socket | None = None  # until the child's terminal master arrives (with the verdict)
    wants_stdin: bool = False
    outputs: dict[int, str] = field(default_factory=dict)
    master: int = -1
    stdin_w: int = -1
    stdin_buf: bytearray = field(default_factory=bytearray)
    stdin_closing: bool = False
    error_r: int = -1
    error_buf: bytearray = field(default_factory=bytearray)
    running: bool = False
    exit_code: int | None = None


class ExecSessions:
    """The exec'd processes of one monitor. The monitor routes ``exec*``/``resize`` requests, selector events
    whose data is ``"exec"``, reaped pids, timers named ``exec:<id>`` and dropped clients here."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.sessions: dict[str, _Exec] = {}
        self.fds: dict[int, _Exec] = {}

    def ids(self) -> list[str]:
        """Ids of the exec'd processes still running (Docker's inspect ``ExecIDs``)."""
        return [s.id for s in self.sessions.values() if s.exit_code is None]

    def start(self, client: Any, raw: object) -> None:
        host = self.host
        if host.status != "running" or host.pid is None or host.cgroup is None:
            reason = "is paused, unpause the container before exec" if host.status == "paused" else "is not running"
            self._reply(client, {"ok": False, "kind": "conflict", "message": f"container {reason}"})
            return
        try:
            request = ExecRequest.from_dict(raw)
        except ValueError as err:
            self._reply(client, {"ok": False, "kind": "invalid", "message": str(err)})
            return
        session = _Exec(os.urandom(32).hex(), client, None if request.detach else client, request.tty)
        child_fds: list[int] = []
        try:
            *stdio, console_fd = self._stdio(session, request, child_fds)
            error_r, error_w = os.pipe2(os.O_CLOEXEC)
            child_fds.append(error_w)
            session.error_r = error_r
            pidns = os.open(f"/proc/{host.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            self._refuse(client, session, child_fds, err)
            return
        from engine.runtime.syscalls import setns

        init_pid, cgroup, spec = host.pid, host.cgroup, host.spec
        try:
            setns(pidns, _CLONE_NEWPID)
            pid = cgroup.fork()
            if pid == 0:
                child_guard(error_w, lambda: host.backend.run_exec(
                    spec, request.to_dict(), init_pid=init_pid, cgroup=cgroup, stdin_fd=stdio[0], stdout_fd=stdio[1],
                    stderr_fd=stdio[2], error_fd=error_w, console_fd=console_fd))
        except OSError as err:
            self._refuse(client, session, child_fds, err)
            return
        finally:
            os.close(pidns)
            setns(host.own_pidns, _CLONE_NEWPID)
        for fd in child_fds:
            os.close(fd)
        session.pid = pid
        self.sessions[session.id] = session
        self._watch(session.error_r, session)
        for fd in session.outputs:
            self._watch(fd, session)

    def _stdio(self, session: _Exec, request: ExecRequest, child_fds: list[int]) -> tuple[int, int, int, int]:
        """(stdin, stdout, stderr, console socket or -1) for the child; its ends go to ``child_fds``."""
        if request.detach or request.tty:
            # A terminal: /dev/null only until the child replaces it with the container's pty slave.
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            child_fds.append(null)
            if not request.detach:
                session.console, theirs = console_pair()
                child_fds.append(theirs.detach())
                session.wants_stdin = request.stdin
                return null, null, null, child_fds[-1]
            return null, null, null, -1
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        child_fds.append(out_w)
        os.set_blocking(out_w, True)
        session.outputs[out_r] = "stdout"
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        child_fds.append(err_w)
        os.set_blocking(err_w, True)
        session.outputs[err_r] = "stderr"
        if request.stdin:
            in_r, session.stdin_w = os.pipe2(os.O_CLOEXEC)
            child_fds.append(in_r)
            os.set_blocking(session.stdin_w, False)
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            child_fds.append(in_r)
        return in_r, out_w, err_w, -1

    def _watch(self, fd: int, session: _Exec) -> None:
        self.fds[fd] = session
        self.host.sel.register(fd, selectors.EVENT_READ, "exec")

    def _unwatch(self, fd: int) -> None:
        self.fds.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self.host.sel.unregister(fd)
        os.close(fd)

    def _reply(self, client: Any, header: dict[str, Any], payload: bytes = b"") -> None:
        if client is not None:
            self.host.send(client, encode_frame(header, payload))

    # --- events ------------------------------------------------------------------------------------------------

    def on_event(self, fd: int, events: int) -> None:
        session = self.fds.get(fd)
        if session is None:
            return
        if fd == session.error_r:
            self._on_error_pipe(session)
        elif fd == session.stdin_w:
            self._flush_stdin(session)
        else:
            self._on_output(session, fd)

    def _on_error_pipe(self, session: _Exec) -> None:
        while True:
            try:
                chunk = os.read(session.error_r, 65536)
            except BlockingIOError:
                return
            if not chunk:
                break
            session.error_buf += chunk
            os.set_blocking(session.error_r, False)
        self._unwatch(session.error_r)
        session.error_r = -1
        if session.error_buf:
            try:
                info = json.loads(bytes(session.error_buf).decode(errors="replace").splitlines()[0])
                kind, message = str(info.get("kind", "failed")), str(info.get("message", "exec failed"))
            except (ValueError, IndexError, AttributeError):
                kind, message = "failed", bytes(session.error_buf).decode(errors="replace").strip()[:500]
            self._reply(session.requester, {"ok": False, "kind": kind, "message": message})
            session.requester = session.client = None  # the failure is the whole answer
            return
        if session.console is not None and not self._take_master(session):
            return
        session.running = True
        self._reply(session.requester, {"ok": True, "exec_id": session.id, "pid": session.pid})
        session.requester = None
        self._maybe_finish(session)

    def _take_master(self, session: _Exec) -> bool:
        """Receive the terminal the child allocated (sent before exec, so it is there by the verdict) and
        watch it; on a missing or wrong fd, kill the process and answer the requester with the failure."""
        assert session.console is not None
        console, session.console = session.console, None
        try:
            with console:
                master = recv_master(console)
        except RuntimeFailure as err:
            if session.exit_code is None:  # not reaped yet, so the pid is still ours to signal
                with contextlib.suppress(ProcessLookupError):
                    os.kill(session.pid, signal.SIGKILL)
            self._reply(session.requester, {"ok": False, "kind": "failed", "message": f"exec: {err}"})
            session.requester = session.client = None
            return False
        if session.client is None:  # the connection went before the verdict: hang the terminal up now
            os.close(master)
            return True
        session.master = master
        session.outputs[master] = "stdout"
        self._watch(master, session)
        if session.wants_stdin:
            session.stdin_w = os.dup(master)  # a second fd so the selector can watch it for writing separately
            os.set_blocking(session.stdin_w, False)
        return True

    def _on_output(self, session: _Exec, fd: int) -> None:
        if session.error_r >= 0:  # output means the exec happened: take the verdict first, to answer in order
            self._on_error_pipe(session)
        data = read_master(fd)
        if data is None:
            return
        if not data:
            self._unwatch(fd)
            del session.outputs[fd]
            if fd == session.master:
                session.master = -1
            self._maybe_finish(session)
            return
        if session.client is not None and session.running:
            self._reply(session.client, {"stream": session.outputs[fd], "exec_id": session.id}, data)

    def _flush_stdin(self, session: _Exec) -> None:
        fd = session.stdin_w
        if fd < 0:
            return
        try:
            while session.stdin_buf:
                del session.stdin_buf[:os.write(fd, session.stdin_buf)]
        except BlockingIOError:
            pass
        except OSError:
            session.stdin_buf.clear()
        registered = fd in self.fds
        if session.stdin_buf and not registered:
            self.fds[fd] = session
            self.host.sel.register(fd, selectors.EVENT_WRITE, "exec")
        elif not session.stdin_buf and registered:
            self.fds.pop(fd)
            self.host.sel.unregister(fd)
        if not session.stdin_buf and session.stdin_closing:
            os.close(fd)
            session.stdin_w = -1

    def input(self, client: Any, op: str, req: dict[str, Any], payload: bytes) -> None:
        """``exec_stdin`` (payload), ``exec_close_stdin``, ``exec_detach`` and ``resize`` (``rows``/``cols``) for
        the session the connection started (or ``exec_id``). Quiet: input to a finished session is dropped,
        like a write to a closed pipe; only a bad resize is answered."""
        session = self.sessions.get(str(req.get("exec_id", "")))
        if session is None:
            session = next((s for s in self.sessions.values() if s.client is client), None)
        if session is None or session.exit_code is not None:
            return
        if op == "exec_detach":  # keep running, output discarded from now on; the connection may go
            session.client = None
            return
        if op == "resize":
            try:
                if session.master >= 0:
                    set_winsize(session.master, req.get("rows"), req.get("cols"))  # type: ignore[arg-type]
            except ValueError as err:
                self._reply(client, {"ok": False, "kind": "invalid", "message": str(err)})
            return
        if session.stdin_w < 0 or session.stdin_closing:
            return
        if op == "exec_stdin":
            session.stdin_buf += payload
        elif session.tty:
            session.stdin_buf += b"\x04"  # EOF on a terminal is ^D at the start of a line
        else:
            session.stdin_closing = True
        self._flush_stdin(session)

    def reaped(self, pid: int, status: int) -> bool:
        """Called for every reaped child; True when it was one of ours."""
        session = next((s for s in self.sessions.values() if s.pid == pid), None)
        if session is None:
            return False
        code = os.waitstatus_to_exitcode(status)
        session.exit_code = 128 - code if code < 0 else code
        if session.error_r >= 0:
            os.set_blocking(session.error_r, False)
            self._on_error_pipe(session)
            if session.error_r >= 0:
                self._unwatch(session.error_r)
                session.error_r = -1
        if session.outputs:
            heapq.heappush(self.host.timers, (time.monotonic() + _DRAIN_SECONDS, f"exec:{session.id}"))
        self._maybe_finish(session)
        return True

    def on_timer(self, what: str) -> None:
        session = self.sessions.get(what.removeprefix("exec:"))
        if session is not None:
            for fd in list(session.outputs):
                while session.outputs.get(fd) and (data := read_master(fd)):
                    self._reply(session.client, {"stream": session.outputs[fd], "exec_id": session.id}, data)
                self._unwatch(fd)
            session.outputs.clear()
            session.master = -1
            self._maybe_finish(session)

    def _maybe_finish(self, session: _Exec) -> None:
        if session.exit_code is None or session.outputs or session.error_r >= 0:
            return
        if session.running:
            self._reply(session.client, {"exit": session.exit_code, "exec_id": session.id})
        self._close_all(session)
        self.sessions.pop(session.id, None)

    def client_gone(self, client: Any) -> None:
        """The connection that started a session closed: hang its terminal up / close its pipes."""
        for session in list(self.sessions.values()):
            if session.requester is client:
                session.requester = None
            if session.client is client:
                session.client = None
                if session.exit_code is None:
                    for fd in list(session.outputs):
                        self._unwatch(fd)
                    session.outputs.clear()
                    session.master = -1
                    self._close_stdin(session)

    def _refuse(self, client: Any, session: _Exec, child_fds: list[int], err: OSError) -> None:
        """The exec could not be set up: close what was opened for it and tell the client why."""
        for fd in child_fds:
            os.close(fd)
        self._close_all(session)
        self._reply(client, {"ok": False, "kind": "failed", "message": f"exec: {err.strerror or err}"})

    def _close_all(self, session: _Exec) -> None:
        for fd in [*session.outputs, session.error_r]:
            if fd >= 0:
                self._unwatch(fd)
        session.outputs.clear()
        session.error_r = -1
        if session.console is not None:
            session.console.close()
            session.console = None
        self._close_stdin(session)

    def _close_stdin(self, session: _Exec) -> None:
        """Stop feeding the session's stdin: forget and close the pipe's write end (once)."""
        if session.stdin_w >= 0:
            self.fds.pop(session.stdin_w, None)
            with contextlib.suppress(KeyError, ValueError):
                self.host.sel.unregister(session.stdin_w)
            os.close(session.stdin_w)
            session.stdin_w = -1
