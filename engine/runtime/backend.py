"""The seam between a container monitor and the runtime core it drives.

A monitor (:mod:`engine.runtime.monitor`) needs four things from the runtime: parse a spec, manage the
container's cgroup, make a pid namespace, and become the container's init (or an exec'd process) in a forked
child. :class:`Backend` names them; :class:`RealBackend` is the production implementation over the spec,
executor, exec and cgroups rooms; tests may name a stand-in (``"module:Class"``) in the monitor's config.

Standard library only at import time: every forked monitor imports this.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, Final, NoReturn, Protocol

__all__ = ["REAL_BACKEND", "Backend", "CgroupLike", "RealBackend", "load_backend"]

REAL_BACKEND: Final = "engine.runtime.backend:RealBackend"


class CgroupLike(Protocol):
    @property
    def layout(self) -> Any: ...  # the host's CgroupLayout, handed to the init the monitor forks
    def create(self, spec: Any) -> None: ...
    def fork(self) -> int: ...
    def join_self(self) -> None: ...
    def pids(self) -> list[int]: ...
    def kill_all(self, sig: int = ...) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def oom_killed(self) -> bool: ...
    def destroy(self) -> None: ...


class Backend(Protocol):
    """What the monitor needs from the runtime core; the seam tests use to substitute a stand-in."""

    def load_spec(self, text: str) -> Any: ...
    def warm(self, spec: Any) -> None: ...
    def cgroup(self, spec: Any) -> CgroupLike: ...
    def new_pid_namespace(self) -> None: ...
    # ``console_fd`` (``-t``): the socket on which the child sends the master of the terminal it allocates in
    # the container's /dev/pts (see engine.runtime.pty); -1 without a terminal.
    def run_container_init(self, spec: Any, *, stdin_fd: int, stdout_fd: int, stderr_fd: int,
                           error_fd: int, console_fd: int = -1, cgroup: CgroupLike | None = None,
                           netns_fd: int = -1) -> NoReturn: ...
    def run_exec(self, spec: Any, request: dict[str, Any], *, init_pid: int, cgroup: CgroupLike, stdin_fd: int,
                 stdout_fd: int, stderr_fd: int, error_fd: int, console_fd: int = -1) -> NoReturn: ...


class RealBackend:
    """The production runtime: :mod:`engine.runtime.spec`, ``executor``, ``exec`` and ``cgroups``.

    Constructing it imports them, so the helper loads them once and every forked monitor inherits them."""

    def __init__(self) -> None:
        import engine.runtime.cgroups
        import engine.runtime.exec
        import engine.runtime.executor
        import engine.runtime.plan  # exec'd processes merge their environment with it
        import engine.runtime.spec  # noqa: F401
        from engine.errors import KernelError
        from engine.runtime import seccomp

        # libseccomp too (it is mapped once in the helper, shared by every fork): a container start then only
        # hashes the profile to find its compiled program. Missing here means "compile fails later, saying why".
        with contextlib.suppress(KernelError):
            seccomp.preload()
        # The host's cgroup layout (statfs and a mountinfo read, ~0.7 ms): detected once here, in the helper, not
        # by every monitor it forks. Switching cgroup modes takes a reboot; None: detect (and report) per container.
        from engine.runtime.cgroups import CgroupLayout, host_layout

        self._cgroup_layout: CgroupLayout | None = None
        with contextlib.suppress(KernelError):
            self._cgroup_layout = host_layout()

    def load_spec(self, text: str) -> Any:
        from engine.runtime.spec import RuntimeSpec

        return RuntimeSpec.from_json(text)

    def warm(self, spec: Any) -> None:
        """In the monitor, before its first fork: the container's seccomp program (read from its file), so the
        container's init and every exec'd process inherit it instead of reading it."""
        from engine.errors import KiteboxError
        from engine.runtime import seccomp

        if spec.seccomp_program is not None:
            with contextlib.suppress(KiteboxError):  # the child tries again and reports why it failed
                seccomp.keep_program(spec.seccomp_program)

    def cgroup(self, spec: Any) -> CgroupLike:
        from engine.runtime.cgroups import cgroup_manager

        return cgroup_manager(spec.cgroup, layout=self._cgroup_layout)

    def new_pid_namespace(self) -> None:
        from engine.runtime.executor import new_pid_namespace

        new_pid_namespace()

    def run_container_init(self, spec: Any, *, stdin_fd: int, stdout_fd: int, stderr_fd: int,
                           error_fd: int, console_fd: int = -1, cgroup: CgroupLike | None = None,
                           netns_fd: int = -1) -> NoReturn:
        from engine.runtime.executor import run_container_init

        run_container_init(spec, stdin_fd=stdin_fd, stdout_fd=stdout_fd, stderr_fd=stderr_fd, error_fd=error_fd,
                           console_fd=console_fd, cgroup=cgroup, netns_fd=netns_fd)
        os._exit(125)  # run_container_init never returns; this only satisfies NoReturn

    def run_exec(self, spec: Any, request: dict[str, Any], *, init_pid: int, cgroup: CgroupLike, stdin_fd: int,
                 stdout_fd: int, stderr_fd: int, error_fd: int, console_fd: int = -1) -> NoReturn:
        from engine.runtime.exec import ExecRequest, run_exec

        run_exec(spec, ExecRequest.from_dict(request), init_pid=init_pid, cgroup=cgroup, stdin_fd=stdin_fd,
                 stdout_fd=stdout_fd, stderr_fd=stderr_fd, error_fd=error_fd, console_fd=console_fd)


def load_backend(ref: str) -> Backend:
    """``"package.module:ClassName"`` -> an instance (imported once per process)."""
    module_name, _, attr = ref.partition(":")
    backend: Backend = getattr(importlib.import_module(module_name), attr)()
    return backend
