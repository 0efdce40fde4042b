"""Media types, descriptors, manifests, indexes, image configs and platform selection.

What a registry sends is untrusted: every document is parsed strictly and every failure is a one-line
:class:`~engine.errors.ManifestInvalid` naming what was wrong. The rules (image-spec, distribution-spec,
containerd):

* Docker schema2 and OCI manifests and indexes are supported; schema1 is refused, as containerd does,
  because it cannot be verified by digest and modern registries only produce it for ancient images.
* Content-Type parameters are ignored. When the body carries a ``mediaType`` it must equal the Content-Type
  (CVE-2021-41190: a document that reads as a manifest to one client and an index to another). A manifest
  may not carry ``manifests`` and an index may not carry ``config`` or ``layers`` for the same reason.
* When the Content-Type is missing or generic, the body's ``mediaType`` decides, else its shape does.
* JSON with duplicate keys is refused: parsers disagree on which value wins.
* Index entries with an unknown media type are skipped, never an error (image-spec ``image-index.md``).
* Unknown layer or config media types are refused (an artifact is not a container image).

Platform selection follows containerd's ``platforms`` package: architecture names are normalised
(``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64/v8``, ``armhf`` -> ``arm/v7``...) and a host can run some
older variants (``arm/v7`` runs ``v6`` and ``v5``, ``amd64`` runs ``386``), ranked below an exact match.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.digest import is_digest
from engine.errors import InvalidArgument, LimitExceeded, ManifestInvalid

__all__ = [
    "ACCEPT_MANIFESTS",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER_GZIP",
    "DOCKER_FOREIGN_LAYER_TAR",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "OCI_NONDISTRIBUTABLE_LAYER_GZIP",
    "OCI_NONDISTRIBUTABLE_LAYER_TAR",
    "OCI_NONDISTRIBUTABLE_LAYER_ZSTD",
    "SCHEMA1_TYPES",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "host_platform",
    "is_foreign_layer",
    "is_index_media_type",
    "is_manifest_media_type",
    "layer_compression",
    "normalize_platform",
    "parse_image_config",
    "parse_manifest",
    "parse_platform",
    "platform_matches",
    "select_manifest",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE_LAYER_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDISTRIBUTABLE_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)

# containerd's list (resolver.go): the v2/OCI types first, so no registry downgrades us to schema1.
ACCEPT_MANIFESTS = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])

_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
_INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
_CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})
_LAYER_COMPRESSION: dict[str, str | None] = {
    DOCKER_LAYER_TAR: None,
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER_TAR: None,
    DOCKER_FOREIGN_LAYER_GZIP: "gzip",
    OCI_LAYER_TAR: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_NONDISTRIBUTABLE_LAYER_TAR: None,
    OCI_NONDISTRIBUTABLE_LAYER_GZIP: "gzip",
    OCI_NONDISTRIBUTABLE_LAYER_ZSTD: "zstd",
}
_FOREIGN_LAYERS = frozenset(
    {
        DOCKER_FOREIGN_LAYER_TAR,
        DOCKER_FOREIGN_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER_TAR,
        OCI_NONDISTRIBUTABLE_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    }
)


def is_manifest_media_type(mt: str) -> bool:
    return mt in _MANIFEST_TYPES


def is_index_media_type(mt: str) -> bool:
    return mt in _INDEX_TYPES


def is_foreign_layer(mt: str) -> bool:
    """Foreign / non-distributable layers may carry ``urls`` to fetch from before trying the registry."""
    return mt in _FOREIGN_LAYERS


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``None`` (plain tar) for a layer media type; unknown types are refused."""
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise ManifestInvalid(f"unsupported layer media type {media_type!r}") from None


# --- platforms -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Platform:
    """An image-spec platform. Compare platforms after :func:`normalize_platform`."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


_KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos"})
_KNOWN_ARCH = frozenset(
    {"amd64", "x86_64", "x86-64", "386", "i386", "i686", "arm", "armhf", "armel", "arm64", "aarch64",
     "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64", "loong64", "wasm"}
)  # fmt: skip
_COMPONENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _norm_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    """containerd's ``normalizeArch``, except that arm64 keeps an explicit ``v8`` (how indexes list it)."""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", None if variant in (None, "v1") else variant
    if arch in ("i386", "i486", "i586", "i686", "386"):
        return "386", variant
    if arch in ("aarch64", "arm64"):
        if variant in (None, "8", "v8", "v8.0"):
            return "arm64", "v8"
        if variant in ("9", "9.0", "v9.0"):
            return "arm64", "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch in ("armv5l", "armv5tel", "armv6l", "armv7l", "armv8l", "armv5", "armv6", "armv7", "armv8"):
        return "arm", "v" + arch[4]
    if arch == "arm":
        if variant in (None, "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
        return "arm", variant
    return arch, variant


def normalize_platform(p: Platform) -> Platform:
    """Lowercase and canonicalise architecture names and variants (``x86_64`` -> ``amd64``...)."""
    os_name = p.os.lower()
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = _norm_arch(p.architecture.lower(), p.variant.lower() if p.variant else None)
    return Platform(os_name, arch, variant, p.os_version, tuple(sorted(set(p.os_features))))


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (``linux/arm/v7``) into a normalised :class:`Platform`.

    A single component is accepted when it is unambiguous, like containerd: a known OS (``linux``) gets the
    host's architecture, a known architecture (``arm64``) gets ``linux``.
    """
    parts = text.strip().lower().split("/")
    if not text.strip() or len(parts) > 3 or not all(p and set(p) <= _COMPONENT_CHARS for p in parts):
        raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant], like linux/amd64")
    if len(parts) == 1:
        if parts[0] in _KNOWN_OS:
            host = host_platform()
            return normalize_platform(Platform(parts[0], host.architecture, host.variant))
        if parts[0] in _KNOWN_ARCH:
            return normalize_platform(Platform("linux", parts[0]))
        raise InvalidArgument(f"invalid platform {text!r}: unknown operating system or architecture")
    return normalize_platform(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def host_platform() -> Platform:
    """The platform this machine runs natively (always ``linux``), from ``uname -m``."""
    return normalize_platform(Platform("linux", os.uname().machine))


def _variant_number(variant: str | None) -> int | None:
    if variant and variant.startswith("v") and variant[1:].isdigit():
        return int(variant[1:])
    return None


def _compatible(want: Platform) -> list[tuple[str, str | None]]:
    """(architecture, variant) pairs ``want`` can run, best first (containerd ``platformVector``)."""
    arch, variant = want.architecture, want.variant
    out: list[tuple[str, str | None]] = [(arch, variant)]
    number = _variant_number(variant)
    if arch == "amd64":
        level = number if number is not None else 1
        out += [("amd64", f"v{n}") for n in range(level - 1, 1, -1)]
        if level > 1:
            out.append(("amd64", None))
        out.append(("386", None))
    elif arch == "arm" and number is not None:
        out += [("arm", f"v{n}") for n in range(number - 1, 4, -1)]
    elif arch == "arm64" and number is not None and number >= 8:
        if number > 8:
            out.append(("arm64", "v8"))
        out += [("arm", f"v{n}") for n in range(8, 4, -1)]
    return out


def _rank(want: Platform, have: Platform) -> int | None:
    """0 for an exact match, higher for a worse fallback, ``None`` when ``have`` cannot run on ``want``."""
    want, have = normalize_platform(want), normalize_platform(have)
    if want.os != have.os:
        return None
    if want.os_version and have.os_version and want.os_version != have.os_version:
        return None
    if not set(have.os_features) <= set(want.os_features):
        return None
    try:
        return _compatible(want).index((have.architecture, have.variant))
    except ValueError:
        return None


def platform_matches(want: Platform, have: Platform) -> bool:
    """Whether an image built for ``have`` runs on ``want`` (exactly, or through a fallback)."""
    return _rank(want, have) is not None


# --- descriptors, manifests, indexes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a blob or manifest is, its digest and size, and where else to get it."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)  # hashable: usable in sets

    def to_json(self) -> dict[str, object]:
        """The OCI descriptor JSON object (optional fields only when set)."""
        out: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.platform is not None:
            p: dict[str, object] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            if self.platform.os_features:
                p["os.features"] = list(self.platform.os_features)
            if self.platform.variant:
                p["variant"] = self.platform.variant
            out["platform"] = p
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (Docker schema2 or OCI): one config blob and the layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Index:
    """A manifest list / OCI index: manifests of known media types only (unknown entries were skipped)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str]


def _load_json(body: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ManifestInvalid(f"{what} has duplicate key {key!r}")
            out[key] = value
        return out

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise ManifestInvalid(f"{what} is not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise ManifestInvalid(f"{what} is not valid JSON: {err.msg} at line {err.lineno}") from None
    except RecursionError:
        raise ManifestInvalid(f"{what} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ManifestInvalid(f"{what} is not a JSON object")
    return data


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ManifestInvalid(f"{where} must be an object of strings")
    return dict(value)


def _string_list(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestInvalid(f"{where} must be a list of strings")
    return tuple(value)


def _optional_str(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise ManifestInvalid(f"{where} must be a string")


def _parse_platform_json(raw: object, where: str) -> Platform:
    if not isinstance(raw, dict):
        raise ManifestInvalid(f"{where} must be an object")
    os_name, arch = raw.get("os"), raw.get("architecture")
    if not isinstance(os_name, str) or not os_name or not isinstance(arch, str) or not arch:
        raise ManifestInvalid(f"{where} must have string os and architecture")
    return Platform(
        os=os_name,
        architecture=arch,
        variant=_optional_str(raw.get("variant"), f"{where}.variant"),
        os_version=_optional_str(raw.get("os.version"), f"{where}.os.version"),
        os_features=_string_list(raw.get("os.features"), f"{where}.os.features"),
    )


def _parse_descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestInvalid(f"{where} is not a descriptor object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where} has no mediaType")
    if not isinstance(digest, str) or not is_digest(digest):
        raise ManifestInvalid(f"{where} has invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestInvalid(f"{where} ({digest}) has invalid size {size!r}")
    platform = raw.get("platform")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=_string_list(raw.get("urls"), f"{where}.urls"),
        platform=None if platform is None else _parse_platform_json(platform, f"{where}.platform"),
        annotations=_string_map(raw.get("annotations"), f"{where}.annotations"),
    )


def _media_type_of(data: dict[str, Any], content_type: str | None) -> str:
    """Decide what the document is, refusing schema1 and any mediaType / Content-Type disagreement."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    body_type = data.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestInvalid("manifest mediaType must be a string")
    version = data.get("schemaVersion")
    if (
        declared in SCHEMA1_TYPES
        or body_type in SCHEMA1_TYPES
        or (type(version) is int and version == 1)
        or "signatures" in data
        or "fsLayers" in data
    ):
        raise ManifestInvalid(
            "schema1 manifests are not supported: the image uses a format deprecated since 2017;"
            " re-push the image with a current client"
        )
    if type(version) is not int or version != 2:
        raise ManifestInvalid(f"manifest schemaVersion must be 2, not {version!r}")
    if declared not in _GENERIC_CONTENT_TYPES:
        if body_type is not None and body_type != declared:
            raise ManifestInvalid(f"manifest mediaType {body_type!r} does not match Content-Type {declared!r}")
        media_type = declared
    elif body_type is not None:
        media_type = body_type
    elif "manifests" in data and "config" not in data and "layers" not in data:
        media_type = OCI_INDEX
    elif "config" in data and "layers" in data and "manifests" not in data:
        media_type = OCI_MANIFEST
    else:
        raise ManifestInvalid("manifest has no mediaType and is neither a manifest nor an index by its fields")
    if media_type not in _MANIFEST_TYPES and media_type not in _INDEX_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")
    return media_type


def parse_manifest(body: bytes, content_type: str | None, *, max_layers: int | None = None) -> Manifest | Index:
    """Parse a manifest or index as served with ``content_type`` (see the module docstring for the rules).

    More than ``max_layers`` layers raises :class:`~engine.errors.LimitExceeded` before any layer is parsed.
    """
    data = _load_json(body, "manifest")
    media_type = _media_type_of(data, content_type)
    annotations = _string_map(data.get("annotations"), "manifest annotations")
    if media_type in _INDEX_TYPES:
        if "config" in data or "layers" in data:
            raise ManifestInvalid(f"index ({media_type}) must not have config or layers")
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise ManifestInvalid("index has no manifests list")
        kept = []
        for i, entry in enumerate(entries):
            entry_type = entry.get("mediaType") if isinstance(entry, dict) else None
            if entry_type in _MANIFEST_TYPES or entry_type in _INDEX_TYPES:
                kept.append(_parse_descriptor(entry, f"index entry {i}"))
            elif not isinstance(entry, dict):
                raise ManifestInvalid(f"index entry {i} is not a descriptor object")
        return Index(media_type, tuple(kept), annotations)

    if "manifests" in data:
        raise ManifestInvalid(f"manifest ({media_type}) must not have a manifests list")
    config = _parse_descriptor(data.get("config"), "manifest config")
    if config.media_type not in _CONFIG_TYPES:
        raise ManifestInvalid(f"manifest config has media type {config.media_type!r}: not a container image")
    layers_raw = data.get("layers")
    if not isinstance(layers_raw, list):
        raise ManifestInvalid("manifest has no layers list")
    if max_layers is not None and len(layers_raw) > max_layers:
        raise LimitExceeded(f"manifest has {len(layers_raw)} layers; the limit is {max_layers}")
    layers = []
    for i, raw in enumerate(layers_raw):
        layer = _parse_descriptor(raw, f"manifest layer {i}")
        if layer.media_type not in _LAYER_COMPRESSION:
            raise ManifestInvalid(
                f"manifest layer {i} ({layer.digest}) has unsupported media type {layer.media_type!r}"
            )
        layers.append(layer)
    return Manifest(media_type, config, tuple(layers), annotations)


def select_manifest(index: Index, want: Platform) -> Descriptor:
    """The index entry to pull for ``want``: the first exact match, else the best-ranked fallback.

    Entries without a platform, and nested indexes, are skipped.
    """
    best: tuple[int, Descriptor] | None = None
    available: list[str] = []
    for entry in index.manifests:
        if entry.platform is None or not is_manifest_media_type(entry.media_type):
            continue
        if entry.platform.os != "unknown":  # attestation manifests are listed as unknown/unknown
            available.append(str(normalize_platform(entry.platform)))
        rank = _rank(want, entry.platform)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is None:
        shown = ", ".join(dict.fromkeys(available)) or "none"
        raise ManifestInvalid(
            f"no matching manifest for {normalize_platform(want)} in the manifest list entries (available: {shown})"
        )
    return best[1]


# --- image config -----------------------------------------------------------------------------------------

_CONFIG_FIELD_KINDS: dict[str, str] = {
    "Env": "strings",
    "Cmd": "strings",
    "Entrypoint": "strings",
    "Shell": "strings",
    "OnBuild": "strings",
    "WorkingDir": "string",
    "User": "string",
    "StopSignal": "string",
    "Labels": "string map",
    "ExposedPorts": "object",
    "Volumes": "object",
    "Healthcheck": "object",
}


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image config blob: platform, the runtime defaults (``config``), the DiffIDs and history."""

    architecture: str
    os: str
    variant: str | None
    created: str | None
    config: Mapping[str, Any]
    diff_ids: tuple[str, ...]
    history: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]

    @property
    def platform(self) -> Platform:
        """The platform the image was built for, normalised."""
        os_version = self.raw.get("os.version")
        features = self.raw.get("os.features")
        return normalize_platform(
            Platform(
                self.os,
                self.architecture,
                self.variant,
                os_version if isinstance(os_version, str) else None,
                tuple(f for f in features if isinstance(f, str)) if isinstance(features, list) else (),
            )
        )


def _check_runtime_config(config: dict[str, Any]) -> None:
    for key, kind in _CONFIG_FIELD_KINDS.items():
        value = config.get(key)
        if value is None:
            continue
        where = f"image config config.{key}"
        if kind == "strings":
            _string_list(value, where)
        elif kind == "string" and not isinstance(value, str):
            raise ManifestInvalid(f"{where} must be a string")
        elif kind == "string map":
            _string_map(value, where)
        elif kind == "object" and not isinstance(value, dict):
            raise ManifestInvalid(f"{where} must be an object")


def parse_image_config(body: bytes) -> ImageConfig:
    """Parse and check an image config; the runtime fields other rooms rely on are type-checked."""
    data = _load_json(body, "image config")
    arch, os_name = data.get("architecture"), data.get("os")
    if not isinstance(arch, str) or not arch:
        raise ManifestInvalid("image config has no architecture")
    if not isinstance(os_name, str) or not os_name:
        raise ManifestInvalid("image config has no os")
    config = data.get("config")
    if config is None:
        config = {}
    elif not isinstance(config, dict):
        raise ManifestInvalid("image config config must be an object")
    _check_runtime_config(config)
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict):
        raise ManifestInvalid("image config has no rootfs object")
    if rootfs.get("type") != "layers":
        raise ManifestInvalid(f"image config rootfs.type must be 'layers', not {rootfs.get('type')!r}")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ManifestInvalid("image config rootfs.diff_ids must be a list")
    for i, diff_id in enumerate(diff_ids):
        if not isinstance(diff_id, str) or not is_digest(diff_id):
            raise ManifestInvalid(f"image config rootfs.diff_ids[{i}] is not a sha256 digest: {diff_id!r}")
    history = data.get("history")
    if history is None:
        history = []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ManifestInvalid("image config history must be a list of objects")
    return ImageConfig(
        architecture=arch,
        os=os_name,
        variant=_optional_str(data.get("variant"), "image config variant"),
        created=_optional_str(data.get("created"), "image config created"),
        config=config,
        diff_ids=tuple(diff_ids),
        history=tuple(history),
        raw=data,
    )
