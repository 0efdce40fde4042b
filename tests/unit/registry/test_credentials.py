"""The credential store: private atomic writes, Docker config fallback, key normalisation, removal."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from engine.errors import InvalidArgument, StoreError
from engine.registry import Credentials, CredentialStore
from engine.registry.credentials import normalize_domain


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "state" / "credentials.json", docker_config=tmp_path / "docker.json")


def test_set_get_roundtrip_with_private_modes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.get("registry.example") is None
    store.set("registry.example", Credentials("alice", "pa:ss"))
    store.set("localhost:5000", Credentials("bob", "pw"))
    assert store.get("registry.example") == Credentials("alice", "pa:ss")
    assert store.get("REGISTRY.example") == Credentials("alice", "pa:ss")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["credentials.json"]  # no temp file left
    saved = json.loads(store.path.read_text())
    assert saved == {"auths": {"localhost:5000": {"auth": _auth("bob", "pw")},
                               "registry.example": {"auth": _auth("alice", "pa:ss")}}}
    store.set("registry.example", Credentials("alice", "new"))
    assert store.get("registry.example") == Credentials("alice", "new")


def test_docker_hub_aliases_share_one_entry(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("https://index.docker.io/v1/", Credentials("hubuser", "pw"))
    assert store.get("docker.io") == Credentials("hubuser", "pw")
    assert json.loads(store.path.read_text())["auths"].keys() == {"docker.io"}
    assert normalize_domain("registry-1.docker.io") == "docker.io"
    assert normalize_domain("http://Host.Example:5000/path") == "host.example:5000"


def test_docker_config_fallback(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.docker_config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": _auth("hub", "hubpw")},
        "http://myregistry.lan:5000": {"username": "u", "password": "p"},
        "ghcr.io": {"identitytoken": "refresh"},
        "empty.example": {},
    }, "credsStore": "desktop"}))
    assert store.get("docker.io") == Credentials("hub", "hubpw")
    assert store.get("myregistry.lan:5000") == Credentials("u", "p")
    assert store.get("ghcr.io") == Credentials("<token>", "refresh")
    assert store.get("empty.example") is None
    # Kitebox's own entry wins, and removing it never touches Docker's file.
    before = store.docker_config.read_bytes()
    store.set("docker.io", Credentials("mine", "pw"))
    assert store.get("docker.io") == Credentials("mine", "pw")
    assert store.remove("docker.io") is True
    assert store.get("docker.io") == Credentials("hub", "hubpw")
    assert store.remove("docker.io") is False
    assert store.docker_config.read_bytes() == before


def test_remove(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.remove("registry.example") is False
    assert not store.path.exists()
    store.set("registry.example", Credentials("a", "b"))
    store.set("other.example", Credentials("c", "d"))
    assert store.remove("registry.example") is True
    assert store.get("registry.example") is None
    assert store.get("other.example") == Credentials("c", "d")


def test_identity_token_roundtrip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("ghcr.io", Credentials("<token>", "refresh-token"))
    assert store.get("ghcr.io") == Credentials("<token>", "refresh-token")
    assert json.loads(store.path.read_text())["auths"]["ghcr.io"] == {"identitytoken": "refresh-token"}


def test_broken_files_are_clear_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.path.parent.mkdir()
    store.path.write_text("{not json")
    with pytest.raises(StoreError, match=rf"^credentials {store.path}: not valid JSON"):
        store.get("x")
    store.path.write_text('{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}')  # "nocolon"
    with pytest.raises(StoreError, match=r"entry 'x': \"auth\" is not base64 of user:password"):
        store.get("x")
    store.path.unlink()
    store.docker_config.write_text("[]")
    with pytest.raises(InvalidArgument, match=rf"^docker config {store.docker_config}: expected a JSON object"):
        store.get("x")
    with pytest.raises(InvalidArgument, match=r"empty username"):
        store.set("x", Credentials("", "pw"))


def test_docker_config_location_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert CredentialStore(tmp_path / "c.json").docker_config == tmp_path / "dc" / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert CredentialStore(tmp_path / "c.json").docker_config == tmp_path / "home" / ".docker" / "config.json"
