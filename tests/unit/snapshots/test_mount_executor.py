"""The mount executor against the recording fake kernel: which mount(2) calls a spec turns into."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from engine.errors import KernelError, NotFound
from engine.mountopts import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, mount_flags
from engine.snapshots import Mount, RecordingMountSyscalls, mount_all, unmount
from engine.snapshots.mount import MNT_DETACH, UMOUNT_NOFOLLOW, MountCall, mount_points

TARGET = Path("/run/kitebox/rootfs")


def test_read_only_rbind_is_bind_then_remount() -> None:
    fake = RecordingMountSyscalls()
    mount_all([Mount("bind", "/src", ("ro", "rbind"))], TARGET, syscalls=fake)
    assert fake.calls == [
        MountCall("mount", str(TARGET), MS_BIND | MS_REC, "/src", "", ""),
        MountCall("mount", str(TARGET), MS_REMOUNT | MS_BIND | MS_RDONLY, "", "", ""),
    ]
    assert fake.mounted == {str(TARGET): 1}


def test_read_write_bind_needs_no_remount() -> None:
    fake = RecordingMountSyscalls()
    mount_all([Mount("bind", "/src", ("rw", "rbind"))], TARGET, syscalls=fake)
    assert [c.flags for c in fake.calls] == [MS_BIND | MS_REC]


def test_overlay_data_flags_and_cwd_are_passed_through() -> None:
    fake = RecordingMountSyscalls()
    spec = Mount("overlay", "overlay", ("nosuid", "lowerdir=l/A:l/B", "upperdir=u", "workdir=w", "nodev"), cwd="/s")
    mount_all([spec], TARGET, syscalls=fake)
    assert fake.calls == [
        MountCall(
            "mount", str(TARGET), MS_NOSUID | MS_NODEV, "overlay", "overlay", "lowerdir=l/A:l/B,upperdir=u,workdir=w",
            "/s",
        ),
    ]


def test_propagation_is_a_separate_call() -> None:
    fake = RecordingMountSyscalls()
    mount_all([Mount("tmpfs", "tmpfs", ("size=64k", "private"))], TARGET, syscalls=fake)
    assert [(c.fstype, c.flags, c.data) for c in fake.calls] == [("tmpfs", 0, "size=64k"), ("", MS_PRIVATE, "")]
    assert fake.mounted == {str(TARGET): 1}


def test_flag_words_set_and_clear() -> None:
    assert mount_flags(["ro", "rw", "nosuid", "suid", "nodev", "mode=755"]) == (MS_NODEV, 0, "mode=755")
    assert mount_flags(["ro", "rprivate"]) == (MS_RDONLY, MS_PRIVATE | MS_REC, "")


def test_failure_undoes_earlier_mounts_and_names_target_and_errno() -> None:
    def refuse_overlay(call: MountCall) -> OSError | None:
        return OSError(errno.EINVAL, "Invalid argument") if call.fstype == "overlay" else None

    fake = RecordingMountSyscalls(fail=refuse_overlay)
    specs = [Mount("tmpfs", "tmpfs"), Mount("bind", "/a", ("rbind",)), Mount("overlay", "overlay", ("lowerdir=x",))]
    with pytest.raises(KernelError, match=rf"mount overlay overlay on {TARGET}: Invalid argument \(EINVAL\)"):
        mount_all(specs, TARGET, syscalls=fake)
    assert fake.mounted == {str(TARGET): 0}
    assert [c for c in fake.calls if c.op == "umount2"] == [MountCall("umount2", str(TARGET), MNT_DETACH)] * 2


def test_failed_remount_undoes_the_bind() -> None:
    fake = RecordingMountSyscalls(fail=lambda c: OSError(errno.EPERM, "nope") if c.flags & MS_REMOUNT else None)
    with pytest.raises(KernelError, match="EPERM"):
        mount_all([Mount("bind", "/src", ("ro", "bind"))], TARGET, syscalls=fake)
    assert fake.mounted == {str(TARGET): 0}


def test_options_over_one_page_are_refused_before_the_kernel() -> None:
    fake = RecordingMountSyscalls()
    lowers = ":".join(f"l/{i:026d}" for i in range(200))
    with pytest.raises(KernelError, match=r"over the kernel's \d+-byte limit"):
        mount_all([Mount("overlay", "overlay", (f"lowerdir={lowers}",))], TARGET, syscalls=fake)
    assert fake.calls == []


def test_empty_mount_list_is_refused() -> None:
    with pytest.raises(KernelError, match="no mounts given"):
        mount_all([], TARGET, syscalls=RecordingMountSyscalls())


def test_relative_target_is_made_absolute() -> None:
    fake = RecordingMountSyscalls()
    mount_all([Mount("tmpfs", "tmpfs")], Path("rel"), syscalls=fake)
    assert fake.calls[0].target == os.path.abspath("rel")


def test_unmount_translates_errors() -> None:
    fake = RecordingMountSyscalls()
    with pytest.raises(NotFound, match=f"unmount {TARGET}: not a mount point"):
        unmount(TARGET, syscalls=fake)
    mount_all([Mount("tmpfs", "tmpfs")], TARGET, syscalls=fake)
    unmount(TARGET, detach=True, syscalls=fake)
    assert fake.calls[-1] == MountCall("umount2", str(TARGET), MNT_DETACH | UMOUNT_NOFOLLOW)

    busy = RecordingMountSyscalls(fail=lambda c: OSError(errno.EBUSY, "Device or resource busy"))
    with pytest.raises(KernelError, match=f"unmount {TARGET}: Device or resource busy"):
        unmount(TARGET, syscalls=busy)
    gone = RecordingMountSyscalls(fail=lambda c: OSError(errno.ENOENT, "No such file"))
    with pytest.raises(NotFound, match="no such file"):
        unmount(TARGET, syscalls=gone)


def test_mountinfo_escapes_are_decoded(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:40 / /tmp/with\\040space\\134x rw shared:1 - tmpfs tmpfs rw\n"
    )
    assert mount_points(info) == ["/", "/tmp/with space\\x"]
