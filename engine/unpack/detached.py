"""Applying a layer before its lower layers exist: ``apply_layer_detached``, then ``DetachedLayer.stack``.

Why: an image's layers download in parallel, but a layer applied with ``apply_layer`` needs its lower layers
finished (committed) first, so layers were applied strictly one after another. For overlay snapshots a layer's
directory holds only its own entries, so it can be written while the layers below are still being written;
only two things depend on what lies below (engine-anchors §1, and ``apply_layer``'s docstring):

* a hard link to a file that only a lower layer has (the file is copied up): it cannot be done without the
  lowers, so the application stops there, drains the stream (the download feeding it must not stall) and
  reports ``needs_lowers``: the caller applies the layer again with ``apply_layer`` once the lowers are
  committed. Rare in practice;
* a parent directory the layer implies but does not list gets the lower layer's owner, mode and times. The
  directory is created with mode 0755 now and remembered (an fd on it, so it is the very same inode even if
  later entries move things around); ``stack`` gives it the lower's metadata and then sets every directory
  time, exactly as ``apply_layer`` would have at the end. A directory entry of the layer for the same
  directory wins over the lower's owner and mode, as it does in ``apply_layer``.

The result is the tree ``apply_layer`` would have produced with the same lowers, with two documented
exceptions that make ``stack`` answer False (apply the layer again with the lowers instead): a lower layer
gives an implied directory the set-group-ID bit (what was created inside it would have inherited its group),
and more than ``MAX_IMPLIED`` implied directories (each holds an fd until ``stack``). Detached application
needs privileges (chown), so that the modes of implied directories cannot change what the layer may create
inside them; ``apply_layer_detached`` refuses ``whiteouts="delete"`` (that mode edits a full copy of the
lowers).

Safety, limits, whiteouts and the DiffID check are ``apply_layer``'s own: only the two hooks above differ.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Limits
from engine.errors import InvalidArgument, KiteboxError, RuntimeFailure, from_oserror
from engine.unpack.apply import ApplyResult, WhiteoutMode, _Applier, checked_result, open_root
from engine.unpack.decompress import ByteSource, LayerStream, compression_for
from engine.unpack.safepath import RootDir

__all__ = ["MAX_IMPLIED", "DetachedLayer", "apply_layer_detached", "can_apply_detached"]

MAX_IMPLIED = 64
"""Implied directories a detached layer may have (one fd each until ``stack``); more: re-apply with lowers."""


class _LowersNeeded(Exception):
    """The layer cannot be finished without its lower layers."""


@dataclass(slots=True)
class _Implied:
    parts: tuple[str, ...]
    fd: int  # the directory created for it (owned)
    times_at: int  # its placeholder in ``dir_times``
    superseded: bool = False  # a directory entry of the layer set this inode's owner and mode


def can_apply_detached() -> bool:
    """Whether this process may apply layers detached (it must be able to chown)."""
    return os.geteuid() == 0


class _DetachedApplier(_Applier):
    def __init__(self, root: RootDir, digest: str, mode: WhiteoutMode, limits: Limits) -> None:
        super().__init__(root, digest, mode, (), limits)
        self.implied: list[_Implied] = []
        self.by_inode: dict[tuple[int, int], _Implied] = {}

    def close(self) -> None:
        for record in self.implied:
            if record.fd >= 0:
                os.close(record.fd)
                record.fd = -1
        super().close()

    def _link_source_below(self, target: tuple[str, ...], linkname: str) -> tuple[int, str]:
        raise _LowersNeeded

    def _implied_dir(self, parts: tuple[str, ...], fd: int) -> None:
        if len(self.implied) >= MAX_IMPLIED:
            raise _LowersNeeded
        os.fchmod(fd, 0o755)
        st = os.fstat(fd)
        record = _Implied(parts, os.dup(fd), len(self.dir_times))
        self.implied.append(record)
        self.by_inode[(st.st_dev, st.st_ino)] = record
        self.dir_times.append((parts, 0, 0))  # filled (or dropped) by stack(): the lower's times

    def _set_dir_meta(
        self, fd: int, parts: tuple[str, ...], m: tarfile.TarInfo, xattrs: list[tuple[str, bytes]]
    ) -> None:
        if self.by_inode:
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            record = self.by_inode.pop((st.st_dev, st.st_ino), None)
            if record is not None:
                record.superseded = True
        super()._set_dir_meta(fd, parts, m, xattrs)

    def stack(self, lower: Sequence[Path]) -> bool:
        lowers = [RootDir(path, use_openat2=self.root.uses_openat2) for path in lower]
        try:
            dropped: set[int] = set()
            for record in self.implied:
                st = _lower_stat(lowers, record.parts)
                if st is None:  # apply_layer leaves such a directory 0755 with the time it was last changed
                    dropped.add(record.times_at)
                    continue
                if st.st_mode & stat.S_ISGID:
                    return False
                if not record.superseded:
                    os.fchown(record.fd, st.st_uid, st.st_gid)
                    os.fchmod(record.fd, stat.S_IMODE(st.st_mode))
                self.dir_times[record.times_at] = (record.parts, st.st_atime_ns, st.st_mtime_ns)
            if dropped:
                self.dir_times = [item for at, item in enumerate(self.dir_times) if at not in dropped]
            self.set_dir_times()
            return True
        finally:
            for root in lowers:
                root.close()


def _lower_stat(lowers: Sequence[RootDir], parts: tuple[str, ...]) -> os.stat_result | None:
    """The first (topmost) lower layer's directory ``parts``, as ``_Applier._implied_dir`` looks it up."""
    for lower in lowers:
        try:
            below = lower.open_dir(parts)
        except OSError:
            continue
        try:
            return os.fstat(below)
        finally:
            os.close(below)
    return None


class DetachedLayer:
    """A layer applied without its lowers (see the module docstring). ``stack`` or ``close`` it, once."""

    def __init__(self, applier: _DetachedApplier | None, result: ApplyResult) -> None:
        self._applier = applier
        self.result = result

    @property
    def needs_lowers(self) -> bool:
        """The layer hard-links a lower layer's file: ``stack`` will answer False."""
        return self._applier is None

    def stack(self, lower: Sequence[Path]) -> bool:
        """Finish the layer now that its lowers (topmost first, committed) are known; blocking.

        True: the target holds exactly what ``apply_layer`` with ``lower`` would have produced. False: it
        cannot be finished exactly: discard the target and apply the layer again with ``apply_layer``.
        Releases the layer's resources either way.
        """
        applier = self._applier
        if applier is None:
            return False
        try:
            return applier.stack(lower)
        except KiteboxError:
            raise
        except OSError as err:
            raise from_oserror(err, f"layer {applier.digest}") from err
        finally:
            self.close()

    def close(self) -> None:
        """Release the fds held for ``stack`` (when the layer is discarded instead)."""
        if self._applier is not None:
            self._applier.close()
            self._applier = None

    def export_state(self) -> tuple[dict[str, Any], list[int]]:
        """What ``stack`` needs, for another process (engine.unpack.worker): JSON-able data, and the implied
        directories' fds in the order of ``state["implied"]`` (still owned by this object)."""
        result = dataclasses.asdict(self.result)
        applier = self._applier
        if applier is None:
            return {"result": result, "needs_lowers": True}, []
        return {"result": result, "needs_lowers": False, "uses_openat2": applier.root.uses_openat2,
                "dir_times": [[list(parts), atime, mtime] for parts, atime, mtime in applier.dir_times],
                "implied": [[list(r.parts), r.times_at, r.superseded] for r in applier.implied],
                }, [r.fd for r in applier.implied]

    @classmethod
    def from_state(cls, state: dict[str, Any], fds: list[int], target: Path, layer_digest: str,
                   whiteouts: WhiteoutMode, limits: Limits) -> DetachedLayer:
        """The layer another process applied into ``target`` (``export_state``'s data and fds, which this
        object then owns; closed here when they do not match the data)."""
        result = ApplyResult(**state["result"])
        if state["needs_lowers"]:
            for fd in fds:
                os.close(fd)
            return cls(None, result)
        if len(fds) != len(state["implied"]):
            for fd in fds:
                os.close(fd)
            raise RuntimeFailure(f"layer {layer_digest}: the unpack worker sent {len(fds)} directories for "
                                 f"{len(state['implied'])}")
        applier = _DetachedApplier(open_root(target, layer_digest, bool(state["uses_openat2"])), layer_digest,
                                   whiteouts, limits)
        applier.dir_times = [(tuple(parts), atime, mtime) for parts, atime, mtime in state["dir_times"]]
        applier.implied = [_Implied(tuple(parts), fd, times_at, superseded)
                           for (parts, times_at, superseded), fd in zip(state["implied"], fds, strict=True)]
        return cls(applier, result)


def apply_layer_detached(
    source: ByteSource,
    media_type: str,
    target: Path,
    *,
    layer_digest: str,
    expected_diff_id: str | None,
    whiteouts: WhiteoutMode,
    limits: Limits,
    use_openat2: bool | None = None,
) -> DetachedLayer:
    """``apply_layer`` without ``lower``: apply the layer into ``target`` before its lowers exist.

    Reads the whole stream and checks the DiffID even when the layer turns out to need its lowers. Errors
    are ``apply_layer``'s; ``InvalidArgument`` for ``whiteouts="delete"`` or a process that cannot chown.
    """
    if whiteouts == "delete":
        raise InvalidArgument(f"layer {layer_digest}: whiteouts='delete' layers need their lowers to apply")
    if not can_apply_detached():
        raise InvalidArgument(f"layer {layer_digest}: detached application needs root (chown)")
    root = open_root(target, layer_digest, use_openat2)
    applier = _DetachedApplier(root, layer_digest, whiteouts, limits)
    keep = False
    try:
        with LayerStream(source, compression_for(media_type), layer_digest=layer_digest, limits=limits) as stream:
            try:
                applier.run(stream)
            except _LowersNeeded:
                applier.close()
                stream.drain()  # the rest still counts in the DiffID, and the feed must keep flowing
                diff_id, size = stream.result()
                return DetachedLayer(None, checked_result(applier, layer_digest, expected_diff_id, diff_id, size))
            diff_id, size = stream.result()
        applier.finish(dir_times=False)
        result = checked_result(applier, layer_digest, expected_diff_id, diff_id, size)
        keep = True
        return DetachedLayer(applier, result)
    finally:
        if not keep:
            applier.close()
