"""How a container's init (or an exec'd process) enters its cgroups: the fork that is born in the v2 cgroup when
it can be, and the joins that take no global lock (``tasks`` for v1, ``cgroup.procs`` only for a v2 cgroup the
child was not born in), against directory trees standing in for cgroupfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.runtime.cgroups import CgroupEntry, CgroupLayout, FakeCgroupManager, V1Manager, V2Manager, cgroup_manager
from engine.runtime.spec import CgroupSpec

SPEC = CgroupSpec("kitebox/c1")
HIERARCHIES = {"memory": "memory", "cpu,cpuacct": "cpu,cpuacct", "systemd": "name=systemd"}


def _v1_tree(root: Path, *, hybrid: bool) -> None:
    for name in [*HIERARCHIES, *(["unified"] if hybrid else [])]:
        leaf = root / name / "kitebox" / "c1"
        leaf.mkdir(parents=True)
        (leaf / "cgroup.procs").write_text("")
        (leaf / "tasks").write_text("")


def _written(root: Path, name: str) -> tuple[str, str]:
    leaf = root / name / "kitebox" / "c1"
    return (leaf / "tasks").read_text(), (leaf / "cgroup.procs").read_text()


def test_v1_join_moves_the_thread_through_tasks_in_every_hierarchy(tmp_path: Path) -> None:
    _v1_tree(tmp_path, hybrid=True)
    manager = V1Manager(SPEC, tmp_path, hybrid=True, hierarchies=HIERARCHIES)
    manager.join_self()
    for name in HIERARCHIES:
        assert _written(tmp_path, name) == ("0", "")  # never cgroup.procs: that takes the global lock
    assert _written(tmp_path, "unified") == ("", "0")  # v2 has no per-thread move across domains
    assert manager.layout == CgroupLayout("hybrid", HIERARCHIES)
    assert V1Manager(SPEC, tmp_path, hierarchies=HIERARCHIES).layout.mode == "v1"


def test_a_child_born_in_the_unified_cgroup_does_not_join_it_again(tmp_path: Path) -> None:
    _v1_tree(tmp_path, hybrid=True)
    manager = V1Manager(SPEC, tmp_path, hybrid=True, hierarchies=HIERARCHIES)
    manager.born = True
    manager.join_self()
    assert _written(tmp_path, "unified") == ("", "")
    assert all(_written(tmp_path, name) == ("0", "") for name in HIERARCHIES)


def test_v2_join_writes_cgroup_procs_unless_born_there(tmp_path: Path) -> None:
    leaf = tmp_path / "kitebox" / "c1"
    leaf.mkdir(parents=True)
    (leaf / "cgroup.procs").write_text("")
    manager = V2Manager(SPEC, tmp_path)
    manager.born = True
    manager.join_self()
    assert (leaf / "cgroup.procs").read_text() == ""
    manager.born = False
    manager.join_self()
    assert (leaf / "cgroup.procs").read_text() == "0"
    assert manager.layout == CgroupLayout("v2", {})


@pytest.mark.parametrize("hybrid", [False, True])
def test_fork_falls_back_to_a_plain_fork_outside_cgroupfs(tmp_path: Path, hybrid: bool) -> None:
    """A directory that is no cgroup (here, a plain one) makes clone3 refuse (EBADF): the child still comes, not
    born in it, and joins by writing cgroup.procs."""
    _v1_tree(tmp_path, hybrid=hybrid)
    manager = V1Manager(SPEC, tmp_path, hybrid=hybrid, hierarchies=HIERARCHIES)
    read_end, write_end = os.pipe()
    pid = manager.fork()
    if pid == 0:
        os.write(write_end, b"born" if manager.born else b"forked")
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"forked"
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert not manager.born  # only ever set in the child


def test_a_given_layout_is_not_detected_again(tmp_path: Path) -> None:
    # tmp_path is no cgroup mount at all: detecting would say "v1" with no hierarchies.
    manager = cgroup_manager(SPEC, layout=CgroupLayout("hybrid", HIERARCHIES), root=tmp_path)
    assert isinstance(manager, V1Manager)
    assert manager.layout == CgroupLayout("hybrid", HIERARCHIES)
    assert isinstance(cgroup_manager(SPEC, layout=CgroupLayout("v2"), root=tmp_path), V2Manager)


def test_entry_joins_a_parents_cgroup_first_and_unshares_once() -> None:
    fake = FakeCgroupManager(layout=CgroupLayout("v1", HIERARCHIES))
    entry = CgroupEntry(SPEC, fake, namespace=False)
    assert entry.layout == CgroupLayout("v1", HIERARCHIES)
    assert fake.calls == [("join_self",)]  # the parent created it; the init only joins
    entry.enter()
    entry.enter()
    assert entry.entered and fake.calls == [("join_self",)]
