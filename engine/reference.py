"""Image references: Docker's grammar and normalisation (distribution/reference ``regexp.go``, ``normalize.go``).

A reference is ``[domain/]path[:tag][@digest]``. What the user types is a *familiar* name (``busybox``,
``user/app:1``); the engine works on the *normalised* form (``docker.io/library/busybox:latest``):

* the first ``/``-separated component is a registry domain only if it contains ``.`` or ``:``, equals
  ``localhost``, or has uppercase letters (uppercase is never allowed in a path, so it must be a host);
  otherwise the domain is ``docker.io``;
* ``index.docker.io`` (the legacy Hub name) becomes ``docker.io``, and a one-component path on Docker Hub
  gets the ``library/`` prefix (``docker.io/x`` -> ``docker.io/library/x``);
* with neither tag nor digest, :func:`parse_reference` adds ``latest``; with both, the digest wins and the
  tag is dropped, as containerd's ``ParseDockerRef`` does, because the digest is what gets pulled.

Path components match ``[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*``; the domain is a hostname, an IPv4
address or a bracketed IPv6 address (no zone), with an optional port; a tag matches
``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; the normalised name is at most 255 characters. A bare 64-hex string
is refused because it is ambiguous with an image ID. Digests must be ``sha256:<64 lowercase hex>``: the
content store only speaks sha256, so other algorithms are refused up front rather than at pull time.

Every failure raises :class:`~engine.errors.InvalidReference` with the one-line message
``invalid reference format: <reason>: '<text>'``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from engine.digest import is_digest
from engine.errors import InvalidReference

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "NAME_MAX_LENGTH",
    "Reference",
    "is_loopback_domain",
    "parse_reference",
    "parse_repository",
    "registry_host",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_DIGEST_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-zA-Z=_-]+")
_SHOWN_MAX = 200  # longest input echoed back in an error message


def _quote(text: str) -> str:
    """``text`` quoted for a one-line message, cut short if absurdly long."""
    return repr(text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX] + "...")


def _fail(reason: str, text: str) -> InvalidReference:
    return InvalidReference(f"invalid reference format: {reason}: {_quote(text)}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. Build one with :func:`parse_reference` or :func:`parse_repository`.

    ``tag`` is ``None`` when ``digest`` is set (the digest wins); both are ``None`` only for a bare
    repository from :func:`parse_repository`.
    """

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """The full repository name: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """Docker's short display form of the repository: ``busybox``, ``user/app``, ``localhost:5000/a/b``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.repository
        if self.path.startswith(OFFICIAL_PREFIX):
            rest = self.path[len(OFFICIAL_PREFIX) :]
            if "/" not in rest:
                return rest
        return self.path

    @property
    def familiar(self) -> str:
        """Docker's short display form of the whole reference: ``busybox:latest``, ``user/app@sha256:...``."""
        return self.familiar_repository + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag`` (any digest is dropped: the result names the tag)."""
        if not _TAG.fullmatch(tag):
            raise _fail(f"invalid tag {_quote(tag)}", f"{self.repository}:{tag}")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository at ``digest`` (any tag is dropped: the digest wins)."""
        _check_digest(digest, f"{self.repository}@{digest}")
        return replace(self, tag=None, digest=digest)

    def _suffix(self) -> str:
        if self.digest is not None:
            return "@" + self.digest
        if self.tag is not None:
            return ":" + self.tag
        return ""

    def __str__(self) -> str:
        return self.repository + self._suffix()


def _check_digest(digest: str, text: str) -> None:
    if not _DIGEST_SHAPE.fullmatch(digest):
        raise _fail(f"invalid digest {_quote(digest)}", text)
    algorithm = digest.split(":", 1)[0]
    if algorithm != "sha256":
        raise _fail(f"unsupported digest algorithm {_quote(algorithm)} (only sha256 is supported)", text)
    if not is_digest(digest):
        raise _fail(f"invalid digest {_quote(digest)}: expected sha256:<64 lowercase hex digits>", text)


def _split_domain(name: str) -> tuple[str, str]:
    """``splitDockerDomain``: the registry domain and the path, Docker Hub names canonicalised."""
    first, slash, rest = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if first == LEGACY_DEFAULT_DOMAIN:
        domain, path = DEFAULT_DOMAIN, rest
    elif first == "localhost" or "." in first or ":" in first or first.lower() != first:
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def _parse(text: str) -> tuple[str, str, str | None, str | None]:
    """Split and validate ``text``; return ``(domain, path, tag, digest)`` with the tag kept as typed."""
    if not text:
        raise _fail("empty reference", text)
    if _IDENTIFIER.fullmatch(text):
        raise _fail("a 64-character hexadecimal string is an image ID, not a repository name", text)
    name_and_tag, at, digest_text = text.partition("@")
    digest: str | None = None
    if at:
        _check_digest(digest_text, text)
        digest = digest_text
    name, tag = name_and_tag, None
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        name, tag = name_and_tag[:colon], name_and_tag[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _fail(f"invalid tag {_quote(tag)}", text)
    if not name:
        raise _fail("missing repository name", text)
    domain, path = _split_domain(name)
    if not _DOMAIN.fullmatch(domain):
        raise _fail(f"invalid registry domain {_quote(domain)}", text)
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if not component:
            raise _fail("empty repository name component", text)
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise _fail("repository name must be lowercase", text)
        raise _fail(f"invalid repository name component {_quote(component)}", text)
    full_length = len(domain) + 1 + len(path)
    if full_length > NAME_MAX_LENGTH:
        raise _fail(f"name too long ({full_length} characters; the limit is {NAME_MAX_LENGTH})", text)
    return domain, path, tag, digest


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference (``busybox`` -> ``docker.io/library/busybox:latest``).

    With both a tag and a digest the digest wins; with neither, the tag is ``latest``.
    """
    domain, path, tag, digest = _parse(text)
    if digest is not None:
        tag = None
    elif tag is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def parse_repository(text: str) -> Reference:
    """Parse and normalise a bare repository name (``busybox`` -> ``docker.io/library/busybox``).

    For uses that name a repository rather than an image (search, listing a repository's tags): no default
    tag is added, and a tag or digest in ``text`` is refused rather than silently ignored.
    """
    domain, path, tag, digest = _parse(text)
    if tag is not None or digest is not None:
        raise _fail("a repository name may not have a tag or digest", text)
    return Reference(domain, path, None, None)


def registry_host(domain: str) -> str:
    """The host (and port) to send distribution API requests to: Docker Hub's API lives elsewhere."""
    return DOCKER_HUB_API_HOST if domain == DEFAULT_DOMAIN else domain


def is_loopback_domain(domain: str) -> bool:
    """Whether ``domain`` names this machine: ``localhost``, ``127.0.0.0/8`` or ``::1``, with any port.

    Loopback registries may be spoken to over plain HTTP without being configured as insecure, as Docker does.
    """
    if domain.startswith("["):
        host, bracket, port = domain[1:].partition("]")
        if not bracket:
            return False
        if port and not (port.startswith(":") and port[1:].isdigit() and port[1:].isascii()):
            return False
    elif domain.count(":") > 1:
        host = domain  # a bare IPv6 address such as ::1
    else:
        host, colon, port = domain.partition(":")
        if colon and not (port.isdigit() and port.isascii()):
            return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
