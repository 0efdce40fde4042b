"""Named and anonymous volumes: directories under ``<root>/volumes/<name>/_data`` with a small metadata file.

Like Docker's local volume driver: a volume is created on first use (``-v name:/path``) or by ``volume create``,
is seeded from the image's content at the mount path when it is first mounted empty, survives its containers,
and is removed by ``volume rm`` (refused while a container uses it), ``volume prune`` or ``rm -v`` (anonymous
volumes only).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import Conflict, InvalidArgument, NotFound, from_oserror
from engine.tmpnames import temporary_sibling

__all__ = ["Volume", "VolumeStore", "seed_from_layers", "validate_volume_name"]

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def validate_volume_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(
            f'"{name}" includes invalid characters for a local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" '
            "are allowed. If you intended to pass a host directory, use absolute path"
        )
    return name


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    mountpoint: Path
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def inspect(self) -> dict[str, Any]:
        return {
            "CreatedAt": self.created,
            "Driver": "local",
            "Labels": self.labels,
            "Mountpoint": str(self.mountpoint),
            "Name": self.name,
            "Options": {},
            "Scope": "local",
        }


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o701)
        except OSError as err:
            raise from_oserror(err, f"volume store {root}") from err

    def _meta(self, name: str) -> Path:
        return self.root / name / "meta.json"

    def get(self, name: str) -> Volume:
        try:
            raw = json.loads(self._meta(name).read_text())
        except FileNotFoundError as err:
            raise NotFound(f"get {name}: no such volume") from err
        except (OSError, ValueError) as err:
            raise NotFound(f"volume {name}: unreadable metadata ({err})") from err
        return Volume(name, self.root / name / "_data", raw.get("CreatedAt", ""), dict(raw.get("Labels", {})),
                      bool(raw.get("Anonymous", False)))

    def exists(self, name: str) -> bool:
        return self._meta(name).exists()

    def create(self, name: str | None = None, *, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> Volume:
        """Create ``name`` (a random 64-hex name when None); an existing volume is returned as it is."""
        if name is None:
            name = secrets.token_hex(32)
            anonymous = True
        validate_volume_name(name)
        if self.exists(name):
            return self.get(name)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        directory = self.root / name
        try:
            (directory / "_data").mkdir(parents=True, exist_ok=True, mode=0o755)
            tmp = temporary_sibling(self._meta(name))
            tmp.write_text(json.dumps({"CreatedAt": created, "Labels": labels or {}, "Anonymous": anonymous}))
            os.replace(tmp, self._meta(name))
        except OSError as err:
            raise from_oserror(err, f"volume {name}") from err
        return Volume(name, directory / "_data", created, labels or {}, anonymous)

    def list(self) -> list[Volume]:
        volumes = []
        for entry in sorted(os.listdir(self.root)):
            if self.exists(entry):
                with contextlib.suppress(NotFound):
                    volumes.append(self.get(entry))
        return volumes

    def remove(self, name: str, *, in_use_by: Sequence[str] = ()) -> None:
        if not self.exists(name):
            raise NotFound(f"get {name}: no such volume")
        if in_use_by:
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(in_use_by)}]")
        try:
            shutil.rmtree(self.root / name)
        except OSError as err:
            raise from_oserror(err, f"volume {name}") from err

    def usage(self, name: str) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root / name / "_data"):
            for item in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, item)).st_blocks * 512
        return total


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for attr in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
    return False


def _copy_entry(src: str, dst: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        if not os.path.isdir(dst) or os.path.islink(dst):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            os.mkdir(dst, 0o700)
    else:
        if os.path.lexists(dst):
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            else:
                os.unlink(dst)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(src, dst, follow_symlinks=False)
        else:
            return  # devices, fifos and sockets are not seeded
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def read_from_layers(layers_bottom_up: Sequence[Path], path: str, limit: int) -> bytes | None:
    """The regular file at ``path`` as the image shows it, read straight from its layers; None when the image has
    no regular file there (missing, deleted, a symlink, a directory, or under a path component that is not a
    directory). The rules are :func:`seed_from_layers`'s: the uppermost layer holding the path wins, a whiteout
    deletes, an opaque directory hides what lower layers put under it, nothing is followed through a symlink.
    InvalidArgument when the file is larger than ``limit`` bytes."""
    parts = Path(path.strip("/")).parts
    if not parts:
        return None
    for layer in reversed(layers_bottom_up):
        probe = layer
        for depth, part in enumerate(parts):
            probe = probe / part
            try:
                st = os.lstat(probe)
            except FileNotFoundError:
                # Not in this layer: lower layers show through unless a directory above it is opaque here.
                ancestor = layer
                for directory in parts[:depth]:
                    ancestor = ancestor / directory
                    if _is_opaque(str(ancestor)):
                        return None
                break
            if _is_whiteout(st):
                return None
            if depth < len(parts) - 1:
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a file or symlink in this layer hides everything below the path
                continue
            if not stat.S_ISREG(st.st_mode):
                return None
            fd = os.open(probe, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise InvalidArgument(f"{path} in the image is larger than {limit} bytes")
            return data
    return None


def seed_from_layers(
    layers_bottom_up: Sequence[Path], path: str, target: Path, *, only: frozenset[str] | None = None
) -> bool:
    """Copy the image's content at ``path`` into the empty directory ``target`` (Docker's volume seeding).

    ``layers_bottom_up`` are overlay layer directories (or one full tree): later layers win, overlay whiteouts
    delete, opaque directories hide what lower layers put there. Nothing is followed through a symlink: a
    ``path`` whose component is a symlink in the image is not seeded. ``only`` restricts the copy to those
    names directly under ``path``. Returns whether anything was copied.
    """
    relative = path.strip("/")
    copied = False
    try:
        with os.scandir(target) as entries:
            if any(entries):
                return False
        for layer in layers_bottom_up:
            source = layer / relative if relative else layer
            walk = [source]
            probe = layer
            blocked = False
            for part in Path(relative).parts:
                probe = probe / part
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(probe)
                    if _is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                        blocked = True
                if blocked:
                    break
            if blocked:
                # The path is deleted (or not a directory) in this layer: lower content is gone.
                for child in list(target.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                continue
            if not source.is_dir() or source.is_symlink():
                continue
            if _is_opaque(str(source)):
                for child in list(target.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            while walk:
                current = walk.pop()
                rel = os.path.relpath(current, source)
                dest_dir = target if rel == "." else target / rel
                for entry in os.scandir(current):
                    if only is not None and rel == "." and entry.name not in only:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    dst = str(dest_dir / entry.name)
                    if _is_whiteout(st):
                        if os.path.isdir(dst) and not os.path.islink(dst):
                            shutil.rmtree(dst)
                        elif os.path.lexists(dst):
                            os.unlink(dst)
                        continue
                    if stat.S_ISDIR(st.st_mode) and _is_opaque(entry.path) and os.path.isdir(dst):
                        shutil.rmtree(dst)
                    _copy_entry(entry.path, dst, st)
                    copied = True
                    if stat.S_ISDIR(st.st_mode):
                        walk.append(Path(entry.path))
    except OSError as err:
        raise from_oserror(err, f"seeding volume at {path}") from err
    return copied
