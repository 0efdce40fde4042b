"""Registry credentials: Kitebox's own store, falling back (read-only) to Docker's ``config.json``.

Kitebox's store is one JSON file (``<root>/credentials.json``) shaped like Docker's so people recognise it::

    {"auths": {"docker.io": {"auth": "<base64 of user:password>"}}}

It is written atomically (temporary file in the same directory, fsync, rename) with mode 0600, and its directory
is created 0700 when missing, because it holds secrets. Docker's ``~/.docker/config.json`` (or
``$DOCKER_CONFIG/config.json``) is only ever read, and only for a domain Kitebox itself has nothing for. Docker
credential helpers (``credsStore`` / ``credHelpers``) are not run.

Keys are normalised to reference domains: ``https://index.docker.io/v1/``, ``index.docker.io`` and
``registry-1.docker.io`` all mean ``docker.io``; a scheme and a trailing path are dropped; host names compare
case-insensitively. An identity token (Docker's ``identitytoken``) is represented as username ``<token>`` with
the token as password, as Docker does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument, StoreError, from_oserror
from engine.tmpnames import temporary_sibling

__all__ = ["IDENTITY_TOKEN_USER", "CredentialStore", "Credentials", "normalize_domain"]

IDENTITY_TOKEN_USER = "<token>"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password (or, with username ``<token>``, an OAuth identity/refresh token)."""

    username: str
    password: str

    @property
    def is_identity_token(self) -> bool:
        return self.username == IDENTITY_TOKEN_USER

    def __repr__(self) -> str:  # never print a secret by accident (logs, tracebacks)
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def normalize_domain(key: str) -> str:
    """The reference domain a credentials key stands for (``https://index.docker.io/v1/`` -> ``docker.io``)."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].lower()
    if text in _DOCKER_HUB_ALIASES:
        return "docker.io"
    return text


def _decode_entry(entry: object, where: str, error: type[InvalidArgument] | type[StoreError]) -> Credentials | None:
    """One ``auths`` entry: ``{"auth": base64(user:pass)}``, ``{"username", "password"}`` or an identity token."""
    if not isinstance(entry, dict):
        raise error(f"{where}: expected an object")
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(IDENTITY_TOKEN_USER, token)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as err:
            raise error(f"{where}: \"auth\" is not base64 of user:password") from err
        username, colon, password = decoded.partition(":")
        if not colon:
            raise error(f"{where}: \"auth\" is not base64 of user:password")
        return Credentials(username, password)
    plain_user, plain_password = entry.get("username"), entry.get("password")
    if isinstance(plain_user, str) and isinstance(plain_password, str) and plain_user:
        return Credentials(plain_user, plain_password)
    return None


def _load_auths(path: Path, what: str, error: type[InvalidArgument] | type[StoreError]) -> dict[str, Any]:
    """The ``auths`` object of a Docker-shaped JSON file; a missing file is empty, a broken one an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise from_oserror(err, f"{what} {path}", error) from err
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} {path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(raw, dict):
        raise error(f"{what} {path}: expected a JSON object")
    auths = raw.get("auths", {})
    if not isinstance(auths, dict):
        raise error(f"{what} {path}: \"auths\" must be an object")
    return auths


def _default_docker_config() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env) / "config.json"
    return Path.home() / ".docker" / "config.json"


class CredentialStore:
    """Credentials per registry domain. Reads go to disk each time, so a login from another process is seen."""

    def __init__(self, path: Path, *, docker_config: Path | None = None) -> None:
        self._path = path
        self._docker_config = docker_config if docker_config is not None else _default_docker_config()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def docker_config(self) -> Path:
        """Docker's ``config.json`` consulted (read-only) when Kitebox has no entry."""
        return self._docker_config

    def get(self, domain: str) -> Credentials | None:
        """Kitebox's entry for ``domain``, else Docker's, else ``None`` (anonymous)."""
        wanted = normalize_domain(domain)
        own = _load_auths(self._path, "credentials", StoreError)
        found = self._find(own, wanted, f"credentials {self._path}", StoreError)
        if found is not None:
            return found
        docker = _load_auths(self._docker_config, "docker config", InvalidArgument)
        return self._find(docker, wanted, f"docker config {self._docker_config}", InvalidArgument)

    def set(self, domain: str, creds: Credentials) -> None:
        """Store ``creds`` for ``domain`` (replacing any previous entry), atomically and privately."""
        if not creds.username:
            raise InvalidArgument(f"credentials for {domain}: empty username")
        key = normalize_domain(domain)
        auths = {k: v for k, v in self._own_entries().items() if normalize_domain(k) != key}
        if creds.is_identity_token:
            auths[key] = {"identitytoken": creds.password}
        else:
            auths[key] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode("ascii")}
        self._write(auths)

    def remove(self, domain: str) -> bool:
        """Forget Kitebox's entry for ``domain``; ``False`` if it had none (Docker's file is never touched)."""
        key = normalize_domain(domain)
        current = self._own_entries()
        kept = {k: v for k, v in current.items() if normalize_domain(k) != key}
        if len(kept) == len(current):
            return False
        self._write(kept)
        return True

    def _own_entries(self) -> dict[str, Any]:
        return dict(_load_auths(self._path, "credentials", StoreError))

    @staticmethod
    def _find(
        auths: dict[str, Any], wanted: str, where: str, error: type[InvalidArgument] | type[StoreError]
    ) -> Credentials | None:
        for key, entry in auths.items():
            if normalize_domain(key) == wanted:
                found = _decode_entry(entry, f"{where}: entry {key!r}", error)
                if found is not None:
                    return found
        return None

    def _write(self, auths: dict[str, Any]) -> None:
        directory = self._path.parent
        what = f"credentials {self._path}"
        tmp = temporary_sibling(self._path)
        data = json.dumps({"auths": auths}, indent=2, sort_keys=True).encode() + b"\n"
        try:
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise from_oserror(err, what) from err
