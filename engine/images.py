"""The image store: which images exist, their layers, and the names (tags, repo digests) pointing at them.

One SQLite database (``<state>/images.db``) in WAL mode with foreign keys on. The schema version is SQLite's
``PRAGMA user_version``; :data:`_MIGRATIONS` is the ordered list of steps from an empty file, and opening a
database runs the missing steps in one transaction. A database newer than this code is refused rather than
misread.

Blobs themselves live in the content store; a record names them by digest (:meth:`ImageStore.blob_roots` is
what the blob GC must keep).

Concurrency:

* Several processes (the CLI and the app) may open the same file. Every write is one short
  ``BEGIN IMMEDIATE`` transaction (so two writers never deadlock upgrading read locks) and ``busy_timeout``
  makes a writer wait for the other rather than fail.
* Within a process, one :class:`ImageStore` holds one connection opened with ``check_same_thread=False`` and
  serialises every use with a lock, so it may be called from any thread (the engine calls it through
  ``asyncio.to_thread``).

Names are stored normalised: tags as ``docker.io/library/busybox:latest``, repo digests as
``docker.io/library/busybox@sha256:...``. A tag names one image; a repo digest may name several (one per
platform pulled through the same index).
"""

from __future__ import annotations

import builtins
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.digest import chain_id, is_digest, validate_digest
from engine.errors import Conflict, InvalidArgument, InvalidReference, NotFound, StoreError
from engine.reference import Reference, parse_reference

__all__ = ["SCHEMA_VERSION", "ImageRecord", "ImageStore", "LayerRecord"]

_BUSY_TIMEOUT_MS = 10_000
_ID_PREFIX = re.compile(r"^(?:sha256:)?([a-f0-9]{4,64})$")


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """One layer blob of an image, bottom first: the (possibly compressed) blob and its uncompressed DiffID."""

    digest: str
    media_type: str
    size: int
    diff_id: str


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image: its id (the config digest), where it came from, and the names pointing at it.

    ``size`` is the compressed layers plus config until :meth:`ImageStore.set_unpacked_size` records the
    unpacked size, which it then reports instead. ``added`` is when the image first entered the store
    (a record put with ``added <= 0`` gets the current time).
    """

    id: str
    manifest_digest: str
    manifest_media_type: str
    index_digest: str | None
    config_digest: str
    layers: tuple[LayerRecord, ...]
    created: str | None
    architecture: str
    os: str
    variant: str | None
    size: int
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    added: float


# --- schema ---------------------------------------------------------------------------------------------------

_V1 = """
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    index_digest TEXT,
    config_digest TEXT NOT NULL,
    created TEXT,
    architecture TEXT NOT NULL,
    os TEXT NOT NULL,
    variant TEXT,
    size INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE tags (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX tags_image ON tags(image_id);
CREATE TABLE repo_digests (
    name TEXT NOT NULL,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (name, image_id)
);
CREATE INDEX repo_digests_image ON repo_digests(image_id);
"""

# v2: keep the compressed size and record the unpacked size beside it (NULL until unpacked).
_V2 = """
ALTER TABLE images ADD COLUMN unpacked_size INTEGER;
"""

_MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(_MIGRATIONS)


def _sqlite_error(path: Path, err: sqlite3.Error) -> StoreError:
    return StoreError(f"{path}: {err}")


def _repository_tag(ref: Reference) -> str:
    if ref.digest is not None:
        raise InvalidArgument(f"{ref.familiar}: a digest reference cannot be used as a tag")
    return f"{ref.repository}:{ref.tag or 'latest'}"


class ImageStore:
    """Image records in ``images.db`` (see the module docstring for the schema and concurrency rules)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise _sqlite_error(path, err) from err
        try:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.Error as err:
            self._db.close()
            raise _sqlite_error(path, err) from err
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path.name} schema v{version} is newer than this Kitebox understands")
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {step + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- plumbing -------------------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs (one read transaction)."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    yield self._db
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as err:
                raise _sqlite_error(self.path, err) from err

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken up front (``BEGIN IMMEDIATE``) so it cannot deadlock."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                raise _sqlite_error(self.path, err) from err

    def _records(self, db: sqlite3.Connection, where: str, args: Iterable[object]) -> list[ImageRecord]:
        rows = db.execute(
            "SELECT id, manifest_digest, manifest_media_type, index_digest, config_digest, created,"
            " architecture, os, variant, COALESCE(unpacked_size, size), added"
            f" FROM images {where} ORDER BY added DESC, id",
            tuple(args),
        ).fetchall()
        if not rows:
            return []
        ids = [row[0] for row in rows]
        marks = ",".join("?" * len(ids))
        layers: dict[str, list[LayerRecord]] = {i: [] for i in ids}
        for image_id, digest, media_type, size, diff_id in db.execute(
            f"SELECT image_id, digest, media_type, size, diff_id FROM layers WHERE image_id IN ({marks})"
            " ORDER BY image_id, position",
            ids,
        ):
            layers[image_id].append(LayerRecord(digest, media_type, size, diff_id))
        tags: dict[str, list[str]] = {i: [] for i in ids}
        for name, image_id in db.execute(
            f"SELECT name, image_id FROM tags WHERE image_id IN ({marks}) ORDER BY name", ids
        ):
            tags[image_id].append(name)
        digests: dict[str, list[str]] = {i: [] for i in ids}
        for name, image_id in db.execute(
            f"SELECT name, image_id FROM repo_digests WHERE image_id IN ({marks}) ORDER BY name", ids
        ):
            digests[image_id].append(name)
        return [
            ImageRecord(
                id=row[0],
                manifest_digest=row[1],
                manifest_media_type=row[2],
                index_digest=row[3],
                config_digest=row[4],
                layers=tuple(layers[row[0]]),
                created=row[5],
                architecture=row[6],
                os=row[7],
                variant=row[8],
                size=row[9],
                repo_tags=tuple(tags[row[0]]),
                repo_digests=tuple(digests[row[0]]),
                added=row[10],
            )
            for row in rows
        ]

    @staticmethod
    def _require(db: sqlite3.Connection, image_id: str) -> None:
        if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
            raise NotFound(f"No such image: {image_id}")

    # --- writing --------------------------------------------------------------------------------------------

    def put(self, record: ImageRecord) -> None:
        """Insert or update an image and its layers; the record's tags and repo digests are added (a tag moves
        to this image), never removed. The first ``added`` time and any unpacked size are kept on update."""
        for digest in (record.id, record.manifest_digest, record.config_digest):
            validate_digest(digest)
        if record.index_digest is not None:
            validate_digest(record.index_digest)
        for layer in record.layers:
            validate_digest(layer.digest)
            validate_digest(layer.diff_id)
        tags = [_repository_tag(parse_reference(tag)) for tag in record.repo_tags]
        repo_digests = [self._normalise_repo_digest(text) for text in record.repo_digests]
        added = record.added if record.added > 0 else time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO images (id, manifest_digest, manifest_media_type, index_digest, config_digest,"
                " created, architecture, os, variant, size, added) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest,"
                " manifest_media_type = excluded.manifest_media_type, index_digest = excluded.index_digest,"
                " config_digest = excluded.config_digest, created = excluded.created,"
                " architecture = excluded.architecture, os = excluded.os, variant = excluded.variant,"
                " size = excluded.size",
                (
                    record.id,
                    record.manifest_digest,
                    record.manifest_media_type,
                    record.index_digest,
                    record.config_digest,
                    record.created,
                    record.architecture,
                    record.os,
                    record.variant,
                    record.size,
                    added,
                ),
            )
            db.execute("DELETE FROM layers WHERE image_id = ?", (record.id,))
            db.executemany(
                "INSERT INTO layers (image_id, position, digest, media_type, size, diff_id) VALUES (?,?,?,?,?,?)",
                [
                    (record.id, position, layer.digest, layer.media_type, layer.size, layer.diff_id)
                    for position, layer in enumerate(record.layers)
                ],
            )
            db.executemany(
                "INSERT INTO tags (name, image_id) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                [(tag, record.id) for tag in tags],
            )
            db.executemany(
                "INSERT OR IGNORE INTO repo_digests (name, image_id) VALUES (?, ?)",
                [(name, record.id) for name in repo_digests],
            )

    def tag(self, image_id: str, ref: Reference) -> str | None:
        """Point ``ref``'s tag at ``image_id`` (moving it); return the id of the image that lost it, if any."""
        name = _repository_tag(ref)
        with self._write() as db:
            self._require(db, image_id)
            row = db.execute("SELECT image_id FROM tags WHERE name = ?", (name,)).fetchone()
            db.execute(
                "INSERT INTO tags (name, image_id) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                (name, image_id),
            )
        previous: str | None = row[0] if row is not None else None
        return previous if previous != image_id else None

    def untag(self, ref: Reference) -> str:
        """Remove a tag (or, for ``repo@digest``, that repo digest); return the image id it pointed at."""
        with self._write() as db:
            if ref.digest is not None:
                name = f"{ref.repository}@{ref.digest}"
                row = db.execute(
                    "SELECT image_id FROM repo_digests WHERE name = ? ORDER BY image_id LIMIT 1", (name,)
                ).fetchone()
                if row is not None:
                    db.execute("DELETE FROM repo_digests WHERE name = ?", (name,))
            else:
                name = _repository_tag(ref)
                row = db.execute("SELECT image_id FROM tags WHERE name = ?", (name,)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM tags WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"No such image: {ref.familiar}")
        image_id: str = row[0]
        return image_id

    def add_repo_digest(self, image_id: str, repo_digest: str) -> None:
        """Record that ``image_id`` is ``repo@sha256:...`` (what it was pulled as)."""
        name = self._normalise_repo_digest(repo_digest)
        with self._write() as db:
            self._require(db, image_id)
            db.execute("INSERT OR IGNORE INTO repo_digests (name, image_id) VALUES (?, ?)", (name, image_id))

    @staticmethod
    def _normalise_repo_digest(text: str) -> str:
        ref = parse_reference(text)
        if ref.digest is None:
            raise InvalidArgument(f"{text}: a repo digest must be repository@sha256:<hex>")
        return f"{ref.repository}@{ref.digest}"

    def delete(self, image_id: str) -> None:
        """Remove the image, its layers and every name pointing at it. ``NotFound`` if absent."""
        with self._write() as db:
            if db.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount == 0:
                raise NotFound(f"No such image: {image_id}")

    def set_unpacked_size(self, image_id: str, size: int) -> None:
        """Record the image's unpacked size, which :attr:`ImageRecord.size` reports from now on."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"image {image_id}: invalid unpacked size {size!r}")
        with self._write() as db:
            if db.execute("UPDATE images SET unpacked_size = ? WHERE id = ?", (size, image_id)).rowcount == 0:
                raise NotFound(f"No such image: {image_id}")

    # --- reading --------------------------------------------------------------------------------------------

    def get(self, image_id: str) -> ImageRecord:
        with self._read() as db:
            found = self._records(db, "WHERE id = ?", (image_id,))
        if not found:
            raise NotFound(f"No such image: {image_id}")
        return found[0]

    def list(self) -> list[ImageRecord]:
        """Every image, most recently added first."""
        with self._read() as db:
            return self._records(db, "", ())

    def lookup(self, text: str) -> ImageRecord:
        """Find an image the way ``docker`` does, trying in order:

        1. a full id, ``sha256:<64 hex>`` or the bare 64 hex digits;
        2. a reference: ``name[:tag]`` (tag defaulting to ``latest``) by tag, ``name@sha256:...`` by repo digest;
        3. a unique id prefix of at least 4 hex digits, with or without ``sha256:`` (``Conflict`` if several
           images share it).

        ``NotFound("No such image: <text>")`` when nothing matches.
        """
        full = "sha256:" + text if re.fullmatch(r"[a-f0-9]{64}", text) else text
        with self._read() as db:
            if is_digest(full):
                found = self._records(db, "WHERE id = ?", (full,))
                if found:
                    return found[0]
            found = self._by_reference(db, text)
            if found:
                return found[0]
            match = _ID_PREFIX.match(text)
            if match:
                prefix = "sha256:" + match.group(1)
                found = self._records(db, "WHERE id >= ? AND id < ?", (prefix, prefix + "g"))
                if len(found) > 1:
                    raise Conflict(f"{text}: ambiguous image id prefix ({len(found)} images match)")
                if found:
                    return found[0]
        raise NotFound(f"No such image: {text}")

    def _by_reference(self, db: sqlite3.Connection, text: str) -> builtins.list[ImageRecord]:
        try:
            ref = parse_reference(text)
        except InvalidReference:
            return []
        if ref.digest is not None:
            name = f"{ref.repository}@{ref.digest}"
            return self._records(db, "WHERE id IN (SELECT image_id FROM repo_digests WHERE name = ?)", (name,))
        name = _repository_tag(ref)
        return self._records(db, "WHERE id IN (SELECT image_id FROM tags WHERE name = ?)", (name,))

    def blob_roots(self) -> set[str]:
        """Every blob digest some image needs: manifests, indexes, configs and layers."""
        roots: set[str] = set()
        with self._read() as db:
            for manifest, index, config in db.execute(
                "SELECT manifest_digest, index_digest, config_digest FROM images"
            ):
                roots.update(d for d in (manifest, index, config) if d)
            roots.update(row[0] for row in db.execute("SELECT DISTINCT digest FROM layers"))
        return roots

    def chain_roots(self) -> set[str]:
        """The ChainID of every layer prefix of every image: the snapshots the snapshot GC must keep."""
        roots: set[str] = set()
        with self._read() as db:
            rows = db.execute("SELECT image_id, diff_id FROM layers ORDER BY image_id, position").fetchall()
        parent: str | None = None
        current: str | None = None
        for image_id, diff_id in rows:
            if image_id != current:
                current, parent = image_id, None
            parent = chain_id(parent, diff_id)
            roots.add(parent)
        return roots

