"""The ``kitebox`` CLI's image commands, run as a real process against a real registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import REPO as REPO_ROOT
from tests.support.cli import kitebox
from tests.support.fixtures import REGISTRY_PASSWORD, REGISTRY_USER, FaultyRegistry
from tests.support.images import build_image, busybox_image, file, make_layer, push_image
from tests.support.registry import RegistryServer


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = kitebox(tmp_path, "--help")
    assert result.returncode == 0
    assert "pull" in result.stdout and "images" in result.stdout and "gui" in result.stdout


def test_usage_error_exits_125(tmp_path: Path) -> None:
    result = kitebox(tmp_path, "images", "--bogus")
    assert result.returncode == 125
    assert "--bogus" in result.stderr


def test_invalid_reference_exits_1_with_one_line(tmp_path: Path) -> None:
    result = kitebox(tmp_path, "pull", "Not_Valid::ref")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "invalid reference format" in result.stderr


def test_missing_image_exits_1(tmp_path: Path) -> None:
    result = kitebox(tmp_path, "rmi", "nosuchimage")
    assert result.returncode == 1
    assert "No such image: nosuchimage" in result.stderr


def test_broken_config_is_refused(tmp_path: Path, isolated_kitebox_config: Path) -> None:
    isolated_kitebox_config.write_text('{"registries": {"parallel_downloads": "many"}}')
    result = kitebox(tmp_path, "images")
    assert result.returncode == 1
    assert "parallel_downloads" in result.stderr


@pytest.mark.registry
@pytest.mark.root
def test_pull_images_inspect_rmi(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    image = busybox_image()
    push_image(registry.url, repo_name, "v1", image)
    ref = f"{registry.host}/{repo_name}:v1"
    pulled = kitebox(tmp_path, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Digest: {image.manifest_digest}" in pulled.stderr
    listed = kitebox(tmp_path, "images", "--format", "json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows == [{**rows[0], "Repository": f"{registry.host}/{repo_name}", "Tag": "v1",
                     "ID": image.config_digest[7:19], "Digest": image.manifest_digest}]
    assert kitebox(tmp_path, "images", "-q").stdout.split() == [image.config_digest[7:19]]
    table = kitebox(tmp_path, "images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    inspect = json.loads(kitebox(tmp_path, "image", "inspect", ref).stdout)
    assert inspect[0]["Id"] == image.config_digest
    assert inspect[0]["RepoTags"] == [ref]
    removed = kitebox(tmp_path, "rmi", ref)
    assert removed.returncode == 0
    assert removed.stdout.splitlines() == [f"Untagged: {ref}", f"Untagged: {registry.host}/{repo_name}@"
                                           f"{image.manifest_digest}", f"Deleted: {image.config_digest}"]
    assert kitebox(tmp_path, "images", "-q").stdout == ""


@pytest.mark.registry
@pytest.mark.root
def test_save_and_load_round_trip(tmp_path: Path, registry: RegistryServer, repo_name: str) -> None:
    image = busybox_image()
    push_image(registry.url, repo_name, "v1", image)
    ref = f"{registry.host}/{repo_name}:v1"
    assert kitebox(tmp_path / "a", "pull", "-q", ref).returncode == 0
    archive = tmp_path / "image.tar"
    saved = kitebox(tmp_path / "a", "save", "-o", str(archive), ref)
    assert saved.returncode == 0, saved.stderr
    skopeo = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True)
    assert skopeo.returncode == 0, skopeo.stderr
    loaded = kitebox(tmp_path / "b", "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == f"Loaded image: {ref}"
    ids = kitebox(tmp_path / "b", "images", "-q").stdout.split()
    assert ids == [image.config_digest[7:19]]
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not an archive at all")
    bad = kitebox(tmp_path / "b", "load", "-i", str(garbage))
    assert bad.returncode == 1
    assert "garbage.tar" in bad.stderr


@pytest.mark.registry
def test_login_password_stdin_and_logout(tmp_path: Path, basic_registry: RegistryServer) -> None:
    bad = kitebox(tmp_path, "login", "-u", REGISTRY_USER, "--password-stdin", basic_registry.host, stdin="nope\n")
    assert bad.returncode == 1
    good = kitebox(tmp_path, "login", "-u", REGISTRY_USER, "--password-stdin", basic_registry.host,
                   stdin=REGISTRY_PASSWORD + "\n")
    assert good.returncode == 0, good.stderr
    assert "Login Succeeded" in good.stdout
    assert (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600
    out = kitebox(tmp_path, "logout", basic_registry.host)
    assert out.returncode == 0
    assert "Removing login credentials" in out.stdout


@pytest.mark.registry
@pytest.mark.root
def test_kill_9_during_pull_then_resume(tmp_path: Path, faulty_registry: FaultyRegistry, repo_name: str) -> None:
    payload = os.urandom(2_000_000)
    image = build_image([make_layer([file("big", payload)])], compression="none")
    push_image(faulty_registry.upstream.url, repo_name, "v1", image)
    layer = image.layers[0].digest
    faulty_registry.stall(1_600_000, path=f"/blobs/{layer}", times=1)
    ref = f"{faulty_registry.host}/{repo_name}:v1"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "app.main", "--root", str(tmp_path), "pull", "-q", ref],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ingest = tmp_path / "content" / "ingest" / layer.split(":")[1] / "data"
    deadline = time.monotonic() + 30
    try:
        # Wait until the stalled download has written part of the blob, then kill the CLI outright.
        while not (ingest.exists() and ingest.stat().st_size > 0):
            assert proc.poll() is None, "pull ended before it was killed"
            assert time.monotonic() < deadline, "the partial blob never reached the ingest area"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    blobs = tmp_path / "content" / "blobs" / "sha256"
    assert not (blobs / layer.split(":")[1]).exists()
    assert kitebox(tmp_path, "images", "-q").stdout == ""
    again = kitebox(tmp_path, "pull", "-q", ref)
    assert again.returncode == 0, again.stderr
    ranged = [r for r in faulty_registry.requests if layer in r.target and "range" in {k.lower() for k in r.headers}]
    assert ranged, "the second pull did not resume with a Range request"
    assert kitebox(tmp_path, "images", "-q").stdout.split() == [image.config_digest[7:19]]


@pytest.mark.registry
@pytest.mark.root
def test_kill_9_mid_unpack_leaves_no_partial_snapshot(
    tmp_path: Path, faulty_registry: FaultyRegistry, repo_name: str
) -> None:
    """The stream is stalled after part of a layer: its files are being written into a temporary snapshot
    when the CLI is killed. Nothing partial may be visible, and the next pull redoes the layer."""
    entries = [file(f"f{i:03d}", os.urandom(20_000)) for i in range(100)]
    image = build_image([make_layer(entries)], compression="none")
    push_image(faulty_registry.upstream.url, repo_name, "v1", image)
    layer = image.layers[0].digest
    faulty_registry.stall(1_500_000, path=f"/blobs/{layer}", times=1)
    ref = f"{faulty_registry.host}/{repo_name}:v1"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "app.main", "--root", str(tmp_path), "pull", "-q", ref],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    snapshots = tmp_path / "snapshots"
    deadline = time.monotonic() + 30

    def partial_files() -> int:
        # os.walk, not rglob: the tree changes under us (probe and temporary directories come and go).
        return sum(1 for _, _, files in os.walk(snapshots) for name in files if name.startswith("f0"))

    try:
        while partial_files() < 10:  # the unpack is streaming: files exist while the download is stalled
            assert proc.poll() is None, "pull ended before it was killed"
            assert time.monotonic() < deadline, "the layer's files never appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    async_check = subprocess.run(
        [sys.executable, "-c", (
            "import asyncio, sys; from pathlib import Path; from engine import Engine\n"
            "async def main():\n"
            f"    async with await Engine.open(Path({str(tmp_path)!r})) as e:\n"
            "        infos = e.snapshotter().walk()\n"
            "        print(sorted(i.kind for i in infos))\n"
            "asyncio.run(main())\n")],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
    assert async_check.stdout.strip() == "[]"  # opening cleaned the dead pull's temporary snapshot
    assert partial_files() == 0
    again = kitebox(tmp_path, "pull", "-q", ref)
    assert again.returncode == 0, again.stderr
    view = tmp_path / "view"
    view.mkdir()
    assert kitebox(tmp_path, "image", "mount", ref, str(view)).returncode == 0
    try:
        assert sorted(p.name for p in view.iterdir()) == [f"f{i:03d}" for i in range(100)]
    finally:
        assert kitebox(tmp_path, "image", "unmount", str(view)).returncode == 0
