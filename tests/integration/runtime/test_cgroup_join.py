"""On the real kernel: a child forked by a cgroup manager is born in the container's v2 cgroup (clone3
CLONE_INTO_CGROUP) and joins every v1 hierarchy through ``tasks``, ending up exactly where a ``cgroup.procs``
move would have put it -- in every hierarchy, with its limits applying."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runtime.cgroups import CgroupManager, cgroup_manager, detect_cgroup_mode, v1_hierarchies
from engine.runtime.spec import CgroupSpec
from tests.integration.runtime.common import PARENT, remove_cgroups

pytestmark = pytest.mark.root


@pytest.fixture
def spec() -> CgroupSpec:
    return CgroupSpec(f"{PARENT}/kbt{uuid.uuid4().hex[:12]}", pids_limit=7)


@pytest.fixture
def manager(spec: CgroupSpec) -> Iterator[CgroupManager]:
    made = cgroup_manager(spec)
    made.create(spec)
    yield made
    remove_cgroups([made])


def _child_view(manager: CgroupManager) -> tuple[bool, list[str]]:
    """Fork with the manager and join in the child: (born, the child's /proc/self/cgroup lines)."""
    read_end, write_end = os.pipe()
    pid = manager.fork()
    if pid == 0:
        try:
            os.close(read_end)
            manager.join_self()
            flag = int(getattr(manager, "born", False))
            os.write(write_end, f"{flag}\n".encode() + Path("/proc/self/cgroup").read_bytes())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        born, *lines = pipe.read().splitlines()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return born == "1", lines


def test_forked_child_is_born_in_v2_and_joins_every_hierarchy(spec: CgroupSpec, manager: CgroupManager) -> None:
    born, lines = _child_view(manager)
    assert born  # kernel 5.7+ and no sandbox hiding clone3: born in the v2 (hybrid: unified) cgroup
    assert lines and all(line.split(":", 2)[2] == f"/{spec.path}" for line in lines), lines
    if detect_cgroup_mode() != "v2":  # the v1 limits apply to it: its pids cgroup is the limited one
        pids = Path(f"/sys/fs/cgroup/pids/{spec.path}")
        assert (pids / "pids.max").read_text().strip() == "7"


def test_without_clone3_the_child_joins_v2_itself(spec: CgroupSpec, manager: CgroupManager,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Where clone3 is unavailable (old kernels, sandboxes), a plain fork; the child writes cgroup.procs."""
    from engine.runtime import syscalls

    def no_clone3(cgroup_fd: int) -> int:
        raise OSError(errno.ENOSYS, "clone3: Function not implemented")

    monkeypatch.setattr(syscalls, "fork_into_cgroup", no_clone3)
    born, lines = _child_view(manager)
    assert not born
    assert lines and all(line.split(":", 2)[2] == f"/{spec.path}" for line in lines), lines


def test_the_device_allow_list_is_set_once_on_the_parent_and_inherited() -> None:
    """v1: the containers' parent gets Docker's device list before its first child (which then inherits it), so
    each container's cgroup is born with it."""
    if detect_cgroup_mode() == "v2":
        pytest.skip("the devices controller is v1's (v2 uses eBPF)")  # CI is hybrid: this runs there
    from engine.runtime.cgroups import DEVICE_ALLOW

    devices = Path("/sys/fs/cgroup/devices")
    with _two_under_a_new_parent("kbd") as (parent, specs, managers):
        managers[0].create(specs[0])
        assert (devices / parent / "devices.list").read_text().splitlines() == list(DEVICE_ALLOW)
        (devices / specs[1].path).mkdir()  # as the kernel would make it: inheriting the parent's list
        assert (devices / specs[1].path / "devices.list").read_text().splitlines() == list(DEVICE_ALLOW)
        managers[1].create(specs[1])
        assert (devices / specs[1].path / "devices.list").read_text().splitlines() == list(DEVICE_ALLOW)


def test_a_cpuset_parent_hands_its_cpus_to_the_next_container_at_birth() -> None:
    """v1: the first container's create sets the parent's cpuset up and its clone_children, so a later
    container's cpuset is born with the cpus and mems (its create only reads them)."""
    if detect_cgroup_mode() == "v2" or "cpuset" not in v1_hierarchies():
        pytest.skip("the cpuset controller is v1's here only")  # CI is hybrid: this runs there
    cpuset = Path("/sys/fs/cgroup/cpuset")
    with _two_under_a_new_parent("kbc") as (parent, specs, managers):
        managers[0].create(specs[0])
        assert (cpuset / parent / "cgroup.clone_children").read_text().strip() == "1"
        (cpuset / specs[1].path).mkdir()  # as the kernel makes it now: born with the parent's cpus and mems
        for name in ("cpuset.cpus", "cpuset.mems"):
            assert (cpuset / specs[1].path / name).read_text().strip() == (cpuset / parent / name).read_text().strip()
        managers[1].create(specs[1])  # the parents exist: only the leaves are made
        assert all((Path('/sys/fs/cgroup') / name / specs[1].path).is_dir() for name in v1_hierarchies())


@contextlib.contextmanager
def _two_under_a_new_parent(prefix: str) -> Iterator[tuple[str, list[CgroupSpec], list[CgroupManager]]]:
    """Two containers' cgroup specs (and managers) under a parent no test has made yet; every cgroup removed
    after, the parent in each hierarchy too."""
    parent = f"{PARENT}/{prefix}{uuid.uuid4().hex[:8]}"
    specs = [CgroupSpec(f"{parent}/c{n}") for n in range(2)]
    managers = [cgroup_manager(spec) for spec in specs]
    try:
        yield parent, specs, managers
    finally:
        remove_cgroups(managers)
        for base in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (base / parent).rmdir()
