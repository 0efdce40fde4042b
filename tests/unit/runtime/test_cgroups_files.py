"""Cgroup managers against a directory tree standing in for cgroupfs: what gets written where."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InvalidArgument, KernelError
from engine.runtime.cgroups import FakeCgroupManager, V1Manager, V2Manager
from engine.runtime.spec import CgroupSpec

SPEC = CgroupSpec("kitebox/c1", memory=64 << 20, memory_swap=128 << 20, cpu_quota=50000, cpu_period=100000,
                  cpu_shares=512, pids_limit=20)


def test_v2_enables_controllers_and_writes_limits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    # Real cgroupfs fills these in on mkdir; pre-create the tree as the kernel would.
    for d in (tmp_path / "kitebox", tmp_path / "kitebox" / "c1"):
        d.mkdir()
        (d / "cgroup.controllers").write_text("cpu memory pids\n")
        (d / "cgroup.subtree_control").write_text("")
        for name in ("memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max", "memory.events"):
            (d / name).write_text("")
    manager = V2Manager(SPEC, tmp_path)
    manager.create(SPEC)
    leaf = tmp_path / "kitebox" / "c1"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.swap.max").read_text() == str(64 << 20)
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "cpu.weight").read_text() == "20"
    assert (leaf / "pids.max").read_text() == "20"
    assert not manager.oom_killed()
    (leaf / "memory.events").write_text("low 0\noom 1\noom_kill 1\n")
    assert manager.oom_killed()


def test_v1_writes_per_controller(tmp_path: Path) -> None:
    hierarchies = {"memory": "memory", "cpu,cpuacct": "cpu,cpuacct", "pids": "pids"}
    for name in hierarchies:
        leaf = tmp_path / name / "kitebox" / "c1"
        leaf.mkdir(parents=True)
        for name_ in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cpu.shares", "cpu.cfs_period_us",
                  "cpu.cfs_quota_us", "pids.max", "memory.oom_control"):
            (leaf / name_).write_text("")
    manager = V1Manager(SPEC, tmp_path, hierarchies=hierarchies)
    manager.create(SPEC)
    assert (tmp_path / "memory/kitebox/c1/memory.memsw.limit_in_bytes").read_text() == str(128 << 20)
    assert (tmp_path / "cpu,cpuacct/kitebox/c1/cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "pids/kitebox/c1/pids.max").read_text() == "20"
    (tmp_path / "memory/kitebox/c1/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert manager.oom_killed()
    for name in hierarchies:
        for file in (tmp_path / name / "kitebox" / "c1").iterdir():
            file.unlink()
    manager.destroy()
    assert not (tmp_path / "memory" / "kitebox" / "c1").exists()


@pytest.mark.parametrize("path", ["", "../x", "a/../../b", "/"])
def test_bad_cgroup_path(tmp_path: Path, path: str) -> None:
    with pytest.raises(InvalidArgument, match="cgroup path"):
        V2Manager(CgroupSpec(path), tmp_path)


def test_fake_records() -> None:
    fake = FakeCgroupManager()
    fake.create(SPEC)
    fake.join_self()
    assert fake.pids() and fake.calls[0] == ("create", SPEC)
    with pytest.raises(KernelError):
        fake.destroy()
    fake.kill_all()
    fake.destroy()
    assert not fake.exists
