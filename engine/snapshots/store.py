"""Snapshot metadata: one small SQLite database per snapshotter root, plus process-ownership tokens.

Why SQLite: every state change (create, commit, remove) must be atomic and several processes may open the same
root. SQLite gives both: a change is one ``BEGIN IMMEDIATE`` transaction (which is also the cross-process write
lock: directory moves that must agree with the metadata happen inside it), readers see a consistent snapshot (WAL),
and a crash rolls an unfinished transaction back. Connections are pooled per transaction (see :class:`MetaStore`),
so the store is safe to use from any thread.

Durability: ``synchronous=NORMAL`` (WAL), like the image store: a transaction survives any process crash, and a
power loss can only lose the last few, leaving the database consistent. That is all the layer trees themselves
offer (their files are not fsynced: they are re-created from the content store), and what a crash loses is
unreferenced and cleaned up (a renamed snapshot directory without its record) or recreated (an image's missing
snapshot is unpacked again). Syncing each transaction cost three fsyncs, ~1.5 ms, per container create and remove.

Table ``snapshots``: ``id`` (the directory name ``snapshots/<id>``), ``key`` (unique: active key or committed
name), ``parent`` (id of a committed snapshot), ``kind``, ``created``, ``labels`` (JSON), ``owner`` (token of the
creating process, for active snapshots), ``size`` (bytes, fixed at commit), ``link`` (overlay's short link name).

Owner tokens are ``"<pid>:<start time>"`` (start time from ``/proc/<pid>/stat``), so a recycled pid is not mistaken
for the original process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from engine.errors import Conflict, InvalidArgument, NotFound, StoreError
from engine.snapshots.base import Kind, SnapshotInfo

__all__ = ["MetaStore", "Record", "Transaction", "owner_alive", "owner_token", "validate_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL UNIQUE,
    parent  INTEGER REFERENCES snapshots(id),
    kind    TEXT NOT NULL CHECK (kind IN ('committed', 'active', 'view')),
    created REAL NOT NULL,
    labels  TEXT NOT NULL,
    owner   TEXT,
    size    INTEGER,
    link    TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""
_COLUMNS = "s.id, s.key, s.parent, p.key, s.kind, s.created, s.labels, s.owner, s.size, s.link"
_MAX_KEY = 1024


def validate_key(key: object, what: str = "snapshot key") -> str:
    """Return ``key`` if it is a usable snapshot key (non-empty text, no NUL, at most 1024 characters)."""
    if not isinstance(key, str) or not key or "\0" in key or len(key) > _MAX_KEY:
        raise InvalidArgument(f"invalid {what} {key!r}: expected 1 to {_MAX_KEY} characters without NUL")
    return key


def _start_time(pid: int) -> str | None:
    """The start time field of ``/proc/<pid>/stat``; ``None`` if the process is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may contain spaces
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def owner_token(pid: int | None = None) -> str:
    """Identify a process (default: this one) across pid reuse."""
    pid = os.getpid() if pid is None else pid
    started = _start_time(pid)
    if started is None:
        raise StoreError(f"process {pid}: not running")
    return f"{pid}:{started}"


def owner_alive(token: str) -> bool:
    """Whether the process named by ``token`` still runs. A malformed token counts as dead."""
    pid_text, _, started = token.partition(":")
    if not pid_text.isdigit() or not started:
        return False
    return _start_time(int(pid_text)) == started


@dataclass(frozen=True, slots=True)
class Record:
    """One row of ``snapshots``; ``parent_key`` is joined in for convenience."""

    id: int
    key: str
    parent_id: int | None
    parent_key: str | None
    kind: Kind
    created: float
    labels: Mapping[str, str]
    owner: str | None
    size: int | None
    link: str | None

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(self.key, self.parent_key, self.kind, self.created, dict(self.labels))


def _record(row: tuple[object, ...]) -> Record:
    labels = json.loads(cast(str, row[6]))
    return Record(
        id=cast(int, row[0]),
        key=cast(str, row[1]),
        parent_id=cast("int | None", row[2]),
        parent_key=cast("str | None", row[3]),
        kind=cast(Kind, row[4]),
        created=cast(float, row[5]),
        labels=labels,
        owner=cast("str | None", row[7]),
        size=cast("int | None", row[8]),
        link=cast("str | None", row[9]),
    )


class Transaction:
    """Queries and changes inside one transaction (see :meth:`MetaStore.write` / :meth:`MetaStore.read`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _select(self, where: str, args: tuple[object, ...] = ()) -> list[Record]:
        sql = f"SELECT {_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent {where}"
        return [_record(row) for row in self._conn.execute(sql, args)]

    def get(self, key: str) -> Record | None:
        found = self._select("WHERE s.key = ?", (key,))
        return found[0] if found else None

    def require(self, key: str) -> Record:
        record = self.get(key)
        if record is None:
            raise NotFound(f"snapshot {key!r}: no such snapshot")
        return record

    def require_committed(self, key: str) -> Record:
        record = self.require(key)
        if record.kind != "committed":
            raise Conflict(f"snapshot {key!r}: is {record.kind}, only committed snapshots can be parents")
        return record

    def all(self) -> list[Record]:
        return self._select("ORDER BY s.id")

    def ids(self) -> set[int]:
        return {cast(int, row[0]) for row in self._conn.execute("SELECT id FROM snapshots")}

    def chain(self, record: Record) -> list[Record]:
        """The ancestors of ``record``, its parent first (empty without a parent)."""
        if record.parent_id is None:
            return []
        sql = (
            "WITH RECURSIVE up(id, depth) AS (SELECT ?, 0 UNION ALL "
            "SELECT s.parent, up.depth + 1 FROM snapshots s JOIN up ON s.id = up.id WHERE s.parent IS NOT NULL) "
            f"SELECT {_COLUMNS} FROM up JOIN snapshots s ON s.id = up.id "
            "LEFT JOIN snapshots p ON p.id = s.parent ORDER BY up.depth"
        )
        return [_record(row) for row in self._conn.execute(sql, (record.parent_id,))]

    def has_children(self, record: Record) -> bool:
        row = self._conn.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (record.id,)).fetchone()
        return row is not None

    def insert(
        self, key: str, parent: Record | None, kind: Kind, labels: Mapping[str, str], owner: str | None,
        link: str | None,
    ) -> int:
        if self.get(key) is not None:
            raise Conflict(f"snapshot {key!r}: already exists")
        cursor = self._conn.execute(
            "INSERT INTO snapshots (key, parent, kind, created, labels, owner, link) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, parent.id if parent else None, kind, time.time(), json.dumps(dict(labels), sort_keys=True),
             owner, link),
        )
        return cast(int, cursor.lastrowid)

    def commit_active(self, record: Record, name: str, labels: Mapping[str, str], size: int) -> None:
        if self.get(name) is not None:
            raise Conflict(f"snapshot {name!r}: already exists")
        self._conn.execute(
            "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, owner = NULL, size = ? WHERE id = ?",
            (name, json.dumps(dict(labels), sort_keys=True), size, record.id),
        )

    def set_parent(self, record: Record, parent: Record | None) -> None:
        """Change ``record``'s parent (the caller checked that this is meaningful: see ``rebase``)."""
        self._conn.execute(
            "UPDATE snapshots SET parent = ? WHERE id = ?", (parent.id if parent else None, record.id)
        )

    def delete(self, record: Record) -> None:
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (record.id,))


class MetaStore:
    """The metadata database at ``path`` (created with its schema on first use).

    Connections are pooled: opening one and closing it per transaction cost ~1 ms (closing the last
    connection checkpoints and deletes the WAL), a third of a container's snapshot prepare. Each transaction
    takes an idle connection (or opens one), so concurrent threads (parallel layer commits) each get their own;
    a connection that raised an error is closed rather than reused. Pooled connections die with the process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        try:
            conn = self._connect()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise StoreError(f"snapshot metadata {path}: {err}") from err
        self._idle.append(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring: durability
        return conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Transaction]:
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        reusable = False
        try:
            if conn is None:
                conn = self._connect()
            conn.execute(begin)
            try:
                yield Transaction(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                reusable = True
                raise
            conn.execute("COMMIT")
            reusable = True
        except sqlite3.Error as err:
            reusable = False
            raise StoreError(f"snapshot metadata {self.path}: {err}") from err
        finally:
            if conn is not None:
                if reusable and not conn.in_transaction:
                    with self._pool_lock:
                        self._idle.append(conn)
                else:
                    conn.close()

    def close(self) -> None:
        """Close the idle connections (a transaction still running closes its own at the end)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def write(self) -> AbstractContextManager[Transaction]:
        """A write transaction; it holds the store's cross-process lock until it ends (commit or rollback)."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> AbstractContextManager[Transaction]:
        """A read-only, consistent view."""
        return self._transaction("BEGIN")
