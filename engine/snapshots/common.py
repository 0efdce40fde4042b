"""Lifecycle shared by the directory-based snapshotters (overlay and copy).

Layout under a snapshotter's root (``<state>/snapshots/<name>/``)::

    metadata.db                  MetaStore (SQLite)
    snapshots/<id>/fs            the snapshot's directory (overlay: its layer; copy: a full tree)
    snapshots/<id>/...           implementation extras (overlay: work/, link)
    snapshots/new-<owner>-<rnd>  a snapshot being created by process <owner> (not yet recorded)
    snapshots/trash-<rnd>        a removed snapshot's directory, being deleted

Creating: the directory is populated under ``new-<owner>-<rnd>`` *outside* the write lock (the copy snapshotter's
full copy may take a while), then one write transaction re-checks the key and parent, records the snapshot and
renames the directory to ``snapshots/<id>``. Removing: one write transaction deletes the record and renames the
directory to ``trash-<rnd>``; the tree is deleted after the lock is released. Anything a crash leaves behind is
unreferenced and removed by :meth:`DirectorySnapshotter.cleanup`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from engine.errors import Conflict, InvalidArgument, from_oserror
from engine.snapshots.base import TEMPORARY_LABEL, Kind, Mount, SnapshotInfo, WhiteoutMode
from engine.snapshots.store import MetaStore, Record, Transaction, owner_alive, owner_token, validate_key

__all__ = ["DirectorySnapshotter", "disk_usage", "remove_tree"]

_NEW = "new-"
_TRASH = "trash-"


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (``st_blocks``), each hard-linked inode counted once; symlinks not followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path)]
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise from_oserror(err, f"disk usage of {path}") from err
    total += top.st_blocks * 512
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink > 1:
                        ident = (st.st_dev, st.st_ino)
                        if ident in seen:
                            continue
                        seen.add(ident)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError as err:
            raise from_oserror(err, f"disk usage of {current}") from err
    return total


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively, tolerating a concurrent remover; other failures raise ``StoreError``.

    Overlay work directories hold a ``work/`` of mode 000 that only root may enter, so on a permission error the
    directory is made accessible (0700) and removed again.
    """

    def on_error(func: object, failed: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, PermissionError) and os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed)
            return
        raise exc

    try:
        shutil.rmtree(path, onerror=on_error)
    except FileNotFoundError:
        return
    except OSError as err:
        raise from_oserror(err, f"remove {path}") from err


class DirectorySnapshotter:
    """Shared implementation; subclasses provide ``_populate``, ``_mounts`` and ``_parent_dirs`` (and may hook
    ``_new_link`` / ``_placed`` / ``_unplaced`` / ``_cleanup_extra``)."""

    name: str
    whiteout_mode: WhiteoutMode

    def __init__(self, root: Path) -> None:
        self.root = root
        self._snapshots = root / "snapshots"
        try:
            self._snapshots.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise from_oserror(err, f"snapshot root {root}") from err
        self._store = MetaStore(root / "metadata.db")

    # --- paths -------------------------------------------------------------------------------------------------

    def _dir(self, record: Record) -> Path:
        return self._snapshots / str(record.id)

    def _fs(self, record: Record) -> Path:
        return self._dir(record) / "fs"

    # --- hooks -------------------------------------------------------------------------------------------------

    def _populate(self, new_dir: Path, kind: Kind, chain: list[Record]) -> None:
        """Fill a fresh snapshot directory (``new_dir`` exists, empty); ``chain`` = parent first."""
        raise NotImplementedError

    def _mounts(self, record: Record, chain: list[Record]) -> list[Mount]:
        raise NotImplementedError

    def _parent_dirs(self, record: Record, chain: list[Record]) -> list[Path]:
        raise NotImplementedError

    def _new_link(self) -> str | None:
        """A short link name to record with a new snapshot (overlay); ``None`` by default."""
        return None

    def _placed(self, record_id: int, link: str | None) -> None:
        """Called inside the write transaction once ``snapshots/<id>`` is in place."""

    def _unplaced(self, record: Record) -> None:
        """Called inside the write transaction when ``record`` is deleted."""

    def _cleanup_extra(self, txn: Transaction) -> None:
        """Called inside cleanup's write transaction for implementation-specific leftovers."""

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def _create(self, key: str, parent: str | None, kind: Kind, labels: Mapping[str, str]) -> list[Mount]:
        validate_key(key)
        if parent is not None:
            validate_key(parent, "parent snapshot key")
        clean_labels = _validate_labels(labels)
        with self._store.read() as txn:
            if txn.get(key) is not None:
                raise Conflict(f"snapshot {key!r}: already exists")
            parent_record = txn.require_committed(parent) if parent is not None else None
            chain = [parent_record, *txn.chain(parent_record)] if parent_record else []
        owner = owner_token()
        new_dir = self._snapshots / f"{_NEW}{owner.replace(':', '-')}-{secrets.token_hex(6)}"
        try:
            new_dir.mkdir()
            self._populate(new_dir, kind, chain)
            with self._store.write() as txn:
                again = txn.require_committed(parent) if parent is not None else None
                if again is not None and parent_record is not None and again.id != parent_record.id:
                    raise Conflict(f"snapshot {parent!r}: replaced while {key!r} was being created")
                link = self._new_link()
                record_id = txn.insert(key, again, kind, clean_labels, owner, link)
                target = self._snapshots / str(record_id)
                if target.exists():  # left by a crash between rename and commit: unreferenced
                    remove_tree(target)
                os.rename(new_dir, target)
                self._placed(record_id, link)
                record = txn.require(key)
                mounts = self._mounts(record, txn.chain(record))
        except OSError as err:
            remove_tree(new_dir)
            raise from_oserror(err, f"create snapshot {key!r}") from err
        except BaseException:
            remove_tree(new_dir)
            raise
        return mounts

    def prepare(self, key: str, parent: str | None, *, labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(key, parent, "active", labels or {})

    def view(self, key: str, parent: str | None) -> list[Mount]:
        return self._create(key, parent, "view", {})

    def mounts(self, key: str) -> list[Mount]:
        with self._store.read() as txn:
            record = txn.require(key)
            if record.kind == "committed":
                raise Conflict(f"snapshot {key!r}: committed snapshots are not mountable, create a view")
            return self._mounts(record, txn.chain(record))

    def commit(self, name: str, key: str, *, size: int | None = None) -> None:
        validate_key(name, "snapshot name")
        with self._store.read() as txn:
            record = self._require_active(txn, key, "commit")
        if size is None:
            size = disk_usage(self._fs(record))
        labels = {k: v for k, v in record.labels.items() if k != TEMPORARY_LABEL}
        with self._store.write() as txn:
            again = self._require_active(txn, key, "commit")
            if again.id != record.id:
                raise Conflict(f"snapshot {key!r}: replaced while being committed")
            txn.commit_active(again, name, labels, size)

    def remove(self, key: str) -> None:
        with self._store.write() as txn:
            record = txn.require(key)
            if txn.has_children(record):
                raise Conflict(f"snapshot {key!r}: other snapshots are based on it")
            txn.delete(record)
            trash = self._trash(record)
        remove_tree(trash)

    def _trash(self, record: Record) -> Path:
        """Inside a write transaction: move a deleted record's directory aside for deletion."""
        self._unplaced(record)
        trash = self._snapshots / f"{_TRASH}{secrets.token_hex(8)}"
        try:
            os.rename(self._dir(record), trash)
        except FileNotFoundError:
            return trash
        except OSError as err:
            raise from_oserror(err, f"remove snapshot {record.key!r}") from err
        return trash

    def stat(self, key: str) -> SnapshotInfo:
        with self._store.read() as txn:
            return txn.require(key).info()

    def walk(self) -> list[SnapshotInfo]:
        with self._store.read() as txn:
            return [record.info() for record in txn.all()]

    def exists(self, key: str) -> bool:
        with self._store.read() as txn:
            return txn.get(key) is not None

    def close(self) -> None:
        self._store.close()

    def usage(self, key: str) -> int:
        with self._store.read() as txn:
            record = txn.require(key)
        if record.kind == "committed" and record.size is not None:
            return record.size
        return disk_usage(self._fs(record))

    def upper_dir(self, key: str) -> Path:
        with self._store.read() as txn:
            return self._fs(self._require_active(txn, key, "write into"))

    def parent_dirs(self, key: str) -> list[Path]:
        with self._store.read() as txn:
            record = txn.require(key)
            return self._parent_dirs(record, txn.chain(record))

    def _require_active(self, txn: Transaction, key: str, verb: str) -> Record:
        record = txn.require(key)
        if record.kind != "active":
            raise Conflict(f"snapshot {key!r}: is {record.kind}, cannot {verb} it")
        return record

    # --- cleanup -----------------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        trash: list[Path] = []
        with self._store.write() as txn:
            for record in txn.all():
                if (
                    record.kind == "active"
                    and record.labels.get(TEMPORARY_LABEL) == "1"
                    and not (record.owner and owner_alive(record.owner))
                    and not txn.has_children(record)
                ):
                    txn.delete(record)
                    trash.append(self._trash(record))
            ids = {str(i) for i in txn.ids()}
            try:
                names = os.listdir(self._snapshots)
            except OSError as err:
                raise from_oserror(err, f"snapshot directory {self._snapshots}") from err
            for name in names:
                path = self._snapshots / name
                if name.startswith(_TRASH):
                    trash.append(path)
                elif name.startswith(_NEW):
                    if not owner_alive(name[len(_NEW) :].rsplit("-", 1)[0].replace("-", ":", 1)):
                        trash.append(path)
                elif name not in ids:
                    moved = self._snapshots / f"{_TRASH}{secrets.token_hex(8)}"
                    try:
                        os.rename(path, moved)
                    except OSError as err:
                        raise from_oserror(err, f"cleanup {path}") from err
                    trash.append(moved)
            self._cleanup_extra(txn)
        for path in trash:
            remove_tree(path)


def _validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise InvalidArgument(f"invalid snapshot label {name!r}={value!r}: expected a name and a text value")
        clean[name] = value
    return clean
