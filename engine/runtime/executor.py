"""The executor: apply a :class:`~engine.runtime.spec.RuntimeSpec` in a fresh process and exec the container.

:func:`run_container_init` runs in a freshly forked, single-threaded child that is PID 1 of a new pid namespace
(the monitor called :func:`new_pid_namespace` before forking). It never returns: it either ``execve``s the
container's own binary (so ``/proc/self/exe`` is the container's, never a host interpreter -- CVE-2019-5736),
or writes one JSON line ``{"kind": "not_found"|"not_executable"|"failed", "message": ...}`` to ``error_fd`` and
exits 127/126/125. ``error_fd`` is close-on-exec, so the monitor reading EOF on it means the exec succeeded.

Order (runc's, ``rootfs_linux.go`` / ``standard_init_linux.go``): join the cgroup
(:class:`~engine.runtime.cgroups.CgroupEntry`); unshare namespaces (``lo`` up in a new network namespace)
or join ``spec.netns_path`` (a namespace prepared by :mod:`engine.network`), the cgroup namespace only once in the
cgroup, right before the first cgroup mount; make every mount a slave so nothing propagates back to the host; build
the root; perform ``spec.mounts`` with destinations resolved *inside* the root (openat2 ``RESOLVE_IN_ROOT``, mount
through ``/proc/self/fd/N`` -- CVE-2021-30465); populate /dev by bind-mounting the host's device nodes (verified to
be the real devices); set the hostname; pivot_root and detach the old root; sysctls; masked paths (only after
checking /dev/null is char 1:3 -- CVE-2025-31133) and read-only paths; read-only root; rlimits; create the working
directory; close every fd but 0-2 and ``error_fd`` (CVE-2024-21626); no_new_privs; the seccomp filter (compiled
first thing, loaded here -- or right before execve with no_new_privs); drop the bounding set; switch user keeping
capabilities; set capabilities; chdir (as the user) and verify the cwd is inside the root; parent-death signal; look
the command up in the container's PATH; execve.

Everything before pivot_root happens in the container's own mount namespace, so when the container's last
process dies every mount goes with it: nothing is left on the host to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from engine.errors import CommandNotExecutable, CommandNotFound, KiteboxError
from engine.mountopts import mount_flags
from engine.runtime import pty, seccomp, syscalls
from engine.runtime.caps import PR_SET_KEEPCAPS, apply_capabilities, caps_mask, drop_bounding, last_cap
from engine.runtime.cgroups import CgroupEntry, CgroupManager
from engine.runtime.spec import CapabilitySet, MountSpec, RootMount, RuntimeSpec

__all__ = [
    "ContainerStartError",
    "error_from_report",
    "loopback_up",
    "main",
    "new_pid_namespace",
    "run_container_init",
    "run_spec_for_test",
]

PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
PR_SET_NO_NEW_PRIVS = 38
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# name -> (major, minor): runc's default devices (specconv AllowedDevices).
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
_NAMESPACE_FLAGS = {"mount": syscalls.CLONE_NEWNS, "uts": syscalls.CLONE_NEWUTS, "ipc": syscalls.CLONE_NEWIPC,
                    "net": syscalls.CLONE_NEWNET, "cgroup": syscalls.CLONE_NEWCGROUP}
_ST_TO_MS = {os.ST_NOSUID: syscalls.MS_NOSUID, os.ST_NODEV: syscalls.MS_NODEV, os.ST_NOEXEC: syscalls.MS_NOEXEC,
             os.ST_NOATIME: 0x400, os.ST_NODIRATIME: 0x800, os.ST_RELATIME: 0x200000}
_EXIT = {"not_found": 127, "not_executable": 126, "failed": 125}


class ContainerStartError(Exception):
    """A failure before exec, with its kind (``not_found``/``not_executable``/``failed``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def new_pid_namespace() -> None:
    """unshare(CLONE_NEWPID): the caller's *next* child becomes PID 1 of a new pid namespace."""
    syscalls.unshare(syscalls.CLONE_NEWPID)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _report(error_fd: int, kind: str, message: str) -> None:
    line = json.dumps({"kind": kind, "message": message}) + "\n"
    with contextlib.suppress(OSError):
        os.write(error_fd, line.encode())


def run_container_init(spec: RuntimeSpec, *, stdin_fd: int, stdout_fd: int, stderr_fd: int,
                       error_fd: int, console_fd: int = -1, cgroup: CgroupManager | None = None,
                       netns_fd: int = -1) -> NoReturn:
    """Set up the container described by ``spec`` in this (forked) process and exec its command.

    Never returns and never raises: any failure is reported on ``error_fd`` and ends the process. With a
    ``console_fd`` (``-t``) the terminal is allocated in the container's /dev/pts (:mod:`engine.runtime.pty`).
    With ``cgroup`` the caller has created the container's cgroup and forked this process with its
    :meth:`~engine.runtime.cgroups.CgroupManager.fork`; without, the init creates it. The init joins it first
    thing (see :class:`~engine.runtime.cgroups.CgroupEntry`). ``netns_fd``: a fresh network namespace, its loopback up,
    made ahead by the caller, joined instead of creating one (when the spec wants a new one).
    """
    try:
        os.set_inheritable(error_fd, False)
        _init(spec, stdin_fd, stdout_fd, stderr_fd, error_fd, console_fd,
              CgroupEntry(spec.cgroup, cgroup, namespace="cgroup" in spec.namespaces), netns_fd)
    except ContainerStartError as err:
        _report(error_fd, err.kind, str(err))
        os._exit(_EXIT[err.kind])
    except KiteboxError as err:
        _report(error_fd, "failed", str(err))
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        _report(error_fd, "failed", f"{err.strerror or err}{where}")
    except BaseException as err:  # never unwind into the forked caller's code
        _report(error_fd, "failed", f"{type(err).__name__}: {err}")
    os._exit(125)


def _setup_stdio(stdin_fd: int, stdout_fd: int, stderr_fd: int, error_fd: int) -> int:
    """Put the three streams on 0-2 (inheritable) and ``error_fd`` above them; returns the new error fd."""
    if error_fd < 3:
        moved = fcntl.fcntl(error_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        if error_fd not in (stdin_fd, stdout_fd, stderr_fd):
            os.close(error_fd)
        error_fd = moved
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (stdin_fd, stdout_fd, stderr_fd)]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    return error_fd


def _init(spec: RuntimeSpec, stdin_fd: int, stdout_fd: int, stderr_fd: int, error_fd: int,
          console_fd: int, cgroup: CgroupEntry, netns_fd: int = -1) -> NoReturn:
    error_fd = _setup_stdio(stdin_fd, stdout_fd, stderr_fd, error_fd)
    # Seccomp: get the program while the host's libseccomp and the container dir are reachable; loaded below.
    seccomp_program = seccomp_program_of(spec)
    mode, hierarchies = cgroup.layout.mode, cgroup.layout.hierarchies

    flags = 0
    for name in spec.namespaces:
        if name == "net" and spec.netns_path:
            continue
        flags |= _NAMESPACE_FLAGS.get(name, 0)
    if not flags & syscalls.CLONE_NEWNS:
        raise ContainerStartError("failed", "a container needs its own mount namespace")
    if flags & syscalls.CLONE_NEWNET and netns_fd >= 0:
        syscalls.setns(netns_fd, syscalls.CLONE_NEWNET)  # made ahead, loopback up (creating one costs ~0.7 ms)
        flags &= ~syscalls.CLONE_NEWNET
    syscalls.unshare(flags & ~syscalls.CLONE_NEWCGROUP)  # the cgroup namespace only once in the cgroup
    if flags & syscalls.CLONE_NEWNET:
        loopback_up()
    if spec.netns_path:
        netns = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        syscalls.setns(netns, syscalls.CLONE_NEWNET)
        os.close(netns)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_SLAVE)

    root = _build_root(spec.root.path, spec.root.mounts)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for mount in spec.mounts:
        if mount.type == "cgroup":
            cgroup.enter()  # mounted from inside the cgroup namespace, so each shows only the container's subtree
        _mount_in_root(root_fd, mount, mode, hierarchies)
        if mount.destination == "/dev" and mount.type == "tmpfs":
            _populate_dev(root_fd)
    cgroup.enter()
    if "uts" in spec.namespaces:
        socket.sethostname(spec.hostname)
    _pivot_root(root_fd)
    os.close(root_fd)
    if console_fd >= 0:  # from the container's own devpts, so only once it is our /dev/pts (runc's order)
        pty.become_console(console_fd, *pty.DEFAULT_SIZE, bind_dev_console=True)

    for key, value in spec.sysctl.items():
        _write_sysctl(key, value)
    _mask_paths(spec.masked_paths)
    for path in spec.readonly_paths:
        _readonly_path(path)
    if spec.root.readonly:
        _remount_readonly("/")

    process = spec.process
    for name, soft, hard in process.rlimits:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if process.oom_score_adj is not None:
        Path("/proc/self/oom_score_adj").write_text(str(process.oom_score_adj))
    _make_workdir(process.cwd)
    become_and_exec(error_fd=error_fd, no_new_privileges=process.no_new_privileges, seccomp_program=seccomp_program,
                    caps=process.capabilities, drop_bounding_set=True, groups=process.additional_gids,
                    gid=process.gid, uid=process.uid, clamp_to_held=spec.privileged, cwd=process.cwd,
                    args=process.args, env=process.env)


def seccomp_program_of(spec: RuntimeSpec) -> bytes | None:
    """The compiled seccomp program ``spec`` confines its processes with (None: unconfined): its program file,
    or -- a spec written before it named one -- compiled from its profile through the cache."""
    if spec.seccomp_program is not None:
        return seccomp.read_program(spec.seccomp_program)
    if spec.seccomp is not None:
        return seccomp.program_for(spec.seccomp, spec.seccomp_cache_dir)
    return None


def become_and_exec(*, error_fd: int, no_new_privileges: bool, seccomp_program: bytes | None, caps: CapabilitySet,
                    drop_bounding_set: bool, groups: Sequence[int], gid: int, uid: int, clamp_to_held: bool,
                    cwd: str, args: Sequence[str], env: Sequence[str]) -> NoReturn:
    """The last steps of a container's init or exec'd process, in runc's order: close every fd but 0-2 and the
    error pipe; no_new_privs; the seccomp filter (before the capabilities go when it needs CAP_SYS_ADMIN,
    i.e. without no_new_privs); the bounding set (``drop_bounding_set``, before setuid: needs CAP_SETPCAP);
    groups, gid, uid keeping the capabilities; the capabilities (``clamp_to_held``: "every capability" means
    every one the engine itself holds); the working directory; the parent-death signal (cleared by any
    credential change, so only now: the monitor dying then kills the process); exec."""
    syscalls.close_range(3, error_fd - 1)
    syscalls.close_range(error_fd + 1, 0xFFFFFFFF)
    if no_new_privileges:
        syscalls.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if seccomp_program is not None and not no_new_privileges:
        seccomp.load_filter(seccomp_program)
    if drop_bounding_set:
        drop_bounding(caps, last_cap())
    syscalls.prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    syscalls.prctl(PR_SET_KEEPCAPS, 0)
    if clamp_to_held:
        _, held, _ = syscalls.capget()
        caps = _intersect(caps, held)
    apply_capabilities(caps)
    _enter_workdir(cwd)
    syscalls.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    path = _lookup(args[0], env)
    if seccomp_program is not None and no_new_privileges:
        seccomp.load_filter(seccomp_program)  # with no_new_privs: as late as possible, right before exec (runc)
    try:
        os.execve(path, list(args), dict(_split_env(env)))
    except OSError as err:
        raise _exec_error(args[0], err) from err


def loopback_up() -> None:
    """Bring ``lo`` up in a fresh network namespace (``--network none``: loopback only, but working)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _intersect(caps: CapabilitySet, held: int) -> CapabilitySet:
    def keep(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if caps_mask((n,)) & held)

    return CapabilitySet(keep(caps.bounding), keep(caps.effective), keep(caps.permitted), keep(caps.inheritable),
                         keep(caps.ambient))


def _split_env(env: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in env:
        key, _, value = item.partition("=")
        pairs.append((key, value))
    return pairs


def _mount_options(options: Sequence[str], fstype: str, source: str, target: str) -> None:
    """Perform one mount of ``source`` on ``target`` honouring flag words, bind remounts and propagation."""
    flags, propagation, data = mount_flags(options)
    if fstype == "bind" or flags & syscalls.MS_BIND:
        syscalls.mount(source, target, None, syscalls.MS_BIND | (flags & syscalls.MS_REC))
        extra = flags & ~(syscalls.MS_BIND | syscalls.MS_REC)
        if extra:
            syscalls.mount(None, target, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | extra)
    else:
        syscalls.mount(source, target, fstype, flags, data or None)
    if propagation:
        syscalls.mount(None, target, None, propagation)


def _build_root(path: str, mounts: Sequence[RootMount]) -> str:
    """Mount the root filesystem at ``path`` (a bind of ``path`` itself when there are no mounts, because
    pivot_root needs a mount point)."""
    if not mounts:
        syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
        return path
    os.makedirs(path, mode=0o755, exist_ok=True)
    for mount in mounts:
        if mount.cwd:
            os.chdir(mount.cwd)
        try:
            try:
                _mount_options(mount.options, mount.type, mount.source, path)
            except OSError as err:
                if err.errno != errno.EINVAL or "volatile" not in mount.options:
                    raise
                # A kernel before 5.10 has no volatile overlays: the same mount, synced on unmount.
                _mount_options(tuple(o for o in mount.options if o != "volatile"), mount.type, mount.source, path)
        finally:
            os.chdir("/")
    return path


def _open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    return syscalls.openat2(root_fd, path, flags, syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)


def _ensure_mountpoint(root_fd: int, destination: str, directory: bool) -> int:
    """Create ``destination`` inside the root (every component resolved in the root), open it O_PATH."""
    parts = [p for p in destination.split("/") if p]
    parent = "/"
    for index, part in enumerate(parts):
        current = f"{parent.rstrip('/')}/{part}"
        try:
            fd = _open_in_root(root_fd, current)
        except FileNotFoundError:
            pass
        else:
            if index == len(parts) - 1:
                return fd
            os.close(fd)
            parent = current
            continue
        parent_fd = _open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            target = part
            # A dangling symlink: create what it points to (still resolved in the root on reopen).
            try:
                link = os.readlink(part, dir_fd=parent_fd)
            except OSError:
                link = None
            if link is not None:
                resolved = link if link.startswith("/") else f"{parent.rstrip('/')}/{link}"
                return _ensure_mountpoint(root_fd, "/".join([resolved, *parts[index + 1:]]), directory)
            if index < len(parts) - 1 or directory:
                os.mkdir(target, 0o755, dir_fd=parent_fd)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent_fd))
        finally:
            os.close(parent_fd)
        parent = current
    return _open_in_root(root_fd, destination)


def _mount_in_root(root_fd: int, mount: MountSpec, mode: str, hierarchies: dict[str, str]) -> None:
    is_dir = True
    if mount.type == "bind":
        try:
            is_dir = stat.S_ISDIR(os.stat(mount.source).st_mode)
        except OSError as err:
            raise ContainerStartError("failed", f"bind mount source {mount.source}: {err.strerror}") from err
    fd = _ensure_mountpoint(root_fd, mount.destination, is_dir)
    try:
        if mount.type == "cgroup":
            _mount_cgroup(root_fd, fd, mount, mode, hierarchies)
            return
        if mount.type == "bind":
            _bind_in_root(root_fd, fd, mount)
        else:
            _mount_options(mount.options, mount.type, mount.source, _fd_path(fd))
    except OSError as err:
        raise ContainerStartError(
            "failed", f"mount {mount.type} on {mount.destination}: {os.strerror(err.errno or 0)}") from err
    finally:
        os.close(fd)


def _bind_in_root(root_fd: int, fd: int, mount: MountSpec) -> None:
    """Bind, then reopen the destination (the fd still names the covered directory) for the remount."""
    flags, propagation, _ = mount_flags(mount.options)
    syscalls.mount(mount.source, _fd_path(fd), None, syscalls.MS_BIND | (flags & syscalls.MS_REC))
    top = _open_in_root(root_fd, mount.destination)
    try:
        extra = flags & ~(syscalls.MS_BIND | syscalls.MS_REC)
        if extra:
            syscalls.mount(None, _fd_path(top), None, syscalls.MS_REMOUNT | syscalls.MS_BIND | extra)
        if propagation:
            syscalls.mount(None, _fd_path(top), None, propagation)
    finally:
        os.close(top)


def _mount_cgroup(root_fd: int, fd: int, mount: MountSpec, mode: str, hierarchies: dict[str, str]) -> None:
    """The container's own cgroups at the destination: cgroup2 on v2; on v1/hybrid a tmpfs holding each
    hierarchy (and ``unified``), mounted from inside the cgroup namespace so each shows only its subtree."""
    flags, _, _ = mount_flags(mount.options)
    readonly = bool(flags & syscalls.MS_RDONLY)
    flags &= ~syscalls.MS_RDONLY
    target = _fd_path(fd)
    if mode == "v2":
        syscalls.mount("cgroup2", target, "cgroup2", flags | (syscalls.MS_RDONLY if readonly else 0))
        return
    syscalls.mount("tmpfs", target, "tmpfs", flags, "mode=755")
    top = _open_in_root(root_fd, mount.destination, os.O_PATH | os.O_DIRECTORY)  # the tmpfs, not what it covers
    try:
        subdirs = dict(hierarchies)
        if mode == "hybrid":
            subdirs["unified"] = ""
        for name, data in sorted(subdirs.items()):
            os.mkdir(name, 0o555, dir_fd=top)
            sub = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
            try:
                if name == "unified":
                    syscalls.mount("cgroup2", _fd_path(sub), "cgroup2", flags)
                else:
                    syscalls.mount("cgroup", _fd_path(sub), "cgroup", flags, data)
            finally:
                os.close(sub)
            if readonly:
                _remount_readonly(f"{_fd_path(top)}/{name}")
        if readonly:
            _remount_readonly(_fd_path(top))
    finally:
        os.close(top)


def _check_device(fd: int, name: str, major: int, minor: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (major, minor):
        raise ContainerStartError("failed", f"/dev/{name} is not the expected character device {major}:{minor}")


def _populate_dev(root_fd: int) -> None:
    """Docker's device nodes in the fresh /dev tmpfs, plus its /dev symlinks. The nodes are made with mknod, as
    runc does outside a user namespace (one call each); where mknod is refused (a user namespace, no CAP_MKNOD)
    the host's nodes are bind-mounted onto files instead."""
    dev_fd = _open_in_root(root_fd, "/dev", os.O_PATH | os.O_DIRECTORY)
    try:
        old_umask = os.umask(0)
        try:
            for name, (major, minor) in DEVICES.items():
                os.mknod(name, stat.S_IFCHR | 0o666, os.makedev(major, minor), dir_fd=dev_fd)
        except PermissionError:
            _bind_devices(dev_fd)
        finally:
            os.umask(old_umask)
        for name, target in DEV_LINKS.items():
            os.symlink(target, name, dir_fd=dev_fd)
    finally:
        os.close(dev_fd)


def _bind_devices(dev_fd: int) -> None:
    """Bind the host's device nodes onto files in /dev (works in every namespace), replacing any made already."""
    for name, (major, minor) in DEVICES.items():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dev_fd)
        host = os.open(f"/dev/{name}", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_device(host, name, major, minor)
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o666, dir_fd=dev_fd))
            node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev_fd)
            try:
                syscalls.mount(_fd_path(host), _fd_path(node), None, syscalls.MS_BIND)
            finally:
                os.close(node)
        finally:
            os.close(host)


def _pivot_root(root_fd: int) -> None:
    """pivot_root(".", ".") then detach the old root stacked on top (runc's way: no put_old directory)."""
    os.fchdir(root_fd)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")


def _write_sysctl(key: str, value: str) -> None:
    if not key or any(part in ("", "..") for part in key.split(".")) or "/" in key:
        raise ContainerStartError("failed", f"invalid sysctl {key!r}")
    path = "/proc/sys/" + key.replace(".", "/")
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _mask_paths(paths: Sequence[str]) -> None:
    if not paths:
        return
    null = os.open("/dev/null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_device(null, "null", 1, 3)
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    syscalls.mount("tmpfs", _fd_path(fd), "tmpfs", syscalls.MS_RDONLY)
                else:
                    syscalls.mount(_fd_path(null), _fd_path(fd), None, syscalls.MS_BIND)
            finally:
                os.close(fd)
    finally:
        os.close(null)


def _remount_readonly(path: str) -> None:
    """Make the mount at ``path`` read-only, keeping its nosuid/nodev/noexec/atime flags."""
    current = os.statvfs(path).f_flag
    keep = 0
    for st_flag, ms_flag in _ST_TO_MS.items():
        if current & st_flag:
            keep |= ms_flag
    syscalls.mount(None, path, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY | keep)


def _readonly_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        syscalls.mount(_fd_path(fd), _fd_path(fd), None, syscalls.MS_BIND | syscalls.MS_REC)
    finally:
        os.close(fd)
    top = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _remount_readonly(_fd_path(top))
    finally:
        os.close(top)


def _make_workdir(cwd: str) -> None:
    """Create a missing working directory (as root, 0755), as Docker does at start."""
    try:
        os.makedirs(cwd, mode=0o755, exist_ok=True)
    except OSError as err:
        raise ContainerStartError("failed", f"working directory {cwd}: {err.strerror}") from err


def _enter_workdir(cwd: str) -> None:
    """chdir as the container user and make sure we landed inside the container's root (CVE-2024-21626:
    a cwd reached through a leaked host fd makes getcwd fail or leave the root)."""
    try:
        os.chdir(cwd)
        actual = os.getcwd()
    except OSError as err:
        raise ContainerStartError("failed", f"chdir to working directory {cwd}: {err.strerror}") from err
    if not actual.startswith("/") or actual.startswith("/proc/"):
        raise ContainerStartError("failed", f"working directory {cwd} is outside the container root")


def _exec_error(name: str, err: OSError) -> ContainerStartError:
    if err.errno == errno.ENOENT:
        return ContainerStartError("not_found", f'exec: "{name}": no such file or directory')
    if err.errno in (errno.EACCES, errno.EPERM, errno.EISDIR):
        return ContainerStartError("not_executable", f'exec: "{name}": permission denied')
    if err.errno == errno.ENOEXEC:
        return ContainerStartError("not_executable", f'exec: "{name}": exec format error')
    return ContainerStartError("failed", f'exec: "{name}": {os.strerror(err.errno or 0)}')


def _lookup(name: str, env: Sequence[str]) -> str:
    """Go's exec.LookPath in the container's root with the container's PATH (what runc does)."""
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as err:
            kind = "not_found" if err.errno in (errno.ENOENT, errno.ENOTDIR) else "failed"
            reason = (err.strerror or str(err)).lower()
            raise ContainerStartError(kind, f'exec: "{name}": stat {name}: {reason}') from err
        if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
            raise ContainerStartError("not_executable", f'exec: "{name}": permission denied')
        return name
    path = next((item[5:] for item in reversed(env) if item.startswith("PATH=")), DEFAULT_PATH)
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise ContainerStartError("not_found", f'exec: "{name}": executable file not found in $PATH')


def error_from_report(line: str) -> KiteboxError:
    """Turn the JSON line read from ``error_fd`` into the engine's error (for the monitor's use)."""
    from engine.errors import RuntimeFailure

    try:
        data = json.loads(line)
        kind, message = str(data["kind"]), str(data["message"])
    except (ValueError, KeyError, TypeError):
        return RuntimeFailure(f"container start failed: {line.strip()[:200]}")
    if kind == "not_found":
        return CommandNotFound(message)
    if kind == "not_executable":
        return CommandNotExecutable(message)
    return RuntimeFailure(message)


# -- a tiny out-of-process runner (tests and debugging) ---------------------------------------------------------

# Loads this module without executing engine/__init__.py (which imports the whole engine), so the helper starts
# fast and depends only on the runtime room.
_BOOTSTRAP = (
    "import sys, types; pkg = types.ModuleType('engine'); pkg.__path__ = [sys.argv[1]]; "
    "sys.modules['engine'] = pkg; from engine.runtime.executor import main; sys.exit(main(sys.argv[2:]))"
)


def main(argv: Sequence[str]) -> int:
    """``main([spec.json])``: run the container as our child (PID 1 of a new pid namespace) on our stdio,
    wait for it, print its start error (if any) as a JSON line on stderr, and return its exit code
    (128+signal when killed)."""
    spec = RuntimeSpec.from_json(Path(argv[0]).read_text())
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    new_pid_namespace()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        run_container_init(spec, stdin_fd=0, stdout_fd=1, stderr_fd=2, error_fd=write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as errors:
        report = errors.read()
    _, status = os.waitpid(pid, 0)
    if report:
        sys.stderr.buffer.write(report)
        sys.stderr.flush()
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run_spec_for_test(spec: RuntimeSpec, *, work_dir: Path, stdin: bytes = b"",
                      timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    """Run ``spec`` in a helper process (safe from a multi-threaded caller such as pytest) and return
    (exit code, stdout, stderr). ``work_dir`` receives ``spec.json``. A start error appears on stderr as the
    JSON line described in :func:`run_container_init`."""
    spec_path = work_dir / "spec.json"
    spec_path.write_text(spec.to_json())
    engine_dir = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", _BOOTSTRAP, engine_dir, str(spec_path)], input=stdin,
                          capture_output=True, timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr


if __name__ == "__main__":  # python -m engine.runtime.executor spec.json
    sys.exit(main(sys.argv[1:]))
