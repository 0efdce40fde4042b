"""Containers through the Engine API on the real kernel: lifecycle, logs, volumes, faults."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from engine import (
    CommandNotFound,
    Conflict,
    CreateOptions,
    Engine,
    Event,
    InvalidArgument,
    NotFound,
    Status,
)
from tests.support.busybox import busybox_layer_tar
from tests.support.images import build_image, directory, file, make_layer, push_image
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.root, pytest.mark.registry]




@pytest.fixture
async def busybox(engine: Engine, registry: RegistryServer, repo_name: str) -> str:
    extra = make_layer([directory("data"), file("data/seed.txt", "from the image\n")])
    image = build_image(
        [busybox_layer_tar(), extra], compression="none",
        config={"Cmd": ["sh"], "Env": ["IMAGE_VAR=1"], "Volumes": {"/data": {}}},
    )
    push_image(registry.url, repo_name, "latest", image)
    ref = f"{registry.host}/{repo_name}:latest"
    await engine.pull(ref)
    return ref


async def run(engine: Engine, image: str, *cmd: str, **options: object) -> tuple[int, str, str]:
    record = await engine.create_container(image, CreateOptions(cmd=tuple(cmd), **options))  # type: ignore[arg-type]
    await engine.containers.start(record.id)
    code = await engine.containers.wait(record.id)
    out: list[str] = []
    err: list[str] = []
    async for item in engine.containers.logs(record.id):
        (err if item.stream == "stderr" else out).append(item.data.decode())
    return code, "".join(out), "".join(err)


async def test_run_exit_code_and_logs(engine: Engine, busybox: str) -> None:
    code, out, err = await run(engine, busybox, "sh", "-c", "echo hello; echo oops >&2; exit 3")
    assert (code, out, err) == (3, "hello\n", "oops\n")


async def test_environment_hostname_and_user(engine: Engine, busybox: str) -> None:
    code, out, _ = await run(engine, busybox, "sh", "-c", "echo $IMAGE_VAR $MINE $(id -u):$(id -g) $(hostname)",
                             env=("MINE=yes",), user="app", hostname="box")
    assert code == 0
    assert out == "1 yes 1000:1000 box\n"


async def test_a_config_too_big_for_one_message_reaches_the_monitor_whole(engine: Engine, busybox: str) -> None:
    """The spec goes to the (spare) monitor in the spawn message: 200 KB of environment arrive in pieces."""
    big = tuple(f"BIG{i}=" + str(i) * 100_000 for i in range(2))  # one string may be at most 128 KiB (execve)
    code, out, err = await run(engine, busybox, "sh", "-c", 'echo ${#BIG0} ${#BIG1} ${BIG1:99995}', env=big)
    assert (code, out, err) == (0, "100000 100000 11111\n", "")


async def test_command_not_found_is_127(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(busybox, CreateOptions(cmd=("nosuchcommand",)))
    with pytest.raises(CommandNotFound, match="nosuchcommand"):
        await engine.containers.start(record.id)
    assert (await engine.containers.get(record.id)).state.exit_code == 127


async def test_an_rm_containers_writable_layer_is_volatile(engine: Engine, busybox: str) -> None:
    """--rm: overlay's volatile option (no sync of the state root's filesystem when the container's last process
    exits, for a layer that is thrown away anyway); a kept container's layer stays durable."""
    for auto_remove in (True, False):
        record = await engine.create_container(busybox, CreateOptions(
            cmd=("sh", "-c", "grep -m1 ' / / ' /proc/self/mountinfo"), auto_remove=auto_remove))
        with engine.containers.attached(record.id):
            await engine.containers.start(record.id)
            assert await engine.containers.wait(record.id) == 0
            out = b"".join([item.data async for item in engine.containers.logs(record.id)]).decode()
        assert " overlay " in out and ("volatile" in out) is auto_remove, out
        await engine.containers.remove(record.id, force=True)


async def test_wait_with_remove_returns_the_code_and_removes_the_container_and_its_volumes(
        engine: Engine, busybox: str) -> None:
    """run --rm's last step: the exit code, then nothing left (the image's VOLUME made an anonymous volume)."""
    record = await engine.create_container(busybox, CreateOptions(cmd=("sh", "-c", "exit 4"), auto_remove=True))
    volume = record.host_config["AnonymousVolumes"][0]

    async def lifecycle() -> list[tuple[str, str | None]]:
        seen = []
        async for event in engine.events():
            if isinstance(event, Event) and event.id == record.id:
                seen.append((event.action, event.attributes.get("exitCode")))
                if event.action == "destroy":
                    return seen
        return seen

    watching = asyncio.create_task(lifecycle())
    await asyncio.sleep(0)  # one turn of the loop: the task subscribes before anything happens
    with engine.containers.attached(record.id):
        await engine.containers.start(record.id)
        assert await engine.containers.wait(record.id, remove=True) == 4
    assert record.id not in [r.id for r in await engine.containers.list(all_containers=True)]
    assert not engine.containers.store.dir(record.id).exists()
    assert volume not in [v.name for v in await asyncio.to_thread(engine.containers.volumes.list)]
    assert await asyncio.wait_for(watching, 10) == [("start", None), ("die", "4"), ("destroy", None)]


async def test_names_are_unique(engine: Engine, busybox: str) -> None:
    await engine.create_container(busybox, CreateOptions(name="one", cmd=("true",)))
    with pytest.raises(Conflict, match='"/one" is already in use'):
        await engine.create_container(busybox, CreateOptions(name="one", cmd=("true",)))
    generated = await engine.create_container(busybox, CreateOptions(cmd=("true",)))
    assert "_" in generated.name
    with pytest.raises(InvalidArgument):
        await engine.create_container(busybox, CreateOptions(name="bad name", cmd=("true",)))
    renamed = await engine.containers.rename("one", "two")
    assert renamed.name == "two"
    with pytest.raises(NotFound):
        await engine.containers.get("one")


async def test_a_container_being_created_is_invisible_until_its_record_is_saved(
    engine: Engine, busybox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process listing the containers (or checking a name) mid-create sees nothing half-made."""
    import engine.runtime.plan as plan
    from engine.containers import ContainerStore

    seen: list[object] = []
    real_plan = plan.plan_container

    def listing_while_planning(**kwargs: object) -> object:
        try:
            seen.append(ContainerStore(engine.root / "containers").all())
        except Exception as err:  # what the other process would have crashed with
            seen.append(err)
        return real_plan(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan, "plan_container", listing_while_planning)
    record = await engine.create_container(busybox, CreateOptions(name="half", cmd=("true",)))
    assert seen == [[]]
    assert [r.name for r in ContainerStore(engine.root / "containers").all()] == [record.name] == ["half"]


async def test_stop_kills_a_process_ignoring_sigterm(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(
        busybox, CreateOptions(cmd=("sh", "-c", "trap '' TERM; while true; do sleep 0.05; done")))
    await engine.containers.start(record.id)
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopped = await engine.containers.stop(record.id, timeout=0.5)
    assert loop.time() - began >= 0.5
    assert stopped.state.status == Status.EXITED
    assert stopped.state.exit_code == 137


async def test_state_machine_checks(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(busybox, CreateOptions(cmd=("sleep", "30")))
    with pytest.raises(Conflict):
        await engine.containers.kill(record.id)
    await engine.containers.start(record.id)
    with pytest.raises(Conflict, match="cannot remove a running"):
        await engine.containers.remove(record.id)
    paused = await engine.containers.pause(record.id)
    assert paused.state.status == Status.PAUSED
    assert (await engine.containers.get(record.id)).state.status == Status.PAUSED
    with pytest.raises(Conflict):
        await engine.containers.pause(record.id)
    await engine.containers.unpause(record.id)
    await engine.containers.kill(record.id, "SIGKILL")
    assert await engine.containers.wait(record.id) == 137
    await engine.containers.remove(record.id)
    with pytest.raises(NotFound):
        await engine.containers.get(record.id)


async def test_restart_policy_on_failure(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(busybox, CreateOptions(cmd=("sh", "-c", "exit 2"),
                                                                  restart="on-failure:2"))
    await engine.containers.start(record.id)
    assert await engine.containers.wait(record.id) == 2
    final = await engine.containers.get(record.id)
    assert final.state.restart_count == 2
    assert final.state.status == Status.EXITED


async def test_volumes_bind_named_anonymous(engine: Engine, busybox: str, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    code, out, _ = await run(
        engine, busybox, "sh", "-c", "cat /host/in.txt; cat /named/seed.txt 2>/dev/null || echo empty; "
        "cat /data/seed.txt; echo written > /host/out.txt; touch /ro/x 2>/dev/null || echo ro",
        volumes=(f"{host}:/host", "named:/named", f"{host}:/ro:ro"),
    )
    assert code == 0
    assert out == "from host\nempty\nfrom the image\nro\n"
    assert (host / "out.txt").read_text() == "written\n"
    volumes = {v["Name"] for v in await engine.volumes()}
    assert "named" in volumes and len(volumes) == 2  # named + the image's anonymous /data volume
    with pytest.raises(Conflict, match="in use"):
        await engine.remove_volume("named")


async def test_rm_v_removes_anonymous_volumes(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(busybox, CreateOptions(cmd=("true",), volumes=("keep:/keep",)))
    assert len(await engine.volumes()) == 2
    await engine.containers.remove(record.id, volumes=True)
    assert [v["Name"] for v in await engine.volumes()] == ["keep"]


async def test_missing_bind_source_is_refused(engine: Engine, busybox: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="bind source path does not exist"):
        await engine.create_container(busybox, CreateOptions(cmd=("true",), volumes=(f"{tmp_path}/nope:/x",)))
    assert await engine.containers.list(all_containers=True) == []


async def test_read_only_and_tmpfs(engine: Engine, busybox: str) -> None:
    code, out, _ = await run(engine, busybox, "sh", "-c", "touch /x 2>/dev/null || echo ro; touch /scratch/y && "
                             "echo tmp", read_only=True, tmpfs=("/scratch",))
    assert (code, out) == (0, "ro\ntmp\n")


async def test_logs_tail_and_inspect(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(busybox, CreateOptions(name="talk", cmd=("sh", "-c", "seq 1 5")))
    await engine.containers.start(record.id)
    await engine.containers.wait(record.id)
    lines = [item.data async for item in engine.containers.logs("talk", tail=2)]
    assert lines == [b"4\n", b"5\n"]
    document = engine.containers.inspect_document(await engine.containers.get("talk"))
    assert document["Name"] == "/talk"
    assert document["State"]["Status"] == "exited"
    assert document["Config"]["Cmd"] == ["sh", "-c", "seq 1 5"]
    assert document["HostConfig"]["LogConfig"]["Type"] == "json-file"
    log = Path(document["LogPath"]).read_text().splitlines()
    assert json.loads(log[0])["log"] == "1\n"


async def test_export_writes_container_filesystem(engine: Engine, busybox: str, tmp_path: Path) -> None:
    code, _, _ = await run(engine, busybox, "sh", "-c", "echo mine > /made-here", name="exp")
    assert code == 0
    out = tmp_path / "fs.tar"
    await engine.containers.export("exp", out)
    names = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True, check=True).stdout.split()
    assert "made-here" in names and "bin/busybox" in names


async def test_prune_removes_stopped(engine: Engine, busybox: str) -> None:
    stopped = await engine.create_container(busybox, CreateOptions(cmd=("true",)))
    running = await engine.create_container(busybox, CreateOptions(cmd=("sleep", "30")))
    await engine.containers.start(running.id)
    removed = await engine.containers.prune()
    assert removed == [stopped.id]


async def test_full_writable_layer_gives_a_clear_error(engine: Engine, busybox: str, tmp_path: Path) -> None:
    """A writable layer on a full filesystem: the container's write fails with ENOSPC, visibly."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        code, _, err = await run(engine, busybox, "sh", "-c", "dd if=/dev/zero of=/full/big bs=1M count=4",
                                 volumes=(f"{small}:/full",))
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert code != 0
    assert "No space left on device" in err


async def test_engine_failure_on_full_state_root(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    image = build_image([make_layer([file("big", os.urandom(3_000_000))])], compression="none")
    push_image(registry.url, repo_name, "v1", image)
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], check=True)
    try:
        async with await Engine.open(state) as small_engine:
            from engine import StoreError

            with pytest.raises(StoreError, match="no space left on device"):
                await small_engine.pull(f"{registry.host}/{repo_name}:v1")
    finally:
        subprocess.run(["umount", "--lazy", str(state)], check=True)  # sqlite may still hold its WAL open


async def test_seccomp_default_and_unconfined(engine: Engine, busybox: str) -> None:
    code, out, _ = await run(engine, busybox, "sh", "-c", "grep Seccomp: /proc/self/status; "
                             "unshare -U true 2>/dev/null || echo denied")
    assert (code, out.split()) == (0, ["Seccomp:", "2", "denied"])
    code, out, _ = await run(engine, busybox, "sh", "-c", "grep Seccomp: /proc/self/status",
                             security_opt=("seccomp=unconfined",))
    assert out.split() == ["Seccomp:", "0"]
    record = await engine.create_container(busybox, CreateOptions(cmd=("true",), privileged=True))
    assert engine.containers.inspect_document(record)["HostConfig"]["Privileged"] is True


async def test_the_monitor_gets_the_seccomp_program_file_not_the_profile(engine: Engine, busybox: str) -> None:
    """The spec a monitor reads names the compiled program; one that left the cache is compiled again at start."""
    record = await engine.create_container(busybox, CreateOptions(cmd=("sh", "-c", "grep Seccomp: /proc/self/status")))
    bundle = engine.containers.store.dir(record.id)
    stored = json.loads((bundle / "spec.json").read_text())
    assert stored["seccomp"] is not None  # the record keeps the profile the program was compiled from
    program = Path(stored["seccomp_program"])
    for compiled_again in (True, False):  # the program left the cache; the usual case: it is there
        if compiled_again:
            program.unlink()
        await engine.containers.start(record.id)
        assert await engine.containers.wait(record.id) == 0
        monitor_spec = json.loads(json.loads((bundle / "monitor-config.json").read_text())["spec"])
        assert monitor_spec["seccomp"] is None and monitor_spec["seccomp_program"] == str(program)
        assert program.is_file()
    assert [item.data async for item in engine.containers.logs(record.id)] == [b"Seccomp:\t2\n"] * 2


async def test_following_the_log_of_a_container_whose_monitor_died_ends(engine: Engine, busybox: str) -> None:
    """logs -f asks the files whether the container still runs; a monitor killed with no exit recorded (its
    container dies with it) ends the following instead of leaving it waiting."""
    record = await engine.create_container(busybox, CreateOptions(cmd=("sh", "-c", "echo up; exec sleep 300")))
    await engine.containers.start(record.id)
    bundle = engine.containers.store.dir(record.id)
    monitor = json.loads((bundle / "monitor.json").read_text())["monitor_pid"]

    stream = engine.containers.logs(record.id, follow=True)
    assert (await asyncio.wait_for(stream.__anext__(), 10)).data == b"up\n"  # following now

    async def rest() -> list[bytes]:
        return [item.data async for item in stream]

    os.kill(monitor, 9)
    assert await asyncio.wait_for(rest(), 10) == []
    await engine.containers.remove(record.id, force=True)


async def test_log_rotation_options(engine: Engine, busybox: str) -> None:
    record = await engine.create_container(busybox, CreateOptions(
        cmd=("sh", "-c", "i=0; while [ $i -lt 400 ]; do echo line-$i; i=$((i+1)); done"),
        log_opts={"max-size": "2k", "max-file": "3"}))
    await engine.containers.start(record.id)
    assert await engine.containers.wait(record.id) == 0
    log = Path(engine.containers.inspect_document(record)["LogPath"])
    rotated = sorted(p.name for p in log.parent.iterdir() if p.name.startswith(log.name))
    assert rotated == [log.name, f"{log.name}.1", f"{log.name}.2"]
    assert all(p.stat().st_size <= 2048 + 200 for p in log.parent.iterdir() if p.name.startswith(log.name))
    tail = [item.data async for item in engine.containers.logs(record.id, tail=3)]
    assert tail == [b"line-397\n", b"line-398\n", b"line-399\n"]
    with pytest.raises(InvalidArgument, match="max-size"):
        await engine.create_container(busybox, CreateOptions(cmd=("true",), log_opts={"max-size": "lots"}))
