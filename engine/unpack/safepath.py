"""Resolving paths inside a root directory without ever leaving it.

A layer is hostile input: its entry names, symlinks and hardlink targets may try to reach outside the
destination (``../victim``, ``S etc -> /etc`` then ``F etc/passwd``, two-hop symlinks, symlinks swapped in
between checks). Lexical checks are not enough (anchors cases 1-9), so every lookup is done by the kernel
relative to a directory file descriptor of the root, chroot-style:

* ``openat2(2)`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` (Linux 5.6+): symlinks are followed, but
  ``..`` and absolute targets are clamped at the root, exactly like a chroot would;
* when openat2 is unavailable (old kernel, seccomp), an equivalent component walk: each component is opened
  with ``O_NOFOLLOW`` relative to its parent's fd; a symlink is read and its target spliced into the
  remaining components (absolute targets restart at the root, ``..`` never climbs above it).

Both give the same answers; ``RootDir(path, use_openat2=False)`` forces the walk so tests cover it.

Only *directories* are resolved this way (the parent of an entry): the final component of an entry is
never followed; callers operate on it with ``*at`` calls and ``follow_symlinks=False``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import stat
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DirCache", "NotADirectoryInLayer", "RootDir", "clean_parts", "openat2_available"]

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_MAX_SYMLINKS = 40


def _cached_dirs() -> int:
    """Directory fds one ``DirCache`` may hold: 1/16 of the soft fd limit, between 64 and 512."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return 512
    return max(64, min(512, soft // 16))


_CACHED_DIRS = _cached_dirs()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), path)
    how = _OpenHow(flags, 0, resolve)
    raw = os.fsencode(path)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(raw), ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


_OPENAT2: bool | None = None


def openat2_available() -> bool:
    """Whether this kernel (and seccomp policy) lets us call openat2 with RESOLVE_IN_ROOT."""
    global _OPENAT2
    if _OPENAT2 is None:
        try:
            os.close(_openat2(-100, "/", _DIR_FLAGS, _RESOLVE_IN_ROOT))  # AT_FDCWD
            _OPENAT2 = True
        except OSError:
            _OPENAT2 = False
    return _OPENAT2


def clean_parts(name: str) -> tuple[str, ...]:
    """Clean an archive name lexically, clamping ``..`` at the root (containerd's policy).

    ``../victim/x`` and ``/../victim/x`` become ``("victim", "x")``; ``.``, ``./`` and ``a/..`` become ``()``
    (the root itself). The kernel still resolves symlinks in the result inside the root.
    """
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


class NotADirectoryInLayer(Exception):
    """A parent component exists and is not a directory (a file, or a dangling symlink)."""

    def __init__(self, parts: Sequence[str]) -> None:
        super().__init__("/".join(parts))
        self.parts = tuple(parts)


class RootDir:
    """An open directory serving as a chroot for lookups. ``close()`` releases its fd."""

    def __init__(self, path: Path, *, use_openat2: bool | None = None) -> None:
        self.path = path
        self.fd = os.open(path, _DIR_FLAGS)
        self.uses_openat2 = openat2_available() if use_openat2 is None else use_openat2

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_dir(self, parts: Sequence[str]) -> int:
        """A new fd (caller closes) for directory ``parts``, symlinks followed inside the root.

        Raises ``OSError`` (ENOENT, ENOTDIR, ELOOP) like ``open(2)`` would inside a chroot.
        """
        if not parts:
            return os.dup(self.fd)
        if self.uses_openat2:
            return _openat2(self.fd, "/".join(parts), _DIR_FLAGS, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        return self._walk(parts)

    def _walk(self, parts: Sequence[str]) -> int:
        stack: list[int] = []  # fds of the directories below the root on the current path
        pending = deque(parts)
        links = 0
        try:
            while pending:
                name = pending.popleft()
                if name in ("", "."):
                    continue
                if name == "..":
                    if stack:
                        os.close(stack.pop())
                    continue
                current = stack[-1] if stack else self.fd
                try:
                    stack.append(os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=current))
                    continue
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    if not stat.S_ISLNK(os.stat(name, dir_fd=current, follow_symlinks=False).st_mode):
                        raise
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), "/".join(parts))
                target = os.readlink(name, dir_fd=current)
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop())
                pending.extendleft(reversed(target.split("/")))
            return stack.pop() if stack else os.dup(self.fd)
        finally:
            for fd in stack:
                os.close(fd)

    def lookup(self, parts: Sequence[str]) -> tuple[int, str] | None:
        """``(parent fd, name)`` for an existing entry, parent resolved inside the root; None if absent.

        The final component is not followed. The caller closes the fd.
        """
        if not parts:
            return None
        try:
            parent = self.open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.close(parent)
            return None
        return parent, parts[-1]


OnCreate = Callable[[tuple[str, ...], int], None]


class DirCache:
    """Open fds of recently used parent directories, keyed by the entry's cleaned parent path.

    Consecutive entries of a tar mostly share a parent, so this turns one path resolution per entry into
    one dict lookup. The cache must be ``invalidate()``d whenever anything is removed or replaced (a
    directory replaced by a symlink would otherwise keep receiving files through its stale fd).

    When full, the least recently used fd is closed (not the whole cache): layers whose files cycle
    through more directories than the cache holds (tar writers that do not sort) would otherwise pay an
    ``openat2`` + ``close`` per entry. The size follows the fd budget (``RLIMIT_NOFILE``): several layers
    are applied at once, each with its own cache. A borrowed fd stays valid until the next ``get``/``put``
    of another directory evicts it: callers use it at once (it is then the most recently used).
    """

    def __init__(self, root: RootDir, on_create: OnCreate) -> None:
        self._root = root
        self._on_create = on_create
        self._fds: dict[tuple[str, ...], int] = {}

    def get(self, parts: tuple[str, ...], *, create: bool) -> int | None:
        """A borrowed fd for directory ``parts`` (do not close it).

        With ``create``, missing components are made (``on_create`` is called for each new one, with its
        fd, to give it metadata); a component that exists and is not a directory raises
        ``NotADirectoryInLayer``. Without ``create``, a missing directory returns None.
        """
        fd = self._fds.pop(parts, None)
        if fd is not None:
            self._fds[parts] = fd  # most recently used: last in (insertion) order
            return fd
        try:
            fd = self._root.open_dir(parts)
        except FileNotFoundError:
            if not create:
                return None
            fd = self._create(parts)
        except NotADirectoryError:
            if not create:
                return None
            fd = self._create(parts)  # raises NotADirectoryInLayer naming the offending component
        self._make_room()
        self._fds[parts] = fd
        return fd

    def put(self, parts: tuple[str, ...], fd: int) -> None:
        """Hand an fd of directory ``parts`` to the cache (it owns and closes it from now on)."""
        old = self._fds.pop(parts, None)
        if old is not None:
            os.close(old)
        self._make_room()
        self._fds[parts] = fd

    def _make_room(self) -> None:
        while len(self._fds) >= _CACHED_DIRS:
            os.close(self._fds.pop(next(iter(self._fds))))

    def _create(self, parts: tuple[str, ...]) -> int:
        depth = 0
        fd = self._root.open_dir(())
        try:
            while depth < len(parts):
                try:
                    deeper = self._root.open_dir(parts[: depth + 1])
                except FileNotFoundError:
                    break
                except NotADirectoryError:
                    raise NotADirectoryInLayer(parts[: depth + 1]) from None
                os.close(fd)
                fd = deeper
                depth += 1
            for missing in range(depth, len(parts)):
                name = parts[missing]
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:  # a dangling symlink or something that is not a directory
                    raise NotADirectoryInLayer(parts[: missing + 1]) from None
                deeper = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = deeper
                self._on_create(parts[: missing + 1], fd)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def invalidate(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
