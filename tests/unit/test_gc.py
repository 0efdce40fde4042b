"""Blob GC: marks through indexes and manifests, never removes a root, sweeps the rest."""

from __future__ import annotations

import json
from pathlib import Path

from engine.content import ContentStore
from engine.gc import collect_blobs, reachable_from_manifests
from engine.manifest import DOCKER_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST


def descriptor(store: ContentStore, media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": store.put(data), "size": len(data)}


def make_image(store: ContentStore, name: str) -> tuple[str, set[str]]:
    """Store config, two layers and a manifest; return (manifest digest, every digest of the image)."""
    config = descriptor(store, DOCKER_CONFIG, json.dumps({"config": {"Cmd": [name]}, "rootfs": {}}).encode())
    layers = [descriptor(store, OCI_LAYER_GZIP, f"{name}-layer-{i}".encode()) for i in range(2)]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers})
    manifest = store.put(body.encode())
    return manifest, {manifest, str(config["digest"]), *(str(layer["digest"]) for layer in layers)}


def test_reachable_from_manifests_walks_index_manifest_config_layers(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    m1, blobs1 = make_image(store, "one")
    m2, blobs2 = make_image(store, "two")
    entries = [{"mediaType": OCI_MANIFEST, "digest": m, "size": store.size(m)} for m in (m1, m2)]
    index = store.put(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode())
    assert reachable_from_manifests(store, {index}) == {index} | blobs1 | blobs2
    assert reachable_from_manifests(store, {m1}) == blobs1
    missing = "sha256:" + "0" * 64
    assert reachable_from_manifests(store, {missing}) == {missing}


def test_collect_removes_garbage_and_keeps_roots_and_their_children(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    kept_manifest, kept = make_image(store, "kept")
    _, dropped = make_image(store, "dropped")
    loose = store.put(b"loose blob that is a root by itself")
    in_flight = store.put(b"a pull is using this")
    dropped_bytes = sum(store.size(d) or 0 for d in dropped)
    result = collect_blobs(store, {kept_manifest, loose}, extra_roots={in_flight})
    assert set(result.removed) == dropped and list(result.removed) == sorted(dropped)
    assert result.freed == dropped_bytes
    assert set(store.digests()) == kept | {loose, in_flight}
    assert collect_blobs(store, set(store.digests())).removed == ()


def test_a_root_that_looks_like_json_but_is_not_a_manifest_is_a_leaf(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    other = store.put(b"other")
    config_like = store.put(json.dumps({"config": {"digest": other}}).encode())  # an image config: no layers
    broken = store.put(b"{ not json")
    result = collect_blobs(store, {config_like, broken})
    assert result.removed == (other,)

