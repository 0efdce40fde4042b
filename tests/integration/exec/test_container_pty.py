"""A ``-t`` container's (and a ``-t`` exec's) terminal is a pty of the container's OWN devpts: ``tty`` names
/dev/pts/N as the container sees it, ``test -t`` holds, the size is set before the process starts and follows
resizes, Ctrl-C reaches the foreground job, and failing to allocate one is a clear one-line error."""

from __future__ import annotations

import re

import pytest

from engine import Engine, RuntimeFailure
from tests.integration.exec.conftest import eventually, started
from tests.integration.exec.test_exec import read_until, run_exec

pytestmark = [pytest.mark.root, pytest.mark.registry]

# Run inside the container: the terminal is named, exists there, and is what 0-2 are.
PROBE = (b"tty; readlink /proc/self/fd/0; [ -c \"$(tty)\" ] && [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && "
         b"echo IS-A-$((1+1)); stty size; echo END-$((3*3))\n")


def probe_lines(screen: bytes) -> list[str]:
    """The probe's output lines, up to its END marker (the echoed command line and prompts left out)."""
    lines = [line for line in screen.decode(errors="replace").split("\r\n") if line and "$((" not in line]
    return lines[:lines.index("END-9") + 1]


async def test_run_t_terminal_comes_from_the_containers_devpts(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sh", tty=True, stdin_open=True)
    session = await engine.containers.attach(record.id, size=(30, 100))
    await session.write(PROBE)
    lines = probe_lines(await read_until(session, b"END-9\r\n"))
    assert lines[-5:] == ["/dev/pts/0", "/dev/pts/0", "IS-A-2", "30 100", "END-9"]
    await engine.containers.resize(record.id, 50, 132)
    await session.write(b"stty size; echo AGAIN-$((3*4))\n")
    assert b"50 132\r\n" in await read_until(session, b"AGAIN-12\r\n")
    await session.write(b"sleep 999\n")

    async def sleeping() -> bool:
        return "sleep 999" in {row.cmd for row in await engine.containers.top(record.id)}

    await eventually(sleeping, "the foreground sleep to start")
    await session.write(b"\x03")  # Ctrl-C: SIGINT for the foreground job, through the container's terminal
    await session.write(b"echo after-$((2*2))\n")
    await read_until(session, b"after-4\r\n")
    await session.write(b"exit 4\n")
    assert await session.wait() == 4
    await session.close()


async def test_run_t_short_lived_command_gets_its_terminal(engine: Engine, busybox: str) -> None:
    # The process may be gone before the monitor looks at the start verdict: the master is taken all the same.
    # /dev/console is the same terminal (as with runc): the same device numbers as the pty on fd 0.
    record = await started(engine, busybox, "sh", "-c", "tty; [ -t 0 ] && stty size; "
                           "stat -L -c '%t:%T' /dev/console /proc/self/fd/0", tty=True)
    assert await engine.containers.wait(record.id) == 0
    logs = b"".join([item.data async for item in engine.containers.logs(record.id)])
    assert logs == b"/dev/pts/0\r\n24 80\r\n88:0\r\n88:0\r\n"  # 0x88 = 136, the pty slaves' major


async def test_exec_t_terminal_comes_from_the_containers_devpts(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    out, _, code = await run_exec(engine, record.id, "sh", "-c", "tty; [ -t 0 ] && stty size", tty=True,
                                  size=(27, 91))
    assert (out, code) == ("/dev/pts/0\r\n27 91\r\n", 0)  # sized before the process started
    async with await engine.containers.exec(record.id, ["sh"], tty=True, stdin=True, size=(30, 100)) as session:
        await session.write(PROBE)
        lines = probe_lines(await read_until(session, b"END-9\r\n"))
        assert re.fullmatch(r"/dev/pts/\d+", lines[-5]) and lines[-4] == lines[-5]
        assert lines[-3:] == ["IS-A-2", "30 100", "END-9"]
        await session.resize(50, 132)
        await session.write(b"stty size; echo AGAIN-$((3*4))\n")
        assert b"50 132\r\n" in await read_until(session, b"AGAIN-12\r\n")
        await session.write(b"exit 6\n")
        assert await session.wait() == 6


async def test_exec_t_next_to_a_run_t_terminal(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sh", tty=True, stdin_open=True)
    out, _, code = await run_exec(engine, record.id, "sh", "-c", "tty; ls /dev/pts", tty=True)
    assert code == 0
    assert out.split() == ["/dev/pts/1", "0", "1", "ptmx"]  # pts/0 is the init's: one devpts per container


async def test_run_t_without_a_devpts_fails_clearly(engine: Engine, busybox: str) -> None:
    with pytest.raises(RuntimeFailure, match=r"cannot allocate a terminal from the container's /dev/pts: "
                                             r"No such file or directory"):
        await started(engine, busybox, "true", tty=True, tmpfs=("/dev/pts",))


async def test_exec_t_refuses_a_forged_ptmx(engine: Engine, busybox: str) -> None:
    # A privileged container replaces its devpts with a tmpfs holding a 5:2 node: no terminal from it, and the
    # container keeps running with working execs.
    record = await started(engine, busybox, "sh", "-c",
                           "umount /dev/pts && mount -t tmpfs t /dev/pts && mknod -m 666 /dev/pts/ptmx c 5 2 && "
                           "exec sleep 1000", privileged=True)

    async def forged() -> bool:
        out, _, _ = await run_exec(engine, record.id, "stat", "-c", "%F %t:%T", "/dev/pts/ptmx")
        return out == "character special file 5:2\n"

    await eventually(forged, "the forged /dev/pts/ptmx")
    with pytest.raises(RuntimeFailure, match="cannot allocate a terminal"):
        await engine.containers.exec(record.id, ["sh"], tty=True, stdin=True)
    assert await run_exec(engine, record.id, "echo", "still") == ("still\n", "", 0)
