"""Kitebox's engine: the public API every front end (the desktop app, the ``kitebox`` CLI) uses.

Only the names in ``__all__`` are public; everything else in ``engine.*`` is internal and may change.
Importing this package is cheap: rooms with heavy dependencies (httpx, pyroute2) load on first use.
"""

from engine.config import Config, Limits, RegistryConfig, default_root, load_config
from engine.container_manager import CreateOptions
from engine.containers import ContainerRecord, ContainerState, Status
from engine.engine import VERSION, Engine, RemovedImage
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
from engine.images import ImageRecord, LayerRecord
from engine.reference import Reference, parse_reference

__all__ = [
    "VERSION",
    "AuthError",
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
    "ImageRecord",
    "InvalidArgument",
    "InvalidReference",
    "KernelError",
    "KiteboxError",
    "LayerRecord",
    "LayerRejected",
    "LimitExceeded",
    "Limits",
    "ManifestInvalid",
    "ManifestUnknown",
    "NotFound",
    "PullProgress",
    "Reference",
    "RegistryConfig",
    "RegistryError",
    "RegistryUnavailable",
    "RemovedImage",
    "RuntimeFailure",
    "Status",
    "StoreError",
    "UserError",
    "default_root",
    "load_config",
    "parse_reference",
]
