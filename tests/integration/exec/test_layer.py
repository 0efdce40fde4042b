"""diff and commit of a container's writable layer (overlay snapshotter, and the copy snapshotter)."""

from __future__ import annotations

import dataclasses

import pytest

from engine import CreateOptions, Engine
from tests.integration.exec.conftest import started

pytestmark = [pytest.mark.root, pytest.mark.registry]

CHANGES = ("echo new > /newfile; mkdir -p /made/deep; echo x > /made/deep/f; rm /data/seed.txt; "
           "echo extra >> /etc/passwd; rm -r /home; mkdir /home; echo fresh > /home/only")


async def change_and_wait(engine: Engine, image: str) -> str:
    record = await started(engine, image, "sh", "-c", CHANGES)
    assert await engine.containers.wait(record.id) == 0
    return record.id


async def test_diff_reports_added_changed_deleted(engine: Engine, busybox: str) -> None:
    container = await change_and_wait(engine, busybox)
    found = {(c.kind, c.path) for c in await engine.containers.diff(container)}
    assert {("A", "/newfile"), ("A", "/made"), ("A", "/made/deep"), ("A", "/made/deep/f"),
            ("C", "/data"), ("D", "/data/seed.txt"), ("C", "/etc"), ("C", "/etc/passwd"),
            ("A", "/home/only")} <= found
    assert ("D", "/home/app") in found  # the replaced directory's old children are gone
    assert not any(path.startswith("/proc") or path.startswith("/dev/") for _, path in found)


async def test_commit_then_run_the_new_image(engine: Engine, busybox: str) -> None:
    container = await change_and_wait(engine, busybox)
    image = await engine.containers.commit(container, "committed/test:v1", message="saved")
    assert image.repo_tags and len(image.layers) == 3
    record = await engine.create_container("committed/test:v1", CreateOptions(
        cmd=("sh", "-c", "cat /newfile /made/deep/f; tail -n1 /etc/passwd; ls /data; ls /home; "
             "test -e /data/seed.txt || echo seed-gone")), pull_missing=False)
    await engine.containers.start(record.id)
    assert await engine.containers.wait(record.id) == 0
    out = b"".join([item.data async for item in engine.containers.logs(record.id)]).decode()
    assert out == "new\nx\nextra\nonly\nseed-gone\n"


async def test_diff_and_commit_with_the_copy_snapshotter(tmp_path: object, busybox: str, engine: Engine) -> None:
    copy_engine = await Engine.open(engine.root, config=dataclasses.replace(engine.config, snapshotter="copy"))
    try:
        await copy_engine.unpack(busybox)
        container = await change_and_wait(copy_engine, busybox)
        found = {(c.kind, c.path) for c in await copy_engine.containers.diff(container)}
        assert {("A", "/newfile"), ("D", "/data/seed.txt"), ("C", "/etc/passwd"), ("A", "/made/deep/f"),
                ("A", "/home/only")} <= found
        image = await copy_engine.containers.commit(container, "committed/copy:v1")
        record = await copy_engine.create_container(image.id, CreateOptions(
            cmd=("sh", "-c", "cat /newfile; test -e /data/seed.txt || echo seed-gone")), pull_missing=False)
        await copy_engine.containers.start(record.id)
        assert await copy_engine.containers.wait(record.id) == 0
        out = b"".join([item.data async for item in copy_engine.containers.logs(record.id)]).decode()
        assert out == "new\nseed-gone\n"
    finally:
        for record in await copy_engine.containers.list(all_containers=True):
            await copy_engine.containers.remove(record.id, force=True, volumes=True)
        await copy_engine.close()
