"""``kitebox load -i`` and ``kitebox save -o``: docker-save and OCI image-layout archives.

Formats read by :func:`load_archive` (a tar, plain or gzip/zstd-compressed, detected by magic; or a directory):

* **legacy ``docker save``** (Docker < 25): ``manifest.json`` ``[{Config, RepoTags, Layers}]`` naming
  ``<id>.json`` config files and ``<v1-id>/layer.tar`` layers (duplicates as symlinks). The layer blob is the
  file itself (digest = its sha256, which must equal the config's DiffID when uncompressed); a Docker schema2
  manifest pointing at the config and layers is synthesised and stored.
* **current ``docker save``** (Docker 25+): the same ``manifest.json`` plus an OCI layout (``oci-layout``,
  ``index.json``, ``blobs/sha256/<hex>``). The OCI side is used (it keeps the real manifest digests);
  ``RepoTags`` from ``manifest.json`` are merged in.
* **OCI image layout**: names come from the index entries' ``io.containerd.image.name`` annotation, else from
  ``org.opencontainers.image.ref.name`` when that is a full reference (a bare tag names no repository, so
  such an image loads untagged). A nested index loads every platform manifest present; its names go to the
  one matching this host (else the first).

Loading streams the archive once, member by member, straight into the content store (one chunk in memory,
whatever the layer's size). Every blob is verified against its digest (name, descriptor or DiffID). Member
names and link targets that are absolute or contain ``..`` are refused (``LayerRejected``). Anything else
is ``InvalidArgument("<file>: not a docker or OCI image archive")`` or a one-line error naming the member.

:func:`save_archive` writes what Docker 25+ writes: the OCI layout plus ``manifest.json``, deterministic
(fixed order, mtimes and owners), to a temporary file next to the output that is renamed when complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import secrets
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

import zstandard
from isal import igzip, isal_zlib

from engine.config import Limits
from engine.content import ContentStore
from engine.errors import (
    DigestMismatch,
    InvalidArgument,
    InvalidReference,
    LayerRejected,
    NotFound,
    StoreError,
    from_oserror,
)
from engine.images import ImageRecord, LayerRecord
from engine.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_LAYER_ZSTD,
    DOCKER_MANIFEST,
    OCI_INDEX,
    Descriptor,
    Index,
    Manifest,
    host_platform,
    layer_compression,
    parse_image_config,
    parse_manifest,
    platform_matches,
)
from engine.reference import parse_reference

__all__ = ["LoadedImage", "load_archive", "save_archive"]

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
_MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # manifest.json, index.json, configs
_MAX_LINK_HOPS = 16
_MAX_INDEX_DEPTH = 4
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOB_NAME = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")
_LEGACY_CONFIG_NAME = re.compile(r"^([a-f0-9]{64})\.json$")
# What a truncated or corrupt (compressed) tar raises while it is read.
_CORRUPT_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    cast("type[Exception]", isal_zlib.error),
    igzip.BadGzipFile,
    zstandard.ZstdError,
)
_LEGACY_METADATA = frozenset({"VERSION", "json"})  # per-layer files of the legacy format that we do not need


@dataclass(frozen=True)
class LoadedImage:
    """One image found in an archive; its manifest, config and layers are in the content store."""

    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    layers: tuple[LayerRecord, ...]
    repo_tags: tuple[str, ...]  # normalised: "docker.io/library/busybox:latest"


# --- member names ---------------------------------------------------------------------------------------------


def _member_name(raw: str, label: str) -> str:
    """A member name relative to the archive root, or ``LayerRejected`` if it could point outside it."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    if name in ("", "."):
        return "."
    if name.startswith("/") or ".." in name.split("/"):
        raise LayerRejected(f"{label}: archive member {raw!r} points outside the archive")
    return posixpath.normpath(name)


def _expected_digest(name: str) -> str | None:
    """The digest a member's name promises: ``blobs/sha256/<hex>`` and legacy ``<hex>.json`` configs."""
    match = _BLOB_NAME.match(name) or _LEGACY_CONFIG_NAME.match(name)
    return "sha256:" + match.group(1) if match else None


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _is_document(name: str) -> bool:
    """Top-level metadata kept in memory during the scan rather than streamed into the content store."""
    return "/" not in name and (name.endswith(".json") or name in ("oci-layout", "repositories"))


class _Source(Protocol):
    label: str

    max_layers: int

    def has(self, name: str) -> bool: ...

    def document(self, name: str) -> bytes: ...

    def blob(self, name: str, digest: str | None, size: int | None) -> tuple[str, int]: ...


def _check_blob(label: str, name: str, got: tuple[str, int], digest: str | None, size: int | None) -> tuple[str, int]:
    if digest is not None and got[0] != digest:
        raise DigestMismatch(f"{label}: {name}: content does not match {digest} (got {got[0]})")
    if size is not None and got[1] != size:
        raise DigestMismatch(f"{label}: {name}: size {got[1]}, expected {size}")
    return got


@dataclass
class _TarSource:
    """What one sequential pass over a tar left: documents in memory, everything else in the content store."""

    label: str
    content: ContentStore
    documents: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, tuple[str, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    max_layers: int = Limits().max_layers

    def _resolve(self, name: str) -> str:
        seen = 0
        name = _member_name(name, self.label)
        while name in self.links:
            seen += 1
            if seen > _MAX_LINK_HOPS:
                raise InvalidArgument(f"{self.label}: too many levels of links at {name!r}")
            name = self.links[name]
        return name

    def has(self, name: str) -> bool:
        resolved = self._resolve(name)
        return resolved in self.documents or resolved in self.blobs

    def document(self, name: str) -> bytes:
        resolved = self._resolve(name)
        if resolved in self.documents:
            return self.documents[resolved]
        if resolved in self.blobs:
            digest, size = self.blobs[resolved]
            if size > _MAX_DOCUMENT_BYTES:
                raise InvalidArgument(f"{self.label}: {name} is too large ({size} bytes)")
            return self.content.read(digest)
        raise InvalidArgument(f"{self.label}: {name} is missing from the archive")

    def blob(self, name: str, digest: str | None, size: int | None) -> tuple[str, int]:
        resolved = self._resolve(name)
        digest = digest or _expected_digest(resolved)
        if resolved in self.blobs:
            return _check_blob(self.label, name, self.blobs[resolved], digest, size)
        if resolved in self.documents:
            data = self.documents[resolved]
            got = (self.content.put(data), len(data))
            return _check_blob(self.label, name, got, digest, size)
        raise InvalidArgument(f"{self.label}: {name} is missing from the archive")

    def scan(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            name = _member_name(member.name, self.label)
            if member.issym() or member.islnk():
                target = member.linkname
                if member.issym():
                    if target.startswith("/"):
                        raise LayerRejected(f"{self.label}: link {member.name!r} points outside the archive")
                    target = posixpath.join(posixpath.dirname(name), target)
                    if ".." in posixpath.normpath(target).split("/"):
                        raise LayerRejected(f"{self.label}: link {member.name!r} points outside the archive")
                    target = posixpath.normpath(target)
                else:
                    target = _member_name(target, self.label)
                self.links[name] = target
            elif not member.isreg() or posixpath.basename(name) in _LEGACY_METADATA:
                continue
            elif _is_document(name):
                if member.size > _MAX_DOCUMENT_BYTES:
                    raise InvalidArgument(f"{self.label}: {name} is too large ({member.size} bytes)")
                self.documents[name] = _extract(tar, member).read()
            else:
                expected = _expected_digest(name)
                if name.startswith("blobs/") and expected is None:
                    continue  # another digest algorithm: the store only speaks sha256
                if expected is not None and self.content.has(expected):
                    self.blobs[name] = (expected, self.content.size(expected) or 0)
                    continue
                try:
                    self.blobs[name] = self.content.put_stream(_extract(tar, member), expected, member.size)
                except DigestMismatch as err:
                    raise DigestMismatch(f"{self.label}: {name}: {err}") from None


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(member)
    if stream is None:  # pragma: no cover - only regular members are extracted
        raise InvalidArgument(f"{tar.name!r}: {member.name} is not a regular file")
    return stream


@dataclass
class _DirSource:
    """An unpacked OCI layout (or docker save) directory; blobs are ingested when first asked for."""

    label: str
    root: Path
    content: ContentStore
    max_layers: int = Limits().max_layers

    def _path(self, name: str) -> Path:
        path = self.root / _member_name(name, self.label)
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        if not real.startswith(root + os.sep):
            raise LayerRejected(f"{self.label}: {name!r} points outside the directory")
        return Path(real)

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    def _open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise InvalidArgument(f"{self.label}: {name} is missing from the layout") from None
        except OSError as err:
            raise from_oserror(err, f"{self.label}/{name}", InvalidArgument) from err

    def document(self, name: str) -> bytes:
        with self._open(name) as stream:
            data = stream.read(_MAX_DOCUMENT_BYTES + 1)
        if len(data) > _MAX_DOCUMENT_BYTES:
            raise InvalidArgument(f"{self.label}: {name} is too large")
        return data

    def blob(self, name: str, digest: str | None, size: int | None) -> tuple[str, int]:
        expected = digest or _expected_digest(_member_name(name, self.label))
        if expected is not None and self.content.has(expected):
            return _check_blob(self.label, name, (expected, self.content.size(expected) or 0), digest, size)
        with self._open(name) as stream:
            try:
                return self.content.put_stream(stream, expected, size)
            except DigestMismatch as err:
                raise DigestMismatch(f"{self.label}: {name}: {err}") from None


# --- loading --------------------------------------------------------------------------------------------------


def _open_tar_stream(path: Path, label: str) -> tuple[BinaryIO, IO[bytes]]:
    """Open ``path`` and return (the raw file, a decompressed stream of the tar)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed by the caller)
    except OSError as err:
        raise from_oserror(err, label, InvalidArgument) from err
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        gunzip = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
        return raw, cast(IO[bytes], gunzip)
    if magic == _ZSTD_MAGIC:
        unzstd: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw)
        return raw, unzstd
    return raw, raw


def load_archive(source: Path, content: ContentStore, *, limits: Limits | None = None) -> list[LoadedImage]:
    """Import every image of a docker-save / OCI archive (tar or directory) into ``content``.

    Blocking (reads and hashes every byte): run it in a thread. The caller records the returned images in
    the image store; blobs of a failed load stay in the content store until the next GC.
    """
    label = str(source)
    src: _Source
    if source.is_dir():
        src = _DirSource(label, source, content)
    else:
        tar_source = _TarSource(label, content)
        raw, stream = _open_tar_stream(source, label)
        try:
            with raw, stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                tar_source.scan(tar)
        except tarfile.ReadError as err:
            if not tar_source.documents and not tar_source.blobs:
                raise InvalidArgument(f"{label}: not a docker or OCI image archive") from err
            raise InvalidArgument(f"{label}: corrupt archive ({err})") from err
        except _CORRUPT_ERRORS as err:
            raise InvalidArgument(f"{label}: truncated or corrupt archive ({err or type(err).__name__})") from err
        except OSError as err:
            raise from_oserror(err, label, InvalidArgument) from err
        src = tar_source
    src.max_layers = (limits or Limits()).max_layers
    if src.has("index.json") and (src.has("oci-layout") or src.has("manifest.json")):
        images = _load_oci(src, content)
        if src.has("manifest.json"):
            images = _merge_docker_tags(images, _docker_entries(src))
        return images
    if src.has("manifest.json"):
        return [_load_docker_entry(src, content, entry) for entry in _docker_entries(src)]
    raise InvalidArgument(f"{label}: not a docker or OCI image archive")


def _json(src: _Source, name: str) -> Any:
    try:
        return json.loads(src.document(name))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InvalidArgument(f"{src.label}: {name} is not valid JSON ({err})") from None


def _normalise_tag(src: _Source, text: str) -> str | None:
    """``busybox:latest`` -> ``docker.io/library/busybox:latest``; a digest reference names no tag."""
    try:
        ref = parse_reference(text)
    except InvalidReference as err:
        raise InvalidReference(f"{src.label}: image name {err}") from None
    if ref.tag is None:
        return None
    return f"{ref.repository}:{ref.tag}"


@dataclass(frozen=True)
class _DockerEntry:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def _docker_entries(src: _Source) -> list[_DockerEntry]:
    data = _json(src, "manifest.json")
    where = f"{src.label}: manifest.json"
    if not isinstance(data, list):
        raise InvalidArgument(f"{where} is not a list of images")
    entries = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} entry {i} is not an object")
        config, tags, layers = raw.get("Config"), raw.get("RepoTags") or [], raw.get("Layers")
        if not isinstance(config, str) or not config:
            raise InvalidArgument(f"{where} entry {i} has no Config")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise InvalidArgument(f"{where} entry {i} has no Layers list")
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            raise InvalidArgument(f"{where} entry {i}: RepoTags must be a list of strings")
        normalised = (_normalise_tag(src, tag) for tag in tags)
        entries.append(_DockerEntry(config, tuple(t for t in normalised if t), tuple(layers)))
    return entries


def _layer_type(content: ContentStore, digest: str) -> str:
    """Docker media type of a legacy layer file, by its magic bytes."""
    try:
        with open(content.path(digest), "rb") as stream:
            magic = stream.read(4)
    except OSError as err:
        raise from_oserror(err, f"blob {digest}") from err
    if magic.startswith(_GZIP_MAGIC):
        return DOCKER_LAYER_GZIP
    if magic == _ZSTD_MAGIC:
        return DOCKER_LAYER_ZSTD
    return DOCKER_LAYER_TAR


def _layers_with_diff_ids(
    src: _Source, content: ContentStore, config_digest: str, layers: Sequence[tuple[str, int, str]]
) -> tuple[LayerRecord, ...]:
    """Pair (digest, size, media type) layers with the config's DiffIDs, checking what can be checked here."""
    config = parse_image_config(content.read(config_digest))
    if len(config.diff_ids) != len(layers):
        raise InvalidArgument(
            f"{src.label}: image {config_digest} has {len(layers)} layers but its config lists"
            f" {len(config.diff_ids)} DiffIDs"
        )
    records = []
    for (digest, size, media_type), diff_id in zip(layers, config.diff_ids, strict=True):
        if layer_compression(media_type) is None and digest != diff_id:
            raise DigestMismatch(f"{src.label}: layer {digest} does not match its DiffID {diff_id}")
        records.append(LayerRecord(digest, media_type, size, diff_id))
    return tuple(records)


def _load_docker_entry(src: _Source, content: ContentStore, entry: _DockerEntry) -> LoadedImage:
    """A ``manifest.json`` image: store its config and layers, synthesise and store a schema2 manifest."""
    if len(entry.layers) > src.max_layers:
        raise InvalidArgument(f"{src.label}: image {entry.config} has {len(entry.layers)} layers; the limit is"
                              f" {src.max_layers}")  # fmt: skip
    config_digest, config_size = src.blob(entry.config, None, None)
    layers = []
    for name in entry.layers:
        digest, size = src.blob(name, None, None)
        layers.append((digest, size, _layer_type(content, digest)))
    records = _layers_with_diff_ids(src, content, config_digest, layers)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config_digest},
        "layers": [{"mediaType": r.media_type, "size": r.size, "digest": r.digest} for r in records],
    }
    manifest_digest = content.put(json.dumps(manifest, indent=3).encode())
    return LoadedImage(manifest_digest, DOCKER_MANIFEST, config_digest, records, entry.repo_tags)


def _names_from_annotations(src: _Source, annotations: Mapping[str, str]) -> tuple[str, ...]:
    name = annotations.get(ANNOTATION_IMAGE_NAME)
    if not name:
        ref_name = annotations.get(ANNOTATION_REF_NAME) or ""
        name = ref_name if ("/" in ref_name or ":" in ref_name or "@" in ref_name) else None
    if not name:
        return ()
    tag = _normalise_tag(src, name)
    return (tag,) if tag else ()


def _load_oci(src: _Source, content: ContentStore) -> list[LoadedImage]:
    index = parse_manifest(src.document("index.json"), None)
    if not isinstance(index, Index):
        raise InvalidArgument(f"{src.label}: index.json is not an image index")
    loaded: dict[str, LoadedImage] = {}
    for entry in index.manifests:
        for image in _load_descriptor(src, content, entry, _names_from_annotations(src, entry.annotations), 0):
            previous = loaded.get(image.manifest_digest)
            if previous is not None:
                tags = tuple(dict.fromkeys(previous.repo_tags + image.repo_tags))
                image = LoadedImage(image.manifest_digest, image.manifest_media_type, image.config_digest,
                                    image.layers, tags)  # fmt: skip
            loaded[image.manifest_digest] = image
    if not loaded:
        raise InvalidArgument(f"{src.label}: index.json lists no image")
    return list(loaded.values())


def _load_descriptor(
    src: _Source, content: ContentStore, desc: Descriptor, tags: tuple[str, ...], depth: int
) -> Iterator[LoadedImage]:
    digest, _ = src.blob(_blob_name(desc.digest), desc.digest, desc.size)
    doc = parse_manifest(content.read(digest), desc.media_type, max_layers=src.max_layers)
    if isinstance(doc, Manifest):
        yield _load_manifest(src, content, desc, doc, tags)
        return
    if depth >= _MAX_INDEX_DEPTH:
        raise InvalidArgument(f"{src.label}: indexes nested too deeply at {desc.digest}")
    present = [child for child in doc.manifests if src.has(_blob_name(child.digest)) and not _is_attestation(child)]
    if not present:
        raise InvalidArgument(f"{src.label}: none of the manifests of index {desc.digest} is in the archive")
    host = host_platform()
    named = next((c for c in present if c.platform and platform_matches(host, c.platform)), present[0])
    for child in present:
        yield from _load_descriptor(src, content, child, tags if child is named else (), depth + 1)


def _is_attestation(desc: Descriptor) -> bool:
    """BuildKit's provenance/SBOM manifests ride in indexes as ``unknown/unknown``: they are not images."""
    if desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return True
    return desc.platform is not None and desc.platform.os == "unknown"


def _load_manifest(
    src: _Source, content: ContentStore, desc: Descriptor, manifest: Manifest, tags: tuple[str, ...]
) -> LoadedImage:
    config_digest, _ = src.blob(_blob_name(manifest.config.digest), manifest.config.digest, manifest.config.size)
    layers = []
    for layer in manifest.layers:
        src.blob(_blob_name(layer.digest), layer.digest, layer.size)
        layers.append((layer.digest, layer.size, layer.media_type))
    records = _layers_with_diff_ids(src, content, config_digest, layers)
    return LoadedImage(desc.digest, manifest.media_type, config_digest, records, tags)


def _merge_docker_tags(images: list[LoadedImage], entries: list[_DockerEntry]) -> list[LoadedImage]:
    """Add ``manifest.json``'s RepoTags to the OCI images with the same config."""
    extra: dict[str, list[str]] = {}
    for entry in entries:
        digest = _expected_digest(entry.config)
        if digest is not None:
            extra.setdefault(digest, []).extend(entry.repo_tags)
    merged = []
    for image in images:
        tags = tuple(dict.fromkeys(image.repo_tags + tuple(extra.get(image.config_digest, ()))))
        merged.append(LoadedImage(image.manifest_digest, image.manifest_media_type, image.config_digest,
                                  image.layers, tags))  # fmt: skip
    return merged


# --- saving ---------------------------------------------------------------------------------------------------


def _tar_info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def save_archive(images: Sequence[ImageRecord], content: ContentStore, out: Path) -> None:
    """Write ``images`` to ``out`` as Docker 25+ does: an OCI layout plus docker's ``manifest.json``.

    Layers are written as stored (gzip or plain tar; ``docker load`` decompresses). Nothing half-written is
    ever left at ``out``: the archive is built next to it and renamed into place. Blocking: run in a thread.
    """
    blobs: dict[str, int] = {}
    index_entries: list[dict[str, Any]] = []
    docker_entries: list[dict[str, Any]] = []
    unique: dict[str, ImageRecord] = {}
    for image in images:
        unique.setdefault(image.id, image)  # an image named twice is written once
    for image in unique.values():
        for digest in (image.manifest_digest, image.config_digest, *(layer.digest for layer in image.layers)):
            size = content.size(digest)
            if size is None:
                raise NotFound(f"image {image.id}: blob {digest} is missing from the content store")
            blobs[digest] = size
        descriptor = {
            "mediaType": image.manifest_media_type,
            "digest": image.manifest_digest,
            "size": blobs[image.manifest_digest],
        }
        refs = [parse_reference(tag) for tag in image.repo_tags]
        for ref in refs:
            annotations = {ANNOTATION_IMAGE_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag or "latest"}
            index_entries.append({**descriptor, "annotations": annotations})
        if not refs:
            index_entries.append(descriptor)
        docker_entries.append(
            {
                "Config": _blob_name(image.config_digest),
                "RepoTags": [ref.familiar for ref in refs],
                "Layers": [_blob_name(layer.digest) for layer in image.layers],
            }
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries}
    documents = [
        ("index.json", json.dumps(index).encode()),
        ("manifest.json", json.dumps(docker_entries).encode()),
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
    ]
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    try:
        stream = open(tmp, "xb")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise from_oserror(err, str(out), InvalidArgument) from err
    try:
        with stream, tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info("blobs", 0, directory=True))
            tar.addfile(_tar_info("blobs/sha256", 0, directory=True))
            for digest in sorted(blobs):
                try:
                    blob = open(content.path(digest), "rb")  # noqa: SIM115 (closed by with)
                except OSError as err:
                    raise from_oserror(err, f"blob {digest}", StoreError) from err
                with blob:
                    tar.addfile(_tar_info(_blob_name(digest), blobs[digest]), blob)
            for name, data in documents:
                tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
            tar.close()
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(tmp, out)
    except OSError as err:
        raise from_oserror(err, str(out), InvalidArgument) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

