"""exec, terminals, attach, top and stats through the Engine API on the real kernel."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from engine import CommandNotFound, Conflict, Engine, InvalidArgument
from tests.integration.exec.conftest import eventually, started

pytestmark = [pytest.mark.root, pytest.mark.registry]


async def collect(session: object) -> tuple[str, str, int]:
    out, err = bytearray(), bytearray()
    while (frame := await session.read_stream()) is not None:  # type: ignore[attr-defined]
        (err if frame[0] == "stderr" else out).extend(frame[1])
    return out.decode(), err.decode(), await session.wait()  # type: ignore[attr-defined]


async def run_exec(engine: Engine, name: str, *cmd: str, **options: object) -> tuple[str, str, int]:
    async with await engine.containers.exec(name, cmd, **options) as session:  # type: ignore[arg-type]
        return await collect(session)


async def read_until(session: object, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read a terminal session until ``marker`` appears (the 'screen' so far)."""
    screen = b""
    deadline = time.monotonic() + timeout
    while marker not in screen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{marker!r} never appeared; screen: {screen!r}")
        try:
            chunk = await asyncio.wait_for(session.read(), remaining)  # type: ignore[attr-defined]
        except TimeoutError:
            raise AssertionError(f"{marker!r} never appeared; screen: {screen!r}") from None
        if not chunk:
            raise AssertionError(f"session ended before {marker!r}; screen: {screen!r}")
        screen += chunk
    return screen


async def test_exec_sees_the_container_not_the_host(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sleep", "1000", hostname="box", env=("MINE=yes",))
    out, err, code = await run_exec(
        engine, record.id, "sh", "-c",
        "hostname; echo $IMAGE_VAR $MINE; cat /data/seed.txt; ps -o pid,args; echo oops >&2; exit 3")
    lines = out.splitlines()
    assert lines[:3] == ["box", "1 yes", "from the image"]
    processes = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines[4:]}
    assert processes["1"] == "sleep 1000"  # the container's pid namespace: its init is pid 1
    assert all(int(pid) < 100 for pid in processes)
    assert (err, code) == ("oops\n", 3)
    host_name = os.uname().nodename
    assert host_name != "box"


async def test_exec_user_workdir_env_and_privileges(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    out, _, code = await run_exec(engine, record.name, "sh", "-c", "id -u; id -g; id -G; pwd; echo $EXTRA",
                                  user="app", workdir="/tmp", env=("EXTRA=here",))
    assert (out.split(), code) == (["1000", "1000", "1000", "2000", "/tmp", "here"], 0)
    # Default capabilities: no CAP_SYS_ADMIN (bit 21) unless --privileged.
    plain, _, _ = await run_exec(engine, record.name, "sh", "-c", "grep CapEff /proc/self/status")
    privileged, _, _ = await run_exec(engine, record.name, "sh", "-c", "grep CapEff /proc/self/status",
                                      privileged=True)
    assert not int(plain.split()[1], 16) & (1 << 21)
    assert int(privileged.split()[1], 16) & (1 << 21)
    with pytest.raises(InvalidArgument, match="unable to find user nosuch"):
        await engine.containers.exec(record.name, ["true"], user="nosuch")
    with pytest.raises(CommandNotFound, match="nosuchcommand"):
        await engine.containers.exec(record.name, ["nosuchcommand"])


async def test_exec_refused_when_not_running_or_paused(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    await engine.containers.pause(record.id)
    with pytest.raises(Conflict, match="is paused, unpause the container before exec"):
        await engine.containers.exec(record.id, ["true"])
    await engine.containers.unpause(record.id)
    await engine.containers.stop(record.id, timeout=0)
    with pytest.raises(Conflict, match="is not running"):
        await engine.containers.exec(record.id, ["true"])


async def test_exec_ids_listed_while_running_and_detached_exec(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    session = await engine.containers.exec(record.id, ["sh", "-c", "read line; echo got $line"], stdin=True)
    try:
        document = engine.containers.inspect_document(await engine.containers.get(record.id))
        assert document["ExecIDs"] == [session.id]
        await session.write(b"hello\n")
        assert await collect(session) == ("got hello\n", "", 0)
    finally:
        await session.close()
    document = engine.containers.inspect_document(await engine.containers.get(record.id))
    assert document["ExecIDs"] is None
    detached = await engine.containers.exec(record.id, ["sh", "-c", "echo done > /tmp/marker"], detach=True)
    assert len(detached.id) == 64

    async def marker() -> bool:
        out, _, _ = await run_exec(engine, record.id, "cat", "/tmp/marker")
        return out == "done\n"

    await eventually(marker, "the detached exec to write its marker")


async def test_exec_tty_drives_sh_and_resizes(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    async with await engine.containers.exec(record.id, ["sh"], tty=True, stdin=True, size=(30, 100)) as session:
        await session.write(b"stty size; echo $TERM; [ -t 0 ] && echo IS-A-$((1+1))\n")
        screen = await read_until(session, b"IS-A-2\r\n")
        assert b"30 100\r\n" in screen and b"xterm\r\n" in screen
        await session.resize(50, 132)
        await session.write(b"stty size\n")
        await read_until(session, b"50 132\r\n")
        await session.write(b"sleep 999\n")

        async def sleeping() -> bool:
            return "sleep 999" in {row.cmd for row in await engine.containers.top(record.id)}

        await eventually(sleeping, "the foreground sleep to start")
        await session.write(b"\x03")  # Ctrl-C reaches the foreground process through the terminal
        await session.write(b"echo after-$((2*2))\n")
        await read_until(session, b"after-4\r\n")
        await session.write(b"exit 7\n")
        assert await session.wait() == 7


async def test_tty_container_attach_replay_and_detach(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sh", tty=True, stdin_open=True)
    session = await engine.containers.attach(record.id, replay=True, size=(40, 90))
    assert session.tty
    await session.write(b"stty size; echo first-$((20+3))\n")
    screen = await read_until(session, b"first-23")
    assert b"40 90" in screen
    await session.close()  # detach: the container keeps running
    assert (await engine.containers.get(record.id)).state.status.value == "running"
    again = await engine.containers.attach(record.id)
    await again.write(b"exit 4\n")
    assert await again.wait() == 4
    await again.close()
    logs = b"".join([item.data async for item in engine.containers.logs(record.id)])
    assert b"first-23" in logs  # a tty's raw output is logged on stdout


async def test_top_lists_the_container_processes(engine: Engine, busybox: str) -> None:
    record = await started(engine, busybox, "sh", "-c", "sleep 1001 & sleep 1002")

    async def both() -> bool:
        rows = await engine.containers.top(record.id)
        return {"sleep 1001", "sleep 1002"} <= {r.cmd for r in rows}

    await eventually(both, "both sleeps to show in top")
    rows = await engine.containers.top(record.id)
    assert all(r.uid == "root" for r in rows) and record.state.pid in {r.pid for r in rows}


async def test_stats_cpu_and_memory_in_plausible_ranges(engine: Engine, busybox: str) -> None:
    burner = await started(engine, busybox, "sh", "-c", "while :; do :; done")
    holder = await started(engine, busybox, "sh", "-c",
                           "head -c 30000000 /dev/zero > /dev/shm/fill; echo ready; sleep 1000",
                           memory=256 * 1024 * 1024)

    async def ready() -> bool:
        return any([b"ready" in item.data async for item in engine.containers.logs(holder.id)])

    await eventually(ready, "the memory holder to fill its tmpfs file", timeout=30)
    samples = {s.name: s async for s in engine.containers.stats([burner.id, holder.id], stream=False,
                                                                interval=0.5)}
    burn, hold = samples[burner.name], samples[holder.name]
    assert 50.0 <= burn.cpu_percent <= 210.0, burn
    assert burn.pids == 1
    assert 25_000_000 <= hold.memory_usage <= 200_000_000, hold
    assert hold.memory_limit == 256 * 1024 * 1024
    assert 9.0 <= hold.memory_percent <= 80.0
    assert hold.cpu_percent < 50.0
    streamed = []
    async for sample in engine.containers.stats([burner.id], interval=0.2):
        streamed.append(sample)
        if len(streamed) == 2:
            break
    assert all(s.cpu_percent > 50.0 for s in streamed)
