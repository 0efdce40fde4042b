"""A container's writable layer: what changed (``diff``), and the change set as an image layer (``commit``).

Overlay snapshotters keep the changes in the upper directory: a character device 0:0 is a deleted path (D); a
directory with the ``overlay.opaque`` xattr (``trusted.`` as root, ``user.`` with ``userxattr``) replaced the
lower one (its lower-only children are deleted); anything else was added (A) or changed (C) depending on whether
the lower layers have that path. The copy snapshotter keeps a full tree, so it is compared with the image's
tree: type, mode, owner, size, mtime, link target or device changed -> C; only in the container -> A; only in the
image -> D (the topmost deleted path only, as Docker reports).

:func:`write_layer` writes the same change set as a gzip-compressed layer tar, whiteouts converted back to the
image format (``.wh.<name>`` files, ``.wh..wh..opq`` in opaque directories), and returns the DiffID. Blocking:
call from a thread.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from engine.errors import StoreError, from_oserror

if TYPE_CHECKING:
    from engine.content import ContentStore
    from engine.images import ImageRecord, ImageStore
    from engine.snapshots import Snapshotter

__all__ = ["Change", "changes", "commit_image", "write_layer"]

Kind = Literal["A", "C", "D"]


@dataclass(frozen=True, slots=True, order=True)
class Change:
    path: str  # absolute, in the container
    kind: Kind


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path, attr: str) -> bool:
    try:
        return os.getxattr(path, attr, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class _Lowers:
    """Existence of a path in the stacked lower layers (topmost first), honouring their own whiteouts."""

    def __init__(self, dirs: list[Path], opaque_attr: str) -> None:
        self.dirs = dirs
        self.attr = opaque_attr

    def has(self, rel: str) -> bool:
        parts = rel.split("/")
        for layer in self.dirs:
            # An opaque ancestor in this layer hides everything below it in the layers underneath.
            hidden_below = any(_opaque(layer.joinpath(*parts[:i]), self.attr) for i in range(1, len(parts)))
            st = _lstat(layer / rel)
            if st is not None:
                return not _is_whiteout(st)
            if hidden_below:
                return False
        return False

    def children(self, rel: str) -> set[str]:
        names: set[str] = set()
        hidden: set[str] = set()
        for layer in self.dirs:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(layer / rel):
                    if entry.name in names or entry.name in hidden:
                        continue
                    (hidden if _is_whiteout(entry.stat(follow_symlinks=False)) else names).add(entry.name)
            if _opaque(layer / rel, self.attr):
                break
        return names


def _opaque_attr(snapshotter: Snapshotter) -> str:
    return "user.overlay.opaque" if snapshotter.whiteout_mode == "overlay-user" else "trusted.overlay.opaque"


def _walk(top: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``top/rel`` (pre-order, sorted), as (relative path, lstat)."""
    try:
        entries = sorted(os.scandir(top / rel) if rel else os.scandir(top), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(top, child)


def _image_tree(snapshotter: Snapshotter, key: str) -> tuple[Path | None, str | None]:
    """The copy snapshotter's committed parent tree (through a short-lived view) and the view's key."""
    parent = snapshotter.stat(key).parent
    if parent is None:
        return None, None
    view_key = f"diff-{key}-{os.getpid()}-{os.urandom(4).hex()}"
    mounts = snapshotter.view(view_key, parent)
    return Path(mounts[0].source), view_key


def _same(a: os.stat_result, b: os.stat_result, a_path: Path, b_path: Path) -> bool:
    if (stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode or a.st_uid != b.st_uid
            or a.st_gid != b.st_gid or a.st_rdev != b.st_rdev):
        return False
    if stat.S_ISDIR(a.st_mode):
        return a.st_mtime_ns == b.st_mtime_ns
    if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns:
        return False
    return not stat.S_ISLNK(a.st_mode) or os.readlink(a_path) == os.readlink(b_path)


def _entries(snapshotter: Snapshotter, key: str) -> Iterator[tuple[Change, Path | None, bool]]:
    """(change, file holding the new content or None for a delete, flag) in path order; the flag marks an
    opaque directory, or for a delete one already implied by its opaque parent (no whiteout needed)."""
    upper = snapshotter.upper_dir(key)
    if snapshotter.whiteout_mode == "delete":
        image, view_key = _image_tree(snapshotter, key)
        try:
            yield from _compare_trees(upper, image)
        finally:
            if view_key is not None:
                snapshotter.remove(view_key)
        return
    lowers = _Lowers(snapshotter.parent_dirs(key), _opaque_attr(snapshotter))
    attr = _opaque_attr(snapshotter)
    opaque_dirs: list[str] = []
    for rel, st in _walk(upper):
        inside_opaque = any(rel.startswith(d + "/") for d in opaque_dirs)
        if _is_whiteout(st):
            yield Change("/" + rel, "D"), None, False
            continue
        opaque = stat.S_ISDIR(st.st_mode) and _opaque(upper / rel, attr)
        existed = not inside_opaque and lowers.has(rel)
        yield Change("/" + rel, "C" if existed else "A"), upper / rel, opaque
        if opaque:
            opaque_dirs.append(rel)
            for name in sorted(lowers.children(rel)):
                if _lstat(upper / rel / name) is None:
                    yield Change(f"/{rel}/{name}", "D"), None, True  # implied by the opaque marker


def _compare_trees(container: Path, image: Path | None) -> Iterator[tuple[Change, Path | None, bool]]:
    deleted: list[str] = []
    if image is not None:
        for rel, _ in _walk(image):
            if any(rel.startswith(d + "/") for d in deleted):
                continue
            if _lstat(container / rel) is None:
                deleted.append(rel)
    found: dict[str, tuple[Change, Path | None, bool]] = {"/" + d: (Change("/" + d, "D"), None, False)
                                                          for d in deleted}
    for rel, st in _walk(container):
        old = _lstat(image / rel) if image is not None else None
        if old is None:
            found["/" + rel] = (Change("/" + rel, "A"), container / rel, False)
        elif image is not None and not _same(st, old, container / rel, image / rel):
            if stat.S_IFMT(st.st_mode) != stat.S_IFMT(old.st_mode) and stat.S_ISDIR(old.st_mode):
                found["/" + rel] = (Change("/" + rel, "C"), container / rel, True)  # a dir replaced: opaque
            else:
                found["/" + rel] = (Change("/" + rel, "C"), container / rel, False)
    for path in sorted(found):
        yield found[path]


def changes(snapshotter: Snapshotter, key: str) -> list[Change]:
    """The changes of active snapshot ``key`` against its image, sorted by path (``docker diff``)."""
    try:
        return [change for change, _, _ in _entries(snapshotter, key)]
    except OSError as err:
        raise from_oserror(err, f"changes of snapshot {key}", StoreError) from err


class _HashingWriter:
    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def write_layer(snapshotter: Snapshotter, key: str, out: BinaryIO) -> str:
    """Write the changes of ``key`` to ``out`` as a gzip layer tar; returns its DiffID (``sha256:`` of the
    uncompressed tar)."""
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as zipped:
        plain = _HashingWriter(zipped)  # type: ignore[arg-type]
        try:
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for change, source, opaque in _entries(snapshotter, key):
                    rel = change.path.lstrip("/")
                    if source is None:
                        if opaque:
                            continue
                        head, _, name = rel.rpartition("/")
                        _add_empty(tar, f"{head}/.wh.{name}" if head else f".wh.{name}")
                        continue
                    info = tar.gettarinfo(str(source), arcname=rel)
                    if info.isreg():
                        with open(source, "rb") as handle:
                            tar.addfile(info, handle)
                    else:
                        tar.addfile(info)
                    if opaque:
                        _add_empty(tar, f"{rel}/.wh..wh..opq")
        except OSError as err:
            raise from_oserror(err, f"layer of snapshot {key}", StoreError) from err
    return "sha256:" + plain.hash.hexdigest()


def _add_empty(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    tar.addfile(info)


_GZIP_TYPES = {
    "application/vnd.docker.distribution.manifest.v2+json": (
        "application/vnd.docker.container.image.v1+json", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    "application/vnd.oci.image.manifest.v1+json": (
        "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"),
}
_CONFIG_KEYS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal")


def commit_image(content: ContentStore, images: ImageStore, base: ImageRecord, container_config: dict[str, Any],
                 layer: BinaryIO, diff_id: str, *, author: str, comment: str, created: float) -> ImageRecord:
    """Store ``layer`` (a gzip layer tar positioned at its start, DiffID ``diff_id``) as the new top layer of an
    image derived from ``base``: config = base config with the container's runtime settings, one more DiffID and
    history entry; manifest of the base's media type. Records the image (untagged) and returns it."""
    import json

    from engine.images import ImageRecord, LayerRecord
    from engine.manifest import parse_image_config

    config_type, layer_type = _GZIP_TYPES.get(base.manifest_media_type,
                                              _GZIP_TYPES["application/vnd.oci.image.manifest.v1+json"])
    manifest_type = (base.manifest_media_type if base.manifest_media_type in _GZIP_TYPES
                     else "application/vnd.oci.image.manifest.v1+json")
    digest, size = content.put_stream(layer)
    raw = dict(parse_image_config(content.read(base.config_digest)).raw)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1e9):09d}Z"
    runtime = dict(raw.get("config") or {})
    for key in _CONFIG_KEYS:
        value = container_config.get(key)
        if key == "Env" and isinstance(value, list):
            value = [e for e in value if not e.startswith("HOSTNAME=")]
        if value is not None:
            runtime[key] = value
    rootfs = dict(raw.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = [*(rootfs.get("diff_ids") or []), diff_id]
    history = [*(raw.get("history") or []), {"created": stamp, "created_by": "kitebox commit",
                                             **({"author": author} if author else {}),
                                             **({"comment": comment} if comment else {})}]
    raw.update(config=runtime, rootfs=rootfs, history=history, created=stamp)
    if author:
        raw["author"] = author
    config_body = json.dumps(raw, separators=(",", ":")).encode()
    config_digest = content.put(config_body)
    layers = (*base.layers, LayerRecord(digest, layer_type, size, diff_id))
    manifest = {
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_body)},
        "layers": [{"mediaType": item.media_type, "digest": item.digest, "size": item.size} for item in layers],
    }
    manifest_digest = content.put(json.dumps(manifest, separators=(",", ":")).encode())
    record = ImageRecord(
        id=config_digest, manifest_digest=manifest_digest, manifest_media_type=manifest_type, index_digest=None,
        config_digest=config_digest, layers=layers, created=stamp, architecture=base.architecture, os=base.os,
        variant=base.variant, size=sum(item.size for item in layers), repo_tags=(), repo_digests=(), added=0.0)
    images.put(record)
    return images.get(record.id)
