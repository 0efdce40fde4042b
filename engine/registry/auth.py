"""Registry authentication as a small I/O-free state machine (distribution ``token.md`` / containerd's authorizer).

The transport asks an :class:`AuthFlow` what to do before each attempt of one request and tells it what came
back; the flow never does I/O itself, so every decision here is unit-testable without a network:

1. Nothing is known about the host: send the request without ``Authorization``.
2. A 401 carries ``WWW-Authenticate``. The challenge is remembered per host (so later requests authenticate
   up front) and the request is retried: ``Basic`` sends the credentials directly; ``Bearer`` first fetches a
   token from ``realm?service=..&scope=..`` (one ``scope`` parameter per scope), anonymously or with Basic
   credentials (an identity token is exchanged with an OAuth ``refresh_token`` POST instead, as Docker does).
3. Tokens are cached per (host, scopes, credentials) until ``issued_at + expires_in`` (less a few seconds).
4. A 401 after we sent a token is retried once with a fresh token if its challenge carries ``error=``
   (``invalid_token``, ``insufficient_scope``); any other refusal ends the request with :class:`AuthError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

from engine.errors import AuthError, RegistryError
from engine.registry.credentials import Credentials

__all__ = [
    "MIN_TOKEN_LIFETIME",
    "AuthFlow",
    "Authorizer",
    "Challenge",
    "FetchToken",
    "SendRequest",
    "Token",
    "TokenRequest",
    "basic_header",
    "parse_token_response",
    "parse_www_authenticate",
]

MIN_TOKEN_LIFETIME = 60.0  # seconds; token.md: "defaults to 60 seconds", Docker also treats shorter as 60
TOKEN_EXPIRY_MARGIN = 5.0  # refresh a little early so a token never expires in flight
OAUTH_CLIENT_ID = "kitebox"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lower-cased, parameter names lower-cased."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())

    @property
    def error(self) -> str | None:
        return self.params.get("error")


_SEPARATORS = " \t,="


def _parse_one(value: str, out: list[Challenge]) -> None:
    """Scan ``scheme param=value, param="quoted, with commas", scheme2 ...`` into ``out``."""
    pos, end = 0, len(value)
    scheme: str | None = None
    params: dict[str, str] = {}

    def finish() -> None:
        if scheme is not None:
            out.append(Challenge(scheme, dict(params)))

    while pos < end:
        while pos < end and value[pos] in " \t,":
            pos += 1
        start = pos
        while pos < end and value[pos] not in _SEPARATORS:
            pos += 1
        name = value[start:pos]
        if not name:  # a stray "=": skip it
            pos += 1
            continue
        probe = pos
        while probe < end and value[probe] in " \t":
            probe += 1
        if probe < end and value[probe] == "=":
            pos = probe + 1
            while pos < end and value[pos] in " \t":
                pos += 1
            if pos < end and value[pos] == '"':
                pos += 1
                chars: list[str] = []
                while pos < end and value[pos] != '"':
                    if value[pos] == "\\" and pos + 1 < end:
                        pos += 1
                    chars.append(value[pos])
                    pos += 1
                pos += 1  # the closing quote (or the end of a truncated header)
                param = "".join(chars)
            else:
                start = pos
                while pos < end and value[pos] not in " \t,":
                    pos += 1
                param = value[start:pos]
            if scheme is not None:
                params[name.lower()] = param
        else:
            finish()
            scheme, params = name.lower(), {}
    finish()


def parse_www_authenticate(values: Iterable[str]) -> list[Challenge]:
    """All challenges in the given ``WWW-Authenticate`` header values, in order; garbage is skipped."""
    out: list[Challenge] = []
    for value in values:
        _parse_one(value, out)
    return out


def _pick(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge we answer: Bearer (with a realm) over Basic; other schemes are not supported."""
    found = list(challenges)
    for challenge in found:
        if challenge.scheme == "bearer" and challenge.realm:
            return challenge
    for challenge in found:
        if challenge.scheme == "basic":
            return challenge
    return None


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float  # clock time after which the token must not be used


def _parse_issued_at(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_token_response(body: bytes, now: float, realm: str) -> Token:
    """Decode a token server's JSON answer. ``now`` is the clock when it arrived; ``realm`` names the server."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RegistryError(f"token server {realm}: response is not valid JSON") from err
    if not isinstance(raw, dict):
        raise RegistryError(f"token server {realm}: response is not a JSON object")
    token = raw.get("token") or raw.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"token server {realm}: response carries no token")
    expires_in = raw.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) else 0.0
    lifetime = max(lifetime, MIN_TOKEN_LIFETIME)
    issued = _parse_issued_at(raw.get("issued_at"))
    # A server clock ahead of ours must not make the token look fresher than it is, nor one far behind
    # make every token look expired on arrival: trust issued_at only when it is in our recent past.
    start = issued if issued is not None and now - lifetime < issued <= now else now
    return Token(token, start + lifetime)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What to ask the token server: ``GET url?params`` (Basic ``credentials`` if any) or an OAuth form POST."""

    method: str
    url: str
    params: tuple[tuple[str, str], ...]
    credentials: Credentials | None


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send (or resend) the request with this ``Authorization`` value (``None``: none)."""

    authorization: str | None


@dataclass(frozen=True, slots=True)
class FetchToken:
    """Fetch a token first, then hand it to :meth:`AuthFlow.token_fetched`."""

    request: TokenRequest


# Tokens are cached per (host, sorted scopes, credentials): a login with new credentials never reuses a token
# obtained anonymously or with the old password.
TokenKey = tuple[str, tuple[str, ...], Credentials | None]


class Authorizer:
    """What a client has learnt about hosts' authentication: their challenge and the tokens it holds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[TokenKey, Token] = {}

    def challenge(self, host: str) -> Challenge | None:
        return self._challenges.get(host)

    def flow(self, host: str, scopes: Iterable[str], credentials: Credentials | None, denied: str) -> AuthFlow:
        """A flow for one request to ``host``; ``denied`` prefixes AuthError messages ("pull access denied ...")."""
        return AuthFlow(self, host, tuple(scopes), credentials, denied)

    def remember_challenge(self, host: str, challenge: Challenge) -> None:
        self._challenges[host] = challenge

    def remember_token(self, key: TokenKey, token: Token) -> None:
        self._tokens[key] = token

    def forget_token(self, key: TokenKey) -> None:
        self._tokens.pop(key, None)

    def cached_token(self, key: TokenKey) -> Token | None:
        """The cached token for ``key`` if it is still valid (with a safety margin), else ``None``."""
        token = self._tokens.get(key)
        if token is None:
            return None
        if self.clock() >= token.expires_at - TOKEN_EXPIRY_MARGIN:
            del self._tokens[key]
            return None
        return token


class AuthFlow:
    """The authentication decisions for one request (see the module docstring for the protocol)."""

    def __init__(
        self,
        authorizer: Authorizer,
        host: str,
        scopes: tuple[str, ...],
        credentials: Credentials | None,
        denied: str,
    ) -> None:
        self._auth = authorizer
        self.host = host
        self._scopes = tuple(sorted(set(scopes)))
        self._credentials = credentials
        self._denied = denied
        self._key: TokenKey = (host, self._scopes, credentials)
        self._fresh: Token | None = None  # a token fetched during this flow: use it even if the cache dropped it
        self._sent: str | None = None  # scheme we last sent: None, "basic" or "bearer"
        self._challenged = False
        self._refreshed = False

    def next_step(self) -> SendRequest | FetchToken:
        """What to do now: send with an Authorization value, or fetch a token first."""
        challenge = self._auth.challenge(self.host)
        if challenge is None:
            self._sent = None
            return SendRequest(None)
        if challenge.scheme == "basic":
            if self._credentials is None or self._credentials.is_identity_token:
                raise AuthError(f"{self._denied}: {self.host} requires a username and password")
            self._sent = "basic"
            return SendRequest(basic_header(self._credentials))
        token = self._fresh or self._auth.cached_token(self._key)
        if token is None:
            return FetchToken(self._token_request(challenge))
        self._sent = "bearer"
        return SendRequest("Bearer " + token.value)

    def token_fetched(self, token: Token) -> None:
        self._fresh = token
        self._auth.remember_token(self._key, token)

    def unauthorized(self, challenges: Iterable[Challenge], message: str) -> None:
        """The registry answered 401: learn from the challenge and return to retry, or raise AuthError.

        ``message`` is the registry's own explanation (from its error body), used in the error.
        """
        chosen = _pick(challenges)
        reason = message or "authentication required"
        if chosen is None:
            raise AuthError(f"{self._denied}: {reason} (no supported WWW-Authenticate challenge)")
        previous = self._sent
        if previous is None and not self._challenged:
            self._challenged = True
            self._auth.remember_challenge(self.host, chosen)
            return
        if previous == "bearer" and chosen.scheme == "bearer" and chosen.error and not self._refreshed:
            self._refreshed = True
            self._fresh = None
            self._auth.forget_token(self._key)
            self._auth.remember_challenge(self.host, chosen)
            return
        raise AuthError(f"{self._denied}: {reason}")

    def token_refused(self, status: int, message: str) -> NoReturn:
        """The token server refused (401/403): the credentials are wrong or access is denied."""
        raise AuthError(f"{self._denied}: {message or f'token server answered HTTP {status}'}")

    def _token_request(self, challenge: Challenge) -> TokenRequest:
        scopes = list(self._scopes)
        scopes += [s for s in challenge.scopes if s not in scopes]
        creds = self._credentials
        if creds is not None and creds.is_identity_token:
            form: list[tuple[str, str]] = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.password),
                ("client_id", OAUTH_CLIENT_ID),
            ]
            if challenge.service:
                form.append(("service", challenge.service))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            return TokenRequest("POST", challenge.realm, tuple(form), None)
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params += [("scope", s) for s in scopes]
        return TokenRequest("GET", challenge.realm, tuple(params), creds)
