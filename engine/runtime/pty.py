"""Pseudo-terminals for containers and exec'd processes: allocate, size, make controlling, read.

The monitor allocates the pair (``os.openpty``) for a ``-t`` container or exec, keeps the master and hands the
slave to the child as its fds 0-2; the child makes it its controlling terminal (:func:`make_controlling`) so
Ctrl-C typed into the master becomes SIGINT for the foreground process group, and job control works.
Resizes are ``TIOCSWINSZ`` on the master (the kernel then sends SIGWINCH to the foreground group).

Standard library only: imported by every monitor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from typing import Final

__all__ = ["DEFAULT_SIZE", "check_size", "get_winsize", "make_controlling", "open_pty", "read_master",
           "set_winsize"]

DEFAULT_SIZE: Final = (24, 80)
_WINSIZE: Final = struct.Struct("HHHH")


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
    """A new (master, slave) pair, both close-on-exec, the master non-blocking, sized ``rows`` x ``cols``."""
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
