"""The engine going away: containers outlive it, lost monitors are reported, ``always`` ones come back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import CreateOptions, Engine, Status
from tests.support.images import busybox_image, push_image
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.root, pytest.mark.registry]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def setup(tmp_path: Path, registry: RegistryServer, repo_name: str) -> AsyncIterator[tuple[Path, str]]:
    push_image(registry.url, repo_name, "latest", busybox_image(compression="none"))
    ref = f"{registry.host}/{repo_name}:latest"
    root = tmp_path / "state"
    async with await Engine.open(root) as engine:
        await engine.pull(ref)
    try:
        yield root, ref
    finally:
        async with await Engine.open(root) as engine:
            for record in await engine.containers.list(all_containers=True):
                await engine.containers.remove(record.id, force=True, volumes=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while _alive(pid):
        assert time.monotonic() < end, f"pid {pid} still alive"
        time.sleep(0.01)


async def test_containers_outlive_a_killed_cli(setup: tuple[Path, str]) -> None:
    root, ref = setup
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "app.main", "--root", str(root), "run", "--name", "survivor", ref,
         "sh", "-c", "while true; do echo tick; sleep 0.05; done"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"tick\n"  # the container runs and streams
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        if cli.stdout is not None:
            cli.stdout.close()
    async with await Engine.open(root) as engine:
        record = await engine.containers.get("survivor")
        assert record.state.status == Status.RUNNING
        before = [item async for item in engine.containers.logs("survivor")]
        # Still logging after its CLI died: wait for more lines to arrive.
        deadline = time.monotonic() + 10
        while len([item async for item in engine.containers.logs("survivor")]) <= len(before):
            assert time.monotonic() < deadline
        stopped = await engine.containers.stop("survivor", timeout=1)
        assert stopped.state.status == Status.EXITED


async def test_killed_monitor_kills_its_container_and_always_restarts_on_open(setup: tuple[Path, str]) -> None:
    root, ref = setup
    async with await Engine.open(root) as engine:
        record = await engine.create_container(ref, CreateOptions(name="phoenix", cmd=("sleep", "300"),
                                                                  restart="always"))
        started = await engine.containers.start(record.id)
        container_pid = started.state.pid
    monitor = json.loads((root / "containers" / record.id / "monitor.json").read_text())
    os.kill(int(monitor["monitor_pid"]), signal.SIGKILL)
    _wait_dead(container_pid)  # not orphaned: it dies with its monitor
    async with await Engine.open(root) as engine:  # opening recovers: the "always" container starts again
        assert await engine.recover() == []  # idempotent: nothing left to do
        again = await engine.containers.get("phoenix")
        assert again.state.status == Status.RUNNING
        assert again.state.pid != container_pid


async def test_lost_monitor_is_reported(setup: tuple[Path, str]) -> None:
    root, ref = setup
    async with await Engine.open(root) as engine:
        record = await engine.create_container(ref, CreateOptions(name="orphan", cmd=("sleep", "300")))
        started = await engine.containers.start(record.id)
    monitor = json.loads((root / "containers" / record.id / "monitor.json").read_text())
    os.kill(int(monitor["monitor_pid"]), signal.SIGKILL)
    _wait_dead(started.state.pid)
    async with await Engine.open(root) as engine:
        assert await engine.recover() == []
        lost = await engine.containers.get("orphan")
        assert lost.state.status in (Status.EXITED, Status.DEAD)
        assert "monitor died" in lost.state.error
