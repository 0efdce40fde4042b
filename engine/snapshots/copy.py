"""The copy snapshotter: the fallback where overlayfs is unavailable (no kernel support, an unsupported backing
filesystem, an unprivileged user without overlay in user namespaces).

Every active snapshot is a full copy of its parent's tree, so layers are applied by really deleting what a
whiteout hides (``whiteout_mode = "delete"``) and committing keeps the whole tree. Views need no copy: committed
trees are immutable, so a view is a read-only bind mount of the parent's tree itself.

Copies use GNU ``cp -a --reflink=auto``: it preserves types, modes, owners, timestamps, extended attributes, hard
links within the tree, device nodes, and holes (``--sparse=auto``), shares data blocks on reflink-capable
filesystems (btrfs, xfs) and otherwise uses ``copy_file_range``. Python's ``shutil.copytree`` loses hard links,
device nodes and (without extra work) ownership, and is several times slower.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from engine.errors import StoreError
from engine.snapshots.base import Kind, Mount, WhiteoutMode
from engine.snapshots.common import DirectorySnapshotter
from engine.snapshots.store import Record

__all__ = ["CopySnapshotter"]


class CopySnapshotter(DirectorySnapshotter):
    """Full-copy snapshots under ``root`` (normally ``<state>/snapshots/copy``)."""

    name = "copy"
    whiteout_mode: WhiteoutMode = "delete"

    def _populate(self, new_dir: Path, kind: Kind, chain: list[Record]) -> None:
        target = new_dir / "fs"
        if kind != "active" or not chain:
            target.mkdir(mode=0o755)
            return
        source = self._fs(chain[0])
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", str(source), str(target)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
            raise StoreError(f"copy snapshot {chain[0].key!r} to {target}: {reason}")

    def _mounts(self, record: Record, chain: list[Record]) -> list[Mount]:
        if record.kind == "view":
            source = self._fs(chain[0]) if chain else self._fs(record)
            return [Mount("bind", str(source), ("ro", "rbind"))]
        return [Mount("bind", str(self._fs(record)), ("rw", "rbind"))]

    def _parent_dirs(self, record: Record, chain: list[Record]) -> list[Path]:
        return []
