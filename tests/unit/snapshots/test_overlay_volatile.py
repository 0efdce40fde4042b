"""``volatile``: only writable overlays get the option; binds and read-only views are left as they are."""

from __future__ import annotations

from engine.snapshots import Mount, volatile


def test_only_writable_overlays_become_volatile() -> None:
    writable = Mount("overlay", "overlay", ("lowerdir=l/A", "upperdir=snapshots/2/fs", "workdir=snapshots/2/work"),
                     cwd="/root")
    view = Mount("overlay", "overlay", ("ro", "lowerdir=l/A:l/B"), cwd="/root")
    bind = Mount("bind", "/x", ("rw", "rbind"))
    assert volatile([writable, view, bind]) == [
        Mount("overlay", "overlay", (*writable.options, "volatile"), cwd="/root"), view, bind]
