"""The root's mounts: a kernel without volatile overlays (before 5.10) gets the same mount without the option."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from engine.runtime import executor, syscalls
from engine.runtime.spec import RootMount

OPTIONS = ("lowerdir=l/A", "upperdir=snapshots/2/fs", "workdir=snapshots/2/work")


def _recording_mount(calls: list[str | None], refuse: str | None) -> object:
    def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        calls.append(data)
        if refuse is not None and data is not None and refuse in data.split(","):
            raise OSError(errno.EINVAL, "Invalid argument")
    return mount


def test_volatile_is_dropped_when_the_kernel_refuses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    monkeypatch.setattr(syscalls, "mount", _recording_mount(calls, "volatile"))
    executor._build_root(str(tmp_path / "rootfs"), [RootMount("overlay", "overlay", (*OPTIONS, "volatile"))])
    assert calls == [",".join((*OPTIONS, "volatile")), ",".join(OPTIONS)]


def test_a_refusal_for_another_reason_still_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    monkeypatch.setattr(syscalls, "mount", _recording_mount(calls, "upperdir=snapshots/2/fs"))
    with pytest.raises(OSError):
        executor._build_root(str(tmp_path / "rootfs"), [RootMount("overlay", "overlay", (*OPTIONS, "volatile"))])
    assert len(calls) == 2  # EINVAL does not say why: tried once more without volatile, and that error stands
