"""The per-container monitor: the conmon / containerd-shim of Kitebox.

One monitor process per running container, forked by the helper (:mod:`engine.runtime.helper`) and detached
from the engine (own session, reparented to init), so containers keep running, logging and restarting when the
app or CLI that started them exits or crashes. The monitor

* is the container's parent and a child subreaper; it creates the cgroup, calls ``new_pid_namespace()`` and
  forks the child that runs :func:`engine.runtime.executor.run_container_init`, then learns from the error
  pipe whether exec succeeded (EOF without data) or why it failed (one JSON line);
* holds the container's stdio pipes (or, for ``-t``, the master of the pty its init allocates in the container's
  own /dev/pts and sends back over a socket with the start verdict: :mod:`engine.runtime.pty`),
  copies stdout/stderr into the json-file log (:mod:`engine.logs`) and to attached clients, keeps the recent
  output for a client attaching right after start, and writes ``-i`` input to stdin;
* runs ``exec``'d processes in the container (:mod:`engine.runtime.exec`);
* writes ``monitor.json``, ``monitor-config.json`` (the config it was handed, once), ``state.json`` (per start,
  right after the fork) and ``exit.json`` (per exit, before any waiter hears of it) atomically;
* serves ``monitor.sock`` (see :mod:`engine.runtime.protocol` for the requests);
* implements stop (signal, SIGKILL after the timeout), pause (cgroup freezer) and Docker's restart policies
  (``no``, ``on-failure[:N]``, ``always``, ``unless-stopped``; back-off 100 ms doubling up to 1 min, reset after
  10 s of running; a user stop, or a kill with SIGKILL or the stop signal, never restarts);
* on every exit kills what is left in the cgroup, destroys it and records the exit, then restarts or ends.

If the monitor itself is SIGKILLed, the container dies with it (the executor sets PR_SET_PDEATHSIG) and the
supervisor records "monitor died" when it next looks (:mod:`engine.runtime.supervisor`).

The monitor is single-threaded (one ``selectors`` loop) and imports little, so a forked idle monitor costs a
few MB. The runtime it drives is a :class:`~engine.runtime.backend.Backend` named in its configuration,
normally :class:`~engine.runtime.backend.RealBackend`; tests may name another one.

The byte plumbing (container stdio, log and replay buffer, ``monitor.sock`` clients and their framing) is the
:class:`~engine.runtime.monitor_io.MonitorIO` mixin in :mod:`engine.runtime.monitor_io`; this module keeps the
lifecycle, the requests and the loop.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import os
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any, Final

from engine.errors import RuntimeFailure
from engine.logs import LogWriter, StreamLogger
from engine.runtime.backend import REAL_BACKEND, Backend, CgroupLike, RealBackend, load_backend
from engine.runtime.exec import ExecSessions, child_guard
from engine.runtime.monitor_io import MonitorIO, _Client, log
from engine.runtime.protocol import (
    CONFIG_FILE,
    EXIT_FILE,
    MONITOR_FILE,
    SOCKET_FILE,
    STATE_FILE,
    boot_id,
    encode_frame,
    rfc3339nano,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.runtime.pty import check_size, console_pair, recv_master, set_winsize

# The backend names are re-exported: monitor configs written before the split name them here.
__all__ = ["REAL_BACKEND", "Backend", "CgroupLike", "Monitor", "RealBackend", "load_backend"]

_CLONE_NEWPID: Final = 0x20000000
_BACKOFF_START: Final = 0.1
_BACKOFF_MAX: Final = 60.0
_BACKOFF_RESET_AFTER: Final = 10.0
_DRAIN_SECONDS: Final = 2.0
_EXIT_CODES: Final = {"not_found": 127, "not_executable": 126}


class Monitor(MonitorIO):
    """One container's supervisor loop. Construct in the forked monitor process, then :meth:`run`."""

    def __init__(self, container_dir: Path, listener: socket.socket, config: dict[str, Any],
                 backend: Backend, *, netns_fd: int = -1, config_bytes: bytes | None = None) -> None:
        self.dir = container_dir
        self.config_bytes = config_bytes  # ``config`` as sent, kept in CONFIG_FILE once the container starts
        self.netns_fd = netns_fd  # a network namespace made ahead, for the first start only
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
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
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
        self.terminal = bool(getattr(self.spec.process, "terminal", False))
        self.master = -1
        self.console: socket.socket | None = None  # ours, until the init's terminal master arrives on it
        self.recent: collections.deque[bytes] = collections.deque()  # frames since this start, for replay
        self.recent_bytes = 0
        self.execs = ExecSessions(self)

    # --- process lifecycle ---------------------------------------------------------------------------------

    def _make_stdio(self) -> tuple[int, int, int, int, list[int]]:
        """(stdin, stdout, stderr, console socket or -1) for the child plus the child-side fds to close after fork.

        A terminal container gets a pty from its own /dev/pts, allocated by its init, which sends the master back
        on the console socket (:meth:`_take_master`); /dev/null stands in for 0-2 until the init has it."""
        self.recent.clear()
        self.recent_bytes = 0
        if self.terminal:
            self.console, theirs = console_pair()
            console_fd = theirs.detach()
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self.stdin_buf.clear()
            self.stdin_closing = False
            return null, null, null, console_fd, [null, console_fd]
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
        return in_r, out_w, err_w, -1, [in_r, out_w, err_w]

    def start_container(self) -> None:
        """Create the cgroup and fork the container's init into it; the outcome arrives on the error pipe
        (:meth:`_on_error_pipe`)."""
        self.start_seq += 1
        self.start_error = None
        try:
            self.cgroup = self.backend.cgroup(self.spec)
            self.cgroup.create(self.spec.cgroup)
            stdin_fd, stdout_fd, stderr_fd, console_fd, child_fds = self._make_stdio()
            if "pid" in getattr(self.spec, "namespaces", ("pid",)):
                from engine.runtime.syscalls import setns

                setns(self.own_pidns, _CLONE_NEWPID)  # a restart needs a fresh namespace again
                self.backend.new_pid_namespace()
        except Exception as err:
            if self.cgroup is not None:
                with contextlib.suppress(Exception):
                    self.cgroup.destroy()  # what the create got done
            self._start_failed("failed", str(err) or type(err).__name__)
            return
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        self.error_buf = bytearray()
        pid = self.cgroup.fork()
        if pid == 0:
            self._child(stdin_fd, stdout_fd, stderr_fd, error_w, console_fd)
        for fd in (*child_fds, error_w):
            os.close(fd)
        if self.netns_fd >= 0:
            os.close(self.netns_fd)  # the init has it; a restart makes a fresh namespace
            self.netns_fd = -1
        self.pid = pid
        self.error_r = error_r
        self.status = "starting"
        self.started_mono = time.monotonic()
        self.sel.register(error_r, selectors.EVENT_READ, "error")
        # This start is on disk before anyone hears of it (a monitor that dies now is then reconciled as "monitor
        # died"), written while the init sets the container up instead of between its exec and the reply; so is
        # the config, which the engine's clean-up reads if this monitor dies.
        try:
            self._write_state()
            if self.config_bytes is not None:
                write_bytes_atomic(self.dir / CONFIG_FILE, self.config_bytes)
                self.config_bytes = None
        except OSError as err:  # the container runs all the same; only a clean-up after our death is harder
            log(f"recording the start failed: {err}")

    def _child(self, stdin_fd: int, stdout_fd: int, stderr_fd: int, error_fd: int, console_fd: int) -> None:
        cgroup, netns_fd = self.cgroup, self.netns_fd

        def become_init() -> Any:
            self.backend.run_container_init(self.spec, stdin_fd=stdin_fd, stdout_fd=stdout_fd,
                                            stderr_fd=stderr_fd, error_fd=error_fd, console_fd=console_fd,
                                            cgroup=cgroup, netns_fd=netns_fd)

        child_guard(error_fd, become_init)

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
        if self.console is not None and not self._take_master():
            return  # killed; the exit path records the failure
        self.status = "running"
        self.started_at = rfc3339nano()
        for client in self.start_waiters:
            self._reply(client, {"ok": True, "state": self.state_dict()})
        self.start_waiters.clear()
        self._write_state()  # the start time, for a reconcile; after the reply (the start is on disk already)

    def _take_master(self) -> bool:
        """Take the terminal master the init sent before exec (so it is there by the verdict): read as ``stdout``
        (Docker logs a tty's raw output on that stream), written for stdin through a duplicate (one fd, one
        selector key). A missing or wrong fd fails the start: the init is killed, False returned."""
        assert self.console is not None
        console, self.console = self.console, None
        try:
            with console:
                self.master = recv_master(console)
        except RuntimeFailure as err:
            self.start_error = {"kind": "failed", "message": str(err)}
            if self.pid is not None:
                with contextlib.suppress(ChildProcessError, ProcessLookupError):
                    os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # raises once reaped
                    os.kill(self.pid, signal.SIGKILL)
            return False
        self.outputs[self.master] = "stdout"
        self.sel.register(self.master, selectors.EVENT_READ, "output")
        if self.stdin_open:
            self.stdin_w = os.dup(self.master)
            os.set_blocking(self.stdin_w, False)
            self._flush_stdin()  # what was typed while the container was starting
        return True

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
            else:
                self.execs.reaped(pid, status)

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
            except Exception as err:
                log(f"cleaning up the cgroup failed: {err}")
        self._drain_outputs()
        if self.start_error is not None:
            code = _EXIT_CODES.get(self.start_error["kind"], 125)
        self._record_exit(code, oom)
        ran_for = time.monotonic() - self.started_mono
        if not self._should_restart(code):
            self._finish()
            self._destroy_cgroup()  # after the waiters have their answer: it may wait for killed processes to go
            return
        self._destroy_cgroup()
        self.restart_count += 1
        self.backoff = (_BACKOFF_START if ran_for >= _BACKOFF_RESET_AFTER or not self.backoff
                        else min(self.backoff * 2, _BACKOFF_MAX))
        self.status = "restarting"
        self._write_state()
        heapq.heappush(self.timers, (time.monotonic() + self.backoff, "restart"))

    def _destroy_cgroup(self) -> None:
        if self.cgroup is not None:
            try:
                self.cgroup.destroy()
            except Exception as err:
                log(f"removing the cgroup failed: {err}")

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
        if self.console is not None:  # the init failed before sending its terminal
            self.console.close()
            self.console = None
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
                self.send(client, encode_frame({"eof": True}))
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
            self._reply(client, {"ok": True, "exit": self.last_exit, "state": self.state_dict()})
        self.final_waiters.clear()

    def _write_state(self) -> None:
        write_json_atomic(self.dir / STATE_FILE, {
            "status": self.status, "pid": self.pid, "started_at": self.started_at, "start_seq": self.start_seq,
            "restart_count": self.restart_count,
        })

    def state_dict(self) -> dict[str, Any]:
        return {"status": self.status, "pid": self.pid, "started_at": self.started_at,
                "restart_count": self.restart_count, "exit": self.last_exit, "monitor_pid": os.getpid(),
                "exec_ids": self.execs.ids()}

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
                self._reply(client, {"ok": True, "exit": self.last_exit, "state": self.state_dict()})
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
            self._reply(client, {"ok": True, "tty": self.terminal})
            if req.get("replay"):
                for frame in self.recent:
                    self.send(client, frame)
            if live and "rows" in req and self.terminal:
                self._resize(client, {**req, "quiet": True})
            if not live and self.status != "starting":
                client.attached = False
                self.send(client, encode_frame({"eof": True}))
                client.close_when_flushed = True
        elif op in ("stdin", "close_stdin"):
            # A terminal's master (and so its stdin) arrives with the start verdict: keep what comes before.
            awaiting_terminal = self.terminal and self.stdin_open and self.status == "starting"
            if (self.stdin_w < 0 and not awaiting_terminal) or self.stdin_closing:
                if not req.get("quiet"):
                    self._reply(client, {"ok": False, "kind": "conflict", "message": "container stdin is not open"})
                return
            if op == "stdin":
                self.stdin_buf += payload
            elif self.terminal:
                self.stdin_buf += b"\x04"  # EOF on a terminal is ^D at the start of a line
            else:
                self.stdin_closing = True
            self._flush_stdin()
            if not req.get("quiet"):
                self._reply(client, {"ok": True})
        elif op == "resize" and "exec_id" not in req and not any(s.client is client
                                                                 for s in self.execs.sessions.values()):
            self._resize(client, req)
        elif op == "exec":
            self.execs.start(client, req.get("exec"))
        elif op in ("exec_stdin", "exec_close_stdin", "exec_detach", "resize"):
            self.execs.input(client, op, req, payload)
        else:
            self._reply(client, {"ok": False, "kind": "failed", "message": f"unknown request {op!r}"})

    def _resize(self, client: _Client, req: dict[str, Any]) -> None:
        """``resize`` of the container's own terminal; answered unless ``quiet``."""
        try:
            rows, cols = check_size(req.get("rows"), req.get("cols"))
            if self.master < 0:
                raise ValueError("the container has no terminal (it was not created with -t)")
            set_winsize(self.master, rows, cols)
        except (ValueError, OSError) as err:
            self._reply(client, {"ok": False, "kind": "conflict", "message": str(err)})
            return
        if not req.get("quiet"):
            self._reply(client, {"ok": True})

    def _signal(self, sig: int, *, thaw: bool) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if thaw and self.status == "paused" and self.cgroup is not None:
            with contextlib.suppress(Exception):
                self.cgroup.thaw()
            self.status = "running"

    def _on_timer(self, what: str) -> None:
        if what.startswith("exec:"):
            self.execs.on_timer(what)
        elif what == "restart":
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
        self.backend.warm(self.spec)
        self.start_container()
        # Written while the init sets the container up (nobody reads it before this loop answers).
        write_json_atomic(self.dir / MONITOR_FILE, {
            "monitor_pid": os.getpid(), "boot_id": boot_id(), "socket": str(self.dir / SOCKET_FILE)})
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
            self._accept_clients()
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
        elif kind == "exec":
            self.execs.on_event(key.fd, events)
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
