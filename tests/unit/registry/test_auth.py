"""The I/O-free auth pieces: challenge parsing, token responses, and the per-request flow's decisions."""

from __future__ import annotations

import json

import pytest

from engine.errors import AuthError, RegistryError
from engine.registry.auth import (
    MIN_TOKEN_LIFETIME,
    Authorizer,
    Challenge,
    FetchToken,
    SendRequest,
    Token,
    basic_header,
    parse_token_response,
    parse_www_authenticate,
)
from engine.registry.credentials import Credentials
from tests.unit.registry.fake_registry import Clock

HUB = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"'


def test_parse_bearer_with_quoted_commas() -> None:
    [challenge] = parse_www_authenticate([HUB])
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scopes == ("repository:samalba/my-app:pull,push",)
    assert challenge.error is None


def test_parse_several_challenges_escapes_and_odd_spacing() -> None:
    value = 'Basic realm="a \\"quoted\\" realm", BEARER  realm = "https://t/x" , error=invalid_token,  scope="a b"'
    basic, bearer = parse_www_authenticate([value])
    assert basic == Challenge("basic", {"realm": 'a "quoted" realm'})
    assert bearer.scheme == "bearer"
    assert bearer.realm == "https://t/x"
    assert bearer.error == "invalid_token"
    assert bearer.scopes == ("a", "b")


def test_parse_multiple_header_values_and_garbage() -> None:
    parsed = parse_www_authenticate(['Basic realm="r"', "", "=,,", 'Negotiate', 'Bearer realm="unterminated'])
    assert [c.scheme for c in parsed] == ["basic", "negotiate", "bearer"]
    assert parsed[2].realm == "unterminated"


def test_token_response_fields_and_lifetimes() -> None:
    now = 1_700_000_000.0
    assert parse_token_response(b'{"token": "t1", "expires_in": 300}', now, "r") == Token("t1", now + 300)
    # access_token alone; a missing or too-short lifetime is treated as 60 s, as Docker does.
    assert parse_token_response(b'{"access_token": "t2"}', now, "r") == Token("t2", now + MIN_TOKEN_LIFETIME)
    assert parse_token_response(b'{"token": "t3", "expires_in": 5}', now, "r").expires_at == now + 60
    # issued_at in our recent past counts from then; one in the future (clock skew) counts from now.
    issued = json.dumps({"token": "t", "expires_in": 300, "issued_at": "2023-11-14T22:12:20Z"}).encode()
    assert parse_token_response(issued, now, "r").expires_at == 1_699_999_940.0 + 300
    future = json.dumps({"token": "t", "expires_in": 300, "issued_at": "2030-01-01T00:00:00.123456789Z"}).encode()
    assert parse_token_response(future, now, "r").expires_at == now + 300


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"expires_in": 3}', b'{"token": ""}'])
def test_token_response_garbage_is_a_registry_error(body: bytes) -> None:
    with pytest.raises(RegistryError, match=r"token server r"):
        parse_token_response(body, 0.0, "r")


def _challenge(error: str | None = None) -> list[Challenge]:
    params = {"realm": "https://auth/token", "service": "svc"}
    if error:
        params["error"] = error
    return [Challenge("bearer", params)]


def test_anonymous_bearer_flow_fetches_one_token_per_scope_until_expiry() -> None:
    clock = Clock()
    auth = Authorizer(clock)
    flow = auth.flow("reg", ["repository:a:pull"], None, "pull access denied for reg/a")
    assert flow.next_step() == SendRequest(None)
    flow.unauthorized(_challenge(), "authentication required")
    step = flow.next_step()
    assert isinstance(step, FetchToken)
    assert step.request.method == "GET"
    assert step.request.url == "https://auth/token"
    assert step.request.params == (("service", "svc"), ("scope", "repository:a:pull"))
    assert step.request.credentials is None
    flow.token_fetched(Token("tok", clock.now + 300))
    assert flow.next_step() == SendRequest("Bearer tok")

    # A later request for the same scope authenticates up front from the cache; another scope fetches anew.
    assert auth.flow("reg", ["repository:a:pull"], None, "x").next_step() == SendRequest("Bearer tok")
    assert isinstance(auth.flow("reg", ["repository:b:pull"], None, "x").next_step(), FetchToken)
    # Near expiry (within the safety margin) the cached token is no longer used.
    clock.now += 296
    assert isinstance(auth.flow("reg", ["repository:a:pull"], None, "x").next_step(), FetchToken)


def test_credentials_go_on_the_token_request_and_key_the_cache() -> None:
    auth = Authorizer(Clock())
    creds = Credentials("alice", "s3cret")
    flow = auth.flow("reg", ["repository:a:pull"], creds, "x")
    flow.unauthorized(_challenge(), "")
    step = flow.next_step()
    assert isinstance(step, FetchToken)
    assert step.request.credentials == creds
    flow.token_fetched(Token("alice-token", 1e12))
    # Anonymous requests never reuse alice's token.
    assert isinstance(auth.flow("reg", ["repository:a:pull"], None, "x").next_step(), FetchToken)


def test_challenge_scope_is_added_to_ours() -> None:
    auth = Authorizer(Clock())
    flow = auth.flow("reg", [], None, "x")
    flow.unauthorized([Challenge("bearer", {"realm": "https://a/t", "scope": "registry:catalog:*"})], "")
    step = flow.next_step()
    assert isinstance(step, FetchToken)
    assert step.request.params == (("scope", "registry:catalog:*"),)


def test_error_challenge_gets_one_fresh_token_then_fails() -> None:
    auth = Authorizer(Clock())
    flow = auth.flow("reg", ["repository:a:pull"], None, "pull access denied for reg/a")
    flow.unauthorized(_challenge(), "")
    assert isinstance(flow.next_step(), FetchToken)
    flow.token_fetched(Token("old", 1e12))
    assert flow.next_step() == SendRequest("Bearer old")
    flow.unauthorized(_challenge("invalid_token"), "token expired")
    assert isinstance(flow.next_step(), FetchToken)  # the stale token was dropped
    flow.token_fetched(Token("new", 1e12))
    assert flow.next_step() == SendRequest("Bearer new")
    with pytest.raises(AuthError, match=r"^pull access denied for reg/a: token expired$"):
        flow.unauthorized(_challenge("invalid_token"), "token expired")


def test_refusal_without_error_parameter_is_final() -> None:
    auth = Authorizer(Clock())
    flow = auth.flow("reg", ["repository:a:pull"], None, "denied")
    flow.unauthorized(_challenge(), "")
    flow.next_step()
    flow.token_fetched(Token("t", 1e12))
    flow.next_step()
    with pytest.raises(AuthError, match=r"^denied: authentication required$"):
        flow.unauthorized(_challenge(), "")


def test_basic_challenge_sends_credentials_or_refuses_without_them() -> None:
    auth = Authorizer(Clock())
    creds = Credentials("bob", "pw")
    flow = auth.flow("reg", [], creds, "login to reg failed")
    flow.unauthorized([Challenge("basic", {"realm": "r"})], "")
    assert flow.next_step() == SendRequest(basic_header(creds))
    with pytest.raises(AuthError, match=r"^login to reg failed: bad password$"):
        flow.unauthorized([Challenge("basic", {"realm": "r"})], "bad password")
    anonymous = auth.flow("reg", [], None, "pull access denied for reg/a")
    with pytest.raises(AuthError, match=r"requires a username and password"):
        anonymous.next_step()


def test_unsupported_challenge_is_an_auth_error() -> None:
    flow = Authorizer(Clock()).flow("reg", [], None, "denied")
    with pytest.raises(AuthError, match=r"no supported WWW-Authenticate challenge"):
        flow.unauthorized([Challenge("negotiate", {})], "")
    with pytest.raises(AuthError, match=r"no supported"):
        Authorizer(Clock()).flow("reg", [], None, "denied").unauthorized([Challenge("bearer", {})], "")


def test_identity_token_uses_an_oauth_refresh_post() -> None:
    auth = Authorizer(Clock())
    flow = auth.flow("reg", ["repository:a:pull"], Credentials("<token>", "refresh-me"), "x")
    flow.unauthorized(_challenge(), "")
    step = flow.next_step()
    assert isinstance(step, FetchToken)
    assert step.request.method == "POST"
    assert step.request.credentials is None
    assert dict(step.request.params) == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-me",
        "client_id": "kitebox",
        "service": "svc",
        "scope": "repository:a:pull",
    }


def test_credentials_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))
