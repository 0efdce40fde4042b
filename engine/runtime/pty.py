"""Pseudo-terminals for containers and exec'd processes: allocate in the container, hand over, size, read.

A ``-t`` container's (or exec'd process's) terminal comes from the container's OWN devpts instance (mounted
``newinstance`` at /dev/pts), as with runc's ``--console-socket``: the host's /dev/pts/N does not exist in the
container, where ``tty`` would print "not a tty" and /proc/self/fd/0 would name a missing path. So the child,
once its root is the container's (after pivot_root for init, after ``setns`` into the mount namespace for an
exec), calls :func:`become_console`: it opens /dev/pts/ptmx there, unlocks it, opens the slave with
``TIOCGPTPEER`` (no path lookup, so no race with a hostile /dev/pts), sizes it, sends the MASTER to the monitor
over a unix socket (``SCM_RIGHTS``), then makes the slave its fds 0-2 and controlling terminal of a new session
(Ctrl-C typed into the master becomes SIGINT for the foreground process group; job control works).

The monitor receives it with :func:`recv_master`, which trusts nothing from the container: exactly one fd, a
character device 5:2 (a ptmx) that answers ``TIOCGPTN``; anything else is closed. The monitor only ever sends
the child the socket's other end, which the child closes before exec: no host fd reaches the container.
Resizes are ``TIOCSWINSZ`` on the master (the kernel then sends SIGWINCH to the foreground group).

Standard library only (plus the error tree): imported by every monitor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
import termios
from typing import Final

from engine.errors import RuntimeFailure

__all__ = ["DEFAULT_SIZE", "become_console", "check_size", "console_pair", "get_winsize", "make_controlling",
           "open_container_pty", "open_pty", "read_master", "recv_master", "set_winsize"]

DEFAULT_SIZE: Final = (24, 80)
_WINSIZE: Final = struct.Struct("HHHH")
# <asm-generic/ioctls.h>; the stdlib's termios lacks them.
_TIOCGPTN: Final = 0x80045430
_TIOCSPTLCK: Final = 0x40045431
_TIOCGPTPEER: Final = 0x5441
_PTMX: Final = (5, 2)  # TTYAUX_MAJOR, 2: /dev/ptmx and every devpts instance's ptmx node
_MAX_FDS: Final = 8  # room to see (and close) surplus fds rather than have the kernel drop them silently


def check_size(rows: object, cols: object) -> tuple[int, int]:
    """``(rows, cols)`` as ints in 1..65535; ValueError naming the bad value otherwise."""
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ValueError(f"invalid terminal {name} {value!r}: expected 1-65535")
    assert isinstance(rows, int) and isinstance(cols, int)
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal ``fd`` (master or slave)."""
    rows, cols = check_size(rows, cols)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    """``(rows, cols)`` of the terminal ``fd``."""
    rows, cols, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size))
    return rows, cols


def open_pty(rows: int = DEFAULT_SIZE[0], cols: int = DEFAULT_SIZE[1]) -> tuple[int, int]:
    """A new (master, slave) pair from the CALLER's /dev/ptmx (host-side use and tests only: a container's
    terminal comes from :func:`open_container_pty`), both close-on-exec, the master non-blocking."""
    master, slave = os.openpty()
    try:
        set_winsize(master, rows, cols)
        os.set_blocking(master, False)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def make_controlling(fd: int) -> None:
    """In a freshly forked child: start a new session and make the terminal ``fd`` its controlling tty."""
    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def read_master(fd: int, size: int = 65536) -> bytes | None:
    """Read from a non-blocking pty master or pipe: bytes; ``b""`` at the end (EOF, or EIO once every slave
    fd is closed); None when nothing is available right now."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError as err:
        if err.errno == errno.EIO:
            return b""
        raise


# --- the container's side -----------------------------------------------------------------------------------

def console_pair() -> tuple[socket.socket, socket.socket]:
    """(monitor's end, child's end) of the socket the master crosses; SEQPACKET so one send is one message
    and a child dying before sending reads as EOF."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def _open_dir_nofollow(path: str) -> int:
    """Open ``path`` O_PATH walking it one component at a time without following any symlink: in an exec the
    container's processes may have replaced /dev or /dev/pts, and we still hold the host's privileges."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.strip("/").split("/"):
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_container_pty(rows: int, cols: int) -> tuple[int, int]:
    """(master, slave) allocated from the devpts mounted at /dev/pts in the caller's mount namespace, sized
    ``rows`` x ``cols``, both close-on-exec. RuntimeFailure (one line) when that is not possible."""
    try:
        pts = _open_dir_nofollow("/dev/pts")
    except OSError as err:
        raise RuntimeFailure(f"cannot allocate a terminal: /dev/pts: {err.strerror or err}") from err
    master = slave = -1
    try:
        # O_NONBLOCK: a FIFO planted at /dev/pts/ptmx must not hang us (it then fails the checks below).
        master = os.open("ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=pts)
        devpts = os.fstat(pts).st_dev
        st = os.fstat(master)
        if (not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != _PTMX
                or st.st_dev != devpts):
            raise RuntimeFailure("cannot allocate a terminal: /dev/pts/ptmx is not the ptmx of a devpts "
                                 "mounted at /dev/pts")
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        if os.fstat(slave).st_dev != devpts:
            raise RuntimeFailure("cannot allocate a terminal: its slave is not on /dev/pts")
        set_winsize(master, rows, cols)
    except BaseException as err:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        if isinstance(err, OSError):
            raise RuntimeFailure(
                f"cannot allocate a terminal from the container's /dev/pts: {err.strerror or err}") from err
        raise
    finally:
        os.close(pts)
    return master, slave


def become_console(console_fd: int, rows: int, cols: int, *, bind_dev_console: bool = False) -> None:
    """In a container's init or exec'd process whose root is the container's: allocate the terminal there,
    send its master over ``console_fd`` (closed here), and make the slave fds 0-2 and the controlling tty.

    ``bind_dev_console`` (a container's init, as runc does): the slave also appears as /dev/console, bound over
    an empty file in the container's /dev (a tmpfs the engine just populated)."""
    master, slave = open_container_pty(rows, cols)
    if bind_dev_console:
        try:
            _bind_dev_console(master)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
    try:
        with socket.socket(fileno=console_fd) as sock:
            socket.send_fds(sock, [b"pty"], [master])
    except OSError as err:
        os.close(slave)
        raise RuntimeFailure(f"cannot hand the terminal to the monitor: {err.strerror or err}") from err
    finally:
        os.close(master)  # the monitor's copy is the only one: the container never holds its master
    for target in (0, 1, 2):
        os.dup2(slave, target, inheritable=True)
    os.close(slave)
    make_controlling(0)


def _bind_dev_console(master: int) -> None:
    from engine.runtime import syscalls

    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    try:
        dev = _open_dir_nofollow("/dev")
        try:
            fd = os.open("console", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o600,
                         dir_fd=dev)
            os.close(fd)
        finally:
            os.close(dev)
        syscalls.mount(f"/dev/pts/{number}", "/dev/console", None, syscalls.MS_BIND)
    except OSError as err:
        raise RuntimeFailure(f"cannot bind the terminal at /dev/console: {err.strerror or err}") from err


# --- the monitor's side -------------------------------------------------------------------------------------

def recv_master(sock: socket.socket) -> int:
    """The pty master a child sent with :func:`become_console`, non-blocking and close-on-exec.

    The sender ran inside the container, so check everything: one message, exactly one fd, a ptmx (char 5:2)
    answering TIOCGPTN. Any fd received is closed unless returned. RuntimeFailure (one line) otherwise."""
    try:
        _, ancillary, flags, _ = sock.recvmsg(16, socket.CMSG_SPACE(_MAX_FDS * 4),
                                             socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
    except OSError as err:  # BlockingIOError included: the child ended without sending
        raise RuntimeFailure(f"no terminal received from the container ({err.strerror or err})") from err
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    try:
        if flags & socket.MSG_CTRUNC or len(fds) != 1:
            raise RuntimeFailure(f"expected one terminal fd from the container, got {len(fds)}"
                                 + (" (truncated)" if flags & socket.MSG_CTRUNC else ""))
        master = fds[0]
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != _PTMX:
            raise RuntimeFailure("the container sent a terminal fd that is not a pty master")
        try:
            fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4)
        except OSError as err:
            raise RuntimeFailure("the container sent a terminal fd that is not a pty master") from err
        os.set_blocking(master, False)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return master
