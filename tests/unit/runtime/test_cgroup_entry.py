"""How a container's init enters its cgroups: the layout handed down by the monitor, the parent's move of the
init (``add_process``) and the ready byte the init waits for before its cgroup namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import InvalidArgument, KernelError
from engine.runtime.cgroups import CgroupEntry, CgroupLayout, FakeCgroupManager, V1Manager, V2Manager, cgroup_manager
from engine.runtime.spec import CgroupSpec

SPEC = CgroupSpec("kitebox/c1")
HIERARCHIES = {"memory": "memory", "cpu,cpuacct": "cpu,cpuacct", "systemd": "name=systemd"}


def _v1_tree(root: Path, *, hybrid: bool) -> None:
    for name in [*HIERARCHIES, *(["unified"] if hybrid else [])]:
        leaf = root / name / "kitebox" / "c1"
        leaf.mkdir(parents=True)
        (leaf / "cgroup.procs").write_text("")


def test_v1_add_process_writes_the_pid_in_every_hierarchy(tmp_path: Path) -> None:
    _v1_tree(tmp_path, hybrid=True)
    manager = V1Manager(SPEC, tmp_path, hybrid=True, hierarchies=HIERARCHIES)
    manager.add_process(4321)
    for name in [*HIERARCHIES, "unified"]:
        assert (tmp_path / name / "kitebox" / "c1" / "cgroup.procs").read_text() == "4321"
    assert manager.layout == CgroupLayout("hybrid", HIERARCHIES)
    assert V1Manager(SPEC, tmp_path, hierarchies=HIERARCHIES).layout.mode == "v1"


def test_v2_add_process_and_layout(tmp_path: Path) -> None:
    (tmp_path / "kitebox" / "c1").mkdir(parents=True)
    (tmp_path / "kitebox" / "c1" / "cgroup.procs").write_text("")
    manager = V2Manager(SPEC, tmp_path)
    manager.add_process(99)
    assert (tmp_path / "kitebox" / "c1" / "cgroup.procs").read_text() == "99"
    assert manager.layout == CgroupLayout("v2", {})


def test_a_given_layout_is_not_detected_again(tmp_path: Path) -> None:
    # tmp_path is no cgroup mount at all: detecting would say "v1" with no hierarchies.
    manager = cgroup_manager(SPEC, layout=CgroupLayout("hybrid", HIERARCHIES), root=tmp_path)
    assert isinstance(manager, V1Manager)
    assert manager.layout == CgroupLayout("hybrid", HIERARCHIES)
    assert isinstance(cgroup_manager(SPEC, layout=CgroupLayout("v2"), root=tmp_path), V2Manager)


def test_entry_waits_for_the_ready_byte_once() -> None:
    fake = FakeCgroupManager(layout=CgroupLayout("v1", HIERARCHIES))
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    entry = CgroupEntry(SPEC, fake, read_end, namespace=False)
    assert entry.layout == CgroupLayout("v1", HIERARCHIES)
    assert fake.calls == []  # the parent creates and moves; the init does neither
    os.write(write_end, b"\0")
    os.close(write_end)
    entry.enter()
    entry.enter()  # idempotent: the fd is read (and closed) once
    with pytest.raises(OSError):
        os.fstat(read_end)


def test_entry_fails_when_the_parent_gives_up() -> None:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    entry = CgroupEntry(SPEC, FakeCgroupManager(), read_end, namespace=False)
    os.close(write_end)  # EOF without the byte: the monitor could not set the cgroup up (or died)
    with pytest.raises(KernelError, match="cgroup was not set up"):
        entry.enter()


def test_entry_with_a_parent_manager_needs_a_ready_fd() -> None:
    with pytest.raises(InvalidArgument):
        CgroupEntry(SPEC, FakeCgroupManager(), -1)


def test_fake_records_add_process() -> None:
    fake = FakeCgroupManager()
    fake.add_process(7)
    assert fake.calls == [("add_process", 7)] and fake.pids() == [7]
