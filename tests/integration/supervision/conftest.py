"""Fixtures for the supervision tests: a busybox rootfs, specs from the real planner, a Supervisor, and a leak
check (no cgroup directories, monitors or container processes left behind)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.runtime.cgroups import detect_cgroup_mode, v1_hierarchies
from engine.runtime.plan import RunOptions, plan_container
from engine.runtime.protocol import read_json
from engine.runtime.spec import RuntimeSpec
from engine.runtime.supervisor import Supervisor
from tests.support.busybox import make_busybox_rootfs
from tests.support.procs import alive
from tests.support.wait import wait_until

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Bed:
    """One test's world: where containers live and how to make them."""

    state: Path
    rootfs: Path
    cgroup_parent: str

    def container(self, cmd: list[str], *, stop_signal: str | None = None) -> tuple[Path, RuntimeSpec]:
        cid = uuid.uuid4().hex
        cdir = self.state / "containers" / cid
        cdir.mkdir(parents=True)
        spec = plan_container(container_id=cid, image_config={"Cmd": cmd}, options=RunOptions(stop_signal=stop_signal),
                              rootfs=self.rootfs, root_mounts=[], bundle_dir=cdir, cgroup_parent=self.cgroup_parent)
        return cdir, spec


def cgroup_dirs(parent: str) -> list[Path]:
    roots = [CGROUP_ROOT / name for name in v1_hierarchies()] if detect_cgroup_mode() != "v2" else [CGROUP_ROOT]
    if detect_cgroup_mode() == "hybrid":
        roots.append(CGROUP_ROOT / "unified")
    return [root / parent for root in roots]


def monitor_pids(state: Path) -> list[int]:
    pids = []
    for info in state.glob("containers/*/monitor.json"):
        pid = (read_json(info) or {}).get("monitor_pid")
        if isinstance(pid, int) and alive(pid):
            pids.append(pid)
    return pids


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    parent = f"kitebox-test-{uuid.uuid4().hex[:12]}"
    world = Bed(tmp_path / "state", make_busybox_rootfs(tmp_path / "rootfs"), parent)
    yield world
    # A monitor whose container has stopped for good exits right after recording it: give it a moment to go.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not monitor_pids(world.state), "monitors to exit", timeout=5.0)
    leaked_monitors = monitor_pids(world.state)
    for pid in leaked_monitors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    leaked_cgroups: list[Path] = []
    for directory in cgroup_dirs(parent):
        for leaf in sorted(directory.glob("*"), reverse=True):
            if leaf.is_dir():
                leaked_cgroups.append(leaf)
                with contextlib.suppress(OSError):
                    for member in (leaf / "cgroup.procs").read_text().split():
                        os.kill(int(member), signal.SIGKILL)
                wait_until(lambda leaf=leaf: _rmdir(leaf), f"cgroup {leaf} to empty")  # type: ignore[misc]
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()
    assert not leaked_monitors, f"monitors left running: {leaked_monitors}"
    assert not leaked_cgroups, f"cgroups left behind: {leaked_cgroups}"


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@pytest.fixture
async def supervisor(bed: Bed) -> AsyncIterator[Supervisor]:
    sup = await Supervisor.open(bed.state)
    yield sup
    await sup.close()
