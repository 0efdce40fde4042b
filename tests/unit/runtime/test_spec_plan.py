"""Planner rules (Docker's), spec round-trip, user resolution and capability arithmetic -- no kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.runtime.caps import ALL_CAPS, DEFAULT_CAPS, caps_mask, tweak_caps
from engine.runtime.plan import DEFAULT_PATH, Bind, RunOptions, plan_container, resolv_conf
from engine.runtime.spec import RootMount, RuntimeSpec, decode_document
from engine.runtime.users import resolve_user
from tests.support.busybox import GROUP, PASSWD

CID = "0123456789abcdef0123"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def plan(tmp_path: Path, rootfs: Path, image: dict[str, object] | None = None, **options: object) -> RuntimeSpec:
    resolv = tmp_path / "host-resolv.conf"
    if not resolv.exists():
        resolv.write_text("search lan\nnameserver 127.0.0.53\nnameserver 10.0.0.1\noptions ndots:2\n")
    return plan_container(
        container_id=CID, image_config={"Cmd": ["sh"], **(image or {})}, options=RunOptions(**options),  # type: ignore[arg-type]
        rootfs=rootfs, root_mounts=[], bundle_dir=tmp_path / "bundle", host_resolv_conf=resolv,
    )


def test_spec_round_trips_exactly(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs, memory=64 << 20, cpus=0.5, pids_limit=10, user="app", tty=True,
                binds=(Bind("/srv", "/data", True),), tmpfs=(("/run", "size=1m"),), ulimits=(("nofile", 10, 20),))
    spec = RuntimeSpec(**{**spec.__dict__, "root": spec.root.__class__(
        "/r", True, (RootMount("overlay", "overlay", ("lowerdir=a:b",), "/x"),))})
    assert RuntimeSpec.from_json(spec.to_json()) == spec


def test_a_spec_file_encoded_twice_by_an_earlier_kitebox_still_reads(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs)
    assert RuntimeSpec.from_json(json.dumps(spec.to_json())) == spec
    assert RuntimeSpec.from_document(decode_document(spec.to_json())) == spec


@pytest.mark.parametrize("text", ["[]", "{", '{"id": 1}', '"{"'])
def test_spec_from_json_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidArgument, match="runtime spec"):
        RuntimeSpec.from_json(text)


@pytest.mark.parametrize(
    ("image", "options", "args"),
    [
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, {}, ("/ep", "a")),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, {"cmd": ("b",)}, ("/ep", "b")),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, {"entrypoint": ("/other",)}, ("/other",)),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, {"entrypoint": ("/o",), "cmd": ("c",)}, ("/o", "c")),
        ({"Cmd": ["a"]}, {"entrypoint": (), "cmd": ("x", "y")}, ("x", "y")),
    ],
)
def test_command_follows_docker(tmp_path: Path, rootfs: Path, image: dict[str, object],
                                options: dict[str, object], args: tuple[str, ...]) -> None:
    assert plan(tmp_path, rootfs, {"Cmd": None, **image}, **options).process.args == args


def test_no_command_is_refused(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        plan(tmp_path, rootfs, {"Cmd": ["a"]}, entrypoint=())


def test_env_merge_path_hostname_term(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs, {"Env": ["A=1", "B=2"]}, env=("B=3", "A", "C=4"), tty=True)
    assert spec.process.env == (f"PATH={DEFAULT_PATH}", f"HOSTNAME={CID[:12]}", "TERM=xterm", "B=3", "C=4")
    spec = plan(tmp_path, rootfs, {"Env": ["PATH=/x"]}, env=("HOSTNAME=h",))
    assert spec.process.env == ("HOSTNAME=h", "PATH=/x")


def test_workdir(tmp_path: Path, rootfs: Path) -> None:
    assert plan(tmp_path, rootfs).process.cwd == "/"
    assert plan(tmp_path, rootfs, {"WorkingDir": "/srv/app/"}).process.cwd == "/srv/app"
    assert plan(tmp_path, rootfs, {"WorkingDir": "/srv"}, workdir="/opt").process.cwd == "/opt"
    with pytest.raises(InvalidArgument, match="absolute path"):
        plan(tmp_path, rootfs, workdir="rel")


def test_user_resolution(tmp_path: Path, rootfs: Path) -> None:
    p = plan(tmp_path, rootfs, user="app").process
    assert (p.uid, p.gid, p.additional_gids) == (1000, 1000, (2000,))
    p = plan(tmp_path, rootfs, user="1000:2000").process
    assert (p.uid, p.gid, p.additional_gids) == (1000, 2000, ())
    p = plan(tmp_path, rootfs, {"User": "4242"}).process
    assert (p.uid, p.gid) == (4242, 0)
    p = plan(tmp_path, rootfs, user="app:extra", group_add=("tty", "77")).process
    assert (p.gid, p.additional_gids) == (2000, (5, 77))
    with pytest.raises(InvalidArgument, match="unable to find user xyz: no matching entries in passwd file"):
        plan(tmp_path, rootfs, user="xyz")
    with pytest.raises(InvalidArgument, match="unable to find group nope"):
        plan(tmp_path, rootfs, user="app:nope")


def test_passwd_symlink_is_read_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "evil"
    (root / "etc").mkdir(parents=True)
    host_file = tmp_path / "host-passwd"
    host_file.write_text("xyz:x:7:7::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to(host_file)  # absolute: must resolve inside `root`, where it is missing
    with pytest.raises(InvalidArgument, match="unable to find user xyz"):
        plan(tmp_path, root, user="xyz")


def test_resolve_user_edge_cases() -> None:
    assert resolve_user(None, None, None).uid == 0
    assert resolve_user("app", "#c\n\nbad\napp:x:9:8:::\n", None) == resolve_user("9:8", None, None).__class__(
        9, 8, (), "/")
    with pytest.raises(InvalidArgument, match="out of range"):
        resolve_user("99999999999", None, None)
    with pytest.raises(InvalidArgument, match="invalid user"):
        resolve_user("a:b:c", None, None)


def test_hostname_and_network_files(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs)
    assert spec.hostname == CID[:12]
    bundle = tmp_path / "bundle"
    assert (bundle / "hostname").read_text() == CID[:12] + "\n"
    assert "127.0.0.1\tlocalhost\n" in (bundle / "hosts").read_text()
    assert (bundle / "resolv.conf").read_text() == "search lan\nnameserver 10.0.0.1\noptions ndots:2\n"
    dests = [m.destination for m in spec.mounts]
    assert dests[-3:] == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    spec = plan(tmp_path, rootfs, binds=(Bind("/tmp/h", "/etc/hosts"),), hostname="web")
    assert [(m.destination, m.source) for m in spec.mounts if m.destination == "/etc/hosts"] == [
        ("/etc/hosts", "/tmp/h")]
    with pytest.raises(InvalidArgument, match="invalid hostname"):
        plan(tmp_path, rootfs, hostname="bad_host!")


def test_resolv_conf_fallback() -> None:
    assert resolv_conf("nameserver 127.0.0.1\nnameserver ::1\n") == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_default_mounts_masks_caps(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs, shm_size=1 << 20)
    by_dest = {m.destination: m for m in spec.mounts}
    assert list(by_dest)[:7] == ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm"]
    assert "ro" in by_dest["/sys"].options and "size=1048576" in by_dest["/dev/shm"].options
    assert "/proc/kcore" in spec.masked_paths and "/proc/sys" in spec.readonly_paths
    caps = spec.process.capabilities
    assert caps_mask(caps.bounding) == 0xA80425FB == caps_mask(caps.effective) == caps_mask(caps.permitted)
    assert caps.inheritable == caps.ambient == ()
    assert spec.namespaces == ("mount", "pid", "uts", "ipc", "net", "cgroup")


def test_privileged(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs, privileged=True)
    assert spec.process.capabilities.bounding == ALL_CAPS
    assert spec.masked_paths == spec.readonly_paths == ()
    assert "rw" in {m.destination: m for m in spec.mounts}["/sys"].options


def test_cap_add_drop() -> None:
    assert "CAP_NET_ADMIN" in tweak_caps(DEFAULT_CAPS, ["net_admin"], ["CAP_CHOWN"])
    assert "CAP_CHOWN" not in tweak_caps(DEFAULT_CAPS, ["net_admin"], ["CAP_CHOWN"])
    assert tweak_caps(DEFAULT_CAPS, ["kill"], ["ALL"]) == ("CAP_KILL",)
    assert len(tweak_caps(DEFAULT_CAPS, ["ALL"], ["sys_admin"])) == len(ALL_CAPS) - 1
    with pytest.raises(InvalidArgument, match="unknown capability: 'CAP_FLY'"):
        tweak_caps(DEFAULT_CAPS, ["CAP_FLY"], [])


def test_user_mounts_and_read_only(tmp_path: Path, rootfs: Path) -> None:
    spec = plan(tmp_path, rootfs, read_only=True, binds=(Bind("/srv", "/a/b/c", True), Bind("/x", "/d")),
                tmpfs=(("/run", "exec,size=1m"),))
    assert spec.root.readonly
    by_dest = {m.destination: m for m in spec.mounts}
    assert by_dest["/a/b/c"].options[-1] == "ro" and by_dest["/d"].options[-1] == "rw"
    assert by_dest["/run"].options == ("nosuid", "nodev", "noexec", "exec", "size=1m")
    assert by_dest["/etc/hosts"].options[-1] == "ro"
    dests = [m.destination for m in spec.mounts]
    assert dests.index("/d") < dests.index("/a/b/c")  # shallower first
    with pytest.raises(InvalidArgument, match="duplicate mount point: /d"):
        plan(tmp_path, rootfs, binds=(Bind("/x", "/d"),), tmpfs=(("/d/", ""),))
    with pytest.raises(InvalidArgument, match="must be an absolute"):
        plan(tmp_path, rootfs, binds=(Bind("/x", "rel"),))


def test_cgroup_resources(tmp_path: Path, rootfs: Path) -> None:
    cg = plan(tmp_path, rootfs, memory=32 << 20, cpus=1.5, pids_limit=50).cgroup
    assert (cg.path, cg.memory, cg.memory_swap, cg.cpu_quota, cg.cpu_period, cg.pids_limit) == (
        f"kitebox/{CID}", 32 << 20, 64 << 20, 150000, 100000, 50)
    assert plan(tmp_path, rootfs, memory=32 << 20, memory_swap=-1).cgroup.memory_swap == -1
    with pytest.raises(InvalidArgument, match="6MB"):
        plan(tmp_path, rootfs, memory=1024)
    with pytest.raises(InvalidArgument, match="larger than memory"):
        plan(tmp_path, rootfs, memory=32 << 20, memory_swap=16 << 20)
    with pytest.raises(InvalidArgument, match="range of CPUs"):
        plan(tmp_path, rootfs, cpus=1000.0)


def test_root_from_snapshot_mounts(tmp_path: Path, rootfs: Path) -> None:
    spec = plan_container(container_id=CID, image_config={"Cmd": ["sh"]}, options=RunOptions(), rootfs=rootfs,
                          root_mounts=[RootMount("overlay", "overlay", ("lowerdir=1:2",), "/snap")],
                          bundle_dir=tmp_path / "b")
    assert spec.root.path == str(tmp_path / "b" / "rootfs")
    assert spec.root.mounts == (RootMount("overlay", "overlay", ("lowerdir=1:2",), "/snap"),)
