"""Content digests (``sha256:<64 lowercase hex>``): parsing and hashing helpers shared by every room."""

from __future__ import annotations

import hashlib
import re

from engine.errors import InvalidArgument

__all__ = ["chain_id", "is_digest", "sha256_bytes", "short_id", "validate_digest"]

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def is_digest(value: str) -> bool:
    return bool(_DIGEST.match(value))


def validate_digest(value: str) -> str:
    """Return ``value`` if it is a sha256 digest we accept, else raise ``InvalidArgument`` naming it."""
    if not _DIGEST.match(value):
        raise InvalidArgument(f"invalid digest {value!r}: expected sha256:<64 lowercase hex digits>")
    return value


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(parent: str | None, diff_id: str) -> str:
    """OCI ChainID: the first layer's ChainID is its DiffID; then sha256(parent + " " + diff_id)."""
    if parent is None:
        return diff_id
    return sha256_bytes(f"{parent} {diff_id}".encode())


def short_id(digest_or_id: str) -> str:
    """Docker's 12-character short form of an id or digest."""
    return digest_or_id.split(":", 1)[-1][:12]
