"""Where Kitebox keeps its state and what it is configured to do.

State lives under one root: ``--root DIR`` or ``KITEBOX_ROOT``; default ``/var/lib/kitebox`` for root and
``$XDG_DATA_HOME/kitebox`` (``~/.local/share/kitebox``) otherwise. Configuration is one JSON file,
``/etc/kitebox/config.json`` for root or ``$XDG_CONFIG_HOME/kitebox/config.json`` otherwise (``KITEBOX_CONFIG``
overrides the path). Every key is optional; unknown keys are refused so a typo is never silently ignored::

    {
      "registries": {
        "insecure": ["myregistry.lan:5000"],       # plain HTTP allowed (loopback always is)
        "mirrors": {"docker.io": ["https://mirror.example"]},
        "parallel_downloads": 3,
        "timeout_seconds": 30,
        "connect_timeout_seconds": 10,
        "retries": 3
      },
      "limits": {
        "max_manifest_bytes": 4194304,
        "max_layers": 512,
        "max_image_bytes": 32212254720,
        "max_uncompressed_layer_bytes": 68719476736,
        "max_layer_entries": 2000000,
        "max_path_bytes": 4096
      },
      "snapshotter": "auto",                       # "auto" | "overlay" | "copy"
      "network": {
        "default_bridge": "kitebox0",              # the default ("bridge") network's bridge
        "bridge_prefix": "kb-",                    # user networks' bridges: <prefix><id>
        "table": "kitebox",                        # Kitebox's own nftables table
        "default_subnet": "",                      # "" = the first free one from the address pools
        "ip_forward": true                         # turn on net.ipv4.ip_forward for outbound NAT
      }
    }
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument

__all__ = ["Config", "Limits", "NetworkConfig", "RegistryConfig", "config_path", "default_root", "load_config"]


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    insecure: tuple[str, ...] = ()
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    parallel_downloads: int = 3
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    retries: int = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """Refuse absurd input before spending bandwidth, disk or time on it."""

    max_manifest_bytes: int = 4 * 1024 * 1024
    max_layers: int = 512
    max_image_bytes: int = 30 * 1024**3
    max_uncompressed_layer_bytes: int = 64 * 1024**3
    max_layer_entries: int = 2_000_000
    max_path_bytes: int = 4096


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Names Kitebox uses on the host, configurable so several state roots (and tests) can share a host."""

    default_bridge: str = "kitebox0"
    bridge_prefix: str = "kb-"
    table: str = "kitebox"
    default_subnet: str = ""
    ip_forward: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    registries: RegistryConfig = field(default_factory=RegistryConfig)
    limits: Limits = field(default_factory=Limits)
    snapshotter: str = "auto"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    config_file: Path | None = None


def _is_root() -> bool:
    return os.geteuid() == 0


def default_root() -> Path:
    """The state root when neither ``--root`` nor ``KITEBOX_ROOT`` is given."""
    env = os.environ.get("KITEBOX_ROOT")
    if env:
        return Path(env)
    if _is_root():
        return Path("/var/lib/kitebox")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "kitebox"


def config_path() -> Path:
    env = os.environ.get("KITEBOX_CONFIG")
    if env:
        return Path(env)
    if _is_root():
        return Path("/etc/kitebox/config.json")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kitebox" / "config.json"


def _section(cls: type[Any], raw: object, where: str) -> Any:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"config {where}: expected an object")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise InvalidArgument(f"config {where}: unknown key {key!r}")
        default = getattr(cls(), key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InvalidArgument(f"config {where}.{key}: expected true or false")
            values[key] = value
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise InvalidArgument(f"config {where}.{key}: expected a string")
            values[key] = value
        elif not isinstance(default, int | float | tuple | dict):
            values[key] = value
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidArgument(f"config {where}.{key}: expected a list of strings")
            values[key] = tuple(value)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise InvalidArgument(f"config {where}.{key}: expected an object")
            values[key] = {str(k): tuple(v) for k, v in value.items()}
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidArgument(f"config {where}.{key}: expected a positive number")
            values[key] = type(default)(value)
    return replace(cls(), **values)


def load_config(path: Path | None = None) -> Config:
    """Read the configuration file; a missing file means defaults, a broken one is an error."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as err:
        raise InvalidArgument(f"config {path}: {err.strerror}") from err
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"config {path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(raw, dict):
        raise InvalidArgument(f"config {path}: expected a JSON object")
    unknown = set(raw) - {"registries", "limits", "snapshotter", "network"}
    if unknown:
        raise InvalidArgument(f"config {path}: unknown key {sorted(unknown)[0]!r}")
    snapshotter = raw.get("snapshotter", "auto")
    if snapshotter not in ("auto", "overlay", "copy"):
        raise InvalidArgument(f"config {path}: snapshotter must be auto, overlay or copy")
    return Config(
        registries=_section(RegistryConfig, raw.get("registries", {}), "registries"),
        limits=_section(Limits, raw.get("limits", {}), "limits"),
        snapshotter=snapshotter,
        network=_section(NetworkConfig, raw.get("network", {}), "network"),
        config_file=path,
    )
