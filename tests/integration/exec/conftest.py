"""Fixtures for the exec / tty / stats / diff tests: an Engine on a fresh state root with a busybox image pulled
from the real test registry, and helpers that wait on conditions with deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from engine import ContainerRecord, CreateOptions, Engine
from tests.support.busybox import busybox_layer_tar
from tests.support.images import build_image, directory, file, make_layer, push_image
from tests.support.registry import RegistryServer


@pytest.fixture
async def busybox(engine: Engine, registry: RegistryServer, repo_name: str) -> str:
    extra = make_layer([directory("data"), file("data/seed.txt", "from the image\n")])
    image = build_image([busybox_layer_tar(), extra], compression="gzip",
                        config={"Cmd": ["sh"], "Env": ["IMAGE_VAR=1"]})
    push_image(registry.url, repo_name, "latest", image)
    ref = f"{registry.host}/{repo_name}:latest"
    await engine.pull(ref)
    return ref


async def started(engine: Engine, image: str, *cmd: str, **options: object) -> ContainerRecord:
    record = await engine.create_container(image, CreateOptions(cmd=tuple(cmd), **options))  # type: ignore[arg-type]
    return await engine.containers.start(record.id)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
