"""Persistent network namespaces, created and entered without forking the (multi-threaded) app.

A network namespace is per *thread* in Linux: ``unshare(CLONE_NEWNET)`` and ``setns()`` change only the calling
thread. So each operation runs in a fresh, short-lived thread that

1. opens its current namespace (``/proc/thread-self/ns/net``) to come back to,
2. ``unshare(CLONE_NEWNET)`` (create) or ``setns()`` into the target namespace (enter),
3. bind-mounts ``/proc/thread-self/ns/net`` onto ``<root>/netns/<id>`` (create; the mount keeps the namespace
   alive with no process in it, as ``ip netns add`` does, and survives the app) and opens a netlink socket there
   (the socket stays bound to that namespace for its whole life, whatever thread uses it later),
4. ``setns()`` back, and ends.

The thread is never reused, so even a failed return trip cannot leave a pooled thread in the wrong namespace;
no process is forked (pyroute2's ``NetNS`` forks, which is unsafe with Qt's threads).

Removing a namespace unmounts it (``MNT_DETACH``) and unlinks the file; the kernel destroys it (and the veth end
inside it) once no process is left in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from engine.network.netlink import Netlink
from engine.runtime import syscalls

__all__ = ["create_netns", "is_netns_mount", "open_netlink_in", "remove_netns"]

T = TypeVar("T")
_SELF = "/proc/thread-self/ns/net"


def _in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a new thread and return its result (or raise its exception)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.append(work())
        except BaseException as err:  # handed to the caller's thread below
            failure.append(err)

    thread = threading.Thread(target=body, name="kitebox-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _returning(enter: Callable[[], None], work: Callable[[], T]) -> T:
    """In the current (dedicated) thread: remember the namespace, ``enter()`` another, do ``work()``, go back."""
    home = os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter()
        try:
            return work()
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNET)
    finally:
        os.close(home)


def create_netns(path: Path) -> Netlink:
    """Create a new network namespace pinned at ``path`` (a new file) with ``lo`` up; return a netlink
    socket inside it (the caller closes it). Raises ``OSError``; on failure nothing is left at ``path``."""

    def work() -> Netlink:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o444)
        os.close(fd)
        try:
            syscalls.mount(_SELF, str(path), None, syscalls.MS_BIND)
        except OSError:
            path.unlink()
            raise
        try:
            netlink = Netlink()
            netlink.set_up(1)  # lo is always index 1 in a new namespace
        except OSError:
            remove_netns(path)
            raise
        return netlink

    return _in_thread(lambda: _returning(lambda: syscalls.unshare(syscalls.CLONE_NEWNET), work))


def open_netlink_in(path: Path) -> Netlink:
    """A netlink socket inside the namespace pinned at ``path``."""

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, syscalls.CLONE_NEWNET)
        finally:
            os.close(fd)

    return _in_thread(lambda: _returning(enter, Netlink))


def is_netns_mount(path: Path) -> bool:
    """True when ``path`` is a pinned namespace (an nsfs mount), False for a plain (stale) file."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def remove_netns(path: Path) -> None:
    """Unpin and delete the namespace file at ``path``; a missing file is fine."""
    if is_netns_mount(path):
        try:
            syscalls.umount2(str(path), syscalls.MNT_DETACH)
        except OSError as err:
            if err.errno != errno.EINVAL:  # EINVAL: not a mount point (any more)
                raise
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
