"""The executor on the real kernel: a busybox container per test, checked from the inside.

Each test plans a container from a busybox rootfs in its own tmp_path, runs it through the executor helper
(PID 1 of a new pid namespace) and asserts what the container sees. Teardown destroys the container's cgroup
and checks that no mount leaked into the host's mount table.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from engine.errors import InvalidArgument
from engine.runtime.caps import caps_mask
from engine.runtime.cgroups import CgroupManager, cgroup_manager, detect_cgroup_mode
from engine.runtime.executor import run_spec_for_test
from engine.runtime.plan import Bind, RunOptions, plan_container
from engine.runtime.spec import RootMount, RuntimeSpec
from tests.integration.runtime.common import PARENT, mount_table, remove_cgroups
from tests.support.busybox import make_busybox_rootfs

pytestmark = pytest.mark.root


@dataclass
class Ran:
    code: int
    out: str
    err: str
    spec: RuntimeSpec
    cgroup: CgroupManager

    @property
    def error(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.err.strip().splitlines()[-1])
        return result


Runner = Callable[..., Ran]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


@pytest.fixture
def run(tmp_path: Path, rootfs: Path) -> Iterator[Runner]:
    before = mount_table()
    managers: list[CgroupManager] = []

    def runner(script: str | None = None, *, argv: tuple[str, ...] | None = None, image: dict[str, Any] | None = None,
               **options: Any) -> Ran:
        cid = f"kbt{uuid.uuid4().hex[:12]}"
        cmd = argv if argv is not None else ("sh", "-c", script or "true")
        spec = plan_container(container_id=cid, image_config={"Cmd": list(cmd), **(image or {})},
                              options=RunOptions(**options), rootfs=rootfs, root_mounts=[],
                              bundle_dir=tmp_path / "containers" / cid, cgroup_parent=PARENT)
        manager = cgroup_manager(spec.cgroup)
        managers.append(manager)
        code, out, err = run_spec_for_test(spec, work_dir=tmp_path / "containers" / cid, timeout=20)
        return Ran(code, out.decode(), err.decode(), spec, manager)

    yield runner
    remove_cgroups(managers)
    assert mount_table() == before


def test_identity_and_namespaces(run: Runner) -> None:
    r = run("echo $$; hostname; ls /sys/class/net; cat /etc/hostname; cut -d' ' -f1 /proc/self/stat")
    lines = r.out.split()
    assert r.code == 0, r.err
    assert lines == ["1", r.spec.hostname, "lo", r.spec.hostname, "1"]
    assert r.spec.hostname == r.spec.id[:12]


def test_network_files(run: Runner) -> None:
    r = run("cat /etc/hosts; echo ---; cat /etc/resolv.conf")
    hosts, resolv = r.out.split("---\n")
    assert hosts.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert "nameserver" in resolv and "127.0.0." not in resolv


def test_dev_contents_and_devices(run: Runner) -> None:
    r = run("ls -A /dev; stat -c '%n %t:%T %a' /dev/null /dev/zero /dev/tty; readlink /dev/ptmx; readlink /dev/fd; "
            "echo hi > /dev/null && head -c 3 /dev/zero | wc -c")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert sorted(lines[:14]) == sorted(["null", "zero", "full", "random", "urandom", "tty", "fd", "stdin",
                                          "stdout", "stderr", "pts", "shm", "mqueue", "ptmx"])
    assert lines[14:] == ["/dev/null 1:3 666", "/dev/zero 1:5 666", "/dev/tty 5:0 666", "pts/ptmx", "/proc/self/fd",
                          "3"]


def test_dev_nodes_are_bound_from_the_host_where_mknod_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback (a user namespace, no CAP_MKNOD): the host's nodes bind-mounted onto files, in a child with
    a mount namespace of its own so nothing reaches the host's mount table."""
    import stat

    from engine.runtime import executor, syscalls

    (tmp_path / "dev").mkdir()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            syscalls.mount("tmpfs", str(tmp_path / "dev"), "tmpfs", 0, "mode=755")

            def refuse(*_args: object, **_kwargs: object) -> None:
                raise PermissionError(1, "Operation not permitted")

            monkeypatch.setattr(os, "mknod", refuse)  # in this child only (it never returns to pytest)
            root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
            executor._populate_dev(root_fd)
            found = {}
            for name in executor.DEVICES:
                st = os.stat(tmp_path / "dev" / name)
                found[name] = (stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
            links = {name: os.readlink(tmp_path / "dev" / name) for name in executor.DEV_LINKS}
            if found == {n: (True, *dev) for n, dev in executor.DEVICES.items()} and links == executor.DEV_LINKS:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not [line for line in mount_table() if str(tmp_path) in line]


def test_masked_and_readonly_paths(run: Runner) -> None:
    r = run("wc -c < /proc/timer_list; ls /proc/acpi 2>/dev/null | wc -l; touch /sys/x 2>&1; "
            "(echo x > /proc/sys/kernel/domainname) 2>&1; grep ' /sys ' /proc/mounts")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].strip() == "0"
    assert "Read-only file system" in lines[2] and "Read-only file system" in lines[3]
    assert " ro," in lines[4]


def test_capabilities_default_privileged_and_user(run: Runner) -> None:
    def caps(text: str) -> dict[str, int]:
        return {k: int(v, 16) for k, v in (ln.split(":\t") for ln in text.splitlines() if ln.startswith("Cap"))}

    default = caps(run("grep ^Cap /proc/self/status").out)
    assert default == {"CapInh": 0, "CapPrm": 0xA80425FB, "CapEff": 0xA80425FB, "CapBnd": 0xA80425FB, "CapAmb": 0}
    # Privileged means every capability the engine holds (this sandbox may lack some).
    full = caps_mask(run(privileged=True).spec.process.capabilities.bounding) & caps(
        Path("/proc/self/status").read_text())["CapBnd"]
    priv = caps(run("grep ^Cap /proc/self/status", privileged=True).out)
    assert priv["CapBnd"] == priv["CapEff"] == full
    user = caps(run("grep ^Cap /proc/self/status", user="app").out)
    assert user == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0xA80425FB, "CapAmb": 0}
    dropped = caps(run("grep ^Cap /proc/self/status", cap_drop=("ALL",), cap_add=("KILL",)).out)
    assert dropped["CapBnd"] == dropped["CapEff"] == 1 << 5


def test_users(run: Runner) -> None:
    r = run("grep -E '^(Uid|Gid|Groups)' /proc/self/status | tr -s '\\t ' ' '", user="app")
    assert r.out.splitlines() == ["Uid: 1000 1000 1000 1000", "Gid: 1000 1000 1000 1000", "Groups: 2000 "]
    r = run("id -u; id -g", user="1000:2000")
    assert r.out.split() == ["1000", "2000"]
    with pytest.raises(InvalidArgument, match="unable to find user xyz"):
        run(user="xyz")


def test_workdir_created_and_fd_workdir_refused(run: Runner) -> None:
    r = run("pwd", workdir="/srv/new/dir")
    assert (r.code, r.out) == (0, "/srv/new/dir\n")
    r = run("pwd", workdir="/proc/self/fd/3")
    assert r.code == 125 and r.error["kind"] == "failed", r.err


def test_only_stdio_fds_and_exe_is_the_container_binary(run: Runner) -> None:
    r = run("ls /proc/1/fd; readlink /proc/1/exe")
    assert r.out.split() == ["0", "1", "2", "/bin/busybox"]


def test_command_not_found_and_not_executable(run: Runner, rootfs: Path) -> None:
    r = run(argv=("nosuch",))
    assert r.code == 127
    assert r.error == {"kind": "not_found", "message": 'exec: "nosuch": executable file not found in $PATH'}
    r = run(argv=("/nosuch",))
    assert (r.code, r.error["kind"]) == (127, "not_found")
    r = run(argv=("/etc/passwd",))
    assert r.code == 126
    assert r.error == {"kind": "not_executable", "message": 'exec: "/etc/passwd": permission denied'}


def test_read_only_root_and_mounts(run: Runner, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("data")
    r = run("touch /x 2>&1; echo w > /rw/out; cat /ro/f; echo; touch /ro/g 2>&1; echo t > /scratch/t && cat /scratch/t;"
            " grep ' /scratch ' /proc/mounts",
            read_only=True, binds=(Bind(str(rw), "/rw"), Bind(str(ro), "/ro", readonly=True)),
            tmpfs=(("/scratch", "size=1m"),))
    lines = r.out.splitlines()
    assert "Read-only file system" in lines[0]
    assert lines[1] == "data" and "Read-only file system" in lines[2] and lines[3] == "t"
    assert lines[4].startswith("tmpfs /scratch tmpfs rw,nosuid,nodev,noexec")
    assert (rw / "out").read_text() == "w\n" and not (ro / "g").exists()


def test_symlinked_destination_stays_inside_root(run: Runner, rootfs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host-target"
    outside.mkdir()
    (rootfs / "data").symlink_to(outside)  # absolute path: resolved inside the root, never on the host
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("m")
    r = run("cat /data/marker", binds=(Bind(str(src), "/data"),))
    assert (r.code, r.out) == (0, "m")
    assert list(outside.iterdir()) == []
    assert (rootfs / str(outside).lstrip("/")).is_dir()


def test_detect_mode_and_memory_limit_written(run: Runner) -> None:
    assert detect_cgroup_mode() == "hybrid"
    r = run("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; cat /proc/self/cgroup",
            memory=32 << 20, pids_limit=30)
    lines = r.out.splitlines()
    assert lines[:2] == [str(32 << 20), "30"]
    assert "4:memory:/" in lines  # the cgroup namespace roots the view at the container's cgroup
    assert Path(f"/sys/fs/cgroup/memory/{PARENT}/{r.spec.id}/memory.limit_in_bytes").read_text().strip() == str(
        32 << 20)


def test_pids_limit_enforced(run: Runner) -> None:
    # Builtins only once the limit is hit: any further fork would fail too.
    r = run("(for i in $(seq 40); do sleep 5 & done) 2>/dev/null; read n < /sys/fs/cgroup/pids/pids.current; "
            "echo $n; read e < /sys/fs/cgroup/pids/pids.events; echo $e", pids_limit=10)
    current, events = r.out.splitlines()
    assert 1 < int(current) <= 10
    assert events.startswith("max ") and int(events.split()[1]) > 0


def test_oom_kill_detected(run: Runner) -> None:
    r = run(argv=("sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived"),
            memory=20 << 20, memory_swap=20 << 20)
    assert "survived" not in r.out
    assert r.cgroup.oom_killed()


def test_oom_pid1_exit_137(run: Runner) -> None:
    r = run(argv=("tail", "-c", "100000000", "/dev/zero"), memory=20 << 20, memory_swap=20 << 20)
    assert r.code == 137 and r.cgroup.oom_killed()


def test_cgroup_destroyed_and_host_untouched(run: Runner) -> None:
    host_root = sorted(os.listdir("/"))
    r = run("echo > /hostfile-probe; mkdir -p /proc-probe")
    assert r.code == 0, r.err
    r.cgroup.destroy()
    assert not Path(f"/sys/fs/cgroup/memory/{PARENT}/{r.spec.id}").exists()
    assert sorted(os.listdir("/")) == host_root


def test_spec_change_no_mount_namespace_refused(run: Runner, tmp_path: Path) -> None:
    r = run()
    spec = replace(r.spec, namespaces=("pid",))
    code, _, err = run_spec_for_test(spec, work_dir=tmp_path)
    assert code == 125 and b"own mount namespace" in err


def test_root_built_from_mounts_inside_the_namespace(run: Runner, tmp_path: Path, rootfs: Path) -> None:
    before = mount_table()
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    rootfs.rename(lower)
    spec = plan_container(
        container_id=f"kbt{uuid.uuid4().hex[:12]}", image_config={"Cmd": ["sh", "-c", "echo hi > /new; cat /new"]},
        options=RunOptions(), rootfs=lower, bundle_dir=tmp_path / "bundle", cgroup_parent=PARENT,
        root_mounts=[RootMount("overlay", "overlay", ("lowerdir=lower", "upperdir=upper", "workdir=work"),
                               str(tmp_path))],
    )
    try:
        code, out, err = run_spec_for_test(spec, work_dir=tmp_path)
    finally:
        cgroup_manager(spec.cgroup).destroy()
    assert (code, out) == (0, b"hi\n"), err
    assert (upper / "new").read_text() == "hi\n" and not (lower / "new").exists()
    assert mount_table() == before
