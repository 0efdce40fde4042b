"""Kitebox"s engine: the public API every front end (the desktop app, the ``kitebox`` CLI) uses.

Only the names in ``__all__`` are public; everything else in ``engine.*`` is internal and may change.
Importing this package is cheap: rooms with heavy dependencies (httpx, sqlite3) load on first use.

Attributes load lazily (PEP 562): ``import engine`` costs nothing until a name is used, so a CLI command that
never touches a registry never imports httpx, and the monitor helper never imports asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Config, Limits, RegistryConfig, default_root, load_config
    from engine.container_manager import CreateOptions
    from engine.containers import ContainerRecord, ContainerState, Status
    from engine.engine import VERSION, Engine
    from engine.errors import (
        AuthError,
        CommandNotExecutable,
        CommandNotFound,
        Conflict,
        DigestMismatch,
        EngineError,
        InvalidArgument,
        InvalidReference,
        KernelError,
        KiteboxError,
        LayerRejected,
        LimitExceeded,
        ManifestInvalid,
        ManifestUnknown,
        NotFound,
        RegistryError,
        RegistryUnavailable,
        RuntimeFailure,
        StoreError,
        UserError,
    )
    from engine.events import Event, PullProgress
    from engine.forkserver import report_exit
    from engine.image_ops import RemovedImage
    from engine.images import ImageRecord, LayerRecord
    from engine.logs import LogRecord, parse_time_arg
    from engine.network.ports import format_ports
    from engine.reference import Reference, parse_reference
    from engine.runtime.changes import Change
    from engine.runtime.stats import ProcessRow, StatsSample
    from engine.runtime.supervisor import AttachSession, ExecSession

_LOCATIONS: dict[str, str] = {
    "AuthError": "engine.errors",
    "CommandNotExecutable": "engine.errors",
    "CommandNotFound": "engine.errors",
    "Config": "engine.config",
    "Conflict": "engine.errors",
    "ContainerRecord": "engine.containers",
    "ContainerState": "engine.containers",
    "CreateOptions": "engine.container_manager",
    "DigestMismatch": "engine.errors",
    "Engine": "engine.engine",
    "EngineError": "engine.errors",
    "Event": "engine.events",
    "ImageRecord": "engine.images",
    "InvalidArgument": "engine.errors",
    "InvalidReference": "engine.errors",
    "KernelError": "engine.errors",
    "KiteboxError": "engine.errors",
    "LayerRecord": "engine.images",
    "LogRecord": "engine.logs",
    "parse_time_arg": "engine.logs",
    "format_ports": "engine.network.ports",
    "Change": "engine.runtime.changes",
    "ProcessRow": "engine.runtime.stats",
    "StatsSample": "engine.runtime.stats",
    "AttachSession": "engine.runtime.supervisor",
    "ExecSession": "engine.runtime.supervisor",
    "LayerRejected": "engine.errors",
    "LimitExceeded": "engine.errors",
    "Limits": "engine.config",
    "ManifestInvalid": "engine.errors",
    "ManifestUnknown": "engine.errors",
    "NotFound": "engine.errors",
    "PullProgress": "engine.events",
    "Reference": "engine.reference",
    "RegistryConfig": "engine.config",
    "RegistryError": "engine.errors",
    "RegistryUnavailable": "engine.errors",
    "RemovedImage": "engine.image_ops",
    "RuntimeFailure": "engine.errors",
    "Status": "engine.containers",
    "StoreError": "engine.errors",
    "UserError": "engine.errors",
    "VERSION": "engine.engine",
    "default_root": "engine.config",
    "load_config": "engine.config",
    "parse_reference": "engine.reference",
    "report_exit": "engine.forkserver",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "VERSION",
    "AttachSession",
    "AuthError",
    "Change",
    "CommandNotExecutable",
    "CommandNotFound",
    "Config",
    "Conflict",
    "ContainerRecord",
    "ContainerState",
    "CreateOptions",
    "DigestMismatch",
    "Engine",
    "EngineError",
    "Event",
    "ExecSession",
    "ImageRecord",
    "InvalidArgument",
    "InvalidReference",
    "KernelError",
    "KiteboxError",
    "LayerRecord",
    "LayerRejected",
    "LimitExceeded",
    "Limits",
    "LogRecord",
    "ManifestInvalid",
    "ManifestUnknown",
    "NotFound",
    "ProcessRow",
    "PullProgress",
    "Reference",
    "RegistryConfig",
    "RegistryError",
    "RegistryUnavailable",
    "RemovedImage",
    "RuntimeFailure",
    "StatsSample",
    "Status",
    "StoreError",
    "UserError",
    "default_root",
    "format_ports",
    "load_config",
    "parse_reference",
    "parse_time_arg",
    "report_exit",
]
