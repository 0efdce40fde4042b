"""Docker's default seccomp profile on the real kernel: busybox containers probing what the filter refuses.

Every probe is harmless even if the filter were missing (a user or mount namespace of the container's own, a
tmpfs inside its own mount namespace, a persona for one process), and the unconfined runs with the same
capabilities show that the refusals come from the filter, not from the capability set.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.cgroups import CgroupManager, cgroup_manager
from engine.runtime.executor import run_spec_for_test
from engine.runtime.plan import RunOptions, plan_container
from tests.integration.runtime.common import PARENT, mount_table, remove_cgroups
from tests.support.busybox import make_busybox_rootfs

pytestmark = pytest.mark.root
PROBE = ("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; "
         "unshare -U true 2>&1; echo userns=$?; "
         "unshare -m true 2>&1; echo mountns=$?; "
         "mkdir -p /mnt && mount -t tmpfs probe /mnt 2>&1; echo mount=$?")

Runner = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Runner]:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    before = mount_table()
    managers: list[CgroupManager] = []

    def runner(script: str, **options: Any) -> tuple[int, str, str]:
        cid = f"kbs{uuid.uuid4().hex[:12]}"
        bundle = tmp_path / "containers" / cid
        spec = plan_container(container_id=cid, image_config={"Cmd": ["sh", "-c", script]},
                              options=RunOptions(**options), rootfs=rootfs, root_mounts=[], bundle_dir=bundle,
                              cgroup_parent=PARENT)
        managers.append(cgroup_manager(spec.cgroup))
        code, out, err = run_spec_for_test(spec, work_dir=bundle, timeout=20)
        return code, out.decode(), err.decode()

    yield runner
    remove_cgroups(managers)
    assert mount_table() == before


def _results(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and " " not in line)


def test_default_profile_refuses_namespaces_and_mounts(run: Runner) -> None:
    code, out, err = run(PROBE)
    assert code == 0, err
    assert "Seccomp:\t2" in out and "NoNewPrivs:\t0" in out
    assert _results(out) == {"userns": "1", "mountns": "1", "mount": "1"}
    assert "unshare(0x10000000): Operation not permitted" in out


def test_unconfined_with_the_same_capabilities_allows_a_user_namespace(run: Runner) -> None:
    code, out, err = run(PROBE, seccomp=False)
    assert code == 0, err
    assert "Seccomp:\t0" in out
    assert _results(out)["userns"] == "0"  # so the default run's EPERM was the filter's


def test_sys_admin_lets_the_profile_allow_mounts(run: Runner) -> None:
    code, out, err = run(PROBE + "; grep -c ' /mnt tmpfs' /proc/mounts", cap_add=("SYS_ADMIN",))
    assert code == 0, err
    assert "Seccomp:\t2" in out
    assert _results(out) == {"userns": "0", "mountns": "0", "mount": "0"}
    assert out.splitlines()[-1] == "1"


def test_privileged_is_unconfined(run: Runner) -> None:
    code, out, err = run("grep '^Seccomp:' /proc/self/status", privileged=True)
    assert (code, out) == (0, "Seccomp:\t0\n"), err


def test_no_new_privileges_loads_the_filter_last(run: Runner) -> None:
    code, out, err = run(PROBE, no_new_privileges=True, user="app")
    assert code == 0, err
    assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out
    assert _results(out)["userns"] == "1"


def test_ordinary_programs_still_work(run: Runner) -> None:
    script = ("ls / >/dev/null && ps >/dev/null && echo pipe | tr a-z A-Z && (sleep 0 & wait) && "
              "linux32 uname -m && id -u && nproc >/dev/null && date >/dev/null && echo done")
    code, out, err = run(script, user="app")
    assert code == 0, err
    assert out.split() == ["PIPE", "i686", "1000", "done"]
