"""Mark-and-sweep of the content store's blobs.

Pure over its inputs: the caller says what is alive (``roots``: typically :meth:`ImageStore.blob_roots`;
``extra_roots``: blobs an operation in flight still needs, such as a pull that has committed blobs but not yet
recorded its image). Marking walks from every root through the manifests and indexes present in the store
(index -> manifests -> config + layers), so a manifest digest alone keeps its whole image alive. Sweeping
removes every committed blob that was not marked. A root is never removed, whether or not it is a manifest.

The caller must hold whatever lock keeps roots from appearing during the sweep (the engine's image lock);
ingests in progress are not blobs yet and are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from engine.content import ContentStore
from engine.digest import is_digest

__all__ = ["GcResult", "collect_blobs", "reachable_from_manifests"]

# A manifest or index is small; anything bigger is a layer and is not read to look for references.
_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a collection removed (sorted digests) and how many bytes that freed."""

    removed: tuple[str, ...]
    freed: int


def _children(content: ContentStore, digest: str) -> list[str]:
    """Digests a stored manifest or index points at; ``[]`` for any other blob (or one that is absent)."""
    size = content.size(digest)
    if size is None or size > _MAX_DOCUMENT_BYTES:
        return []
    body = content.read(digest)
    if not body.lstrip().startswith(b"{"):
        return []
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return []  # a config or layer that happens to start with "{": a leaf
    if not isinstance(doc, dict):
        return []
    found: list[object] = []
    for key in ("manifests", "layers"):
        entries = doc.get(key)
        if isinstance(entries, list):
            found.extend(entry.get("digest") for entry in entries if isinstance(entry, dict))
    config = doc.get("config")
    if isinstance(config, dict) and "layers" in doc:  # an image config also has "config" (runtime settings)
        found.append(config.get("digest"))
    return [d for d in found if isinstance(d, str) and is_digest(d)]


def reachable_from_manifests(content: ContentStore, digests: Iterable[str]) -> set[str]:
    """``digests`` plus every blob reachable from them through stored indexes and manifests.

    Referenced blobs are included whether or not they are present (an absent one has nothing to walk).
    """
    marked: set[str] = set()
    pending = [d for d in digests if is_digest(d)]
    while pending:
        digest = pending.pop()
        if digest in marked:
            continue
        marked.add(digest)
        pending.extend(child for child in _children(content, digest) if child not in marked)
    return marked


def collect_blobs(
    content: ContentStore, roots: set[str], *, extra_roots: Iterable[str] = frozenset()
) -> GcResult:
    """Remove every committed blob not reachable from ``roots`` or ``extra_roots``; never a root itself."""
    alive = reachable_from_manifests(content, set(roots) | set(extra_roots))
    removed: list[str] = []
    freed = 0
    for digest in sorted(content.digests()):
        if digest in alive:
            continue
        freed += content.delete(digest)
        removed.append(digest)
    return GcResult(tuple(removed), freed)
