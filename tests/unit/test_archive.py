"""docker-save / OCI archives: load every supported shape, refuse hostile or broken ones, save round trips."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from engine.archive import LoadedImage, load_archive, save_archive
from engine.content import ContentStore
from engine.errors import DigestMismatch, InvalidArgument, LayerRejected, NotFound
from engine.images import ImageRecord
from engine.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    parse_manifest,
)
from tests.support.busybox import busybox_layer_tar


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_for(layers: list[bytes], cmd: str = "sh") -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": [cmd]},
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
            "history": [],
        }
    ).encode()


Members = dict[str, bytes | tuple[str, str]]  # name -> content, or ("sym" | "hard", link target)


def write_tar(path: Path, members: Members, *, compress: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                info.type = tarfile.SYMTYPE if value[0] == "sym" else tarfile.LNKTYPE
                info.linkname = value[1]
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_dir(path: Path, members: Members) -> Path:
    for name, value in members.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        assert isinstance(value, bytes)
        target.write_bytes(value)
    return path


def legacy_docker_save() -> tuple[Members, bytes, list[bytes]]:
    """What Docker < 25 writes: <id>/layer.tar (a duplicate as a symlink), <config-hex>.json, manifest.json."""
    base = layer_tar({"etc/hostname": b"box\n"})
    top = layer_tar({"bin/tool": b"#!/bin/sh\n"})
    layers = [base, top, base]
    config = config_for(layers)
    cfg_hex = sha(config)[7:]
    members: Members = {
        "aaaa/VERSION": b"1.0",
        "aaaa/json": b"{}",
        "aaaa/layer.tar": base,
        "bbbb/layer.tar": top,
        "cccc/layer.tar": ("sym", "../aaaa/layer.tar"),
        f"{cfg_hex}.json": config,
        "manifest.json": json.dumps(
            [
                {
                    "Config": f"{cfg_hex}.json",
                    "RepoTags": ["busybox:latest", "example.com/tools/box:1"],
                    "Layers": ["aaaa/layer.tar", "bbbb/layer.tar", "cccc/layer.tar"],
                }
            ]
        ).encode(),
        "repositories": b"{}",
    }
    return members, config, layers


def oci_layout(*, docker_manifest_json: bool = False, name: str | None = "docker.io/library/app:2") -> Members:
    """An OCI image layout with one gzip-layered image (plus docker's manifest.json when asked)."""
    raw_layers = [layer_tar({"a.txt": b"A" * 5000}), layer_tar({"b.txt": b"B"})]
    gz_layers = [gzip.compress(layer, mtime=0) for layer in raw_layers]
    config = config_for(raw_layers, "app")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha(g), "size": len(g)} for g in gz_layers],
        }
    ).encode()
    entry: dict[str, object] = {"mediaType": OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest)}
    if name is not None:
        entry["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "2"}
    members: Members = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode(),
    }
    for blob in (config, manifest, *gz_layers):
        members[f"blobs/sha256/{sha(blob)[7:]}"] = blob
    if docker_manifest_json:
        members["manifest.json"] = json.dumps(
            [
                {
                    "Config": f"blobs/sha256/{sha(config)[7:]}",
                    "RepoTags": ["extra:tag"],
                    "Layers": [f"blobs/sha256/{sha(g)[7:]}" for g in gz_layers],
                }
            ]
        ).encode()
    return members


def manifest_digest_of(members: Members) -> str:
    index = json.loads(members["index.json"])  # type: ignore[arg-type]
    digest: str = index["manifests"][0]["digest"]
    return digest


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def check_stored(store: ContentStore, image: LoadedImage) -> None:
    """Every blob the image names is in the store and matches its digest."""
    for digest in (image.manifest_digest, image.config_digest, *(layer.digest for layer in image.layers)):
        assert sha(store.path(digest).read_bytes()) == digest


def test_load_legacy_docker_save(tmp_path: Path, store: ContentStore) -> None:
    members, config, layers = legacy_docker_save()
    (image,) = load_archive(write_tar(tmp_path / "legacy.tar", members), store)
    check_stored(store, image)
    assert image.config_digest == sha(config)
    assert image.repo_tags == ("docker.io/library/busybox:latest", "example.com/tools/box:1")
    assert [(r.digest, r.diff_id, r.media_type, r.size) for r in image.layers] == [
        (sha(layer), sha(layer), DOCKER_LAYER_TAR, len(layer)) for layer in layers
    ]
    manifest = parse_manifest(store.read(image.manifest_digest), DOCKER_MANIFEST)
    assert image.manifest_media_type == DOCKER_MANIFEST
    assert manifest.config.digest == sha(config) and manifest.config.media_type == DOCKER_CONFIG  # type: ignore[union-attr]
    assert [d.digest for d in manifest.layers] == [sha(layer) for layer in layers]  # type: ignore[union-attr]
    assert not store.has(sha(b"{}")) and not store.has(sha(b"1.0"))  # per-layer metadata is not ingested


@pytest.mark.parametrize("shape", ["tar", "tar.gz", "dir"])
def test_load_oci_layout(tmp_path: Path, store: ContentStore, shape: str) -> None:
    members = oci_layout()
    if shape == "dir":
        source = write_dir(tmp_path / "layout", members)
    else:
        source = write_tar(tmp_path / f"oci.{shape}", members, compress=shape == "tar.gz")
    (image,) = load_archive(source, store)
    check_stored(store, image)
    assert image.manifest_digest == manifest_digest_of(members)
    assert image.manifest_media_type == OCI_MANIFEST
    assert image.repo_tags == ("docker.io/library/app:2",)
    assert [layer.media_type for layer in image.layers] == [OCI_LAYER_GZIP] * 2
    assert all(layer.diff_id != layer.digest for layer in image.layers)


def test_load_current_docker_save_merges_repo_tags(tmp_path: Path, store: ContentStore) -> None:
    members = oci_layout(docker_manifest_json=True)
    del members["oci-layout"]  # index.json + manifest.json is enough to be recognised
    (image,) = load_archive(write_tar(tmp_path / "docker25.tar", members), store)
    assert image.repo_tags == ("docker.io/library/app:2", "docker.io/library/extra:tag")


def test_oci_names_from_ref_name_only_when_it_is_a_full_reference(tmp_path: Path, store: ContentStore) -> None:
    members = oci_layout(name=None)
    index = json.loads(members["index.json"])  # type: ignore[arg-type]
    index["manifests"].append(dict(index["manifests"][0], annotations={"org.opencontainers.image.ref.name": "v1"}))
    index["manifests"].append(
        dict(index["manifests"][0], annotations={"org.opencontainers.image.ref.name": "quay.io/a/b:c"})
    )
    members["index.json"] = json.dumps(index).encode()
    (image,) = load_archive(write_tar(tmp_path / "oci.tar", members), store)
    assert image.repo_tags == ("quay.io/a/b:c",)


def test_multi_platform_index_loads_present_manifests(tmp_path: Path, store: ContentStore) -> None:
    members = oci_layout(name=None)
    inner_entry = json.loads(members["index.json"])["manifests"][0]  # type: ignore[arg-type]
    inner_entry["platform"] = {"os": "linux", "architecture": "amd64"}
    absent = dict(inner_entry, digest="sha256:" + "e" * 64, platform={"os": "linux", "architecture": "s390x"})
    attestation_body = b'{"schemaVersion": 2, "config": {"mediaType": "application/vnd.in-toto+json"}, "layers": []}'
    members[f"blobs/sha256/{sha(attestation_body)[7:]}"] = attestation_body
    attestation = {"mediaType": OCI_MANIFEST, "digest": sha(attestation_body), "size": len(attestation_body),
                   "platform": {"os": "unknown", "architecture": "unknown"}}  # fmt: skip
    entries = [absent, inner_entry, attestation]
    inner = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    members[f"blobs/sha256/{sha(inner)[7:]}"] = inner
    outer = {"mediaType": OCI_INDEX, "digest": sha(inner), "size": len(inner),
             "annotations": {"io.containerd.image.name": "multi:1"}}  # fmt: skip
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [outer]}).encode()
    (image,) = load_archive(write_tar(tmp_path / "multi.tar", members), store)
    assert image.manifest_digest == inner_entry["digest"] and image.repo_tags == ("docker.io/library/multi:1",)


def test_blob_not_matching_its_digest_is_refused(tmp_path: Path, store: ContentStore) -> None:
    members = oci_layout()
    name = next(n for n, v in members.items() if isinstance(v, bytes) and v[:2] == b"\x1f\x8b")
    members[name] = b"tampered"
    with pytest.raises(DigestMismatch, match=name):
        load_archive(write_tar(tmp_path / "bad.tar", members), store)
    assert not store.has("sha256:" + name.rsplit("/", 1)[1])


def test_legacy_layer_not_matching_its_diff_id_is_refused(tmp_path: Path, store: ContentStore) -> None:
    members, _, _ = legacy_docker_save()
    members["bbbb/layer.tar"] = layer_tar({"bin/tool": b"changed"})
    with pytest.raises(DigestMismatch, match="does not match its DiffID"):
        load_archive(write_tar(tmp_path / "bad.tar", members), store)


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("../escape", b"x"),
        ("/abs/path", b"x"),
        ("aaaa/../../escape", b"x"),
        ("link", ("sym", "../../etc/passwd")),
        ("link", ("sym", "/etc/passwd")),
        ("hard", ("hard", "../outside")),
    ],
)
def test_members_pointing_outside_the_archive_are_refused(
    tmp_path: Path, store: ContentStore, member: str, value: bytes | tuple[str, str]
) -> None:
    members, _, _ = legacy_docker_save()
    members[member] = value
    with pytest.raises(LayerRejected, match="points outside the archive"):
        load_archive(write_tar(tmp_path / "evil.tar", members), store)


def test_manifest_naming_a_path_outside_is_refused(tmp_path: Path, store: ContentStore) -> None:
    members, _, _ = legacy_docker_save()
    entries = json.loads(members["manifest.json"])  # type: ignore[arg-type]
    entries[0]["Layers"][0] = "../../../etc/passwd"
    members["manifest.json"] = json.dumps(entries).encode()
    with pytest.raises(LayerRejected, match="etc/passwd"):
        load_archive(write_tar(tmp_path / "evil.tar", members), store)


def test_layout_directory_symlink_outside_is_refused(tmp_path: Path, store: ContentStore) -> None:
    members = oci_layout()
    layout = write_dir(tmp_path / "layout", members)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    blob = layout / next(n for n in members if n.startswith("blobs/"))
    blob.unlink()
    blob.symlink_to(secret)
    with pytest.raises(LayerRejected, match="points outside the directory"):
        load_archive(layout, store)


def test_garbage_and_unknown_archives_are_refused(tmp_path: Path, store: ContentStore) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(InvalidArgument, match=re.escape(f"{garbage}: not a docker or OCI image archive")):
        load_archive(garbage, store)
    plain = write_tar(tmp_path / "plain.tar", {"hello.txt": b"hi"})
    with pytest.raises(InvalidArgument, match=re.escape(f"{plain}: not a docker or OCI image archive")):
        load_archive(plain, store)
    broken_gzip = tmp_path / "broken.tar.gz"
    broken_gzip.write_bytes(gzip.compress(b"x" * 10000)[:50])
    with pytest.raises(InvalidArgument, match=re.escape(str(broken_gzip))):
        load_archive(broken_gzip, store)
    with pytest.raises(InvalidArgument, match="No such file"):
        load_archive(tmp_path / "missing.tar", store)
    bad_json = write_tar(tmp_path / "badjson.tar", {"manifest.json": b"[{"})
    with pytest.raises(InvalidArgument, match=r"manifest\.json is not valid JSON"):
        load_archive(bad_json, store)


def test_truncated_tar_is_refused(tmp_path: Path, store: ContentStore) -> None:
    whole = write_tar(tmp_path / "whole.tar", oci_layout())
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:3000])
    with pytest.raises(InvalidArgument, match=re.escape(str(cut))):
        load_archive(cut, store)


def record_for(image: LoadedImage, store: ContentStore) -> ImageRecord:
    return ImageRecord(
        id=image.config_digest,
        manifest_digest=image.manifest_digest,
        manifest_media_type=image.manifest_media_type,
        index_digest=None,
        config_digest=image.config_digest,
        layers=image.layers,
        created=None,
        architecture="amd64",
        os="linux",
        variant=None,
        size=sum(layer.size for layer in image.layers),
        repo_tags=image.repo_tags,
        repo_digests=(),
        added=1.0,
    )


def test_save_then_load_round_trips_and_is_deterministic(tmp_path: Path, store: ContentStore) -> None:
    (legacy,) = load_archive(write_tar(tmp_path / "legacy.tar", legacy_docker_save()[0]), store)
    (oci,) = load_archive(write_tar(tmp_path / "oci.tar", oci_layout()), store)
    records = [record_for(legacy, store), record_for(oci, store)]
    out = tmp_path / "saved.tar"
    save_archive(records, store, out)
    again = tmp_path / "again.tar"
    save_archive([*records, records[0]], store, again)  # an image named twice is written once
    assert out.read_bytes() == again.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left
    with tarfile.open(out) as tar:
        names = tar.getnames()
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert names[-3:] == ["index.json", "manifest.json", "oci-layout"]
    assert docker[0]["RepoTags"] == ["busybox:latest", "example.com/tools/box:1"]
    assert docker[1]["Config"] == f"blobs/sha256/{oci.config_digest[7:]}"
    assert [e["annotations"]["io.containerd.image.name"] for e in index["manifests"]] == [
        "docker.io/library/busybox:latest",
        "example.com/tools/box:1",
        "docker.io/library/app:2",
    ]
    fresh = ContentStore(tmp_path / "fresh")
    loaded = load_archive(out, fresh)
    assert [(i.manifest_digest, i.config_digest, i.layers, i.repo_tags) for i in loaded] == [
        (i.manifest_digest, i.config_digest, i.layers, i.repo_tags) for i in (legacy, oci)
    ]


def test_save_refuses_missing_blobs_and_leaves_nothing(tmp_path: Path, store: ContentStore) -> None:
    (image,) = load_archive(write_tar(tmp_path / "oci.tar", oci_layout()), store)
    store.delete(image.layers[0].digest)
    out = tmp_path / "out.tar"
    with pytest.raises(NotFound, match=image.layers[0].digest):
        save_archive([record_for(image, store)], store, out)
    assert not out.exists()
    with pytest.raises(InvalidArgument, match="No such file"):
        save_archive([], store, tmp_path / "no" / "dir" / "out.tar")


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_saved_archive_is_accepted_by_skopeo(tmp_path: Path, store: ContentStore) -> None:
    layer = busybox_layer_tar()
    config = config_for([layer])
    members: Members = {
        "ffff/layer.tar": layer,
        f"{sha(config)[7:]}.json": config,
        "manifest.json": json.dumps(
            [{"Config": f"{sha(config)[7:]}.json", "RepoTags": ["busybox:latest"], "Layers": ["ffff/layer.tar"]}]
        ).encode(),
    }
    (image,) = load_archive(write_tar(tmp_path / "busybox.tar", members), store)
    out = tmp_path / "saved.tar"
    save_archive([record_for(image, store)], store, out)
    for transport in ("docker-archive", "oci-archive"):
        result = subprocess.run(
            ["skopeo", "inspect", "--raw", f"{transport}:{out}"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert sha(config) in result.stdout
        config_out = subprocess.run(
            ["skopeo", "inspect", "--config", f"{transport}:{out}"], capture_output=True, text=True, timeout=60
        )
        assert config_out.returncode == 0, config_out.stderr
        assert json.loads(config_out.stdout)["rootfs"]["diff_ids"] == [sha(layer)]
