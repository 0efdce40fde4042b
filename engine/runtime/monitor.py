"""The per-container monitor: the conmon / containerd-shim of Kitebox.

One monitor process per running container, forked by the helper (:mod:`engine.runtime.helper`) and detached
from the engine (own session, reparented to init), so containers keep running, logging and restarting when the
app or CLI that started them exits or crashes. The monitor

* is the container's parent and a child subreaper; it creates the cgroup, calls ``new_pid_namespace()`` and
  forks the child that runs :func:`engine.runtime.executor.run_container_init`, then learns from the error
  pipe whether exec succeeded (EOF without data) or why it failed (one JSON line);
* holds the container's stdio pipes, copies stdout/stderr into the json-file log (:mod:`engine.logs`) and to
  attached clients, and writes ``-i`` input to stdin (a pty is a later seam: :meth:`Monitor._make_stdio`);
* writes ``monitor.json``, ``state.json`` (per start) and ``exit.json`` (per exit) atomically;
* serves ``monitor.sock`` (see :mod:`engine.runtime.protocol` for the requests);
* implements stop (signal, SIGKILL after the timeout), pause (cgroup freezer) and Docker's restart policies
  (``no``, ``on-failure[:N]``, ``always``, ``unless-stopped``; back-off 100 ms doubling up to 1 min, reset after
  10 s of running; a user stop, or a kill with SIGKILL or the stop signal, never restarts);
* on every exit kills what is left in the cgroup, destroys it and records the exit, then restarts or ends.

If the monitor itself is SIGKILLed, the container dies with it (the executor sets PR_SET_PDEATHSIG) and the
supervisor records "monitor died" when it next looks (:mod:`engine.runtime.supervisor`).

The monitor is single-threaded (one ``selectors`` loop) and imports little, so a forked idle monitor costs a
few MB. The runtime it drives is a :class:`Backend` named in its configuration, normally
:class:`RealBackend` (the spec, executor and cgroups rooms); tests may name another one.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib
import json
import os
import selectors
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol

from engine.logs import LogWriter, StreamLogger
from engine.runtime.protocol import (
    EXIT_FILE,
    MONITOR_FILE,
    SOCKET_FILE,
    STATE_FILE,
    FrameDecoder,
    ProtocolError,
    boot_id,
    encode_frame,
    rfc3339nano,
    write_json_atomic,
)

__all__ = ["REAL_BACKEND", "Backend", "CgroupLike", "Monitor", "RealBackend", "load_backend", "run_monitor"]

REAL_BACKEND: Final = "engine.runtime.monitor:RealBackend"
_PR_SET_CHILD_SUBREAPER: Final = 36
_CLONE_NEWPID: Final = 0x20000000
_BACKOFF_START: Final = 0.1
_BACKOFF_MAX: Final = 60.0
_BACKOFF_RESET_AFTER: Final = 10.0
_DRAIN_SECONDS: Final = 2.0
_MAX_CLIENT_BACKLOG: Final = 8 * 1024 * 1024
_EXIT_CODES: Final = {"not_found": 127, "not_executable": 126}


class CgroupLike(Protocol):
    def create(self, spec: Any) -> None: ...
    def pids(self) -> list[int]: ...
    def kill_all(self, sig: int = ...) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def oom_killed(self) -> bool: ...
    def destroy(self) -> None: ...


class Backend(Protocol):
    """What the monitor needs from the runtime core; the seam tests use to substitute a stand-in."""

    def load_spec(self, text: str) -> Any: ...
    def cgroup(self, spec: Any) -> CgroupLike: ...
    def new_pid_namespace(self) -> None: ...
    def run_container_init(self, spec: Any, *, stdin_fd: int, stdout_fd: int, stderr_fd: int,
                           error_fd: int) -> NoReturn: ...


class RealBackend:
    """The production runtime: :mod:`engine.runtime.spec`, ``executor`` and ``cgroups``.

    Constructing it imports them, so the helper loads them once and every forked monitor inherits them."""

    def __init__(self) -> None:
        import engine.runtime.cgroups
        import engine.runtime.executor  # type: ignore[import-not-found,unused-ignore]
        import engine.runtime.spec  # noqa: F401

    def load_spec(self, text: str) -> Any:
        from engine.runtime.spec import RuntimeSpec

        return RuntimeSpec.from_json(text)

    def cgroup(self, spec: Any) -> CgroupLike:
        from engine.runtime.cgroups import cgroup_manager

        return cgroup_manager(spec.cgroup)

    def new_pid_namespace(self) -> None:
        from engine.runtime.executor import new_pid_namespace  # type: ignore[import-not-found,unused-ignore]

        new_pid_namespace()

    def run_container_init(self, spec: Any, *, stdin_fd: int, stdout_fd: int, stderr_fd: int,
                           error_fd: int) -> NoReturn:
        from engine.runtime.executor import run_container_init  # type: ignore[import-not-found,unused-ignore]

        run_container_init(spec, stdin_fd=stdin_fd, stdout_fd=stdout_fd, stderr_fd=stderr_fd, error_fd=error_fd)
        os._exit(125)  # run_container_init never returns; this only satisfies NoReturn


def load_backend(ref: str) -> Backend:
    """``"package.module:ClassName"`` -> an instance (imported once per process)."""
    module_name, _, attr = ref.partition(":")
    backend: Backend = getattr(importlib.import_module(module_name), attr)()
    return backend


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.attached = False
        self.close_when_flushed = False


class Monitor:
    """One container's supervisor loop. Construct in the forked monitor process, then :meth:`run`."""

    def __init__(self, container_dir: Path, listener: socket.socket, config: dict[str, Any],
                 backend: Backend) -> None:
        self.dir = container_dir
        self.listener = listener
        self.backend = backend
        self.spec = backend.load_spec(config["spec"])
        self.policy: str = config["restart_policy"]
        self.max_retries: int = config["max_retries"]
        self.stop_signal: int = config["stop_signal"]
        self.stop_signal_set: bool = config["stop_signal_set"]
        self.stdin_open: bool = config["stdin_open"]
        self.writer = LogWriter(Path(config["log_path"]), config["log_max_size"], config["log_max_file"])
        self.loggers = {"stdout": StreamLogger(self.writer, "stdout"), "stderr": StreamLogger(self.writer, "stderr")}
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.status = "created"
        self.pid: int | None = None
        self.started_at: str | None = None
        self.started_mono = 0.0
        self.start_seq = 0
        self.restart_count = 0
        self.backoff = 0.0
        self.last_exit: dict[str, Any] | None = None
        self.start_error: dict[str, Any] | None = None
        self.exit_on_next = False
        self.done = False
        self.start_waiters: list[_Client] = []
        self.stop_waiters: list[_Client] = []
        self.final_waiters: list[_Client] = []
        self.timers: list[tuple[float, str]] = []
        self.outputs: dict[int, str] = {}
        self.error_r = -1
        self.error_buf = bytearray()
        self.stdin_w = -1
        self.stdin_buf = bytearray()
        self.stdin_closing = False
        self.cgroup: CgroupLike | None = None
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- process lifecycle ---------------------------------------------------------------------------------

    def _make_stdio(self) -> tuple[int, int, int, list[int]]:
        """(stdin, stdout, stderr) for the child plus the child-side fds to close after fork.

        The pty seam: a terminal container gets a pty pair here instead of pipes (exec/TTY issue)."""
        if getattr(self.spec.process, "terminal", False):
            raise _StartFailure("failed", "terminal (-t) containers are not supported by this monitor yet")
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.outputs[fd] = name
            self.sel.register(fd, selectors.EVENT_READ, "output")
        if self.stdin_open:
            in_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.stdin_w, False)
            self.stdin_buf.clear()
            self.stdin_closing = False
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return in_r, out_w, err_w, [in_r, out_w, err_w]

    def start_container(self) -> None:
        """Fork the container's init; the outcome arrives on the error pipe (:meth:`_on_error_pipe`)."""
        self.start_seq += 1
        self.start_error = None
        try:
            self.cgroup = self.backend.cgroup(self.spec)
            self.cgroup.create(self.spec.cgroup)
            stdin_fd, stdout_fd, stderr_fd, child_fds = self._make_stdio()
            if "pid" in getattr(self.spec, "namespaces", ("pid",)):
                from engine.runtime.syscalls import setns

                setns(self.own_pidns, _CLONE_NEWPID)  # a restart needs a fresh namespace again
                self.backend.new_pid_namespace()
        except _StartFailure as failure:
            self._start_failed(failure.kind, failure.message)
            return
        except Exception as err:
            self._start_failed("failed", str(err) or type(err).__name__)
            return
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        self.error_buf = bytearray()
        pid = os.fork()
        if pid == 0:
            self._child(stdin_fd, stdout_fd, stderr_fd, error_w)
        for fd in (*child_fds, error_w):
            os.close(fd)
        self.pid = pid
        self.error_r = error_r
        self.status = "starting"
        self.started_mono = time.monotonic()
        self.sel.register(error_r, selectors.EVENT_READ, "error")

    def _child(self, stdin_fd: int, stdout_fd: int, stderr_fd: int, error_fd: int) -> NoReturn:
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                        signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            self.backend.run_container_init(self.spec, stdin_fd=stdin_fd, stdout_fd=stdout_fd,
                                            stderr_fd=stderr_fd, error_fd=error_fd)
        except BaseException as err:  # nothing may unwind into the monitor's loop in the child
            with contextlib.suppress(BaseException):
                os.write(error_fd, json.dumps({"kind": "failed", "message": f"container init: {err}"}).encode())
        os._exit(125)

    def _on_error_pipe(self) -> None:
        data = self.error_buf
        while True:
            try:
                chunk = os.read(self.error_r, 65536)
            except BlockingIOError:
                return  # a partial message: the rest (and EOF) comes with the next readiness
            if not chunk:
                break
            data += chunk
            if os.get_blocking(self.error_r):
                os.set_blocking(self.error_r, False)
        self.sel.unregister(self.error_r)
        os.close(self.error_r)
        self.error_r = -1
        if data:
            try:
                info = json.loads(bytes(data).decode(errors="replace").splitlines()[0])
                kind, message = str(info.get("kind", "failed")), str(info.get("message", "container init failed"))
            except (ValueError, IndexError, AttributeError):
                kind, message = "failed", bytes(data).decode(errors="replace").strip()[:500]
            self.start_error = {"kind": kind, "message": message}
            return  # the child _exits; the exit path records it
        self.status = "running"
        self.started_at = rfc3339nano()
        self._write_state()
        for client in self.start_waiters:
            self._reply(client, {"ok": True, "state": self.state_dict()})
        self.start_waiters.clear()

    def _start_failed(self, kind: str, message: str) -> None:
        self.start_error = {"kind": kind, "message": message}
        self._record_exit(_EXIT_CODES.get(kind, 125), oom=False)
        self._finish()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self._on_init_exit(status)

    def _on_init_exit(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            code = 128 - code
        if self.error_r >= 0:  # died before exec or right after: the pipe holds the verdict
            os.set_blocking(self.error_r, False)
            self._on_error_pipe()
            if self.error_r >= 0:  # a stray process still holds the write end: decide without it
                self.sel.unregister(self.error_r)
                os.close(self.error_r)
                self.error_r = -1
        self.pid = None
        oom = False
        if self.cgroup is not None:
            try:
                with contextlib.suppress(Exception):
                    self.cgroup.thaw()
                self.cgroup.kill_all(signal.SIGKILL)
                oom = self.cgroup.oom_killed()
                self.cgroup.destroy()
            except Exception as err:
                _log(f"cleaning up the cgroup failed: {err}")
        self._drain_outputs()
        if self.start_error is not None:
            code = _EXIT_CODES.get(self.start_error["kind"], 125)
        self._record_exit(code, oom)
        ran_for = time.monotonic() - self.started_mono
        if self._should_restart(code):
            self.restart_count += 1
            self.backoff = (_BACKOFF_START if ran_for >= _BACKOFF_RESET_AFTER or not self.backoff
                            else min(self.backoff * 2, _BACKOFF_MAX))
            self.status = "restarting"
            self._write_state()
            heapq.heappush(self.timers, (time.monotonic() + self.backoff, "restart"))
        else:
            self._finish()

    def _should_restart(self, code: int) -> bool:
        if self.exit_on_next or self.start_error is not None or self.policy == "no":
            return False
        if self.policy == "on-failure":
            return code != 0 and (self.max_retries <= 0 or self.restart_count < self.max_retries)
        return True  # always / unless-stopped (they differ only when the engine starts)

    def _drain_outputs(self) -> None:
        deadline = time.monotonic() + _DRAIN_SECONDS
        while self.outputs and time.monotonic() < deadline:
            for key, _ in self.sel.select(max(0.0, deadline - time.monotonic())):
                if key.data == "output":
                    self._on_output(key.fd)
        for fd in list(self.outputs):
            self._close_output(fd)
        for logger in self.loggers.values():
            logger.flush()
        if self.stdin_w >= 0:
            with contextlib.suppress(KeyError):
                self.sel.unregister(self.stdin_w)
            os.close(self.stdin_w)
            self.stdin_w = -1

    def _record_exit(self, code: int, oom: bool) -> None:
        self.last_exit = {
            "exit_code": code, "finished_at": rfc3339nano(), "oom_killed": oom,
            "error": self.start_error["message"] if self.start_error else None,
            "error_kind": self.start_error["kind"] if self.start_error else None,
            "start_seq": self.start_seq, "restart_count": self.restart_count,
        }
        write_json_atomic(self.dir / EXIT_FILE, self.last_exit)
        for client in self.clients.values():
            if client.attached:
                self._send(client, encode_frame({"eof": True}))
                client.attached = False
                client.close_when_flushed = True
        for client in self.stop_waiters:
            self._reply(client, {"ok": True, "exit": self.last_exit})
        self.stop_waiters.clear()

    def _finish(self) -> None:
        self.status = "exited"
        self.done = True
        for client in self.start_waiters:
            self._reply(client, {"ok": False, **(self.start_error or {"kind": "failed", "message": "exited"})})
        self.start_waiters.clear()
        for client in self.final_waiters:
            self._reply(client, {"ok": True, "exit": self.last_exit})
        self.final_waiters.clear()

    def _write_state(self) -> None:
        write_json_atomic(self.dir / STATE_FILE, {
            "status": self.status, "pid": self.pid, "started_at": self.started_at, "start_seq": self.start_seq,
            "restart_count": self.restart_count,
        })

    def state_dict(self) -> dict[str, Any]:
        return {"status": self.status, "pid": self.pid, "started_at": self.started_at,
                "restart_count": self.restart_count, "exit": self.last_exit, "monitor_pid": os.getpid()}

    # --- I/O -------------------------------------------------------------------------------------------------

    def _on_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._close_output(fd)
            return
        stream = self.outputs[fd]
        self.loggers[stream].feed(data)
        frame = encode_frame({"stream": stream}, data)
        for client in list(self.clients.values()):
            if client.attached:
                self._send(client, frame)

    def _close_output(self, fd: int) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        del self.outputs[fd]

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

    def _send(self, client: _Client, data: bytes) -> None:
        if len(client.out) > _MAX_CLIENT_BACKLOG:
            self._drop(client)  # a client that does not read must not stall the container
            return
        client.out += data
        self._flush_client(client)

    def _reply(self, client: _Client, header: dict[str, Any]) -> None:
        self._send(client, encode_frame(header))

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
        for waiters in (self.start_waiters, self.stop_waiters, self.final_waiters):
            if client in waiters:
                waiters.remove(client)

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
            _log(f"bad request: {err}")
            self._drop(client)
            return
        for header, payload in frames:
            self._handle(client, header, payload)

    # --- requests --------------------------------------------------------------------------------------------

    def _handle(self, client: _Client, req: dict[str, Any], payload: bytes) -> None:
        op = req.get("op")
        live = self.status in ("running", "paused")
        if op == "start":
            if self.status == "starting" or self.status == "created":
                self.start_waiters.append(client)
            elif self.start_error is not None and self.start_seq == 1:
                self._reply(client, {"ok": False, **self.start_error})
            else:
                self._reply(client, {"ok": True, "state": self.state_dict()})
        elif op == "state":
            self._reply(client, {"ok": True, "state": self.state_dict()})
        elif op == "wait":
            if self.done:
                self._reply(client, {"ok": True, "exit": self.last_exit})
            else:
                self.final_waiters.append(client)
        elif op == "kill":
            sig = int(req.get("signal", signal.SIGKILL))
            if not live and self.status != "restarting":
                self._reply(client, {"ok": False, "kind": "conflict", "message": "container is not running"})
                return
            if sig == signal.SIGKILL or sig == self.stop_signal or not self.stop_signal_set:
                self.exit_on_next = True
            if self.status == "restarting" and self.exit_on_next:
                self._finish()
            elif self.pid is not None:
                self._signal(sig, thaw=self.exit_on_next)
            self._reply(client, {"ok": True})
        elif op == "stop":
            self.exit_on_next = True
            if self.status == "restarting":
                self._finish()
            if not live and self.status != "starting":
                self._reply(client, {"ok": True, "exit": self.last_exit})
                return
            self.stop_waiters.append(client)
            if self.pid is not None:
                self._signal(self.stop_signal, thaw=True)
            timeout = float(req.get("timeout", 10.0))
            if timeout >= 0:
                heapq.heappush(self.timers, (time.monotonic() + timeout, f"sigkill:{self.start_seq}"))
        elif op in ("pause", "unpause"):
            if not live or self.cgroup is None:
                self._reply(client, {"ok": False, "kind": "conflict", "message": "container is not running"})
                return
            try:
                (self.cgroup.freeze if op == "pause" else self.cgroup.thaw)()
            except Exception as err:
                self._reply(client, {"ok": False, "kind": "failed", "message": str(err)})
                return
            self.status = "paused" if op == "pause" else "running"
            self._write_state()
            self._reply(client, {"ok": True})
        elif op == "attach":
            client.attached = True
            self._reply(client, {"ok": True})
            if not live and self.status != "starting":
                client.attached = False
                self._send(client, encode_frame({"eof": True}))
                client.close_when_flushed = True
        elif op in ("stdin", "close_stdin"):
            if self.stdin_w < 0 or self.stdin_closing:
                self._reply(client, {"ok": False, "kind": "conflict", "message": "container stdin is not open"})
                return
            if op == "stdin":
                self.stdin_buf += payload
            else:
                self.stdin_closing = True
            self._flush_stdin()
            self._reply(client, {"ok": True})
        else:
            self._reply(client, {"ok": False, "kind": "failed", "message": f"unknown request {op!r}"})

    def _signal(self, sig: int, *, thaw: bool) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if thaw and self.status == "paused" and self.cgroup is not None:
            with contextlib.suppress(Exception):
                self.cgroup.thaw()
            self.status = "running"

    def _on_timer(self, what: str) -> None:
        if what == "restart":
            if self.status == "restarting":
                self.start_container()
        elif what == f"sigkill:{self.start_seq}" and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self.cgroup is not None:
                with contextlib.suppress(Exception):
                    self.cgroup.kill_all(signal.SIGKILL)

    # --- loop ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until the container has stopped for good and every reply has been sent."""
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        write_json_atomic(self.dir / MONITOR_FILE, {
            "monitor_pid": os.getpid(), "boot_id": boot_id(), "socket": str(self.dir / SOCKET_FILE)})
        self.start_container()
        linger_until: float | None = None
        while True:
            if self.done:
                pending = any(c.out for c in self.clients.values())
                if linger_until is None:
                    self._close_listener()
                    linger_until = time.monotonic() + _DRAIN_SECONDS
                if not pending or time.monotonic() > linger_until:
                    break
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            if linger_until is not None:
                timeout = min(timeout if timeout is not None else _DRAIN_SECONDS, 0.05)
            for key, events in self.sel.select(timeout):
                self._dispatch(key, events)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                self._on_timer(heapq.heappop(self.timers)[1])
        for client in list(self.clients.values()):
            self._drop(client)
        self.writer.close()

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        kind = key.data
        if kind == "listen":
            while True:
                try:
                    sock, _ = self.listener.accept()
                except (BlockingIOError, OSError):
                    break
                sock.setblocking(False)
                client = _Client(sock)
                self.clients[sock.fileno()] = client
                self.sel.register(sock, selectors.EVENT_READ, "client")
        elif kind == "wake":
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_r, 4096):
                    pass
            self._reap()
        elif kind == "error":
            self._on_error_pipe()
        elif kind == "output":
            self._on_output(key.fd)
        elif kind == "stdin":
            self._flush_stdin()
        elif kind == "client":
            known = self.clients.get(key.fd)
            if known is not None:
                self._on_client(known, events)

    def _close_listener(self) -> None:
        """Stop accepting: late requests get EOF and read the state files, which are final by now."""
        with contextlib.suppress(OSError):
            (self.dir / SOCKET_FILE).unlink()
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.listener)
        self.listener.close()


class _StartFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _log(message: str) -> None:
    """Diagnostics go to the monitor's stderr, which is ``<container dir>/monitor.log``."""
    with contextlib.suppress(OSError):
        os.write(2, f"{rfc3339nano()} monitor[{os.getpid()}]: {message}\n".encode())


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
        _log("fatal error:\n" + traceback.format_exc())
        code = 1
    os._exit(code)
