"""Transport rules: scheme selection, redirects, retries, timeouts, error translation, mirrors, warnings."""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Callable

import httpx
import pytest

from engine.config import RegistryConfig
from engine.errors import AuthError, InvalidArgument, ManifestUnknown, RegistryError, RegistryUnavailable
from engine.manifest import Descriptor
from engine.registry import Credentials, CredentialStore
from engine.registry.transport import MAX_RETRY_AFTER, parse_error_body, parse_retry_after
from tests.unit.registry.conftest import ClientFactory
from tests.unit.registry.fake_registry import Clock, FakeRegistry, Sleeps, digest_of, ref, registry_error

BODY = b'{"schemaVersion": 2}'


Handler = Callable[[httpx.Request], httpx.Response]


def fail_with(status: int, headers: dict[str, str] | None = None) -> Handler:
    def respond(request: httpx.Request) -> httpx.Response:
        return registry_error(status, "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE", "slow down", headers)

    return respond


def raise_error(error: Exception) -> Handler:
    def respond(request: httpx.Request) -> httpx.Response:
        raise error

    return respond


@pytest.mark.parametrize(
    ("domain", "insecure", "expected"),
    [
        ("localhost:5000", (), "http://localhost:5000/v2/"),
        ("127.0.0.1:5000", (), "http://127.0.0.1:5000/v2/"),
        ("[::1]:5000", (), "http://[::1]:5000/v2/"),
        ("myregistry.lan:5000", ("myregistry.lan:5000",), "http://myregistry.lan:5000/v2/"),
        ("myregistry.lan:5000", (), "https://myregistry.lan:5000/v2/"),
        ("registry.example", ("other.example",), "https://registry.example/v2/"),
        ("docker.io", (), "https://registry-1.docker.io/v2/"),
    ],
)
async def test_scheme_selection(
    fake: FakeRegistry, make_client: ClientFactory, domain: str, insecure: tuple[str, ...], expected: str
) -> None:
    await make_client(RegistryConfig(insecure=insecure)).ping(domain)
    assert str(fake.requests[0].url) == expected


async def test_redirect_to_storage_host_drops_authorization(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth, fake.storage_host = "bearer", "storage.example"
    data = b"layer bytes" * 100
    digest = fake.put_blob(data)
    got = await make_client().get_blob(ref(), Descriptor("application/octet-stream", digest, len(data)))
    assert got == data
    to_registry = [r for r in fake.requests if r.url.host == "registry.example"]
    to_storage = [r for r in fake.requests if r.url.host == "storage.example"]
    assert to_registry[-1].headers["authorization"].startswith("Bearer ")
    assert len(to_storage) == 1
    assert "authorization" not in to_storage[0].headers


async def test_redirect_to_plain_http_is_refused(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.script = [lambda r: httpx.Response(307, headers={"Location": "http://evil.example/x"})]
    with pytest.raises(RegistryError, match=r"refusing plain HTTP to evil.example"):
        await make_client().get_manifest(ref())


async def test_redirect_loop_stops(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.script = [lambda r: httpx.Response(302, headers={"Location": "/v2/again"})] * 20
    with pytest.raises(RegistryError, match=r"more than 10 redirects"):
        await make_client().get_manifest(ref())
    assert len(fake.requests) == 11


async def test_429_honours_retry_after(
    fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps, clock: Clock
) -> None:
    fake.put_manifest("library/busybox", "latest", BODY)
    date = email.utils.formatdate(clock.now + 7, usegmt=True)
    fake.script = [fail_with(429, {"Retry-After": "3"}), fail_with(429, {"Retry-After": date}),
                   fail_with(429, {"Retry-After": "86400"})]
    body, _, _ = await make_client().get_manifest(ref())
    assert body == BODY
    assert sleeps.durations == [3.0, 7.0, MAX_RETRY_AFTER]


async def test_503_then_success_backs_off(fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps) -> None:
    fake.put_manifest("library/busybox", "latest", BODY)
    fake.script = [fail_with(503), fail_with(502)]
    await make_client().get_manifest(ref())
    assert sleeps.durations == [0.5, 1.0]


async def test_retries_exhausted(fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps) -> None:
    fake.script = [fail_with(500)] * 3
    with pytest.raises(RegistryUnavailable, match=r"^registry.example: HTTP 500 fetching manifest .*slow down .*3 att"):
        await make_client(RegistryConfig(retries=2)).get_manifest(ref())
    assert sleeps.durations == [0.5, 1.0]
    assert len(fake.requests) == 3


async def test_connection_refused(fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps) -> None:
    fake.script = [raise_error(httpx.ConnectError("[Errno 111] Connection refused"))] * 4
    with pytest.raises(RegistryUnavailable, match=r"^cannot reach registry registry.example: connection refused"):
        await make_client().ping("registry.example")
    assert len(sleeps.durations) == 3


async def test_connection_refused_found_in_cause_chain(fake: FakeRegistry, make_client: ClientFactory) -> None:
    error = httpx.ConnectError("all connection attempts failed")
    error.__cause__ = ConnectionRefusedError(111, "nope")
    fake.script = [raise_error(error)] * 2
    with pytest.raises(RegistryUnavailable, match=r"^cannot reach registry registry.example: connection refused"):
        await make_client(RegistryConfig(retries=1)).ping("registry.example")


async def test_read_timeout_is_transient_then_unavailable(
    fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps
) -> None:
    fake.put_manifest("library/busybox", "latest", BODY)
    fake.script = [raise_error(httpx.ReadTimeout("stalled"))]
    await make_client().get_manifest(ref())  # one stall, then success
    fake.script = [raise_error(httpx.ReadTimeout("stalled"))] * 4
    with pytest.raises(RegistryUnavailable, match=r"^registry.example: timed out fetching manifest"):
        await make_client().get_manifest(ref())


async def test_manifest_unknown(fake: FakeRegistry, make_client: ClientFactory) -> None:
    with pytest.raises(ManifestUnknown, match=r"^manifest unknown: registry.example/library/busybox:latest$"):
        await make_client().get_manifest(ref())
    fake.script = [lambda r: registry_error(400, "NAME_UNKNOWN", "repository name not known")]
    with pytest.raises(ManifestUnknown):
        await make_client().get_manifest(ref())


async def test_forbidden_after_auth_is_pull_access_denied(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.script = [lambda r: registry_error(403, "DENIED", "requested access to the resource is denied")]
    with pytest.raises(
        AuthError, match=r"^pull access denied for registry.example/library/busybox: denied: requested access"
    ):
        await make_client().get_manifest(ref())


async def test_mirror_first_then_upstream(
    fake: FakeRegistry, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.host = "registry-1.docker.io"
    fake.put_manifest("library/busybox", "latest", BODY)
    mirror_calls: list[httpx.Request] = []

    def mirror(request: httpx.Request) -> httpx.Response | None:
        if request.url.host != "mirror.example":
            return None
        mirror_calls.append(request)
        return registry_error(404, "MANIFEST_UNKNOWN", "not cached")

    fake.script = [mirror]
    config = RegistryConfig(mirrors={"docker.io": ("https://mirror.example/prefix",)})
    with caplog.at_level(logging.WARNING, "engine.registry"):
        body, _, _ = await make_client(config).get_manifest(ref(domain="docker.io"))
    assert body == BODY
    assert str(mirror_calls[0].url) == "https://mirror.example/prefix/v2/library/busybox/manifests/latest"
    assert fake.requests[-1].url.host == "registry-1.docker.io"
    assert "mirror mirror.example of docker.io failed" in caplog.text


def test_plain_http_mirror_must_be_allowed(store: CredentialStore) -> None:
    from engine.config import Limits
    from engine.registry import RegistryClient

    with pytest.raises(InvalidArgument, match=r"refusing plain HTTP to mirror.lan"):
        RegistryClient(RegistryConfig(mirrors={"docker.io": ("http://mirror.lan",)}), store, limits=Limits())


async def test_warning_299_is_logged(
    fake: FakeRegistry, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put_manifest("library/busybox", "latest", BODY)

    def warn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY, headers={"Warning": '299 - "this image is deprecated"'})

    fake.script = [warn]
    with caplog.at_level(logging.WARNING, "engine.registry"):
        await make_client().get_manifest(ref())
    assert "this image is deprecated" in caplog.text


async def test_tags_and_catalog_follow_pagination(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.tags["library/busybox"] = [f"v{i}" for i in range(7)]
    fake.repositories = ["a", "b", "c"]
    fake.page_size = 2
    client = make_client()
    assert await client.list_tags(ref()) == [f"v{i}" for i in range(7)]
    assert await client.catalog("registry.example") == ["a", "b", "c"]
    with pytest.raises(ManifestUnknown, match=r"repository unknown: registry.example/library/nothing"):
        await client.list_tags(ref("library/nothing"))


async def test_catalog_asks_for_the_catalog_scope(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth, fake.repositories = "bearer", ["x"]
    assert await make_client().catalog("registry.example") == ["x"]
    assert fake.token_requests[0].url.params.get_list("scope") == ["registry:catalog:*"]


async def test_head_405_falls_back_to_get(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = fake.put_manifest("library/busybox", "latest", BODY)
    client = make_client()
    assert await client.resolve(ref()) == (digest, "application/vnd.oci.image.manifest.v1+json", len(BODY))
    assert fake.requests[-1].method == "HEAD"
    fake.script = [lambda r: httpx.Response(405)]
    assert await client.resolve(ref()) == (digest, "application/vnd.oci.image.manifest.v1+json", len(BODY))
    assert [r.method for r in fake.requests[-2:]] == ["HEAD", "GET"]


def test_error_body_parsing() -> None:
    body = b'{"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"},' \
           b' {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}'
    parsed = parse_error_body(body)
    assert parsed.codes == ("DENIED", "MANIFEST_UNKNOWN")
    assert parsed.message == "denied: requested access to the resource is denied; manifest unknown"
    assert parse_error_body(b'{"details": "incorrect username or password"}').message == \
        "incorrect username or password"
    assert parse_error_body(b"<html><body>Bad Gateway</body></html>").message == ""
    assert parse_error_body(b"plain words\nmore").message == "plain words"


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_credentials_for_mirror_host_are_looked_up_by_its_host(
    fake: FakeRegistry, make_client: ClientFactory, store: CredentialStore
) -> None:
    fake.host = "mirror.example"
    fake.auth, fake.users = "basic", {"m": "pw"}
    data = b"config"
    digest = fake.put_blob(data)
    store.set("mirror.example", Credentials("m", "pw"))
    config = RegistryConfig(mirrors={"docker.io": ("mirror.example",)})
    got = await make_client(config).get_blob(ref(domain="docker.io"), Descriptor("x", digest, len(data)))
    assert got == data
    assert digest == digest_of(data)
