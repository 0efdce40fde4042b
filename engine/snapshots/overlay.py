"""The overlay snapshotter: each snapshot directory is one overlayfs layer.

Layout (like Docker's overlay2) under ``<state>/snapshots/overlay/``::

    snapshots/<id>/fs       the layer (committed) or upperdir (active)
    snapshots/<id>/work     overlay's workdir (active snapshots)
    snapshots/<id>/link     the snapshot's short link name
    l/<LINK>                -> ../snapshots/<id>/fs (26 characters, as Docker)

Mounts, as containerd's overlay snapshotter (``mounts()``), with Docker's short lowerdirs:

* active, no parent      -> ``bind`` of its ``fs``, read-write (overlay needs at least one lower layer);
* active with parents    -> ``overlay`` with ``lowerdir=l/A:l/B``, ``upperdir``, ``workdir``;
* view, no parent        -> read-only ``bind`` of its own (empty) ``fs``;
* view of one layer      -> read-only ``bind`` of the parent's ``fs`` (overlay refuses a single lowerdir
  without an upperdir);
* view of 2+ layers      -> ``overlay`` with ``lowerdir`` only (read-only by construction).

Overlay paths are relative to ``Mount.cwd`` (this root): 29 bytes per layer (``l/`` + 26 + ``:``) keep a
130-layer chain within mount(2)'s one-page (4096-byte) option limit, where absolute paths would not.

Unprivileged (``userxattr=True``), overlay keeps its whiteout metadata in ``user.overlay.*`` xattrs, so layers
must be applied in ``overlay-user`` mode.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from engine.errors import Conflict, from_oserror
from engine.snapshots.base import Kind, Mount
from engine.snapshots.common import DirectorySnapshotter
from engine.snapshots.store import Record, Transaction, validate_key

__all__ = ["OverlaySnapshotter", "volatile"]

LINK_LENGTH = 26


def new_link_id() -> str:
    """A random 26-character upper-case base32 id (Docker's ``generateID``)."""
    return base64.b32encode(secrets.token_bytes(20)).decode()[:LINK_LENGTH]


class OverlaySnapshotter(DirectorySnapshotter):
    """Overlayfs-backed snapshots under ``root`` (normally ``<state>/snapshots/overlay``).

    Use :func:`engine.snapshots.select.open_snapshotter` to get one: it checks overlay really mounts there first.
    """

    name = "overlay"

    def __init__(self, root: Path, *, userxattr: bool = False) -> None:
        super().__init__(root)
        self.userxattr = userxattr
        self.whiteout_mode = "overlay-user" if userxattr else "overlay"
        self._links = root / "l"
        try:
            self._links.mkdir(exist_ok=True)
        except OSError as err:
            raise from_oserror(err, f"snapshot root {root}") from err

    def _populate(self, new_dir: Path, kind: Kind, chain: list[Record]) -> None:
        (new_dir / "fs").mkdir(mode=0o755)
        if kind == "active":
            (new_dir / "work").mkdir(mode=0o700)

    def _new_link(self) -> str:
        return new_link_id()

    def _placed(self, record_id: int, link: str | None) -> None:
        assert link is not None  # _new_link always returns one
        (self._snapshots / str(record_id) / "link").write_text(link)
        os.symlink(f"../snapshots/{record_id}/fs", self._links / link)

    def _unplaced(self, record: Record) -> None:
        if record.link is None:
            return
        try:
            os.unlink(self._links / record.link)
        except FileNotFoundError:
            return
        except OSError as err:
            raise from_oserror(err, f"remove snapshot {record.key!r}") from err

    def _cleanup_extra(self, txn: Transaction) -> None:
        """Drop short links whose snapshot is gone (a crash between creating the link and recording it)."""
        known = {record.link for record in txn.all()}
        try:
            names = os.listdir(self._links)
        except OSError as err:
            raise from_oserror(err, f"snapshot links {self._links}") from err
        for name in names:
            if name not in known:
                try:
                    os.unlink(self._links / name)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    raise from_oserror(err, f"cleanup {self._links / name}") from err

    def rebase(self, key: str, parent: str | None) -> None:
        """Stack active ``key``, created without a parent, on committed ``parent``, in one transaction.

        Why: an overlay layer's directory does not depend on what lies below it, so an unpacker may apply a
        layer into a parentless temporary snapshot while its parent is still being unpacked, then rebase it once
        the parent is committed and commit it as usual. Nothing moves on disk; until ``commit`` the snapshot is
        as temporary as any other (``cleanup`` removes it when its process died). ``key`` must not be mounted
        (its mounts change with its parent). ``Conflict`` if ``key`` is not active or already has a parent,
        ``NotFound`` / ``Conflict`` if ``parent`` is missing or not committed.
        """
        validate_key(key)
        if parent is not None:
            validate_key(parent, "parent snapshot key")
        with self._store.write() as txn:
            record = txn.require(key)
            if record.kind != "active":
                raise Conflict(f"snapshot {key!r}: is {record.kind}, cannot rebase it")
            if record.parent_id is not None:
                raise Conflict(f"snapshot {key!r}: already has parent {record.parent_key!r}, cannot rebase it")
            if parent is not None:
                txn.set_parent(record, txn.require_committed(parent))

    def _relative(self, record: Record, leaf: str) -> str:
        return f"snapshots/{record.id}/{leaf}"

    def _mounts(self, record: Record, chain: list[Record]) -> list[Mount]:
        if not chain:
            mode = "ro" if record.kind == "view" else "rw"
            return [Mount("bind", str(self._fs(record)), (mode, "rbind"))]
        if record.kind == "view" and len(chain) == 1:
            return [Mount("bind", str(self._fs(chain[0])), ("ro", "rbind"))]
        lowers = ":".join(f"l/{parent.link}" for parent in chain)
        options = [f"lowerdir={lowers}"]
        if record.kind == "active":
            options += [f"upperdir={self._relative(record, 'fs')}", f"workdir={self._relative(record, 'work')}"]
        if self.userxattr:
            options.append("userxattr")
        return [Mount("overlay", "overlay", tuple(options), cwd=str(self.root))]

    def _parent_dirs(self, record: Record, chain: list[Record]) -> list[Path]:
        return [self._fs(parent) for parent in chain]


def volatile(mounts: list[Mount]) -> list[Mount]:
    """``mounts`` with overlay's ``volatile`` option on each writable overlay: for a writable layer that is thrown
    away with its container (``--rm``), as Podman does. Without it, the last unmount of an overlay -- when the
    container's last process exits and its mount namespace goes -- syncs the whole upper filesystem, which is the
    state root's: every dirty page of it, often tens of milliseconds between a container's exit and its monitor
    hearing of it. After a host crash such an upper directory is unusable, which a removed container never
    needs. Kernels before 5.10 refuse the option; the executor then mounts without it."""
    return [Mount(m.type, m.source, (*m.options, "volatile"), m.cwd)
            if m.type == "overlay" and any(o.startswith("upperdir=") for o in m.options) else m for m in mounts]
