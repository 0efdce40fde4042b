"""``--user`` resolution from the container's own /etc/passwd and /etc/group, parsed as data.

Never the host's NSS: loading an image's ``libnss_*.so`` ran container code on the host (CVE-2019-14271), and
the host's user database says nothing about the container's. The files are opened with ``openat2``
``RESOLVE_IN_ROOT`` so an image whose /etc/passwd is a symlink to a host file (``/etc/shadow``) reads its own
tree, never the host's. Semantics follow runc's ``user.GetExecUser`` (what Docker uses):

* ``""`` -> root (uid 0, gid 0);
* ``name`` or ``uid``, optionally ``:group`` or ``:gid``; a name must exist in passwd
  ("unable to find user xyz: no matching entries in passwd file"); a numeric uid absent from passwd is fine
  and gets gid 0; a group name must exist in /etc/group;
* supplementary groups are the groups listing the user as a member, only when no group was given.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from engine.errors import InvalidArgument, StoreError
from engine.runtime import syscalls

__all__ = ["ExecUser", "GroupEntry", "PasswdEntry", "UserFiles", "parse_group", "parse_passwd", "read_in_root",
           "resolve_user"]

MAX_ID = 2**31 - 1
MAX_FILE_BYTES = 4 * 1024 * 1024


class UserFiles(NamedTuple):
    """The texts of a container's /etc/passwd and /etc/group (None: the image has no such regular file)."""

    passwd: str | None
    group: str | None


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def _int_field(text: str) -> int | None:
    return int(text) if text.isdecimal() and int(text) <= MAX_ID else None


def _records(text: str, min_fields: int) -> Iterator[list[str]]:
    """The colon-separated records of a passwd/group file with at least ``min_fields`` fields; blank, comment
    and short lines are skipped (as libc does)."""
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split(":")
            if len(fields) >= min_fields:
                yield fields


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd file; blank, comment and malformed lines are skipped (as libc does)."""
    entries = []
    for fields in _records(text, 4):
        uid, gid = _int_field(fields[2]), _int_field(fields[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(fields[0], uid, gid, fields[5] if len(fields) > 5 else ""))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group file; blank, comment and malformed lines are skipped."""
    entries = []
    for fields in _records(text, 3):
        gid = _int_field(fields[2])
        if gid is None:
            continue
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def read_in_root(rootfs: Path, path: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """Read ``path`` (absolute, container view) inside ``rootfs`` without escaping it; ``None`` if missing."""
    try:
        root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise StoreError(f"root filesystem {rootfs}: {err.strerror}") from err
    try:
        fd = syscalls.openat2(root_fd, path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK, syscalls.RESOLVE_IN_ROOT)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise StoreError(f"{path} in {rootfs}: {os.strerror(err.errno or 0)}") from err
    finally:
        os.close(root_fd)
    try:
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise StoreError(f"{path} in {rootfs}: {err.strerror}") from err
    if len(data) > limit:
        raise InvalidArgument(f"{path} in the image is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


def _parse_id(text: str, what: str) -> int | None:
    if not text.isdecimal():
        return None
    value = int(text)
    if value > MAX_ID:
        raise InvalidArgument(f"{what} {text} is out of range: uids and gids must be in range 0-{MAX_ID}")
    return value


def resolve_user(spec: str | None, passwd_text: str | None, group_text: str | None) -> ExecUser:
    """Resolve ``spec`` (``name|uid[:group|gid]``) against the container's passwd and group file contents
    (``None`` = file absent). Raises InvalidArgument for unknown names and malformed specs."""
    spec = (spec or "").strip()
    user_part, _, group_part = spec.partition(":")
    if ":" in group_part:
        raise InvalidArgument(f"invalid user {spec!r}: expected name|uid[:group|gid]")
    if ":" in spec and not group_part:
        raise InvalidArgument(f"invalid user {spec!r}: empty group after ':'")
    users = parse_passwd(passwd_text or "")
    groups = parse_group(group_text or "")

    name = ""
    home = "/"
    gid = 0
    if not user_part:
        uid = 0
        match = next((u for u in users if u.uid == 0), None)
    else:
        numeric = _parse_id(user_part, "user")
        if numeric is None:
            match = next((u for u in users if u.name == user_part), None)
            if match is None:
                raise InvalidArgument(f"unable to find user {user_part}: no matching entries in passwd file")
            uid = match.uid
        else:
            uid = numeric
            match = next((u for u in users if u.uid == numeric), None)
    if match is not None:
        name, gid, home = match.name, match.gid, match.home or "/"

    additional: tuple[int, ...] = ()
    if group_part:
        numeric_gid = _parse_id(group_part, "group")
        if numeric_gid is None:
            group = next((g for g in groups if g.name == group_part), None)
            if group is None:
                raise InvalidArgument(f"unable to find group {group_part}: no matching entries in group file")
            gid = group.gid
        else:
            gid = numeric_gid
    elif name:
        seen: list[int] = []
        for group in groups:
            if name in group.members and group.gid not in seen:
                seen.append(group.gid)
        additional = tuple(seen)
    return ExecUser(uid, gid, additional, home)
