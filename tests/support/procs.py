"""Looking at processes through /proc, for tests that check what runs and what was left behind."""

from __future__ import annotations

import os

__all__ = ["alive", "children", "parent_of", "state_of"]


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(name))
    return found


def parent_of(pid: int) -> int:
    """``pid``'s parent, 0 when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else 0


def state_of(pid: int) -> str:
    """``pid``'s state letter (R, S, T, Z...), "" when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields is not None else ""


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    return state_of(pid) not in ("", "Z", "X")
