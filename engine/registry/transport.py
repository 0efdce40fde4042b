"""HTTP for the registry client: endpoints, authentication, retries, redirects, error translation.

This is the only module that holds an ``httpx.AsyncClient``; everything httpx raises is translated here (or in
:func:`pump_body`) into the error tree, so nothing httpx-typed reaches callers.

Rules (engine-anchors.md §3, distribution-spec, containerd's resolver):

* Plain HTTP only to loopback hosts and to hosts listed in ``registries.insecure``; HTTPS otherwise, for the
  registry, its mirrors, token realms, redirect targets and foreign-layer URLs alike.
* Redirects are followed here (at most 10); ``Authorization`` goes only to the host it was issued for, so a
  blob's 307 to a storage host never carries the registry token.
* 408 and 429 are retried honouring ``Retry-After`` (seconds or an HTTP date, capped at
  :data:`MAX_RETRY_AFTER`); 500/502/503/504, connection failures and timeouts with exponential backoff; at
  most ``retries`` times, sleeping through the injected ``sleep`` so tests never wait.
* ``Warning: 299`` headers are logged and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

import httpx

from engine.config import RegistryConfig
from engine.errors import AuthError, LimitExceeded, RegistryError, RegistryUnavailable
from engine.reference import is_loopback_domain
from engine.registry.auth import Authorizer, FetchToken, Token, TokenRequest, basic_header, parse_token_response
from engine.registry.auth import parse_www_authenticate as parse_challenges
from engine.registry.credentials import Credentials, normalize_domain

__all__ = [
    "CHUNK_SIZE",
    "MAX_REDIRECTS",
    "MAX_RETRY_AFTER",
    "Endpoint",
    "RegistryErrorBody",
    "Transport",
    "backoff_delay",
    "check_scheme",
    "parse_error_body",
    "parse_retry_after",
    "plain_http_allowed",
    "pump_body",
    "read_body",
]

log = logging.getLogger("engine.registry")

CHUNK_SIZE = 1 << 20  # blob bytes handed to a sink at a time: few, large writes keep hashing+IO cheap
MAX_REDIRECTS = 10  # containerd's limit
MAX_RETRY_AFTER = 60.0  # seconds: never let a registry park a pull for hours
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
ERROR_BODY_LIMIT = 64 * 1024
TOKEN_BODY_LIMIT = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "kitebox/0.1"


def plain_http_allowed(host: str, insecure: Iterable[str]) -> bool:
    """Whether ``host`` (``name[:port]``) may be spoken to without TLS: loopback, or configured insecure."""
    wanted = normalize_domain(host)
    return is_loopback_domain(host) or any(normalize_domain(entry) == wanted for entry in insecure)


def check_scheme(url: httpx.URL, insecure: Iterable[str], what: str) -> None:
    """Refuse anything but HTTPS, and HTTP to hosts that may not have it (see :func:`plain_http_allowed`)."""
    if url.scheme == "https":
        return
    host = url.netloc.decode("ascii", "replace")
    if url.scheme == "http":
        if plain_http_allowed(host, insecure):
            return
        raise RegistryError(
            f"{what}: refusing plain HTTP to {host} (only loopback and registries.insecure hosts may use it)"
        )
    raise RegistryError(f"{what}: unsupported URL scheme {url.scheme!r} in {str(url)[:200]}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server to ask for a registry's content: the registry itself or one of its mirrors."""

    domain: str  # the registry the reference names ("docker.io", "localhost:5000"); used in messages
    base_url: str  # "https://registry-1.docker.io"; a mirror may carry a path prefix
    credentials_key: str  # what the credential store is asked for
    mirror: bool = False

    @property
    def host(self) -> str:
        """``host[:port]`` of the server: the only place this endpoint's Authorization may be sent."""
        return httpx.URL(self.base_url).netloc.decode("ascii")

    @property
    def label(self) -> str:
        return f"mirror {self.host} of {self.domain}" if self.mirror else self.domain

    def url(self, path: str) -> httpx.URL:
        return httpx.URL(self.base_url.rstrip("/") + path)


@dataclass(frozen=True, slots=True)
class RegistryErrorBody:
    """The codes and messages of a registry's ``{"errors": [{code, message, detail}]}`` body."""

    codes: tuple[str, ...]
    message: str


def parse_error_body(body: bytes) -> RegistryErrorBody:
    """Codes and a one-line message from an error body; a non-JSON body yields its first line, if short."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        first = text[0].strip() if text else ""
        return RegistryErrorBody((), first[:200] if first and not first.startswith("<") else "")
    codes: list[str] = []
    parts: list[str] = []
    errors = raw.get("errors") if isinstance(raw, dict) else None
    for entry in errors if isinstance(errors, list) else []:
        if not isinstance(entry, dict):
            continue
        code = entry.get("code")
        message = entry.get("message")
        code_text = code.strip() if isinstance(code, str) else ""
        message_text = " ".join(message.split()) if isinstance(message, str) else ""
        if code_text:
            codes.append(code_text.upper())
        # Docker's style: "denied: requested access to the resource is denied".
        label = code_text.lower().replace("_", " ")
        if message_text and label and not message_text.lower().startswith(label):
            parts.append(f"{label}: {message_text}")
        elif message_text or label:
            parts.append(message_text or label)
    if not parts and isinstance(raw, dict):  # token servers: {"details": "..."} or {"error": "..."}
        for key in ("details", "error_description", "error", "message"):
            value = raw.get(key)
            if isinstance(value, str) and value.strip():
                parts.append(" ".join(value.split()))
                break
    return RegistryErrorBody(tuple(codes), "; ".join(parts)[:500])


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date), capped; ``None`` if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int) -> float:
    """Exponential backoff before retry number ``attempt`` (1-based): 0.5 s, 1 s, 2 s ... capped at 8 s."""
    return float(min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_MAX))


def _network_reason(err: BaseException) -> str:
    """A short reason for a connection failure: "connection refused", "cannot resolve host name", ..."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "cannot resolve host name"
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(err).split())
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "name resolution" in lowered:
        return "cannot resolve host name"
    return text[:200] or type(err).__name__


def _describe_transport_error(err: httpx.TransportError, label: str, what: str) -> str:
    if isinstance(err, httpx.ConnectTimeout):
        return f"cannot reach registry {label}: connection timed out"
    if isinstance(err, httpx.TimeoutException):
        return f"{label}: timed out {what}"
    if isinstance(err, httpx.ConnectError):
        return f"cannot reach registry {label}: {_network_reason(err)}"
    return f"{label}: connection lost {what}: {_network_reason(err)}"


async def read_body(response: httpx.Response, limit: int, too_big: str, label: str, what: str) -> bytes:
    """The (decoded) body, refusing more than ``limit`` bytes: stop reading and raise LimitExceeded(too_big)."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise LimitExceeded(too_big)
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise LimitExceeded(too_big)
            parts.append(chunk)
    except httpx.TransportError as err:
        raise RegistryUnavailable(_describe_transport_error(err, label, what)) from err
    except httpx.HTTPError as err:
        raise RegistryError(f"{label}: bad response {what}: {err}") from err
    return b"".join(parts)


async def pump_body(
    response: httpx.Response, consume: Callable[[bytes], Awaitable[None]], label: str, what: str
) -> None:
    """Hand the raw (undecoded) body to ``consume`` in large chunks; a break or stall is RegistryUnavailable.

    Bytes that arrived before a break are still delivered, so a resume starts right after them.
    """
    pending: list[bytes] = []
    pending_size = 0
    broken: RegistryUnavailable | None = None
    try:
        # Coalesce the socket's small reads into CHUNK_SIZE pieces with one join (httpx's own chunker copies
        # every byte several times).
        async for piece in response.aiter_raw():
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= CHUNK_SIZE:
                chunk = b"".join(pending) if len(pending) > 1 else pending[0]
                pending.clear()
                pending_size = 0
                await consume(chunk)
    except httpx.TransportError as err:
        broken = RegistryUnavailable(_describe_transport_error(err, label, what))
        broken.__cause__ = err
    except httpx.HTTPError as err:
        raise RegistryError(f"{label}: bad response {what}: {err}") from err
    if pending:
        await consume(b"".join(pending))
    if broken is not None:
        raise broken


async def error_of(response: httpx.Response) -> RegistryErrorBody:
    """Read (a bounded prefix of) an error response's body and close it; never raises."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the status already says what went wrong; a broken error body adds nothing
    finally:
        await response.aclose()
    return parse_error_body(b"".join(parts)[:ERROR_BODY_LIMIT])


def _tune_httpcore() -> None:
    """Read the socket in 1 MiB pieces instead of httpcore's 64 KiB: with blobs streamed at hundreds of MB/s
    the per-read overhead in the HTTP stack is what saturates the event loop (measured: download+verify of a
    103 MB image 0.54 s -> 0.47 s). A class attribute of httpcore's, read on every receive; if a later httpcore
    renames it, this silently does nothing and downloads are merely slower."""
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < 1 << 20:
        AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20


_tune_httpcore()


class Transport:
    """One pooled HTTP/1.1 client plus the authorizer; see the module docstring for the rules it applies."""

    def __init__(
        self,
        config: RegistryConfig,
        *,
        transport: httpx.AsyncBaseTransport | None,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._clock = clock
        self.authorizer = Authorizer(clock)
        self._token_locks: dict[TokenRequest, asyncio.Lock] = {}
        self._transport = transport
        self._clients: dict[bool, httpx.AsyncClient] = {}

    def _client_for(self, url: httpx.URL) -> httpx.AsyncClient:
        """The pooled client for ``url``'s scheme. The TLS one is made on first use: loading the CA bundle
        costs ~50-80 ms, which a pull from a loopback registry over plain HTTP never needs to pay."""
        tls = url.scheme == "https"
        client = self._clients.get(tls)
        if client is None:
            pool = self.config.parallel_downloads + 2
            client = self._clients[tls] = httpx.AsyncClient(
                http1=True,
                http2=False,
                transport=self._transport,
                # An injected transport (tests) must not be bypassed by proxy settings from the environment.
                trust_env=self._transport is None,
                # The plain-HTTP client never verifies anything: skip building a CA store for it.
                verify=tls,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
                # Waiting for a pooled connection is bounded by the other downloads' own timeouts: no pool timeout.
                timeout=httpx.Timeout(self.config.timeout_seconds, connect=self.config.connect_timeout_seconds,
                                      pool=None),
                headers={"User-Agent": USER_AGENT},
            )
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def open(
        self,
        endpoint: Endpoint,
        method: str,
        url: httpx.URL,
        *,
        scopes: Iterable[str],
        credentials: Credentials | None,
        denied: str,
        what: str,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send an authenticated request to ``endpoint``; return the streaming response. The caller closes it.

        401s are answered with the auth flow (raising AuthError with the ``denied`` prefix when refused);
        redirects and transient failures are handled; any other status is the caller's to interpret.
        """
        flow = self.authorizer.flow(endpoint.host, scopes, credentials, denied)
        while True:  # the flow allows one challenge and one token refresh, then raises: this terminates
            step = flow.next_step()
            if isinstance(step, FetchToken):
                # Single flight: parallel downloads needing the same token wait for one fetch, then reuse it.
                async with self._token_locks.setdefault(step.request, asyncio.Lock()):
                    again = flow.next_step()
                    if isinstance(again, FetchToken):
                        token = await self._fetch_token(again.request, endpoint, flow.token_refused)
                        flow.token_fetched(token)
                continue
            response = await self.exchange(
                method, url, headers or {}, step.authorization, endpoint.host, endpoint.label, what
            )
            if response.status_code != 401:
                return response
            answered_by = response.url.netloc.decode("ascii", "replace")
            body = await error_of(response)
            if answered_by != endpoint.host:
                raise AuthError(f"{denied}: {answered_by} refused the redirected request: {body.message or 'HTTP 401'}")
            flow.unauthorized(parse_challenges(response.headers.get_list("www-authenticate")), body.message)

    async def open_url(self, url: httpx.URL, headers: dict[str, str], what: str) -> httpx.Response:
        """An unauthenticated request to an arbitrary URL (foreign layers), same scheme/retry/redirect rules."""
        return await self.exchange("GET", url, headers, None, None, url.netloc.decode("ascii", "replace"), what)

    async def exchange(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        authorization: str | None,
        auth_host: str | None,
        label: str,
        what: str,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One logical request with redirects and retries; returns a response whose status is not transient."""
        attempt = 0
        while True:
            try:
                response = await self._follow(method, url, headers, authorization, auth_host, label, what, content)
            except httpx.TransportError as err:
                failure = _describe_transport_error(err, label, what)
                delay = backoff_delay(attempt + 1)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                retry_after = response.headers.get("retry-after")
                body = await error_of(response)
                status = response.status_code
                failure = f"{label}: HTTP {status} {what}" + (f": {body.message}" if body.message else "")
                waited = parse_retry_after(retry_after, self._clock()) if status in (408, 429) else None
                delay = waited if waited is not None else backoff_delay(attempt + 1)
            if attempt >= self.config.retries:
                if attempt:
                    failure += f" (gave up after {attempt + 1} attempts)"
                raise RegistryUnavailable(failure)
            attempt += 1
            log.info("%s; retrying in %.1f s (%d/%d)", failure, delay, attempt, self.config.retries)
            await self._sleep(delay)

    async def _follow(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        authorization: str | None,
        auth_host: str | None,
        label: str,
        what: str,
        content: bytes | None,
    ) -> httpx.Response:
        for _hop in range(MAX_REDIRECTS + 1):
            check_scheme(url, self.config.insecure, f"{label}: {what}")
            sent = dict(headers)
            if authorization is not None and url.netloc.decode("ascii", "replace") == auth_host:
                sent["Authorization"] = authorization
            try:
                request = self._client_for(url).build_request(method, url, headers=sent, content=content)
            except httpx.InvalidURL as err:
                raise RegistryError(f"{label}: {what}: invalid URL {str(url)[:200]}: {err}") from err
            response = await self._client_for(request.url).send(request, stream=True)
            for warning in response.headers.get_list("warning"):
                if warning.strip().startswith("299"):
                    log.warning("registry %s warns: %s", label, warning.strip()[:500])
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            await response.aclose()
            try:
                url = url.join(location)
            except httpx.InvalidURL as err:
                raise RegistryError(f"{label}: {what}: invalid redirect location {location[:200]!r}") from err
            if response.status_code == 303:
                method, content = "GET", None
        raise RegistryError(f"{label}: more than {MAX_REDIRECTS} redirects {what}")

    async def _fetch_token(
        self, request: TokenRequest, endpoint: Endpoint, refused: Callable[[int, str], NoReturn]
    ) -> Token:
        what = "fetching an auth token"
        try:
            url = httpx.URL(request.url)
        except httpx.InvalidURL as err:
            raise RegistryError(f"{endpoint.label}: invalid token realm {request.url[:200]!r}") from err
        if not url.host:
            raise RegistryError(f"{endpoint.label}: invalid token realm {request.url[:200]!r}")
        realm_host = url.netloc.decode("ascii", "replace")
        label = f"token server {realm_host}"
        headers = {"Accept": "application/json"}
        content: bytes | None = None
        if request.method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = str(httpx.QueryParams(list(request.params))).encode()
        else:
            url = url.copy_merge_params(httpx.QueryParams(list(request.params)))
        authorization = basic_header(request.credentials) if request.credentials is not None else None
        response = await self.exchange(request.method, url, headers, authorization, realm_host, label, what, content)
        try:
            if response.status_code in (401, 403):
                refused(response.status_code, (await error_of(response)).message)
            if response.status_code != 200:
                body = await error_of(response)
                raise RegistryError(f"{label}: HTTP {response.status_code}: {body.message or 'no token'}")
            too_big = f"{label}: token response larger than {TOKEN_BODY_LIMIT} bytes"
            data = await read_body(response, TOKEN_BODY_LIMIT, too_big, label, what)
        finally:
            await response.aclose()
        return parse_token_response(data, self._clock(), realm_host)

