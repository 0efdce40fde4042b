"""Pulling through the Engine from a real registry (Debian's docker-registry), including faults."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from engine import (
    AuthError,
    Config,
    DigestMismatch,
    Engine,
    ManifestUnknown,
    RegistryConfig,
    RegistryUnavailable,
)
from tests.support.fixtures import REGISTRY_PASSWORD, REGISTRY_USER, FaultyRegistry
from tests.support.images import (
    build_image,
    build_index,
    busybox_image,
    file,
    make_layer,
    push_image,
    push_index,
)
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.registry, pytest.mark.root]


def fast_config(**registry: object) -> Config:
    base = RegistryConfig(retries=2, timeout_seconds=2.0, connect_timeout_seconds=2.0)
    return Config(registries=dataclasses.replace(base, **registry))  # type: ignore[arg-type]


def blobs_on_disk(root: Path) -> set[str]:
    blob_dir = root / "content" / "blobs" / "sha256"
    return {f"sha256:{name}" for name in os.listdir(blob_dir)} if blob_dir.exists() else set()


async def test_pull_stores_image_and_unpacks(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    image = busybox_image()
    push_image(registry.url, repo_name, "v1", image)
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        record = await engine.pull(f"{registry.host}/{repo_name}:v1")
        assert record.id == image.config_digest
        assert record.manifest_digest == image.manifest_digest
        assert record.repo_tags == (f"{registry.host}/{repo_name}:v1",)
        assert record.repo_digests == (f"{registry.host}/{repo_name}@{image.manifest_digest}",)
        assert {image.manifest_digest, image.config_digest, *(layer.digest for layer in image.layers)} <= \
            blobs_on_disk(tmp_path / "state")
        listed = await engine.images()
        assert [r.id for r in listed] == [image.config_digest]
        document = await engine.inspect_image(f"{registry.host}/{repo_name}:v1")
        assert document["Id"] == image.config_digest
        assert document["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
        mount_dir = tmp_path / "view"
        mount_dir.mkdir()
        await engine.mount_image(f"{registry.host}/{repo_name}:v1", mount_dir)
        try:
            assert (mount_dir / "bin" / "busybox").stat().st_size == Path("/bin/busybox").stat().st_size
            assert os.readlink(mount_dir / "bin" / "sh") == "busybox"
        finally:
            await engine.unmount_image(mount_dir)
        assert not os.path.ismount(mount_dir)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("oci", [False, True])
async def test_pull_media_types(
    tmp_path: Path, registry: RegistryServer, repo_name: str, compression: str, oci: bool
) -> None:
    layers = [make_layer([file("a.txt", "one\n")]), make_layer([file("b.txt", b"\x00" * 70_000)])]
    image = build_image(layers, compression=compression, oci=oci)  # type: ignore[arg-type]
    push_image(registry.url, repo_name, "t", image)
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        record = await engine.pull(f"{registry.host}/{repo_name}:t")
        assert [layer.diff_id for layer in record.layers] == [layer.diff_id for layer in image.layers]


async def test_pull_multiarch_index_picks_host(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    layer = make_layer([file("arch", "host\n")])
    amd = build_image([layer], architecture="amd64")
    arm = build_image([make_layer([file("arch", "arm\n")])], architecture="arm64", variant="v8")
    push_image(registry.url, repo_name, None, amd)
    push_image(registry.url, repo_name, None, arm)
    index = build_index([arm, amd], oci=True)
    push_index(registry.url, repo_name, "multi", index)
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        record = await engine.pull(f"{registry.host}/{repo_name}:multi")
    import platform

    expected = amd if platform.machine() in ("x86_64", "amd64") else arm
    assert record.id == expected.config_digest
    assert record.index_digest == index.digest
    assert record.repo_digests == (f"{registry.host}/{repo_name}@{index.digest}",)


async def test_pull_by_digest(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    image = busybox_image()
    push_image(registry.url, repo_name, "v1", image)
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        record = await engine.pull(f"{registry.host}/{repo_name}@{image.manifest_digest}")
        assert record.repo_tags == ()
        assert record.id == image.config_digest


async def test_unknown_tag_is_manifest_unknown(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        with pytest.raises(ManifestUnknown, match="manifest unknown"):
            await engine.pull(f"{registry.host}/{repo_name}:nope")


async def test_registry_down(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        with pytest.raises(RegistryUnavailable, match=f"127.0.0.1:{port}"):
            await engine.pull(f"127.0.0.1:{port}/x/y:z")


async def test_basic_auth_login_and_wrong_password(
    tmp_path: Path, basic_registry: RegistryServer, repo_name: str
) -> None:
    image = busybox_image()
    push_image(basic_registry.url, repo_name, "v1", image, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        with pytest.raises(AuthError):
            await engine.pull(f"{basic_registry.host}/{repo_name}:v1")
        with pytest.raises(AuthError):
            await engine.login(basic_registry.host, REGISTRY_USER, "wrong")
        await engine.login(basic_registry.host, REGISTRY_USER, REGISTRY_PASSWORD)
        creds = tmp_path / "state" / "credentials.json"
        assert creds.stat().st_mode & 0o777 == 0o600
        record = await engine.pull(f"{basic_registry.host}/{repo_name}:v1")
        assert record.id == image.config_digest
        assert await engine.logout(basic_registry.host)


async def test_token_auth(tmp_path: Path, token_registry: RegistryServer, repo_name: str) -> None:
    image = busybox_image()
    push_image(token_registry.url, repo_name, "v1", image, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        with pytest.raises(AuthError):
            await engine.pull(f"{token_registry.host}/{repo_name}:v1")
        await engine.login(token_registry.host, REGISTRY_USER, REGISTRY_PASSWORD)
        record = await engine.pull(f"{token_registry.host}/{repo_name}:v1")
        assert record.id == image.config_digest


async def test_lying_registry_corrupt_blob(
    tmp_path: Path, faulty_registry: FaultyRegistry, repo_name: str
) -> None:
    image = build_image([make_layer([file("data", os.urandom(50_000))])])
    push_image(faulty_registry.upstream.url, repo_name, "v1", image)
    layer = image.layers[0].digest
    faulty_registry.corrupt(path=f"/blobs/{layer}", offset=100)
    state = tmp_path / "state"
    async with await Engine.open(state, config=fast_config()) as engine:
        with pytest.raises(DigestMismatch, match=layer):
            await engine.pull(f"{faulty_registry.host}/{repo_name}:v1")
        assert layer not in blobs_on_disk(state)
        assert await engine.images() == []
        faulty_registry.clear()
        record = await engine.pull(f"{faulty_registry.host}/{repo_name}:v1")
        assert record.id == image.config_digest


async def test_truncated_blob_resumes(tmp_path: Path, faulty_registry: FaultyRegistry, repo_name: str) -> None:
    payload = os.urandom(300_000)
    image = build_image([make_layer([file("data", payload)])], compression="none")
    push_image(faulty_registry.upstream.url, repo_name, "v1", image)
    layer = image.layers[0].digest
    faulty_registry.truncate(100_000, path=f"/blobs/{layer}", times=1)
    async with await Engine.open(tmp_path / "state", config=fast_config()) as engine:
        record = await engine.pull(f"{faulty_registry.host}/{repo_name}:v1")
    assert record.id == image.config_digest
    ranged = [{k.lower(): v for k, v in r.headers.items()}.get("range") for r in faulty_registry.requests
              if layer in r.target]
    assert "bytes=100000-" in ranged


async def test_stalling_registry_times_out(tmp_path: Path, faulty_registry: FaultyRegistry, repo_name: str) -> None:
    image = busybox_image()
    push_image(faulty_registry.upstream.url, repo_name, "v1", image)
    faulty_registry.stall(0, path="/manifests/")
    config = fast_config(timeout_seconds=0.5, retries=1)
    async with await Engine.open(tmp_path / "state", config=config) as engine:
        with pytest.raises(RegistryUnavailable, match="timed out"):
            await engine.pull(f"{faulty_registry.host}/{repo_name}:v1")


async def test_rmi_keeps_shared_blobs(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    base = make_layer([file("base", "shared\n")])
    one = build_image([base, make_layer([file("one", "1\n")])])
    two = build_image([base, make_layer([file("two", "2\n")])])
    push_image(registry.url, repo_name, "one", one)
    push_image(registry.url, repo_name, "two", two)
    state = tmp_path / "state"
    async with await Engine.open(state, config=fast_config()) as engine:
        await engine.pull(f"{registry.host}/{repo_name}:one")
        await engine.pull(f"{registry.host}/{repo_name}:two")
        report = await engine.remove_images([f"{registry.host}/{repo_name}:one"])
        assert [r.action for r in report] == ["Untagged", "Untagged", "Deleted"]  # tag, repo digest, image
        on_disk = blobs_on_disk(state)
        assert one.layers[0].digest in on_disk  # shared with "two"
        assert one.layers[1].digest not in on_disk
        assert one.config_digest not in on_disk
        assert {two.config_digest, two.manifest_digest, *(x.digest for x in two.layers)} <= on_disk
        await engine.remove_images([f"{registry.host}/{repo_name}:two"])
        assert blobs_on_disk(state) == set()
        usage = await engine.disk_usage()
        assert usage["Snapshots"]["Total"] == 0
