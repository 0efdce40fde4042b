"""The distribution-API client the puller, ``login`` and ``search``-like verbs use.

Contract (engine-anchors.md §3 "Verification"):

* A manifest fetched by digest is returned only if ``sha256(body)`` equals that digest; one fetched by tag is
  returned with ``sha256(body)`` as its digest, and a ``Docker-Content-Digest`` header must agree with it.
  Manifest bodies are capped at ``limits.max_manifest_bytes`` (reading stops there).
* ``get_blob`` returns a small blob only after its size and sha256 matched the descriptor.
* ``stream_blob`` delivers each byte of ``[offset, size)`` to the sink exactly once and in order, resuming
  broken downloads with ``Range``; it enforces the size but leaves hashing to the content store's writer.
* For ``docker.io`` (or any domain with ``registries.mirrors``) the mirrors are tried first, then the registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from engine.config import Limits, RegistryConfig
from engine.digest import sha256_bytes, validate_digest
from engine.errors import (
    AuthError,
    DigestMismatch,
    InvalidArgument,
    KiteboxError,
    LimitExceeded,
    ManifestUnknown,
    NotFound,
    RegistryError,
    RegistryUnavailable,
)
from engine.manifest import ACCEPT_MANIFESTS, Descriptor
from engine.reference import Reference, registry_host
from engine.registry.credentials import Credentials, CredentialStore, normalize_domain
from engine.registry.transport import (
    Endpoint,
    Transport,
    backoff_delay,
    check_scheme,
    error_of,
    plain_http_allowed,
    pump_body,
    read_body,
)

__all__ = ["MAX_PAGES", "RegistryClient"]

log = logging.getLogger("engine.registry")

MAX_PAGES = 10_000  # tag/catalog pages followed before giving up on a registry that never stops paginating
_UNKNOWN_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*?\brel\s*=\s*"?next"?', re.IGNORECASE)

T = TypeVar("T")


@dataclass(slots=True)
class _Progress:
    position: int


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip()


class RegistryClient:
    """Talks to registries for one engine; safe for concurrent use from one event loop. Close with aclose()."""

    def __init__(
        self,
        config: RegistryConfig,
        credentials: CredentialStore,
        *,
        limits: Limits,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._limits = limits
        self._sleep = sleep
        self._mirrors = {normalize_domain(domain): self._mirror_endpoints(domain, urls)
                         for domain, urls in config.mirrors.items()}
        self._http = Transport(config, transport=transport, sleep=sleep, clock=clock)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- endpoints -------------------------------------------------------------------------------------------

    def endpoint(self, domain: str) -> Endpoint:
        """The registry itself: plain HTTP for loopback and insecure domains, HTTPS otherwise."""
        scheme = "http" if plain_http_allowed(domain, self._config.insecure) else "https"
        return Endpoint(domain, f"{scheme}://{registry_host(domain)}", domain)

    def endpoints(self, domain: str) -> list[Endpoint]:
        """Where to look for ``domain``'s content, in order: configured mirrors, then the registry."""
        return [*self._mirrors.get(normalize_domain(domain), ()), self.endpoint(domain)]

    def _mirror_endpoints(self, domain: str, urls: tuple[str, ...]) -> list[Endpoint]:
        found: list[Endpoint] = []
        for raw in urls:
            text = raw.strip().rstrip("/")
            if "://" not in text:
                host = text.split("/", 1)[0]
                text = ("http://" if plain_http_allowed(host, self._config.insecure) else "https://") + text
            try:
                url = httpx.URL(text)
            except httpx.InvalidURL as err:
                raise InvalidArgument(f"registry mirror {raw!r} for {domain}: not a valid URL") from err
            if not url.host or url.query or url.fragment:
                raise InvalidArgument(f"registry mirror {raw!r} for {domain}: expected scheme://host[:port][/path]")
            try:
                check_scheme(url, self._config.insecure, f"registry mirror {raw!r} for {domain}")
            except RegistryError as err:
                raise InvalidArgument(str(err)) from err
            found.append(Endpoint(domain, text, url.netloc.decode("ascii"), mirror=True))
        return found

    async def _each_endpoint(
        self, domain: str, op: Callable[[Endpoint], Awaitable[T]], *, after_mismatch: bool = True
    ) -> T:
        """Run ``op`` on the mirrors then the registry until one succeeds; the registry's error is final."""
        *mirrors, upstream = self.endpoints(domain)
        for mirror in mirrors:
            try:
                return await op(mirror)
            except DigestMismatch:
                if not after_mismatch:
                    raise
                log.warning("%s served content not matching its digest; falling back", mirror.label)
            except KiteboxError as err:
                log.warning("%s failed (%s); falling back", mirror.label, err)
        return await op(upstream)

    async def _open(
        self,
        endpoint: Endpoint,
        method: str,
        path: str | httpx.URL,
        *,
        scopes: tuple[str, ...],
        denied: str,
        what: str,
        headers: dict[str, str] | None = None,
        credentials: Credentials | None = None,
        use_store: bool = True,
    ) -> httpx.Response:
        url = endpoint.url(path) if isinstance(path, str) else path
        creds = self._credentials.get(endpoint.credentials_key) if use_store else credentials
        return await self._http.open(
            endpoint, method, url, scopes=scopes, credentials=creds, denied=denied, what=what, headers=headers
        )

    @staticmethod
    def _pull_scope(ref: Reference) -> tuple[str, ...]:
        return (f"repository:{ref.path}:pull",)

    # -- /v2/ --------------------------------------------------------------------------------------------------

    async def ping(self, domain: str) -> None:
        """Check ``domain`` speaks the distribution API and that we can authenticate to it (stored credentials)."""
        await self._check_base(self.endpoint(domain), None, use_store=True, denied=f"access to {domain} denied")

    async def login(self, domain: str, creds: Credentials) -> None:
        """Verify ``creds`` against ``domain`` (the caller stores them on success); AuthError if refused."""
        await self._check_base(self.endpoint(domain), creds, use_store=False, denied=f"login to {domain} failed")

    async def _check_base(self, endpoint: Endpoint, creds: Credentials | None, *, use_store: bool, denied: str) -> None:
        response = await self._open(
            endpoint, "GET", "/v2/", scopes=(), denied=denied, what="checking /v2/", credentials=creds,
            use_store=use_store,
        )
        if response.status_code == 200:
            await response.aclose()
            return
        body = await error_of(response)
        if response.status_code == 403:
            raise AuthError(f"{denied}: {body.message or 'HTTP 403'}")
        raise RegistryError(
            f"{endpoint.label}: /v2/ answered HTTP {response.status_code}"
            + (f": {body.message}" if body.message else " (not a distribution API v2 registry?)")
        )

    # -- manifests ---------------------------------------------------------------------------------------------

    async def get_manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """``(body, content_type, digest)`` of ``ref``'s manifest or index, verified (see the module docstring)."""
        identifier = self._identifier(ref)

        async def fetch(endpoint: Endpoint) -> tuple[bytes, str, str]:
            response = await self._open(
                endpoint, "GET", f"/v2/{ref.path}/manifests/{identifier}", scopes=self._pull_scope(ref),
                denied=f"pull access denied for {ref.repository}", what=f"fetching manifest {ref}",
                headers={"Accept": ACCEPT_MANIFESTS},
            )
            try:
                await self._check_manifest_status(response, ref, endpoint)
                limit = self._limits.max_manifest_bytes
                too_big = f"manifest {ref} is larger than the {limit}-byte limit (limits.max_manifest_bytes)"
                body = await read_body(response, limit, too_big, endpoint.label, f"fetching manifest {ref}")
            finally:
                await response.aclose()
            digest = sha256_bytes(body)
            if ref.digest is not None and digest != ref.digest:
                raise DigestMismatch(f"manifest {ref}: {endpoint.label} sent content with digest {digest}")
            header = response.headers.get("docker-content-digest", "").strip()
            if header.startswith("sha256:") and header != digest:
                raise DigestMismatch(
                    f"manifest {ref}: Docker-Content-Digest {header} does not match the content's digest {digest}"
                )
            if header and not header.startswith("sha256:"):
                log.info("manifest %s: cannot check Docker-Content-Digest %s (not sha256)", ref, header[:100])
            return body, _media_type(response.headers.get("content-type", "")), digest

        return await self._each_endpoint(ref.domain, fetch)

    async def resolve(self, ref: Reference) -> tuple[str, str, int]:
        """``(digest, media_type, size)`` of ``ref``'s manifest, by HEAD when the registry allows it.

        Falls back to a full (verified) GET when HEAD is refused with 405 or carries no Docker-Content-Digest.
        """
        identifier = self._identifier(ref)

        async def head(endpoint: Endpoint) -> tuple[str, str, int] | None:
            response = await self._open(
                endpoint, "HEAD", f"/v2/{ref.path}/manifests/{identifier}", scopes=self._pull_scope(ref),
                denied=f"pull access denied for {ref.repository}", what=f"resolving {ref}",
                headers={"Accept": ACCEPT_MANIFESTS},
            )
            try:
                if response.status_code == 405:
                    return None
                await self._check_manifest_status(response, ref, endpoint)
            finally:
                await response.aclose()
            digest = response.headers.get("docker-content-digest", "").strip()
            length = response.headers.get("content-length", "")
            if not digest.startswith("sha256:") or not length.isdigit():
                return None
            validate_digest(digest)
            if ref.digest is not None and digest != ref.digest:
                raise DigestMismatch(f"manifest {ref}: {endpoint.label} reports digest {digest}")
            if int(length) > self._limits.max_manifest_bytes:
                raise LimitExceeded(
                    f"manifest {ref} is larger than the {self._limits.max_manifest_bytes}-byte limit "
                    "(limits.max_manifest_bytes)"
                )
            return digest, _media_type(response.headers.get("content-type", "")), int(length)

        found = await self._each_endpoint(ref.domain, head)
        if found is not None:
            return found
        body, content_type, digest = await self.get_manifest(ref)
        return digest, content_type, len(body)

    @staticmethod
    def _identifier(ref: Reference) -> str:
        if ref.digest is not None:
            return validate_digest(ref.digest)
        if ref.tag is not None:
            return ref.tag
        raise InvalidArgument(f"reference {ref} has neither a tag nor a digest")

    @staticmethod
    async def _check_manifest_status(response: httpx.Response, ref: Reference, endpoint: Endpoint) -> None:
        status = response.status_code
        if status == 200:
            return
        body = await error_of(response)
        if status == 404 or _UNKNOWN_CODES.intersection(body.codes):
            raise ManifestUnknown(f"manifest unknown: {ref}")
        if status == 403:
            raise AuthError(f"pull access denied for {ref.repository}: {body.message or 'HTTP 403'}")
        raise RegistryError(
            f"{endpoint.label}: manifest {ref}: HTTP {status}" + (f": {body.message}" if body.message else "")
        )

    # -- blobs -------------------------------------------------------------------------------------------------

    async def get_blob(self, repo: Reference, desc: Descriptor) -> bytes:
        """A small blob (an image config) in memory, after checking its size and sha256 against ``desc``."""
        validate_digest(desc.digest)
        limit = self._limits.max_manifest_bytes
        if desc.size > limit:
            raise LimitExceeded(
                f"blob {desc.digest} is {desc.size} bytes, more than the {limit}-byte limit for configs "
                "(limits.max_manifest_bytes)"
            )
        parts: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            parts.append(chunk)

        await self.stream_blob(repo, desc, collect)
        data = b"".join(parts)
        actual = sha256_bytes(data)
        if actual != desc.digest:
            raise DigestMismatch(f"blob {desc.digest} from {repo.repository}: content has digest {actual}")
        return data

    async def stream_blob(
        self,
        repo: Reference,
        desc: Descriptor,
        sink: Callable[[bytes], Awaitable[None]],
        *,
        offset: int = 0,
    ) -> None:
        """Deliver bytes ``[offset, desc.size)`` of the blob to ``sink``, in order, each exactly once.

        Broken or stalled connections are resumed with ``Range`` (a retry that made progress does not use up
        the ``retries`` budget). Foreign layers' ``urls`` are tried before the registry. More bytes than
        ``desc.size`` is DigestMismatch; too few after the retries is RegistryUnavailable ("truncated").
        """
        validate_digest(desc.digest)
        if desc.size < 0 or not 0 <= offset <= desc.size:
            raise InvalidArgument(f"blob {desc.digest}: offset {offset} outside its {desc.size} bytes")
        progress = _Progress(offset)
        if progress.position == desc.size:
            return
        for raw_url in desc.urls:
            try:
                url = httpx.URL(raw_url)
            except httpx.InvalidURL:
                log.warning("blob %s: skipping invalid URL %r", desc.digest, raw_url[:200])
                continue
            label = url.netloc.decode("ascii", "replace") or raw_url[:100]

            async def open_url(headers: dict[str, str], url: httpx.URL = url) -> httpx.Response:
                return await self._http.open_url(url, headers, f"fetching blob {desc.digest}")

            try:
                await self._stream(open_url, label, repo, desc, sink, progress)
                return
            except DigestMismatch:
                raise
            except KiteboxError as err:
                log.warning("blob %s: foreign URL failed (%s); trying the registry", desc.digest, err)

        async def from_registry(endpoint: Endpoint) -> None:
            async def open_registry(headers: dict[str, str]) -> httpx.Response:
                return await self._open(
                    endpoint, "GET", f"/v2/{repo.path}/blobs/{desc.digest}", scopes=self._pull_scope(repo),
                    denied=f"pull access denied for {repo.repository}", what=f"fetching blob {desc.digest}",
                    headers=headers,
                )

            await self._stream(open_registry, endpoint.label, repo, desc, sink, progress)

        await self._each_endpoint(repo.domain, from_registry, after_mismatch=False)

    async def _stream(
        self,
        open_: Callable[[dict[str, str]], Awaitable[httpx.Response]],
        label: str,
        repo: Reference,
        desc: Descriptor,
        sink: Callable[[bytes], Awaitable[None]],
        progress: _Progress,
    ) -> None:
        failures = 0
        while True:
            headers = {"Accept-Encoding": "identity"}
            if progress.position:
                headers["Range"] = f"bytes={progress.position}-"
            start = progress.position
            response = await open_(headers)
            try:
                skip = await self._check_blob_response(response, label, repo, desc, progress.position)
                await pump_body(response, self._deliver(desc, sink, progress, skip), label,
                                f"fetching blob {desc.digest}")
                if progress.position == desc.size:
                    return
                failure = f"{label}: blob {desc.digest} truncated at {progress.position} of {desc.size} bytes"
            except RegistryUnavailable as err:
                failure = f"{err} (blob {desc.digest} truncated at {progress.position} of {desc.size} bytes)"
            finally:
                await response.aclose()
            failures = 0 if progress.position > start else failures + 1
            if failures > self._config.retries:
                raise RegistryUnavailable(failure)
            log.info("%s; resuming", failure)
            await self._sleep(backoff_delay(max(failures, 1)))

    @staticmethod
    def _deliver(
        desc: Descriptor, sink: Callable[[bytes], Awaitable[None]], progress: _Progress, skip: int
    ) -> Callable[[bytes], Awaitable[None]]:
        """A chunk consumer that skips ``skip`` leading bytes, enforces the size and advances ``progress``."""
        remaining_skip = skip

        async def consume(chunk: bytes) -> None:
            nonlocal remaining_skip
            if remaining_skip:
                if len(chunk) <= remaining_skip:
                    remaining_skip -= len(chunk)
                    return
                chunk = chunk[remaining_skip:]
                remaining_skip = 0
            room = desc.size - progress.position
            if len(chunk) > room:
                if room:
                    await sink(chunk[:room])
                    progress.position += room
                raise DigestMismatch(f"blob {desc.digest} is larger than its descriptor ({desc.size} bytes)")
            await sink(chunk)
            progress.position += len(chunk)

        return consume

    @staticmethod
    async def _check_blob_response(
        response: httpx.Response, label: str, repo: Reference, desc: Descriptor, position: int
    ) -> int:
        """Validate a blob response's status and headers; return how many leading bytes to skip."""
        status = response.status_code
        if status in (200, 206):
            content_range = response.headers.get("content-range", "").strip()
            if content_range:
                total = content_range.rpartition("/")[2]
                if total.isdigit() and int(total) > desc.size:
                    raise DigestMismatch(
                        f"blob {desc.digest} is larger than its descriptor ({total} > {desc.size} bytes)"
                    )
                if content_range.startswith(f"bytes {position}-"):
                    return 0
                raise RegistryError(
                    f"{label}: blob {desc.digest}: asked for bytes from {position}, got range {content_range[:100]!r}"
                )
            if status == 206:
                raise RegistryError(f"{label}: blob {desc.digest}: partial content without a Content-Range")
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > desc.size:
                raise DigestMismatch(
                    f"blob {desc.digest} is larger than its descriptor ({length} > {desc.size} bytes)"
                )
            return position  # the server ignored Range: skip what the sink already has
        body = await error_of(response)
        detail = f": {body.message}" if body.message else ""
        if status == 404:
            raise NotFound(f"blob {desc.digest} unknown to {label} ({repo.repository}){detail}")
        if status == 403:
            raise AuthError(f"pull access denied for {repo.repository}{detail or ': HTTP 403'}")
        if status == 416:
            raise DigestMismatch(
                f"blob {desc.digest}: {label} has no bytes from {position} on, yet its descriptor says {desc.size}"
            )
        raise RegistryError(f"{label}: blob {desc.digest}: HTTP {status}{detail}")

    # -- listings ----------------------------------------------------------------------------------------------

    async def list_tags(self, repo: Reference) -> list[str]:
        """Every tag of ``repo`` (following ``Link: <...>; rel="next"`` pagination)."""

        async def fetch(endpoint: Endpoint) -> list[str]:
            return await self._paginate(
                endpoint, f"/v2/{repo.path}/tags/list", "tags", self._pull_scope(repo),
                f"pull access denied for {repo.repository}", f"listing tags of {repo.repository}",
                unknown=f"repository unknown: {repo.repository}",
            )

        return await self._each_endpoint(repo.domain, fetch)

    async def catalog(self, domain: str) -> list[str]:
        """Every repository the registry lists in ``/v2/_catalog`` (paginated)."""
        return await self._paginate(
            self.endpoint(domain), "/v2/_catalog", "repositories", ("registry:catalog:*",),
            f"catalog access denied for {domain}", f"listing the catalog of {domain}",
            unknown=f"{domain} does not offer a catalog",
        )

    async def _paginate(
        self, endpoint: Endpoint, path: str, key: str, scopes: tuple[str, ...], denied: str, what: str, *,
        unknown: str,
    ) -> list[str]:
        items: list[str] = []
        url: httpx.URL | None = endpoint.url(path)
        seen: set[str] = set()
        limit = self._limits.max_manifest_bytes
        while url is not None:
            if len(seen) >= MAX_PAGES or str(url) in seen:
                raise RegistryError(f"{endpoint.label}: endless pagination {what}")
            seen.add(str(url))
            response = await self._open(endpoint, "GET", url, scopes=scopes, denied=denied, what=what)
            try:
                if response.status_code != 200:
                    body = await error_of(response)
                    if response.status_code == 404 or _UNKNOWN_CODES.intersection(body.codes):
                        raise ManifestUnknown(unknown)
                    if response.status_code == 403:
                        raise AuthError(f"{denied}: {body.message or 'HTTP 403'}")
                    raise RegistryError(f"{endpoint.label}: HTTP {response.status_code} {what}: {body.message}")
                data = await read_body(response, limit, f"{endpoint.label}: page larger than {limit} bytes {what}",
                                       endpoint.label, what)
            finally:
                await response.aclose()
            items.extend(self._page_items(data, key, endpoint, what))
            url = self._next_page(response, url, endpoint, what)
        return items

    @staticmethod
    def _page_items(data: bytes, key: str, endpoint: Endpoint, what: str) -> list[str]:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise RegistryError(f"{endpoint.label}: response {what} is not valid JSON") from err
        values = raw.get(key) if isinstance(raw, dict) else None
        if values is None and isinstance(raw, dict):
            return []  # distribution answers "tags": null for a repository without tags
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise RegistryError(f"{endpoint.label}: response {what} has no {key!r} list")
        return list(values)

    @staticmethod
    def _next_page(response: httpx.Response, current: httpx.URL, endpoint: Endpoint, what: str) -> httpx.URL | None:
        for link in response.headers.get_list("link"):
            match = _LINK_NEXT.search(link)
            if match is None:
                continue
            target = match.group(1).strip()
            try:
                url = current.join(target)
            except httpx.InvalidURL as err:
                raise RegistryError(f"{endpoint.label}: invalid pagination link {target[:200]!r} {what}") from err
            if url.netloc.decode("ascii", "replace") != endpoint.host:
                raise RegistryError(f"{endpoint.label}: pagination link to another host {what}")
            return url
        return None
