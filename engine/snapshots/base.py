"""Snapshotters: terms, lifecycle and the interface every implementation follows.

Modelled on containerd's ``core/snapshots/snapshotter.go``.

Terms
-----
* A **committed** snapshot holds one image layer applied on top of its parent chain. Its name is the layer's
  ChainID (:func:`engine.digest.chain_id`), so two images sharing a base share its snapshots. Committed snapshots
  are immutable and may only be used as parents or read through a view.
* An **active** snapshot is writable: a layer being unpacked (``prepare`` -> apply -> ``commit``) or a
  container's writable layer (``prepare`` and keep).
* A **view** is a read-only active snapshot, for inspecting a committed chain (``view`` -> mount -> ``remove``).
* Keys share one namespace: an active key and a committed name never collide.

Unpacking an image with layers L1, L2 (DiffIDs D1, D2)::

    c1 = chain_id(None, D1); c2 = chain_id(c1, D2)
    sn.prepare("extract-<random>-c1", None, labels={TEMPORARY_LABEL: "1"})
    apply_layer(L1, sn.upper_dir("extract-<random>-c1"), whiteouts=sn.whiteout_mode)
    sn.commit(c1, "extract-<random>-c1")
    sn.prepare("extract-<random>-c2", c1, labels={TEMPORARY_LABEL: "1"})
    apply_layer(L2, sn.upper_dir(...), whiteouts=sn.whiteout_mode, lower=sn.parent_dirs(...))
    sn.commit(c2, "extract-<random>-c2")

Running a container from it::

    mounts = sn.prepare("container-<id>", c2)      # the container's writable layer
    mount_all(mounts, rootfs)                       # engine.snapshots.mount: the one executor
    ...
    unmount(rootfs); sn.remove("container-<id>")

Snapshotters only **describe** mounts (a list of :class:`Mount`); :func:`engine.snapshots.mount.mount_all` performs
them, in order, onto one target.

Crash safety: every state change is one metadata transaction; directories are created under a temporary name
owned by the creating process and moved into place inside the transaction. A crash therefore leaves either the
old state or the new one, plus leftovers that :meth:`Snapshotter.cleanup` removes: directories no record points
to, and active snapshots labelled ``TEMPORARY_LABEL`` whose creating process is dead. Snapshots without that label
(containers' writable layers) are never removed by cleanup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "TEMPORARY_LABEL",
    "Kind",
    "Mount",
    "SnapshotInfo",
    "Snapshotter",
    "WhiteoutMode",
]

TEMPORARY_LABEL = "kitebox/temporary"
"""Label (value ``"1"``) marking an active snapshot as scratch work of its creating process (an unpack in
progress): :meth:`Snapshotter.cleanup` removes it once that process is dead. ``commit`` drops the label."""

Kind = Literal["committed", "active", "view"]
WhiteoutMode = Literal["overlay", "overlay-user", "delete"]


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount to perform, as data.

    ``options`` mixes mount flags (``ro``, ``rbind``, ``nosuid``...) and filesystem data (``lowerdir=...``); the
    executor sorts them out. ``cwd`` is the directory the executor changes into (for this mount only, never for
    the whole process) before mounting: overlay's short relative ``lowerdir`` paths are relative to it.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What is known about one snapshot. ``parent`` is the parent's key (a committed name) or ``None``."""

    key: str
    parent: str | None
    kind: Kind
    created: float
    labels: Mapping[str, str]


class Snapshotter(Protocol):
    """A store of layered filesystem trees; see the module docstring for the lifecycle.

    Errors: unknown keys raise :class:`~engine.errors.NotFound`; a key in use, a parent that is not committed, a
    snapshot of the wrong kind for the verb, or removing a snapshot with children raise
    :class:`~engine.errors.Conflict`; disk or metadata failures raise :class:`~engine.errors.StoreError`. Methods
    block (file-system and SQLite work): async callers run them in a thread. Several objects, in one process or
    several, may share one root.
    """

    name: str
    """``"overlay"`` or ``"copy"``."""

    whiteout_mode: WhiteoutMode
    """How layers must be applied into this snapshotter's active snapshots (``engine.unpack``'s ``whiteouts``):
    ``overlay`` (char 0:0 devices, ``trusted.overlay.opaque``), ``overlay-user`` (``user.overlay.opaque``, when
    overlay is mounted with ``userxattr``) or ``delete`` (really delete the hidden files from a full tree)."""

    def prepare(self, key: str, parent: str | None, *, labels: Mapping[str, str] = ...) -> list[Mount]:
        """Create active snapshot ``key`` on top of committed ``parent`` (``None``: empty) and return its mounts."""
        ...

    def view(self, key: str, parent: str | None) -> list[Mount]:
        """Create read-only snapshot ``key`` showing committed ``parent`` and return its mounts."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view snapshot ``key`` again (committed snapshots are not mountable)."""
        ...

    def commit(self, name: str, key: str, *, size: int | None = None) -> None:
        """Turn active ``key`` into committed ``name`` atomically; ``Conflict`` if ``name`` exists.

        ``size``: what :meth:`usage` reports for it, when the caller knows (an unpacked layer: the sizes of
        its files, as Docker's layer store counts a layer); otherwise the directory is measured (a walk of
        every entry: ~40 ms for a 4,000-file layer, at the end of a pull)."""
        ...

    def remove(self, key: str) -> None:
        """Forget ``key`` and free its disk space; ``Conflict`` if other snapshots have it as parent."""
        ...

    def stat(self, key: str) -> SnapshotInfo:
        """Information about ``key``; ``NotFound`` if there is no such snapshot."""
        ...

    def walk(self) -> list[SnapshotInfo]:
        """Every snapshot, in creation order."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a snapshot called ``key`` exists (any kind)."""
        ...

    def usage(self, key: str) -> int:
        """Bytes on disk of the snapshot's own directory (hard-linked inodes counted once); for a committed
        snapshot, the ``size`` it was committed with, if one was given."""
        ...

    def close(self) -> None:
        """Release pooled resources (database connections); the object stays usable and reopens them."""
        ...

    def upper_dir(self, key: str) -> Path:
        """Where a layer is applied / a container writes, for active ``key`` (overlay: the upperdir; copy: the
        full tree)."""
        ...

    def parent_dirs(self, key: str) -> list[Path]:
        """The layer directories ``upper_dir(key)`` is stacked on, topmost first, for resolving hard links into
        lower layers. Empty for the copy snapshotter, whose upper directory already holds the whole tree."""
        ...

    def cleanup(self) -> None:
        """Remove leftovers of interrupted work (see the module docstring). Called on open; safe at any time."""
        ...
