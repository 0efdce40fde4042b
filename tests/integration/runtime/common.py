"""What the executor tests share: the mount table to compare before/after, and their cgroups' clean-up."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from engine.runtime.cgroups import CgroupManager

__all__ = ["PARENT", "mount_table", "remove_cgroups"]

PARENT = "kitebox-test"  # the cgroup parent of these tests' containers


def mount_table() -> list[str]:
    """Every mount (root and mount point), sorted: equal before and after a test that leaks none."""
    return sorted(" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def remove_cgroups(managers: Iterable[CgroupManager]) -> None:
    """Destroy the containers' cgroups, then the shared parent where no other test still uses it."""
    for manager in managers:
        manager.destroy()
    for base in Path("/sys/fs/cgroup").iterdir():
        if (base / PARENT).is_dir():
            with contextlib.suppress(OSError):  # another test's container may still use it
                (base / PARENT).rmdir()
