"""Snapshotters (one committed snapshot per image layer, keyed by ChainID) and the one mount executor.

See :mod:`engine.snapshots.base` for the terms and lifecycle, :mod:`engine.snapshots.mount` for performing the
returned :class:`Mount` specs, and :func:`open_snapshotter` for choosing overlay or copy.
"""

from engine.snapshots.base import TEMPORARY_LABEL, Kind, Mount, SnapshotInfo, Snapshotter, WhiteoutMode
from engine.snapshots.copy import CopySnapshotter
from engine.snapshots.mount import (
    MountSyscalls,
    RealMountSyscalls,
    RecordingMountSyscalls,
    is_mountpoint,
    mount_all,
    unmount,
)
from engine.snapshots.overlay import OverlaySnapshotter, volatile
from engine.snapshots.select import open_snapshotter, probe_overlay

__all__ = [
    "TEMPORARY_LABEL",
    "CopySnapshotter",
    "Kind",
    "Mount",
    "MountSyscalls",
    "OverlaySnapshotter",
    "RealMountSyscalls",
    "RecordingMountSyscalls",
    "SnapshotInfo",
    "Snapshotter",
    "WhiteoutMode",
    "is_mountpoint",
    "mount_all",
    "open_snapshotter",
    "probe_overlay",
    "unmount",
    "volatile",
]
