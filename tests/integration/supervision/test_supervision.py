"""Supervision with the real executor and kernel: monitors outlive their engine, restart, stop, pause, attach.

Every test uses the ``bed`` fixture, which fails the test if a monitor or a cgroup is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from engine.errors import CommandNotFound, Conflict, RuntimeFailure
from engine.logs import log_file_path, read_logs
from engine.runtime.helper import helper_pids
from engine.runtime.plan import RunOptions, plan_container
from engine.runtime.protocol import read_json
from engine.runtime.spec import RuntimeSpec
from engine.runtime.supervisor import LiveState, Supervisor
from tests.support.gated_backend import gate_path
from tests.support.procs import alive, children
from tests.support.wait import async_wait_until

from .conftest import Bed, cgroup_dirs

pytestmark = pytest.mark.root

LOOP = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.02; done"


async def start(sup: Supervisor, cdir: Path, spec: RuntimeSpec, *, policy: str = "no", retries: int = 0,
                stop_signal: str = "", stdin_open: bool = False) -> LiveState:
    return await sup.start(cdir, spec, restart_policy=policy, max_retries=retries, log_opts={},
                           stop_signal=stop_signal, stdin_open=stdin_open)


def log_lines(cdir: Path, spec: RuntimeSpec) -> list[str]:
    path = log_file_path(cdir, spec.id)
    return path.read_text().splitlines() if path.exists() else []


async def test_exit_code_and_output_are_recorded(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"])
    state = await start(supervisor, cdir, spec)
    assert state.status == "running" and state.pid and state.monitor_pid
    info = await supervisor.wait(cdir)
    assert (info.exit_code, info.oom_killed, info.error) == (3, False, None)
    records = [(r.stream, r.data) async for r in read_logs(log_file_path(cdir, spec.id))]
    assert records == [("stdout", b"out\n"), ("stderr", b"err\n"), ("stdout", b"partial")]
    final = await supervisor.state(cdir)
    assert final.status == "exited" and final.exit == info


async def test_monitors_are_the_helpers_children_but_not_taken_for_helpers(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sleep", "300"])
    state = await start(supervisor, cdir, spec)
    helper = await supervisor.helper_pid()
    assert helper_pids(bed.state) == [helper]  # the monitor keeps the helper's command line, not its name
    with open(f"/proc/{state.monitor_pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    assert int(fields[1]) == helper  # forked once (its own session), reaped by the kernel when it ends
    assert int(fields[3]) == state.monitor_pid  # session id: a session leader
    await supervisor.stop(cdir, 0)


def _spare_monitors(helper: int) -> list[int]:
    """The helper's children that are monitors of no container yet (stdio on /dev/null, no monitor.sock held)."""
    spares = []
    for pid in children(helper):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "kb-monitor" and os.readlink(
                    f"/proc/{pid}/fd/2") == "/dev/null":
                spares.append(pid)
    return spares


async def test_a_start_takes_the_spare_monitor_forked_ahead(bed: Bed, supervisor: Supervisor) -> None:
    helper = await supervisor.helper_pid()
    await async_wait_until(lambda: len(_spare_monitors(helper)) == 1, "a spare monitor")
    (spare,) = _spare_monitors(helper)
    cdir, spec = bed.container(["sh", "-c", "cat /sys/class/net/lo/flags; exec sleep 300"])
    state = await start(supervisor, cdir, spec)
    assert state.monitor_pid == spare and state.pid
    # Its network namespace was made by the spare ahead of time: its own, loopback up (IFF_UP | IFF_LOOPBACK).
    host = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{spare}/ns/net") == host != os.readlink(f"/proc/{state.pid}/ns/net")
    await async_wait_until(lambda: log_lines(cdir, spec) != [], "the container's output")
    assert '"log":"0x9\\n"' in log_lines(cdir, spec)[0]
    with open(f"/proc/{spare}/stat") as handle:
        assert int(handle.read().rsplit(")", 1)[1].split()[3]) == spare  # its own session, like any monitor
    await async_wait_until(lambda: len(_spare_monitors(helper)) == 1, "the next spare")
    (following,) = _spare_monitors(helper)
    assert following != spare
    await supervisor.stop(cdir, 0)
    await supervisor.close(stop_helper=True)
    await async_wait_until(lambda: not alive(following), "the spare to end with its helper")


async def test_stdin_typed_while_a_terminal_container_starts_reaches_it(bed: Bed) -> None:
    sup = await Supervisor.open(bed.state, backend="tests.support.gated_backend:GatedBackend")
    cid = uuid.uuid4().hex
    cdir = bed.state / "containers" / cid
    spec = plan_container(container_id=cid, image_config={"Cmd": ["cat"]}, options=RunOptions(tty=True,
                          stdin_open=True), rootfs=bed.rootfs, root_mounts=[], bundle_dir=cdir,
                          cgroup_parent=bed.cgroup_parent)
    gate = gate_path(cid)
    starting = asyncio.ensure_future(start(sup, cdir, spec, stdin_open=True))
    try:
        await async_wait_until(lambda: (cdir / "monitor.json").exists(), "the monitor to run")
        await sup.write_stdin(cdir, b"typed early\n")  # the init has no terminal yet: kept, not refused
        gate.touch()
        await starting
        await async_wait_until(lambda: any("typed early" in line for line in log_lines(cdir, spec)),
                               "cat to echo what was typed before its terminal existed")
    finally:
        gate.touch()  # whatever happened, let the init go on, then stop it
        with contextlib.suppress(Exception):
            await starting
        with contextlib.suppress(Exception):
            await sup.stop(cdir, 0)
        gate.unlink(missing_ok=True)
        await sup.close()


async def test_command_not_found_is_reported_and_cleaned_up(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["/no/such/command"])
    with pytest.raises(CommandNotFound, match="no/such/command"):
        await start(supervisor, cdir, spec)
    state = await supervisor.state(cdir)
    assert state.status == "exited" and state.exit is not None and state.exit.exit_code == 127


async def test_a_cgroup_the_monitor_cannot_set_up_fails_the_start(bed: Bed, supervisor: Supervisor) -> None:
    # The monitor creates the cgroup after forking the init (which waits for it): a limit the kernel refuses
    # kills the init before its cgroup namespace or exec, and the start fails naming the cgroup file.
    cdir, spec = bed.container(["true"])
    spec = dataclasses.replace(spec, cgroup=dataclasses.replace(spec.cgroup, cpu_quota=1))  # below the 1 ms minimum
    with pytest.raises(RuntimeFailure, match=r"cfs_quota_us|cpu\.max"):
        await start(supervisor, cdir, spec)
    state = await supervisor.state(cdir)
    assert state.status == "exited" and state.exit is not None and state.exit.exit_code == 125
    assert not any(d.exists() and any(p.is_dir() for p in d.iterdir()) for d in cgroup_dirs(bed.cgroup_parent))


ENGINE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from engine.runtime.spec import RuntimeSpec
    from engine.runtime.supervisor import Supervisor

    async def main() -> None:
        cdir = Path(sys.argv[1])
        spec = RuntimeSpec.from_json(Path(sys.argv[2]).read_text())
        sup = await Supervisor.open(cdir.parent.parent)
        await sup.start(cdir, spec, restart_policy="no", max_retries=0, log_opts={}, stop_signal="",
                        stdin_open=False)
        print("started", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_container_outlives_a_killed_engine_and_is_reattached(bed: Bed, tmp_path: Path) -> None:
    cdir, spec = bed.container(["sh", "-c", LOOP])
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    engine = subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, str(cdir), str(spec_file)],
                              stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[3])
    try:
        assert engine.stdout is not None
        assert engine.stdout.readline() == b"started\n"
    finally:
        engine.kill()
        engine.wait()
        if engine.stdout is not None:
            engine.stdout.close()
    seen = len(log_lines(cdir, spec))
    await async_wait_until(lambda: len(log_lines(cdir, spec)) > seen + 3, "the container to keep logging")
    sup = await Supervisor.open(bed.state)
    try:
        state = await sup.state(cdir)
        assert state.status == "running" and state.pid is not None
        info = await sup.stop(cdir, 0.2)  # sh as pid 1 ignores SIGTERM: killed after the timeout
        assert info.exit_code == 137
        assert (await sup.state(cdir)).status == "exited"
    finally:
        await sup.close()


async def test_killing_the_monitor_kills_the_container(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sleep", "1000"])
    state = await start(supervisor, cdir, spec)
    assert state.pid is not None and state.monitor_pid is not None
    os.kill(state.monitor_pid, signal.SIGKILL)
    await async_wait_until(lambda: not alive(state.pid or 0), "the container to die with its monitor")
    final = await supervisor.state(cdir)
    assert final.status == "exited"
    assert final.exit is not None and final.exit.error == "monitor died" and final.exit.exit_code == 137
    assert not any(d.exists() and any(p.is_dir() for p in d.iterdir()) for d in cgroup_dirs(bed.cgroup_parent))


async def test_stop_escalates_to_sigkill_after_the_timeout(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"])
    await start(supervisor, cdir, spec)
    began = time.monotonic()
    info = await supervisor.stop(cdir, 0.5)
    assert info.exit_code == 137
    assert time.monotonic() - began >= 0.5


async def test_stop_signal_ends_a_cooperative_container_without_restart(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sh", "-c", "trap 'exit 7' USR1; echo ready; while true; do sleep 0.02; done"])
    await start(supervisor, cdir, spec, policy="always", stop_signal="SIGUSR1")
    # pid 1 ignores signals it has no handler for: wait until the trap is installed
    await async_wait_until(lambda: any("ready" in line for line in log_lines(cdir, spec)), "the trap")
    info = await supervisor.stop(cdir, 30)
    assert info.exit_code == 7
    state = await supervisor.state(cdir)
    assert state.status == "exited" and state.restart_count == 0


async def test_on_failure_restarts_exactly_max_retries_times(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sh", "-c", "echo run; exit 1"])
    await start(supervisor, cdir, spec, policy="on-failure", retries=2)
    info = await supervisor.wait(cdir)
    assert info.exit_code == 1
    state = await supervisor.state(cdir)
    assert state.restart_count == 2 and state.status == "exited"
    assert [line for line in log_lines(cdir, spec) if '"run\\n"' in line].__len__() == 3


async def test_always_restarts_until_stopped(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sh", "-c", "echo run; exit 0"])
    await start(supervisor, cdir, spec, policy="always")
    counts: list[int] = []

    async def restarted_twice() -> bool:
        counts.append((await supervisor.state(cdir)).restart_count)
        return counts[-1] >= 2

    deadline = time.monotonic() + 10
    while not await restarted_twice():
        assert time.monotonic() < deadline, "no restarts"
        await asyncio.sleep(0.02)
    await supervisor.stop(cdir, 1)
    final = await supervisor.state(cdir)
    assert final.status == "exited" and final.restart_count >= 2
    assert (await supervisor.wait(cdir)) == final.exit


async def test_pause_freezes_and_unpause_thaws(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sh", "-c", LOOP])
    state = await start(supervisor, cdir, spec)
    freezer = Path("/sys/fs/cgroup/freezer") / spec.cgroup.path / "freezer.state"
    await supervisor.pause(cdir)
    assert (await supervisor.state(cdir)).status == "paused"
    assert freezer.read_text().strip() == "FROZEN"
    with open(f"/proc/{state.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "D"  # frozen tasks sleep uninterruptibly
    await supervisor.unpause(cdir)
    assert (await supervisor.state(cdir)).status == "running"
    assert freezer.read_text().strip() == "THAWED"
    with pytest.raises(Conflict):
        await supervisor.unpause(bed.state / "containers" / "nope")
    await supervisor.pause(cdir)
    assert (await supervisor.stop(cdir, 0.2)).exit_code == 137  # a paused container can be stopped


async def test_attach_and_stdin(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["cat"])
    await start(supervisor, cdir, spec, stdin_open=True)
    chunks: list[tuple[str, bytes]] = []

    async def attach() -> None:
        async for chunk in supervisor.attach_output(cdir):
            chunks.append(chunk)

    attached = asyncio.ensure_future(attach())
    # Attach delivers output from the moment it is registered, so keep feeding cat until the stream shows it.
    sent = 0
    deadline = time.monotonic() + 10
    while not chunks:
        assert time.monotonic() < deadline, "attach never delivered output"
        await supervisor.write_stdin(cdir, f"hello {sent}\n".encode())
        sent += 1
        with contextlib.suppress(AssertionError):
            await async_wait_until(lambda: bool(chunks), "output", timeout=0.2)
    await supervisor.close_stdin(cdir)
    info = await supervisor.wait(cdir)
    await asyncio.wait_for(attached, 5)  # the attach stream ends with the container
    assert info.exit_code == 0
    expected = [f"hello {i}\n".encode() for i in range(sent)]
    seen = b"".join(data for _, data in chunks)
    assert {stream for stream, _ in chunks} == {"stdout"}
    assert seen and b"".join(expected).endswith(seen)  # a contiguous tail: nothing lost or repeated
    logged = [r.data async for r in read_logs(log_file_path(cdir, spec.id))]
    assert logged == expected
    with pytest.raises(Conflict, match="not running"):
        await supervisor.write_stdin(cdir, b"late")


async def test_kill_and_errors_on_stopped_containers(bed: Bed, supervisor: Supervisor) -> None:
    cdir, spec = bed.container(["sleep", "1000"])
    await start(supervisor, cdir, spec, policy="always")
    with pytest.raises(Conflict, match="already running"):
        await start(supervisor, cdir, spec)
    await supervisor.kill(cdir, signal.SIGKILL)  # a kill with SIGKILL is a manual stop: no restart
    info = await supervisor.wait(cdir)
    assert info.exit_code == 137
    with pytest.raises(Conflict, match="not running"):
        await supervisor.kill(cdir, signal.SIGTERM)
    assert (await supervisor.stop(cdir, 1)) == info


async def test_idle_monitor_is_small(bed: Bed, supervisor: Supervisor) -> None:
    cdirs = []
    for _ in range(3):
        cdir, spec = bed.container(["sleep", "1000"])
        state = await start(supervisor, cdir, spec)
        cdirs.append((cdir, state.monitor_pid))
    for _, pid in cdirs:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        pss_kb = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        assert pss_kb <= 10 * 1024
    for cdir, _ in cdirs:
        await supervisor.stop(cdir, 0.1)
    assert all(read_json(cdir / "exit.json") for cdir, _ in cdirs)
