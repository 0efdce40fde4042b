"""Mount specs the snapshotters describe, snapshotter selection and process ownership -- no kernel mounts.

Overlay and copy snapshotters are constructed directly (no probe); ``open_snapshotter`` is driven with the
recording fake kernel.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import InvalidArgument, KernelError
from engine.snapshots import (
    CopySnapshotter,
    Mount,
    OverlaySnapshotter,
    RecordingMountSyscalls,
    open_snapshotter,
)
from engine.snapshots.mount import MountCall
from engine.snapshots.overlay import LINK_LENGTH
from engine.snapshots.store import owner_alive, owner_token


def commit_chain(sn: OverlaySnapshotter | CopySnapshotter, count: int) -> str | None:
    parent = None
    for i in range(count):
        sn.prepare(f"x{i}", parent)
        (sn.upper_dir(f"x{i}") / f"f{i}").write_text(str(i))
        sn.commit(f"c{i}", f"x{i}")
        parent = f"c{i}"
    return parent


def test_overlay_specs_follow_containerd(tmp_path: Path) -> None:
    root = tmp_path / "overlay"
    sn = OverlaySnapshotter(root)
    assert sn.prepare("scratch", None) == [Mount("bind", str(sn.upper_dir("scratch")), ("rw", "rbind"))]
    commit_chain(sn, 3)
    mounts = sn.prepare("ctr", "c2")
    links = [(d.parent / "link").read_text() for d in sn.parent_dirs("ctr")]
    assert [os.listdir(d) for d in sn.parent_dirs("ctr")] == [["f2"], ["f1"], ["f0"]]
    assert all(len(link) == LINK_LENGTH and link.isalnum() and link.isupper() for link in links)
    upper = sn.upper_dir("ctr").relative_to(root)
    assert mounts == [
        Mount(
            "overlay",
            "overlay",
            (f"lowerdir=l/{links[0]}:l/{links[1]}:l/{links[2]}", f"upperdir={upper}", f"workdir={upper.parent}/work"),
            cwd=str(root),
        )
    ]
    for link, layer in zip(links, sn.parent_dirs("ctr"), strict=True):
        assert (root / "l" / link).resolve() == layer.resolve()
    assert sn.mounts("ctr") == mounts

    assert sn.view("v0", None) == [Mount("bind", str(root / "snapshots" / "6" / "fs"), ("ro", "rbind"))]
    assert sn.view("v1", "c0") == [Mount("bind", str(sn.parent_dirs("ctr")[2]), ("ro", "rbind"))]
    assert sn.view("v2", "c1") == [Mount("overlay", "overlay", (f"lowerdir=l/{links[1]}:l/{links[2]}",), cwd=str(root))]


def test_overlay_userxattr_mode(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path / "overlay", userxattr=True)
    assert sn.whiteout_mode == "overlay-user"
    commit_chain(sn, 1)
    assert sn.prepare("ctr", "c0")[0].options[-1] == "userxattr"


def test_overlay_remove_drops_the_link_and_directory(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path / "overlay")
    commit_chain(sn, 1)
    sn.prepare("ctr", "c0")
    layer_dir = sn.parent_dirs("ctr")[0].parent
    sn.remove("ctr")
    sn.remove("c0")
    assert not layer_dir.exists()
    assert os.listdir(tmp_path / "overlay" / "l") == []
    assert os.listdir(tmp_path / "overlay" / "snapshots") == []


def test_copy_specs_and_full_copies(tmp_path: Path) -> None:
    sn = CopySnapshotter(tmp_path / "copy")
    assert sn.whiteout_mode == "delete"
    commit_chain(sn, 2)
    upper = tmp_path / "copy" / "snapshots" / "2" / "fs"
    base = sn.prepare("ctr", "c1")
    assert base == [Mount("bind", str(sn.upper_dir("ctr")), ("rw", "rbind"))]
    assert sorted(os.listdir(sn.upper_dir("ctr"))) == ["f0", "f1"]
    assert sn.view("look", "c1") == [Mount("bind", str(upper), ("ro", "rbind"))]
    assert sn.parent_dirs("ctr") == []


def test_copy_preserves_modes_links_and_xattrs(tmp_path: Path) -> None:
    sn = CopySnapshotter(tmp_path / "copy")
    sn.prepare("x", None)
    src = sn.upper_dir("x")
    (src / "exe").write_text("#!/bin/sh\n")
    os.chmod(src / "exe", 0o4755)
    os.link(src / "exe", src / "hard")
    os.symlink("exe", src / "soft")
    os.setxattr(src / "exe", "user.kitebox", b"yes")
    os.utime(src / "exe", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    sn.commit("c", "x")
    sn.prepare("y", "c")
    dst = sn.upper_dir("y")
    st = os.lstat(dst / "exe")
    assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_nlink) == (0o4755, 1_000_000_000_000_000_000, 2)
    assert os.lstat(dst / "hard").st_ino == st.st_ino
    assert os.readlink(dst / "soft") == "exe"
    assert os.getxattr(dst / "exe", "user.kitebox") == b"yes"


def test_open_snapshotter_probes_overlay_once_with_a_real_mount_spec(tmp_path: Path) -> None:
    fake = RecordingMountSyscalls()
    sn = open_snapshotter(tmp_path / "snapshots", "auto", syscalls=fake)
    assert sn.name == "overlay"
    mount, umount = fake.calls
    assert (mount.op, mount.fstype) == ("mount", "overlay")
    # volatile: its unmount must not sync the state root's whole filesystem
    assert mount.data == "lowerdir=lower1:lower2,upperdir=upper,workdir=work,volatile"
    assert mount.cwd is not None and Path(mount.cwd).parent == tmp_path / "snapshots" / "tmp"
    assert umount.op == "umount2" and umount.target == mount.target
    assert os.listdir(tmp_path / "snapshots" / "tmp") == []


def test_the_overlay_probe_works_on_kernels_without_volatile_overlays(tmp_path: Path) -> None:
    def no_volatile(call: MountCall) -> OSError | None:
        return OSError(errno.EINVAL, "Invalid argument") if "volatile" in (call.data or "") else None

    fake = RecordingMountSyscalls(fail=no_volatile)
    assert open_snapshotter(tmp_path / "snapshots", "auto", syscalls=fake).name == "overlay"
    refused, mount, umount = fake.calls
    assert refused.data is not None and refused.data.endswith(",volatile")
    assert (mount.op, mount.data) == ("mount", "lowerdir=lower1:lower2,upperdir=upper,workdir=work")
    assert umount.op == "umount2" and umount.target == mount.target
    assert os.listdir(tmp_path / "snapshots" / "tmp") == []


def test_open_snapshotter_falls_back_to_copy_or_says_why(tmp_path: Path) -> None:
    def no_overlay(call: MountCall) -> OSError | None:
        return OSError(errno.ENODEV, "No such device") if call.fstype == "overlay" else None

    with pytest.raises(KernelError, match=r"overlay snapshotter unsupported under .*No such device \(ENODEV\)"):
        open_snapshotter(tmp_path / "a", "overlay", syscalls=RecordingMountSyscalls(fail=no_overlay))
    assert open_snapshotter(tmp_path / "a", "auto", syscalls=RecordingMountSyscalls(fail=no_overlay)).name == "copy"
    # once a root holds only a copy store, auto keeps using it even where overlay works
    assert open_snapshotter(tmp_path / "a", "auto", syscalls=RecordingMountSyscalls()).name == "copy"
    assert open_snapshotter(tmp_path / "b", "copy").name == "copy"
    with pytest.raises(InvalidArgument, match="invalid snapshotter 'zfs'"):
        open_snapshotter(tmp_path / "c", "zfs")


def test_owner_tokens_detect_dead_and_recycled_processes() -> None:
    assert owner_alive(owner_token())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = owner_token(child.pid) if child.poll() is None else f"{child.pid}:0"
    child.wait()
    assert not owner_alive(token)
    pid, _, started = owner_token().partition(":")
    assert not owner_alive(f"{pid}:{int(started) + 1}")  # same pid, another process
    assert not owner_alive("garbage")
