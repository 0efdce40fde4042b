"""Authentication end to end through the client, against the in-memory registry and token server."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from engine.errors import AuthError
from engine.registry import Credentials, CredentialStore
from tests.unit.registry.conftest import ClientFactory
from tests.unit.registry.fake_registry import Clock, FakeRegistry, ref

BODY = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_anonymous_bearer_flow(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth = "bearer"
    fake.put_manifest("library/busybox", "latest", BODY)
    body, content_type, _ = await make_client().get_manifest(ref())
    assert body == BODY
    assert content_type == "application/vnd.oci.image.manifest.v1+json"
    first, token_request, retried = fake.requests
    assert "authorization" not in first.headers
    assert token_request.url.host == "auth.example"
    assert token_request.url.params.multi_items() == [
        ("service", "registry.example"),
        ("scope", "repository:library/busybox:pull"),
    ]
    assert "authorization" not in token_request.headers
    assert retried.headers["authorization"] == "Bearer token-1"


async def test_credentialed_bearer_sends_basic_to_the_token_server(
    fake: FakeRegistry, make_client: ClientFactory, store: CredentialStore
) -> None:
    fake.auth, fake.users = "bearer", {"alice": "s3cret"}
    fake.put_manifest("library/busybox", "latest", BODY)
    store.set("registry.example", Credentials("alice", "s3cret"))
    await make_client().get_manifest(ref())
    [token_request] = fake.token_requests
    assert token_request.headers["authorization"] == _basic("alice", "s3cret")
    # The registry itself only ever sees the bearer token, never the password.
    assert all(r.headers.get("authorization", "").startswith("Bearer") or "authorization" not in r.headers
               for r in fake.registry_requests())


async def test_tokens_are_cached_per_scope_until_expiry(
    fake: FakeRegistry, make_client: ClientFactory, clock: Clock
) -> None:
    fake.auth, fake.expires_in = "bearer", 120
    fake.put_manifest("library/busybox", "latest", BODY)
    fake.put_manifest("library/alpine", "latest", BODY)
    client = make_client()
    await client.get_manifest(ref())
    await client.get_manifest(ref())
    assert len(fake.token_requests) == 1
    assert len(fake.requests) == 4  # challenge, token, manifest, manifest (authenticated up front)
    await client.get_manifest(ref("library/alpine"))
    assert [r.url.params["scope"] for r in fake.token_requests] == [
        "repository:library/busybox:pull",
        "repository:library/alpine:pull",
    ]
    clock.now += 119
    await client.get_manifest(ref())
    assert len(fake.token_requests) == 3
    assert fake.requests[-1].headers["authorization"] == "Bearer token-3"


async def test_parallel_requests_share_one_token_fetch(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth = "bearer"
    fake.put_manifest("library/busybox", "latest", BODY)
    client = make_client()
    results = await asyncio.gather(*(client.get_manifest(ref()) for _ in range(5)))
    assert {body for body, _, _ in results} == {BODY}
    assert len(fake.token_requests) == 1


async def test_invalid_token_challenge_is_retried_once_with_a_fresh_token(
    fake: FakeRegistry, make_client: ClientFactory
) -> None:
    fake.auth = "bearer"
    fake.put_manifest("library/busybox", "latest", BODY)
    client = make_client()
    await client.get_manifest(ref())
    fake.revoked.add("token-1")  # the registry now answers 401 error="invalid_token" to it
    await client.get_manifest(ref())
    assert len(fake.token_requests) == 2
    assert fake.requests[-1].headers["authorization"] == "Bearer token-2"


async def test_persistent_error_challenge_ends_in_auth_error(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth = "bearer"
    fake.put_manifest("library/busybox", "latest", BODY)
    fake.revoke_on_issue = True  # every token is refused by the registry (e.g. no access to the repository)
    with pytest.raises(
        AuthError, match=r"^pull access denied for registry.example/library/busybox: unauthorized: authentication"
    ):
        await make_client().get_manifest(ref())
    assert len(fake.token_requests) == 2  # the first token, then exactly one fresh one


async def test_basic_auth_sends_stored_credentials(
    fake: FakeRegistry, make_client: ClientFactory, store: CredentialStore
) -> None:
    fake.auth, fake.users = "basic", {"bob": "pw"}
    fake.put_manifest("library/busybox", "latest", BODY)
    store.set("registry.example", Credentials("bob", "pw"))
    client = make_client()
    await client.get_manifest(ref())
    await client.get_manifest(ref())
    assert [r.headers.get("authorization") for r in fake.requests] == [None, _basic("bob", "pw"), _basic("bob", "pw")]
    assert fake.token_requests == []


async def test_basic_auth_without_credentials_is_refused(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth = "basic"
    with pytest.raises(AuthError, match=r"pull access denied for registry.example/library/busybox: .*username"):
        await make_client().get_manifest(ref())


async def test_login_accepts_good_credentials(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth, fake.users = "bearer", {"alice": "s3cret"}
    await make_client().login("registry.example", Credentials("alice", "s3cret"))
    assert fake.token_requests[0].headers["authorization"] == _basic("alice", "s3cret")
    assert "scope" not in fake.token_requests[0].url.params
    assert fake.requests[-1].headers["authorization"] == "Bearer token-1"


async def test_login_with_wrong_credentials_is_an_auth_error(
    fake: FakeRegistry, make_client: ClientFactory, store: CredentialStore
) -> None:
    fake.auth, fake.users = "bearer", {"alice": "s3cret"}
    store.set("registry.example", Credentials("alice", "s3cret"))  # stored ones must not be used by login
    with pytest.raises(AuthError, match=r"^login to registry.example failed: incorrect username or password$"):
        await make_client().login("registry.example", Credentials("alice", "wrong"))


async def test_login_with_basic_and_wrong_credentials(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.auth, fake.users = "basic", {"bob": "pw"}
    client = make_client()
    with pytest.raises(AuthError, match=r"^login to registry.example failed: unauthorized: authentication required$"):
        await client.login("registry.example", Credentials("bob", "nope"))
    await client.login("registry.example", Credentials("bob", "pw"))


async def test_ping_with_and_without_auth(fake: FakeRegistry, make_client: ClientFactory) -> None:
    client = make_client()
    await client.ping("registry.example")
    fake.auth = "bearer"
    await make_client().ping("registry.example")
    assert fake.requests[-1].headers["authorization"].startswith("Bearer ")


async def test_docker_config_credentials_are_used(fake: FakeRegistry, make_client: ClientFactory,
                                                  store: CredentialStore) -> None:
    fake.auth, fake.users = "basic", {"carol": "pw"}
    fake.put_manifest("library/busybox", "latest", BODY)
    docker = store.docker_config
    docker.parent.mkdir(parents=True)
    entry = {"auth": base64.b64encode(b"carol:pw").decode()}
    docker.write_text(json.dumps({"auths": {"https://registry.example": entry}}))
    await make_client().get_manifest(ref())
    assert fake.requests[-1].headers["authorization"] == _basic("carol", "pw")
