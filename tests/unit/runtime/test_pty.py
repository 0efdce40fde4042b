"""The monitor's side of the console socket: only ever accept exactly one pty master from the container."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from engine.errors import RuntimeFailure
from engine.runtime.pty import console_pair, recv_master


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = console_pair()
    before = open_fds()
    yield ours, theirs
    ours.close()
    theirs.close()
    assert open_fds() <= before  # nothing the "container" sent is left open


def test_accepts_one_pty_master() -> None:
    ours, theirs = console_pair()
    master, slave = os.openpty()
    with ours, theirs:
        socket.send_fds(theirs, [b"pty"], [master])
        os.close(master)
        received = recv_master(ours)
    try:
        assert not os.get_blocking(received) and not os.get_inheritable(received)
        os.write(received, b"x\n")  # the same pty: the slave reads it
        assert os.read(slave, 10) == b"x\n"
    finally:
        os.close(received)
        os.close(slave)


@pytest.mark.parametrize("what", ["pipe", "dev_null", "pty_slave", "two_masters", "many", "nothing"])
def test_refuses_anything_else_and_closes_it(pair: tuple[socket.socket, socket.socket], what: str) -> None:
    ours, theirs = pair
    master, slave = os.openpty()
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    fds = {"pipe": [read_end], "dev_null": [null], "pty_slave": [slave], "two_masters": [master, master],
           "many": [master] * 40, "nothing": []}[what]  # many: beyond the ancillary buffer (MSG_CTRUNC)
    socket.send_fds(theirs, [b"pty"], fds)
    for fd in (master, slave, read_end, write_end, null):
        os.close(fd)
    with pytest.raises(RuntimeFailure, match="terminal"):
        recv_master(ours)


def test_refuses_a_child_that_sent_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    with pytest.raises(RuntimeFailure, match="no terminal received"):
        recv_master(ours)  # nothing yet: never blocks the monitor
    theirs.close()
    with pytest.raises(RuntimeFailure, match="expected one terminal fd from the container, got 0"):
        recv_master(ours)  # EOF
