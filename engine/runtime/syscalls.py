"""Thin ctypes wrappers for the Linux calls the runtime needs and the Python standard library lacks.

Every wrapper raises ``OSError`` (with errno and the call's name) on failure, exactly like ``os`` functions, so
callers translate one kind of error. Constants are the x86_64/aarch64 generic values from the kernel headers.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final

from engine.mountopts import (  # re-exported: the mount flags live in one table
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
)

__all__ = [
    "CGROUP2_SUPER_MAGIC",
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SLAVE",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "TMPFS_MAGIC",
    "capget",
    "capset",
    "close_range",
    "fork_into_cgroup",
    "mount",
    "openat2",
    "pivot_root",
    "prctl",
    "setns",
    "statfs_magic",
    "umount2",
    "unshare",
]

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

MNT_DETACH: Final = 0x2

RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_IN_ROOT: Final = 0x10

CGROUP2_SUPER_MAGIC: Final = 0x63677270
TMPFS_MAGIC: Final = 0x01021994

_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

_SYSCALLS: Final[dict[str, dict[str, int]]] = {
    "x86_64": {"pivot_root": 155, "capget": 125, "capset": 126, "openat2": 437, "close_range": 436,
               "clone3": 435},
    "aarch64": {"pivot_root": 41, "capget": 90, "capset": 91, "openat2": 437, "close_range": 436, "clone3": 435},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
# The same C library through a PyDLL, whose calls keep holding the GIL: a process cloned by a raw syscall must
# come back to Python holding it, as os.fork's child does (see fork_into_cgroup).
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long
_python = ctypes.pythonapi


def _nr(name: str) -> int:
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(0, f"{name}: unsupported architecture {platform.machine()}")
    return table[name]


def _check(result: int, call: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}", path)
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace ``fd`` refers to."""
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (no libc wrapper exists)."""
    _check(_libc.syscall(_nr("pivot_root"), _b(new_root), _b(put_old)), "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns the call's non-negative result."""
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dir_fd`` under the ``resolve`` restrictions; returns the new fd.

    With ``RESOLVE_IN_ROOT`` every ``..`` and absolute symlink is resolved as if ``dir_fd`` were ``/``, so the
    result can never lie outside it (the fix for CVE-2021-30465 and CVE-2018-15664 style races).
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    result = _libc.syscall(
        _nr("openat2"), ctypes.c_int(dir_fd), _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
    )
    return _check(result, "openat2", path)


def close_range(first: int, last: int) -> None:
    """close_range(2): close every fd in [first, last] in one call."""
    if first > last:
        return
    _check(_libc.syscall(_nr("close_range"), ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)),
           "close_range")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability masks as 64-bit integers."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_nr("capget"), ctypes.byref(header), ctypes.byref(data)), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability masks (64-bit integers)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in (0, 1):
        shift = 32 * index
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_nr("capset"), ctypes.byref(header), ctypes.byref(data)), "capset")


class _Statfs(ctypes.Structure):
    # Only f_type is read; the rest is padding large enough for struct statfs on 64-bit Linux (120 bytes).
    _fields_ = (("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 160))


def statfs_magic(path: str) -> int:
    """The filesystem type magic (``f_type``) of the filesystem holding ``path``."""
    buf = _Statfs()
    _check(_libc.statfs(_b(path), ctypes.byref(buf)), "statfs", path)
    return int(buf.f_type) & 0xFFFFFFFF


_CLONE_INTO_CGROUP: Final = 0x200000000
_SIGCHLD: Final = 17


class _CloneArgs(ctypes.Structure):
    _fields_ = tuple((name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid",
        "set_tid_size", "cgroup"))


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(2) whose child is born in the cgroup v2 directory open at ``cgroup_fd`` (clone3 with
    CLONE_INTO_CGROUP, Linux 5.7): 0 in the child, the child's pid in the parent.

    Why: moving a process by writing cgroup.procs takes the kernel's global cgroup_threadgroup_rwsem for writing,
    which first waits for an RCU grace period (5-30 ms on a small VM); being born in the cgroup only takes it for
    reading, like any fork. The interpreter's own fork bookkeeping (import lock, at-fork hooks, the GIL and
    thread states in the child) is done exactly as ``os.fork`` does it, around a raw clone3 -- so, like any fork
    of a Python process, call it only from a single-threaded one. OSError (ENOSYS on kernels or sandboxes without
    clone3, E2BIG/EINVAL without CLONE_INTO_CGROUP, EBADF/EACCES/EBUSY for a cgroup that cannot be entered)
    when no child was made: the caller forks normally and moves the child in.
    """
    args = _CloneArgs(flags=_CLONE_INTO_CGROUP, exit_signal=_SIGCHLD, cgroup=cgroup_fd)
    _python.PyOS_BeforeFork()
    pid = _libc_gil.syscall(ctypes.c_long(_nr("clone3")), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        _python.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return int(pid)
