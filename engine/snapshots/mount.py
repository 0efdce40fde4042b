"""The one mount executor: performs :class:`~engine.snapshots.base.Mount` specs with mount(2).

Snapshotters (and the runtime planner) describe mounts as data; only this module calls the kernel, through the
narrow :class:`MountSyscalls` seam. :class:`RealMountSyscalls` uses ctypes; :class:`RecordingMountSyscalls` records
calls (and keeps a per-target mount count) for unit tests that must not touch the kernel.

Options are split the way mount(8) does: flag words (``ro``, ``nosuid``, ``rbind``, ``private``...) become
mount flags, everything else becomes the comma-joined filesystem data (``lowerdir=...,upperdir=...``). Bind mounts
take two calls (bind, then a ``MS_REMOUNT|MS_BIND`` to apply ``ro``/``nosuid``/...), and propagation words one
more, because the kernel ignores those flags on the first call.

``Mount.cwd`` is honoured without changing the process's working directory (other threads rely on it): the
mount runs in a short-lived thread that first unshares its filesystem context (``unshare(CLONE_FS)``), so its
``chdir`` is private. Overlay's relative short ``lowerdir`` paths are resolved against it.

``unmount`` of something that is not mounted raises :class:`~engine.errors.NotFound` (EINVAL/ENOENT from
umount2), so callers tearing down can treat "already gone" separately from a real failure (``KernelError``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine.errors import KernelError, NotFound, from_oserror
from engine.mountopts import (
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_UNBINDABLE,
    mount_flags,
)
from engine.snapshots.base import Mount

__all__ = [
    "MountCall",
    "MountSyscalls",
    "RealMountSyscalls",
    "RecordingMountSyscalls",
    "is_mountpoint",
    "mount_all",
    "mount_points",
    "unmount",
]

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
CLONE_FS = 0x200

@dataclass(frozen=True, slots=True)
class MountCall:
    """One recorded call: ``op`` is ``"mount"`` or ``"umount2"`` (then only ``target`` and ``flags`` matter)."""

    op: str
    target: str
    flags: int
    source: str = ""
    fstype: str = ""
    data: str = ""
    cwd: str | None = None


class MountSyscalls(Protocol):
    """The kernel seam. Both methods raise ``OSError`` (with ``errno``) on failure."""

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str, *, cwd: str | None = None) -> None:
        """mount(2); when ``cwd`` is given, relative paths in ``data`` are resolved against it."""
        ...

    def umount2(self, target: str, flags: int) -> None:
        """umount2(2)."""
        ...


class RealMountSyscalls:
    """mount(2)/umount2(2) through libc."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                                     ctypes.c_char_p]
        self._libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._libc.unshare.argtypes = [ctypes.c_int]

    def _mount_here(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        rc = self._libc.mount(source.encode(), target.encode(), fstype.encode() or None, flags,
                              data.encode() or None)
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), target)

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str, *, cwd: str | None = None) -> None:
        if cwd is None:
            self._mount_here(source, target, fstype, flags, data)
            return
        outcome: list[BaseException] = []

        def in_private_cwd() -> None:
            try:
                if self._libc.unshare(CLONE_FS) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
                os.chdir(cwd)
                self._mount_here(source, target, fstype, flags, data)
            except BaseException as exc:  # handed to the calling thread below
                outcome.append(exc)

        worker = threading.Thread(target=in_private_cwd, name="kitebox-mount")
        worker.start()
        worker.join()
        if outcome:
            raise outcome[0]

    def umount2(self, target: str, flags: int) -> None:
        if self._libc.umount2(target.encode(), flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), target)


@dataclass
class RecordingMountSyscalls:
    """Fake kernel: records every call and counts mounts stacked per target.

    ``fail`` may return an ``OSError`` to raise for a call (the call is still recorded, nothing is mounted).
    ``umount2`` of a target with no mounts raises EINVAL, like the kernel.
    """

    fail: Callable[[MountCall], OSError | None] | None = None
    calls: list[MountCall] = field(default_factory=list)
    mounted: dict[str, int] = field(default_factory=dict)

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str, *, cwd: str | None = None) -> None:
        call = MountCall("mount", target, flags, source, fstype, data, cwd)
        self.calls.append(call)
        failure = self.fail(call) if self.fail else None
        if failure is not None:
            raise failure
        if not flags & MS_REMOUNT and not flags & (MS_PRIVATE | MS_SLAVE | MS_SHARED | MS_UNBINDABLE):
            self.mounted[target] = self.mounted.get(target, 0) + 1

    def umount2(self, target: str, flags: int) -> None:
        call = MountCall("umount2", target, flags)
        self.calls.append(call)
        failure = self.fail(call) if self.fail else None
        if failure is not None:
            raise failure
        if not self.mounted.get(target):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), target)
        self.mounted[target] -= 1


_real: RealMountSyscalls | None = None


def _default_syscalls() -> RealMountSyscalls:
    global _real
    if _real is None:
        _real = RealMountSyscalls()
    return _real


def _mount_one(spec: Mount, target: str, syscalls: MountSyscalls) -> int:
    """Perform one spec; return how many mounts it stacked on ``target`` (0 or 1). Raises ``OSError``."""
    flags, propagation, data = mount_flags(spec.options)
    limit = os.sysconf("SC_PAGE_SIZE")
    if len(data.encode()) >= limit:
        raise KernelError(
            f"mount {spec.type} on {target}: options are {len(data.encode())} bytes, over the kernel's {limit}-byte"
            " limit (too many layers)"
        )
    if flags & MS_BIND:
        syscalls.mount(spec.source, target, "", flags & (MS_BIND | MS_REC), "", cwd=spec.cwd)
        extra = flags & ~(MS_BIND | MS_REC)
        try:
            if extra:
                syscalls.mount("", target, "", MS_REMOUNT | MS_BIND | extra, "")
            if propagation:
                syscalls.mount("", target, "", propagation, "")
        except OSError:
            syscalls.umount2(target, MNT_DETACH)
            raise
        return 1
    syscalls.mount(spec.source, target, spec.type, flags, data, cwd=spec.cwd)
    if propagation:
        try:
            syscalls.mount("", target, "", propagation, "")
        except OSError:
            syscalls.umount2(target, MNT_DETACH)
            raise
    return 1


def mount_all(mounts: Sequence[Mount], target: Path, *, syscalls: MountSyscalls | None = None) -> None:
    """Perform ``mounts`` in order onto ``target`` (each stacks on the previous).

    On failure, every mount this call made is undone (lazily, so a busy one cannot block the cleanup) and a
    :class:`~engine.errors.KernelError` naming the target, the mount type and the errno is raised.
    """
    sys_ = syscalls or _default_syscalls()
    where = os.path.abspath(target)
    if not mounts:
        raise KernelError(f"mount on {where}: no mounts given")
    done = 0
    try:
        for spec in mounts:
            try:
                done += _mount_one(spec, where, sys_)
            except OSError as err:
                name = errno.errorcode.get(err.errno or 0, str(err.errno))
                raise KernelError(
                    f"mount {spec.type} {spec.source} on {where}: {err.strerror} ({name})"
                ) from err
    except KernelError:
        for _ in range(done):
            try:
                sys_.umount2(where, MNT_DETACH)
            except OSError:
                break  # nothing left to undo on this target
        raise


def unmount(target: Path, *, detach: bool = False, syscalls: MountSyscalls | None = None) -> None:
    """Unmount the topmost mount on ``target`` (``detach``: lazily, even if busy).

    Raises :class:`~engine.errors.NotFound` if ``target`` is not a mount point or does not exist, and
    :class:`~engine.errors.KernelError` for any other failure (EBUSY, EPERM...). Symlinks are not followed.
    """
    sys_ = syscalls or _default_syscalls()
    where = os.path.abspath(target)
    try:
        sys_.umount2(where, (MNT_DETACH if detach else 0) | UMOUNT_NOFOLLOW)
    except OSError as err:
        if err.errno == errno.EINVAL:
            raise NotFound(f"unmount {where}: not a mount point") from err
        if err.errno == errno.ENOENT:
            raise NotFound(f"unmount {where}: no such file or directory") from err
        raise from_oserror(err, f"unmount {where}", KernelError) from err


def _unescape(field_: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for space...)."""
    out: list[str] = []
    i = 0
    while i < len(field_):
        if field_[i] == "\\" and len(field_) - i >= 4 and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Every mount point of this process's mount namespace (from ``/proc/self/mountinfo``), in mount order."""
    points: list[str] = []
    for line in mountinfo.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) > 4:
            points.append(_unescape(parts[4]))
    return points


def is_mountpoint(path: Path) -> bool:
    """Whether something is mounted on ``path`` (works for bind mounts within one filesystem, unlike
    ``os.path.ismount``)."""
    return os.path.realpath(path) in mount_points()
