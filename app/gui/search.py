"""Image search behind one interface: local images, a registry's ``/v2/_catalog``, Docker Hub's search API.

``SearchService.search(query)`` asks every provider at once, each with a deadline, and merges what came back;
a provider that fails (offline, registry without a catalog) contributes a one-line note instead of results, so
search keeps working offline with local images and LAN registries. Results and tag lists are cached for
``ttl`` seconds (Kitematic's hub search hung the UI: #4234 #4196; here nothing blocks and repeats are free).
Debouncing is the widget's job (it waits for a pause in typing before calling ``search``).

No Qt here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from engine import Engine, KiteboxError, RegistryUnavailable, parse_reference

__all__ = [
    "DockerHubProvider",
    "ImageHit",
    "LocalImagesProvider",
    "RegistryProvider",
    "SearchProvider",
    "SearchResult",
    "SearchService",
]

HUB_SEARCH: Final = "https://hub.docker.com/v2/search/repositories/"


@dataclass(frozen=True, slots=True)
class ImageHit:
    """One card in the browser. ``repository`` is what ``pull`` takes (without tag)."""

    repository: str
    description: str = ""
    stars: int | None = None
    pulls: int | None = None
    official: bool = False
    source: str = ""
    local_tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: tuple[ImageHit, ...]
    notes: tuple[str, ...] = ()  # one line per provider that could not answer


class SearchProvider(Protocol):
    name: str

    async def search(self, query: str) -> list[ImageHit]: ...

    async def tags(self, repository: str) -> list[str] | None:
        """Every tag of ``repository`` if this provider owns it, else None."""
        ...


class LocalImagesProvider:
    name = "Local images"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def search(self, query: str) -> list[ImageHit]:
        by_repo: dict[str, list[str]] = {}
        for image in await self._engine.images():
            for tag in image.repo_tags:
                ref = parse_reference(tag)
                repo = ref.familiar.rsplit(":", 1)[0] if ref.tag else ref.familiar
                by_repo.setdefault(repo, []).append(ref.tag or "latest")
        needle = query.lower().strip()
        return [ImageHit(repo, "Local image", source=self.name, local_tags=tuple(sorted(tags)))
                for repo, tags in sorted(by_repo.items()) if needle in repo.lower()]

    async def tags(self, repository: str) -> list[str] | None:
        for hit in await self.search(repository):
            if hit.repository == repository:
                return list(hit.local_tags)
        return None


class RegistryProvider:
    """A private registry browsed through ``/v2/_catalog`` (``engine.catalog``) and ``/tags/list``."""

    def __init__(self, engine: Engine, host: str) -> None:
        self._engine = engine
        self.host = host
        self.name = host

    async def search(self, query: str) -> list[ImageHit]:
        needle = query.lower().strip()
        repositories = await self._engine.catalog(self.host)
        return [ImageHit(f"{self.host}/{repo}", f"Repository on {self.host}", source=self.host)
                for repo in repositories if needle in repo.lower()]

    async def tags(self, repository: str) -> list[str] | None:
        if not repository.startswith(self.host + "/"):
            return None
        return await self._engine.list_tags(repository)


Fetch = Callable[[str, dict[str, str]], Awaitable[Any]]


async def _httpx_fetch(url: str, params: dict[str, str]) -> Any:
    import httpx

    async with httpx.AsyncClient(timeout=5.0, follow_redirects=True) as client:
        response = await client.get(url, params=params)
        response.raise_for_status()
        return response.json()


class DockerHubProvider:
    """Docker Hub's public search API (``stars``, ``pulls``, official badge); tags through the engine."""

    name = "Docker Hub"

    def __init__(self, engine: Engine, *, fetch: Fetch | None = None, page_size: int = 25) -> None:
        self._engine = engine
        self._fetch = fetch or _httpx_fetch
        self._page_size = page_size

    async def search(self, query: str) -> list[ImageHit]:
        if not query.strip():
            return []
        try:
            body = await self._fetch(HUB_SEARCH, {"query": query.strip(), "page_size": str(self._page_size)})
        except Exception as err:  # httpx errors, JSON errors: any failure means "Hub unavailable"
            raise RegistryUnavailable(f"Docker Hub search unavailable ({type(err).__name__})") from None
        hits = []
        for item in body.get("results", []) if isinstance(body, dict) else []:
            name = str(item.get("repo_name", ""))
            if not name:
                continue
            hits.append(ImageHit(name, str(item.get("short_description") or ""),
                                 stars=_int_or_none(item.get("star_count")), pulls=_int_or_none(item.get("pull_count")),
                                 official=bool(item.get("is_official")), source=self.name))
        return hits

    async def tags(self, repository: str) -> list[str] | None:
        ref = parse_reference(repository)
        if ref.domain != "docker.io":
            return None
        return await self._engine.list_tags(repository)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


@dataclass
class _Cached:
    at: float
    value: Any


@dataclass
class SearchService:
    providers: list[SearchProvider]
    ttl: float = 60.0
    deadline: float = 6.0
    _cache: dict[tuple[str, str], _Cached] = field(default_factory=dict)

    def invalidate(self) -> None:
        self._cache.clear()

    async def _cached(self, key: tuple[str, str], make: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.at < self.ttl:
            return hit.value
        value = await make()
        self._cache[key] = _Cached(time.monotonic(), value)
        return value

    async def search(self, query: str) -> SearchResult:
        async def one(provider: SearchProvider) -> list[ImageHit] | str:
            try:
                result: list[ImageHit] = await self._cached(
                    (provider.name, query), lambda: asyncio.wait_for(provider.search(query), self.deadline))
                return result
            except TimeoutError:
                return f"{provider.name}: no answer within {self.deadline:.0f} s"
            except KiteboxError as err:
                return f"{provider.name}: {err}"

        answers = await asyncio.gather(*(one(p) for p in self.providers))
        hits: list[ImageHit] = []
        notes: list[str] = []
        seen: set[str] = set()
        for answer in answers:
            if isinstance(answer, str):
                notes.append(answer)
                continue
            for hit in answer:
                if hit.repository not in seen:
                    seen.add(hit.repository)
                    hits.append(hit)
        return SearchResult(tuple(hits), tuple(notes))

    async def tags(self, repository: str) -> list[str]:
        """Every tag (sorted, ``latest`` first) from the provider that owns ``repository``."""
        errors: list[str] = []
        # Local images know only the tags pulled so far: ask the registries first.
        ordered = sorted(self.providers, key=lambda p: isinstance(p, LocalImagesProvider))
        for provider in ordered:
            try:
                found: list[str] | None = await self._cached(
                    ("tags:" + provider.name, repository),
                    lambda p=provider: asyncio.wait_for(p.tags(repository), self.deadline))  # type: ignore[misc]
            except (KiteboxError, TimeoutError) as err:
                errors.append(f"{provider.name}: {err or 'timed out'}")
                continue
            if found:
                return sorted(set(found), key=lambda t: (t != "latest", t))
        if errors:
            raise RegistryUnavailable(f"tags of {repository} unavailable: {errors[0]}")
        return []
