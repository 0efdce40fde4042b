"""Fixtures for registry client unit tests: a fake registry, a recording sleep, a settable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.config import Limits, RegistryConfig
from engine.registry import CredentialStore, RegistryClient
from tests.unit.registry.fake_registry import Clock, FakeRegistry, Sleeps


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "root" / "credentials.json", docker_config=tmp_path / "docker" / "config.json")


ClientFactory = Callable[..., RegistryClient]


@pytest.fixture
async def make_client(
    fake: FakeRegistry, store: CredentialStore, sleeps: Sleeps, clock: Clock
) -> AsyncIterator[ClientFactory]:
    clients: list[RegistryClient] = []

    def factory(config: RegistryConfig | None = None, limits: Limits | None = None) -> RegistryClient:
        client = RegistryClient(
            config or RegistryConfig(),
            store,
            limits=limits or Limits(),
            transport=fake.transport(),
            sleep=sleeps,
            clock=clock,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()

