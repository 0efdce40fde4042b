"""Shared pytest fixtures: real registries, a token server, a fault-injecting proxy and test images.

Loaded by ``tests/conftest.py`` (``pytest_plugins``). Registries are function-scoped (a ``docker-registry``
starts in ~50 ms), each with storage under the test's ``tmp_path``, so tests never see each other's images.
Every fixture stops what it started in a ``finally``, so a failing test leaves no process or thread behind.

Fixtures:

* ``registry``         -- anonymous :class:`RegistryServer`;
* ``basic_registry``   -- htpasswd (Basic) registry with ``REGISTRY_USER`` / ``REGISTRY_PASSWORD``;
* ``token_server``     -- :class:`TokenServer` with the same user (anonymous pull under ``public/``);
* ``token_registry``   -- registry in token mode trusting ``token_server``;
* ``faulty_registry``  -- :class:`FaultyProxy` in front of an anonymous registry (``.upstream`` is the registry);
* ``busybox_image``    -- a one-layer busybox :class:`BuiltImage` (Docker schema2, gzip), built once per session;
* ``repo_name``        -- a repository name unique to the test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engine import Engine
from tests.support.cli import Cli
from tests.support.faulty import FaultyProxy
from tests.support.images import BuiltImage, push_image
from tests.support.images import busybox_image as build_busybox_image
from tests.support.registry import RegistryServer, registry_available
from tests.support.tokenserver import TokenServer, TokenSigner

__all__ = ["REGISTRY_PASSWORD", "REGISTRY_USER", "FaultyRegistry"]

REGISTRY_USER = "alice"
REGISTRY_PASSWORD = "s3cret"
_repo_counter = itertools.count(1)


class FaultyRegistry(FaultyProxy):
    """A :class:`FaultyProxy` that also knows its upstream registry (push there to bypass the faults)."""

    def __init__(self, upstream: RegistryServer) -> None:
        super().__init__(upstream.url)
        self.upstream = upstream


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``registry`` skip when Debian's ``docker-registry`` is missing; on CI they fail instead."""
    if item.get_closest_marker("registry") is None or registry_available():
        return
    if os.environ.get("CI"):
        pytest.fail("this test needs /usr/bin/docker-registry and CI must have it", pytrace=False)
    pytest.skip("needs /usr/bin/docker-registry (apt install docker-registry)")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "registry")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "basic-registry", htpasswd_users={REGISTRY_USER: REGISTRY_PASSWORD})
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_signer(tmp_path_factory: pytest.TempPathFactory) -> TokenSigner:
    """One RSA key + certificate per session (generating one costs ~0.1 s)."""
    return TokenSigner.generate(tmp_path_factory.mktemp("token-signer"))


@pytest.fixture
def token_server(tmp_path: Path, token_signer: TokenSigner) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path / "token-server", users={REGISTRY_USER: REGISTRY_PASSWORD}, signer=token_signer)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def token_registry(tmp_path: Path, token_server: TokenServer) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "token-registry", token=token_server)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def faulty_registry(registry: RegistryServer) -> Iterator[FaultyRegistry]:
    """Fails the test at teardown if the proxy hit an unexpected exception while serving."""
    proxy = FaultyRegistry(registry)
    try:
        yield proxy.start()
    finally:
        proxy.stop()
    assert not proxy.errors, f"faulty proxy errors: {proxy.errors}"


@pytest.fixture(scope="session")
def busybox_image() -> BuiltImage:
    return build_busybox_image()


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """``test/<test name>-<n>``: a valid, unique repository name (lowercase, ``[a-z0-9]`` joined by ``-``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-") or "t"
    return f"test/{slug}-{next(_repo_counter)}"


def _free_test_subnet() -> str:
    """A 10.213.x.0/24 no route of the host uses (tests' own bridges live there)."""
    import ipaddress
    import secrets

    from engine.network.netlink import Netlink

    with Netlink() as netlink:
        used = [r.destination for r in netlink.routes() if r.destination.prefixlen > 0]
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.213.{secrets.randbelow(200) + 20}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise AssertionError("no free 10.213.x.0/24 subnet for the test's networks")


@pytest.fixture(autouse=True)
def isolated_kitebox_config(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Every test gets its own Kitebox config (``KITEBOX_CONFIG``): bridge, nftables table and subnet names
    unique to the test, so tests never touch a user's ``kitebox0`` and leave nothing behind: the teardown
    deletes the test's links and table and unmounts the network namespaces under its tmp_path. Monitor helpers
    and CLI templates of state roots under tmp_path (they outlive the commands that started them) are stopped
    too, and any the test starts idles out after a minute even if this teardown never runs."""
    import json
    import os
    import secrets
    import subprocess

    from app.forkclient import BOOTSTRAP as TEMPLATE_BOOTSTRAP
    from engine.runtime.helper import stop_helpers

    tag = f"kbt{secrets.token_hex(3)}"
    path = tmp_path_factory.mktemp("kitebox-config") / "config.json"  # not in tmp_path: tests list it
    network: dict[str, object] = {"default_bridge": f"{tag}0", "bridge_prefix": f"{tag}-", "table": tag,
                                  "ip_forward": False}
    if os.geteuid() == 0:
        network["default_subnet"] = _free_test_subnet()
    path.write_text(json.dumps({"network": network}))
    monkeypatch.setenv("KITEBOX_CONFIG", str(path))
    monkeypatch.setenv("KITEBOX_HELPER_IDLE", "60")
    had_default = os.path.exists("/sys/class/net/kitebox0")
    had_default_table = os.geteuid() == 0 and _nft_table_exists("kitebox")
    cgroup_parents = set(Path("/sys/fs/cgroup").glob("*/kitebox")) | set(Path("/sys/fs/cgroup").glob("kitebox"))
    yield path
    stop_helpers(tmp_path, bootstrap=TEMPLATE_BOOTSTRAP)
    stop_helpers(tmp_path)
    if os.geteuid() != 0:
        return
    if not had_default and os.path.exists("/sys/class/net/kitebox0"):
        # A test built its Config by hand and so used the user's default names: clean up, and say so.
        subprocess.run(["ip", "link", "del", "kitebox0"], capture_output=True)
        subprocess.run(["nft", "delete", "table", "ip", "kitebox"], capture_output=True)
        pytest.fail("this test created the default bridge kitebox0: derive its Config from engine.load_config() "
                    "(the per-test KITEBOX_CONFIG) instead of Config()", pytrace=False)
    if not had_default_table and _nft_table_exists("kitebox"):
        # Something used the user's default configuration (the CLI template's spare worker once reconciled
        # networks with it): clean up, and say so.
        subprocess.run(["nft", "delete", "table", "ip", "kitebox"], capture_output=True)
        pytest.fail("this test created the default nftables table kitebox: something ran with the default "
                    "configuration instead of the per-test KITEBOX_CONFIG", pytrace=False)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(tag):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", tag], capture_output=True)
    # The engine's cgroup parent ("kitebox") in each hierarchy: remove it if this test created it and left it
    # empty (rmdir refuses a cgroup with children or tasks, so a user's containers are never affected).
    for parent in set(Path("/sys/fs/cgroup").glob("*/kitebox")) | set(Path("/sys/fs/cgroup").glob("kitebox")):
        if parent not in cgroup_parents:
            with contextlib.suppress(OSError):
                parent.rmdir()
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split()[4] for line in handle]
    for mount in reversed(mounts):
        if mount.startswith(str(tmp_path)) and "/netns/" in mount:
            subprocess.run(["umount", "--lazy", mount], capture_output=True)


def _nft_table_exists(name: str) -> bool:
    import subprocess

    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return f"table ip {name}" in tables.splitlines()


def _mount_targets() -> set[str]:
    with open("/proc/self/mountinfo") as handle:
        return {line.split()[4] for line in handle}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """An Engine on ``tmp_path/state`` (the test's own config); at the end every container it knows is removed
    and no mount under ``tmp_path`` may be left."""
    before = _mount_targets()
    opened = await Engine.open(tmp_path / "state")
    try:
        yield opened
    finally:
        for record in await opened.containers.list(all_containers=True):
            await opened.containers.remove(record.id, force=True, volumes=True)
        await opened.close()
    leaked = {m for m in _mount_targets() - before if str(tmp_path) in m}
    assert not leaked, f"mounts leaked: {leaked}"


@pytest.fixture
def cli(tmp_path: Path, registry: RegistryServer, repo_name: str) -> Iterator[Cli]:
    """The ``kitebox`` CLI on ``tmp_path/state`` with a busybox image in the test registry (``cli.image``).

    At the end every container is removed and every network pruned; no network namespace may be left.
    """
    push_image(registry.url, repo_name, "latest", build_busybox_image(compression="gzip"))
    runner = Cli(tmp_path / "state", f"{registry.host}/{repo_name}:latest")
    try:
        yield runner
    finally:
        ids = runner("ps", "-aq", "--no-trunc").stdout.split()
        if ids:
            runner("rm", "-f", "-v", *ids)
        runner("network", "prune", "-f")
    netns = tmp_path / "state" / "netns"
    assert not netns.exists() or list(netns.iterdir()) == [], "a network namespace was left behind"
