"""Kitebox's one error tree.

Every failure that leaves the engine is a :class:`KiteboxError`. Foreign errors (httpx, netlink,
``OSError``, ``sqlite3``) are translated where they are caught, at the boundary of the room that calls the
foreign library, so front ends only ever catch ``KiteboxError`` and print ``str(err)``: one line that names
what was wrong (the reference, digest, path, container...).

``exit_code`` is what the CLI exits with, following Docker's habits:

* 1   -- a user-facing error: bad input, not found, denied, conflict, a registry refusing or lying.
* 125 -- an engine failure: the store, the kernel or the runtime could not do what was asked.
* 126/127 -- ``run``'s "command not executable" / "command not found" (see :class:`CommandNotExecutable`).

Tree::

    KiteboxError
    ├── UserError (1)
    │   ├── InvalidArgument          bad option or value (a flag, a size, a port, a name)
    │   │   └── InvalidReference     an image reference that does not parse
    │   ├── NotFound                 no such image / container / volume / network / blob
    │   │   └── ManifestUnknown      the registry knows no such repository, tag or digest
    │   ├── Conflict                 name in use, image in use, wrong state for the verb
    │   ├── LimitExceeded            a manifest, layer count, size or path beyond the configured limits
    │   ├── AuthError                wrong credentials / access denied
    │   └── RegistryError            the registry answered, but not with what the protocol promises
    │       ├── RegistryUnavailable  refused connection, DNS failure, timeout, 5xx after retries
    │       ├── ManifestInvalid      malformed JSON, schema1, mediaType / Content-Type mismatch, no platform
    │       └── DigestMismatch       content (blob, manifest, layer DiffID) not matching its digest or size
    │   ├── LayerRejected            a hostile or broken layer (escape, bad whiteout, bomb)
    └── EngineError (125)
        ├── StoreError               content/image/snapshot store corrupted or not writable
        ├── KernelError              a mount, namespace, cgroup or netlink operation failed
        └── RuntimeFailure           a container could not be started or supervised
            ├── CommandNotFound (127)
            └── CommandNotExecutable (126)
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "AuthError",
    "CommandNotExecutable",
    "CommandNotFound",
    "Conflict",
    "DigestMismatch",
    "EngineError",
    "InvalidArgument",
    "InvalidReference",
    "KernelError",
    "KiteboxError",
    "LayerRejected",
    "LimitExceeded",
    "ManifestInvalid",
    "ManifestUnknown",
    "NotFound",
    "RegistryError",
    "RegistryUnavailable",
    "RuntimeFailure",
    "StoreError",
    "UserError",
    "from_oserror",
]


class KiteboxError(Exception):
    """Base of every error the engine raises. ``str()`` is one line fit for a user."""

    exit_code: int = 125


class UserError(KiteboxError):
    """The request cannot be satisfied because of what the user asked or what a registry holds."""

    exit_code = 1


class InvalidArgument(UserError):
    """An option, value or name is malformed."""


class InvalidReference(InvalidArgument):
    """An image reference does not follow Docker's grammar."""


class NotFound(UserError):
    """No such object (image, container, volume, network, blob)."""


class ManifestUnknown(NotFound):
    """The registry knows no such repository, tag or digest."""


class Conflict(UserError):
    """The object exists already, is in use, or is in a state that forbids the operation."""


class LimitExceeded(UserError):
    """Something is larger than the configured limits allow (manifest size, layers, bytes, entries)."""


class AuthError(UserError):
    """Credentials were refused, or access to the repository was denied."""


class RegistryError(UserError):
    """The registry broke the distribution protocol or returned an error we cannot recover from."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or kept failing (refused, timed out, 5xx after retries)."""


class ManifestInvalid(RegistryError):
    """A manifest or index is malformed, of an unsupported schema, or has no entry for this platform."""


class DigestMismatch(RegistryError):
    """Content did not match the digest or size that named it. The bad data has been discarded."""


class LayerRejected(UserError):
    """A layer is hostile or broken (escaping path, invalid whiteout, device out of range, bomb)."""


class EngineError(KiteboxError):
    """The engine itself failed: store, kernel or runtime."""

    exit_code = 125


class StoreError(EngineError):
    """A store on disk is not readable/writable or is inconsistent."""


class KernelError(EngineError):
    """A kernel operation (mount, namespace, cgroup, netlink) failed."""


class RuntimeFailure(EngineError):
    """A container could not be created, started or supervised."""


class CommandNotFound(RuntimeFailure):
    """The container's command does not exist (Docker's exit 127)."""

    exit_code = 127


class CommandNotExecutable(RuntimeFailure):
    """The container's command exists but cannot be executed (Docker's exit 126)."""

    exit_code = 126


def from_oserror(err: OSError, what: str, cls: type[KiteboxError] = StoreError) -> KiteboxError:
    """Translate an ``OSError`` into the tree: ``what`` names the object (a path, a mount...).

    ENOSPC and EDQUOT always become a clear "no space left" message, whatever ``cls`` is.
    """
    reason = err.strerror or str(err)
    if err.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return cls(f"{what}: no space left on device")
    return cls(f"{what}: {reason}")
