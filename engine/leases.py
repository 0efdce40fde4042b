"""Leases: what a pull or load in progress needs, so that garbage collection never removes it.

Blobs are committed (and snapshots unpacked) before the image record that references them exists. Until that
record is written, a concurrent ``rmi``/``prune`` in this process or another one (the app and a CLI) would see
them as garbage. Each operation therefore holds a lease: a small JSON file under ``<root>/leases`` naming the
digests and ChainIDs it needs, owned by its process (pid + start time, so a reused pid is not mistaken for the
owner). The collector adds every live lease's names to its roots and removes leases whose owner is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.errors import from_oserror
from engine.tmpnames import temporary_sibling

__all__ = ["EVERYTHING", "Lease", "LeaseManager"]

EVERYTHING = "*"
"""A lease name that protects everything (an archive load, whose blobs are only known as they arrive)."""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


class Lease:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: set[str] = set()

    def add(self, names: Iterable[str]) -> None:
        """Protect ``names`` (digests or ChainIDs) from collection until the lease ends."""
        new = set(names) - self.names
        if not new:
            return
        self.names |= new
        tmp = temporary_sibling(self.path)
        payload = {"pid": os.getpid(), "start": _start_time(os.getpid()), "names": sorted(self.names)}
        try:
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self.path)
        except OSError as err:
            raise from_oserror(err, f"lease {self.path}") from err


class LeaseManager:
    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def hold(self) -> Iterator[Lease]:
        try:
            self.root.mkdir(exist_ok=True, mode=0o700)
        except OSError as err:
            raise from_oserror(err, f"lease directory {self.root}") from err
        lease = Lease(self.root / f"{os.getpid()}-{secrets.token_hex(6)}.json")
        try:
            yield lease
        finally:
            with contextlib.suppress(FileNotFoundError):
                lease.path.unlink()

    def active(self) -> set[str]:
        """Every name held by a live lease; leases of dead processes are removed on the way."""
        names: set[str] = set()
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return names
        for entry in entries:
            path = self.root / entry
            if not entry.endswith(".json"):
                continue
            try:
                payload = json.loads(path.read_text())
                pid, start = int(payload["pid"]), payload.get("start")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written right now, or foreign: never collect on a guess
            if _start_time(pid) is None or (start is not None and _start_time(pid) != start):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            names.update(str(name) for name in payload.get("names", []))
        return names
