"""Choosing and opening a snapshotter for a state root.

``auto`` picks overlay when overlayfs really mounts under the root: a tiny two-layer overlay is mounted once in
``<root>/tmp`` (with ``userxattr`` when not root, as rootless overlay needs) and unmounted again. Checking
``/proc/filesystems`` is not enough: the backing filesystem may lack d_type or trusted xattrs, or the caller may
lack the privilege. Otherwise ``auto`` falls back to the copy snapshotter. A root whose only existing store is the
copy store keeps using it, so images unpacked earlier stay visible.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from engine.errors import InvalidArgument, KernelError, KiteboxError, NotFound, from_oserror
from engine.snapshots.base import Mount, Snapshotter
from engine.snapshots.common import remove_tree
from engine.snapshots.copy import CopySnapshotter
from engine.snapshots.mount import MountSyscalls, is_mountpoint, mount_all, unmount
from engine.snapshots.overlay import OverlaySnapshotter
from engine.snapshots.store import owner_alive, owner_token
from engine.tmpnames import temporary_sibling

__all__ = ["CHOICES", "open_snapshotter", "probe_overlay"]

CHOICES = ("auto", "overlay", "copy")
_PROBE = "probe-"


def _sweep_probes(tmp: Path, syscalls: MountSyscalls | None) -> None:
    """Remove probe directories of dead processes (a crash mid-probe may even have left the mount)."""
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return
    except OSError as err:
        raise from_oserror(err, f"snapshot scratch directory {tmp}") from err
    for name in names:
        if not name.startswith(_PROBE):
            continue
        owner = name[len(_PROBE) :].rsplit("-", 1)[0].replace("-", ":", 1)
        if owner_alive(owner):
            continue
        merged = tmp / name / "merged"
        if is_mountpoint(merged):
            with contextlib.suppress(NotFound):  # unmounted concurrently by another sweeper
                unmount(merged, detach=True, syscalls=syscalls)
        remove_tree(tmp / name)


def probe_overlay(root: Path, *, syscalls: MountSyscalls | None = None) -> str | None:
    """Mount a two-layer overlay under ``root/tmp`` and unmount it; ``None`` if that works, else the reason."""
    tmp = root / "tmp"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        _sweep_probes(tmp, syscalls)
        probe = tmp / f"{_PROBE}{owner_token().replace(':', '-')}-{secrets.token_hex(4)}"
        probe.mkdir()
    except OSError as err:
        return str(from_oserror(err, f"overlay probe in {tmp}"))
    except KiteboxError as err:
        return str(err)
    try:
        for sub in ("lower1", "lower2", "upper", "work", "merged"):
            (probe / sub).mkdir()
        (probe / "lower2" / "probe").write_text("overlay probe\n")
        options = ["lowerdir=lower1:lower2", "upperdir=upper", "workdir=work"]
        if os.geteuid() != 0:
            options.append("userxattr")
        merged = probe / "merged"
        try:
            # Volatile: unmounting a normal overlay syncs its upper filesystem -- here the whole state root's
            # disk, with whatever the machine has not written back yet (0.27 s after a big pull, on the first
            # pull into a new root). A kernel before 5.10 has no volatile overlays: probed without.
            mount_all([Mount("overlay", "overlay", (*options, "volatile"), cwd=str(probe))], merged,
                      syscalls=syscalls)
        except KiteboxError:
            remove_tree(probe / "work")
            (probe / "work").mkdir()
            mount_all([Mount("overlay", "overlay", tuple(options), cwd=str(probe))], merged, syscalls=syscalls)
        try:
            if syscalls is None and not (merged / "probe").is_file():
                return f"overlay under {root}: lower layer not visible through the mount"
        finally:
            unmount(merged, detach=True, syscalls=syscalls)
        return None
    except OSError as err:
        return str(from_oserror(err, f"overlay probe in {probe}"))
    except KiteboxError as err:
        return str(err)
    finally:
        remove_tree(probe)


_PROBED = "overlay-probed"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _probed_this_boot(root: Path, syscalls: MountSyscalls | None) -> bool:
    """Overlay worked under ``root`` earlier in this boot (the probe mounts, ~10-25 ms: once per boot is enough).

    Only for the real kernel: tests that pass fake ``syscalls`` always probe.
    """
    if syscalls is not None:
        return False
    try:
        remembered = (root / _PROBED).read_text().strip()
    except OSError:
        return False
    return bool(remembered) and remembered == f"{_boot_id()} {os.geteuid()}"


def _remember_probe(root: Path, syscalls: MountSyscalls | None) -> None:
    if syscalls is not None:
        return
    tmp = temporary_sibling(root / _PROBED)
    try:
        tmp.write_text(f"{_boot_id()} {os.geteuid()}\n")
        os.replace(tmp, root / _PROBED)
    except OSError:
        pass  # only a cache: the next open probes again


def open_snapshotter(root: Path, choice: str = "auto", *, syscalls: MountSyscalls | None = None) -> Snapshotter:
    """Open the snapshotter under ``root`` (``<state>/snapshots``), run its cleanup, and return it.

    ``choice``: ``"auto"`` (overlay if it works here, else copy), ``"overlay"`` (``KernelError`` saying why when
    overlay does not work here) or ``"copy"``. ``syscalls`` replaces the kernel for the overlay probe (tests).
    """
    if choice not in CHOICES:
        raise InvalidArgument(f"invalid snapshotter {choice!r}: expected auto, overlay or copy")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise from_oserror(err, f"snapshot root {root}") from err
    if choice == "auto" and (root / "copy").is_dir() and not (root / "overlay").is_dir():
        choice = "copy"
    snapshotter: OverlaySnapshotter | CopySnapshotter
    if choice == "copy":
        snapshotter = CopySnapshotter(root / "copy")
    else:
        failure = None if _probed_this_boot(root, syscalls) else probe_overlay(root, syscalls=syscalls)
        if failure is None:
            _remember_probe(root, syscalls)
            snapshotter = OverlaySnapshotter(root / "overlay", userxattr=os.geteuid() != 0)
        elif choice == "overlay":
            raise KernelError(f"overlay snapshotter unsupported under {root}: {failure}")
        else:
            snapshotter = CopySnapshotter(root / "copy")
    snapshotter.cleanup()
    return snapshotter
