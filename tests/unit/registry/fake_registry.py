"""An in-memory distribution registry (plus token server and storage host) behind ``httpx.MockTransport``.

It records every request so tests can assert on headers, and has knobs for the failures the client must
survive: scripted status codes, broken streams, ignored ``Range`` headers, redirects to a storage host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from engine.reference import Reference

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ChunkStream(httpx.AsyncByteStream):
    """A body arriving in ``chunk``-sized pieces, as from a socket; with ``error``, the connection then drops."""

    def __init__(self, data: bytes, chunk: int = 1000, error: Exception | None = None) -> None:
        self._data = data
        self._chunk = chunk
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), self._chunk):
            yield self._data[start : start + self._chunk]
        if self._error is not None:
            raise self._error


def streamed(status: int, data: bytes, headers: dict[str, str] | None = None, *, length: int | None = None,
             error: Exception | None = None) -> httpx.Response:
    """A streaming response (unlike ``Response(content=...)``, which httpx reads eagerly)."""
    sent = {"Content-Length": str(len(data) if length is None else length), **(headers or {})}
    return httpx.Response(status, headers=sent, stream=ChunkStream(data, error=error))


def registry_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"code": code, "message": message}]}, headers=headers)


@dataclass
class FakeRegistry:
    """Serves ``/v2/`` for one host. ``auth`` is "none", "bearer" or "basic"; ``users`` maps user -> password."""

    host: str = "registry.example"
    auth: str = "none"
    users: dict[str, str] = field(default_factory=dict)
    realm: str = "https://auth.example/token"
    service: str = "registry.example"
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # "repo/path:ref" -> (body, type)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)
    repositories: list[str] = field(default_factory=list)
    page_size: int = 0  # > 0: paginate tags/catalog with Link headers
    expires_in: int = 300
    requests: list[httpx.Request] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)  # tokens handed out, in order
    revoked: set[str] = field(default_factory=set)  # tokens the registry answers with error="invalid_token"
    revoke_on_issue: bool = False  # every token handed out is refused by the registry
    script: list[Callable[[httpx.Request], httpx.Response | None]] = field(default_factory=list)
    storage_host: str | None = None  # blobs 307 to https://<storage_host>/<digest> when set
    ignore_range: bool = False
    break_after: int | None = None  # first blob response drops the connection after this many bytes
    content_digest_header: str | None = None  # override Docker-Content-Digest on manifests
    tokens_scopes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def put_manifest(self, path: str, ref: str, body: bytes, media_type: str = MANIFEST_TYPE) -> str:
        digest = digest_of(body)
        self.manifests[f"{path}:{ref}"] = (body, media_type)
        self.manifests[f"{path}:{digest}"] = (body, media_type)
        return digest

    def put_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        return digest

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle_async)

    async def _handle_async(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let other tasks run, as a real round trip would: concurrent requests interleave
        return self.handle(request)

    def registry_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == self.host.split(":")[0]]

    # -- request handling --------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            scripted = self.script.pop(0)(request)
            if scripted is not None:
                return scripted
        if request.url.netloc.decode() == httpx.URL(self.realm).netloc.decode():
            return self._token(request)
        if self.storage_host is not None and request.url.host == self.storage_host:
            return self._blob_body(request, self.blobs[request.url.path.lstrip("/")])
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        if path == "/v2/_catalog":
            return self._page(request, "repositories", self.repositories)
        if "/manifests" in path:
            name, _, ref = path[len("/v2/") :].partition("/manifests/")
            return self._manifest(request, name, ref)
        if "/blobs/" in path:
            name, _, digest = path[len("/v2/") :].partition("/blobs/")
            if digest not in self.blobs:
                return registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            if self.storage_host is not None:
                return httpx.Response(307, headers={"Location": f"https://{self.storage_host}/{digest}"})
            return self._blob_body(request, self.blobs[digest])
        if path.endswith("/tags/list"):
            name = path[len("/v2/") : -len("/tags/list")]
            if name not in self.tags:
                return registry_error(404, "NAME_UNKNOWN", "repository name not known to registry")
            return self._page(request, "tags", self.tags[name], {"name": name})
        return httpx.Response(404)

    def _challenge(self, request: httpx.Request, error: str | None = None) -> httpx.Response:
        if self.auth == "basic":
            header = 'Basic realm="fake"'
        else:
            header = f'Bearer realm="{self.realm}",service="{self.service}"'
            scope = self._scope_for(request)
            if scope:
                header += f',scope="{scope}"'
            if error:
                header += f',error="{error}"'
        return registry_error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": header})

    @staticmethod
    def _scope_for(request: httpx.Request) -> str:
        path = request.url.path
        if path == "/v2/_catalog":
            return "registry:catalog:*"
        for marker in ("/manifests/", "/blobs/", "/tags/list"):
            if marker in path:
                return f"repository:{path[len('/v2/') :].partition(marker)[0]}:pull"
        return ""

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        if self.auth == "none":
            return None
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            if header.startswith("Basic ") and self._valid_basic(header) is not None:
                return None
            return self._challenge(request)
        if not header.startswith("Bearer "):
            return self._challenge(request)
        token = header[len("Bearer ") :]
        if token in self.revoked or token not in self.issued:
            return self._challenge(request, "invalid_token")
        needed = self._scope_for(request)
        if needed and needed not in self.tokens_scopes.get(token, ()):
            return self._challenge(request, "insufficient_scope")
        return None

    def _valid_basic(self, header: str) -> str | None:
        user, _, password = base64.b64decode(header.split(" ", 1)[1]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        header = request.headers.get("authorization", "")
        if header and self._valid_basic(header) is None:
            return httpx.Response(401, json={"details": "incorrect username or password"})
        token = f"token-{len(self.issued) + 1}"
        self.issued.append(token)
        if self.revoke_on_issue:
            self.revoked.add(token)
        self.tokens_scopes[token] = tuple(request.url.params.get_list("scope"))
        return httpx.Response(200, json={"token": token, "expires_in": self.expires_in})

    def _manifest(self, request: httpx.Request, name: str, ref: str) -> httpx.Response:
        found = self.manifests.get(f"{name}:{ref}")
        if found is None:
            return registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        body, media_type = found
        digest = self.content_digest_header or digest_of(body)
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Content-Length": str(len(body))})
        return httpx.Response(200, content=body, headers=headers)

    def _blob_body(self, request: httpx.Request, data: bytes) -> httpx.Response:
        start = 0
        range_header = request.headers.get("range")
        status = 200
        headers: dict[str, str] = {}
        if range_header and not self.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.break_after is not None:
            cut = self.break_after
            self.break_after = None
            return streamed(status, body[:cut], headers, length=len(body),
                            error=httpx.ReadError("connection reset by peer"))
        return streamed(status, body, headers)

    def _page(
        self, request: httpx.Request, key: str, items: list[str], extra: dict[str, str] | None = None
    ) -> httpx.Response:
        if not self.page_size:
            return httpx.Response(200, json={**(extra or {}), key: items})
        last = request.url.params.get("last")
        start = items.index(last) + 1 if last else 0
        page = items[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(items):
            next_url = request.url.copy_with(params={"n": str(self.page_size), "last": page[-1]})
            headers["Link"] = f'<{next_url.raw_path.decode()}>; rel="next"'
        return httpx.Response(200, json={**(extra or {}), key: page}, headers=headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """A ``sleep`` that returns at once and records the requested durations."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.durations.append(seconds)


def ref(path: str = "library/busybox", tag: str | None = "latest", digest: str | None = None,
        domain: str = "registry.example") -> Reference:
    return Reference(domain, path, None if digest else tag, digest)
