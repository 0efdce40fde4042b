"""Build OCI / Docker schema2 images in Python and push them to a registry over the distribution API.

Layers are written with :mod:`tarfile` in PAX format from :class:`FileSpec` entries (files, directories,
symlinks, hardlinks, devices, fifos, modes, ownership, mtimes, xattrs as ``SCHILY.xattr.*`` records, whiteouts),
so tests can state exactly what a layer holds, including hostile content. Everything is deterministic (fixed
mtimes, gzip mtime 0) so digests are stable across runs.

Pushing uses plain httpx: HEAD to skip blobs the registry already has, ``POST .../blobs/uploads/`` then a
monolithic ``PUT <location>?digest=``, then ``PUT .../manifests/<ref>`` with the manifest's media type.
:class:`RegistryAuth` answers the registry's challenge: Basic, or the Bearer dance against the token server.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import tarfile
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx
import zstandard

from engine.digest import sha256_bytes
from tests.support.busybox import busybox_layer_tar

__all__ = [
    "DOCKER_CONFIG",
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
    "BuiltImage",
    "BuiltIndex",
    "Compression",
    "FileSpec",
    "Layer",
    "RegistryAuth",
    "build_image",
    "build_index",
    "busybox_image",
    "compress",
    "device",
    "directory",
    "fifo",
    "file",
    "hardlink",
    "layer_media_type",
    "make_layer",
    "opaque_whiteout",
    "push_blob",
    "push_image",
    "push_index",
    "push_manifest",
    "symlink",
    "whiteout",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

Compression = Literal["gzip", "zstd", "none"]
EntryKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]
FIXED_MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"  # FIXED_MTIME as RFC 3339: stable config digests

_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE,
}  # fmt: skip
_DEFAULT_MODES: dict[str, int] = {
    "file": 0o644, "dir": 0o755, "symlink": 0o777, "hardlink": 0o644, "char": 0o666, "block": 0o660, "fifo": 0o644,
}  # fmt: skip


# -- layer entries ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One tar entry. ``path`` is written verbatim (tests may use ``../x`` or ``/abs`` to build hostile layers).

    ``target`` is the link target for symlinks and hardlinks; ``xattrs`` become PAX ``SCHILY.xattr.<name>``
    records (binary values are kept byte-exact); ``mode`` defaults per kind.
    """

    path: str
    kind: EntryKind = "file"
    data: bytes = b""
    target: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0
    uname: str = ""
    gname: str = ""


def file(path: str, data: bytes | str = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = FIXED_MTIME, xattrs: Mapping[str, bytes] | None = None) -> FileSpec:
    raw = data.encode() if isinstance(data, str) else data
    return FileSpec(path, "file", raw, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=dict(xattrs or {}))


def directory(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = FIXED_MTIME,
              xattrs: Mapping[str, bytes] | None = None) -> FileSpec:
    return FileSpec(path, "dir", mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=dict(xattrs or {}))


def symlink(path: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int = FIXED_MTIME) -> FileSpec:
    return FileSpec(path, "symlink", target=target, uid=uid, gid=gid, mtime=mtime)


def hardlink(path: str, target: str) -> FileSpec:
    """A hardlink to ``target``, an earlier entry of the same layer (tar semantics)."""
    return FileSpec(path, "hardlink", target=target)


def device(path: str, kind: Literal["char", "block"], major: int, minor: int, *, mode: int | None = None) -> FileSpec:
    return FileSpec(path, kind, mode=mode, devmajor=major, devminor=minor)


def fifo(path: str, *, mode: int = 0o644) -> FileSpec:
    return FileSpec(path, "fifo", mode=mode)


def whiteout(path: str) -> FileSpec:
    """The AUFS-style whiteout deleting ``path`` from lower layers: ``dir/.wh.name``."""
    head, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise ValueError(f"whiteout path {path!r} names no file")
    return FileSpec(f"{head}/.wh.{name}" if head else f".wh.{name}", "file", mode=0o000)


def opaque_whiteout(dirpath: str) -> FileSpec:
    """The opaque-directory marker ``dir/.wh..wh..opq``: hide everything below ``dirpath`` in lower layers."""
    return FileSpec(f"{dirpath.rstrip('/')}/.wh..wh..opq", "file", mode=0o000)


def make_layer(entries: Sequence[FileSpec]) -> bytes:
    """An uncompressed PAX tar holding ``entries`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.type = _TAR_TYPES[entry.kind]
            info.mode = _DEFAULT_MODES[entry.kind] if entry.mode is None else entry.mode
            info.uid, info.gid, info.mtime = entry.uid, entry.gid, entry.mtime
            info.uname, info.gname = entry.uname, entry.gname
            info.linkname = entry.target
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            if entry.xattrs:
                # tarfile writes str values; surrogateescape round-trips arbitrary bytes (hdrcharset=BINARY).
                info.pax_headers = {
                    f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
                    for name, value in entry.xattrs.items()
                }
            if entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(tar: bytes, kind: Compression) -> bytes:
    """Compress a layer deterministically: gzip with mtime 0, zstd level 3 with the content size, or none."""
    if kind == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(tar)
    if kind == "none":
        return tar
    raise ValueError(f"unknown layer compression {kind!r}: expected gzip, zstd or none")


def layer_media_type(kind: Compression, *, oci: bool) -> str:
    table = {
        ("gzip", True): OCI_LAYER_GZIP, ("zstd", True): OCI_LAYER_ZSTD, ("none", True): OCI_LAYER_TAR,
        ("gzip", False): DOCKER_LAYER_GZIP, ("zstd", False): DOCKER_LAYER_ZSTD, ("none", False): DOCKER_LAYER_TAR,
    }  # fmt: skip
    try:
        return table[(kind, oci)]
    except KeyError:
        raise ValueError(f"unknown layer compression {kind!r}: expected gzip, zstd or none") from None


# -- images ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    media_type: str
    blob: bytes  # as stored in the registry (compressed or not)
    digest: str  # of ``blob``
    diff_id: str  # of the uncompressed tar


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    manifest_media_type: str
    manifest_digest: str
    config: bytes
    config_digest: str
    layers: tuple[Layer, ...]
    platform: Mapping[str, str]

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every blob the manifest references, by digest (config first)."""
        out = {self.config_digest: self.config}
        out.update((layer.digest, layer.blob) for layer in self.layers)
        return out


@dataclass(frozen=True)
class BuiltIndex:
    manifest: bytes
    media_type: str
    digest: str
    images: tuple[BuiltImage, ...]


def _json(obj: object) -> bytes:
    return json.dumps(obj, indent=3).encode()  # the way Docker writes them: not canonical, that's fine


def build_image(
    layers: Sequence[bytes],
    *,
    compression: Compression | Sequence[Compression] = "gzip",
    oci: bool = False,
    config: Mapping[str, object] | None = None,
    architecture: str = "amd64",
    os: str = "linux",
    variant: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> BuiltImage:
    """An image from uncompressed tar ``layers`` (bottom first).

    ``compression`` is one kind for all layers or one per layer. ``config`` is the image config's ``config``
    object (Env, Cmd, Entrypoint, WorkingDir, User, ...). ``oci`` picks OCI media types, else Docker schema2.
    """
    kinds: list[Compression] = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(kinds) != len(layers):
        raise ValueError(f"compression list has {len(kinds)} entries for {len(layers)} layers")
    built = tuple(
        Layer(layer_media_type(kind, oci=oci), blob := compress(tar, kind), sha256_bytes(blob), sha256_bytes(tar))
        for tar, kind in zip(layers, kinds, strict=True)
    )
    platform = {"architecture": architecture, "os": os} | ({"variant": variant} if variant else {})
    config_obj: dict[str, object] = {
        **platform,
        "created": CREATED,
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
        "history": [{"created": CREATED, "created_by": f"kitebox-test layer {i}"} for i in range(len(built))],
    }
    config_bytes = _json(config_obj)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest_obj: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
            "size": len(config_bytes),
            "digest": sha256_bytes(config_bytes),
        },
        "layers": [{"mediaType": lay.media_type, "size": len(lay.blob), "digest": lay.digest} for lay in built],
    }
    if annotations:
        manifest_obj["annotations"] = dict(annotations)
    manifest = _json(manifest_obj)
    return BuiltImage(
        manifest, media_type, sha256_bytes(manifest), config_bytes, sha256_bytes(config_bytes), built, platform
    )


def build_index(images: Sequence[BuiltImage], *, oci: bool) -> BuiltIndex:
    """A multi-platform OCI index (``oci``) or Docker manifest list over ``images``, with platform fields."""
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    index_obj = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": img.manifest_media_type,
                "size": len(img.manifest),
                "digest": img.manifest_digest,
                "platform": dict(img.platform),
            }
            for img in images
        ],
    }
    body = _json(index_obj)
    return BuiltIndex(body, media_type, sha256_bytes(body), tuple(images))


def busybox_image(
    *,
    compression: Compression | Sequence[Compression] = "gzip",
    oci: bool = False,
    config: Mapping[str, object] | None = None,
    architecture: str = "amd64",
    variant: str | None = None,
) -> BuiltImage:
    """A one-layer busybox image: ``PATH`` set and ``Cmd ["sh"]``, overridable key by key through ``config``."""
    merged: dict[str, object] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
        **(config or {}),
    }
    return build_image([busybox_layer_tar()], compression=compression, oci=oci, config=merged,
                       architecture=architecture, variant=variant)


# -- pushing ---------------------------------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryAuth(httpx.Auth):
    """Answer a registry's 401 challenge with ``username``/``password``.

    ``Basic`` challenges get Basic credentials; ``Bearer`` challenges trigger a GET to the realm with the
    challenge's service and scope (Basic-authenticated), and the token is cached per scope for this object.
    Use it as ``httpx.Client(auth=RegistryAuth(user, pw))`` or pass ``auth=(user, pw)`` to the push helpers.
    """

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username, self.password = username, password
        self._tokens: dict[str, str] = {}  # scope -> token
        self._scope_by_repo: dict[str, str] = {}  # repository -> the scope its last challenge asked for
        self._basic = False

    def _authorize(self, request: httpx.Request, scope: str | None) -> None:
        if self._basic and self.username is not None:
            creds = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            request.headers["Authorization"] = f"Basic {creds}"
        elif scope is not None and scope in self._tokens:
            request.headers["Authorization"] = f"Bearer {self._tokens[scope]}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._authorize(request, self._scope_by_repo.get(_repo_of(request.url.path)))
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        if scheme == "basic":
            if self.username is None or self._basic:
                return
            self._basic = True
        elif scheme == "bearer" and "realm" in params:
            query = {"service": params.get("service", "")}
            scope = params.get("scope")
            if scope:
                query["scope"] = scope
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self.username is not None:
                creds = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
                token_request.headers["Authorization"] = f"Basic {creds}"
            token_response = yield token_request
            token_response.read()
            if token_response.status_code != 200:
                raise RuntimeError(f"token server {params['realm']} answered {token_response.status_code}")
            body = json.loads(token_response.content)
            self._tokens[scope or ""] = str(body.get("token") or body.get("access_token"))
            self._scope_by_repo[_repo_of(request.url.path)] = scope or ""
        else:
            return
        self._authorize(request, self._scope_by_repo.get(_repo_of(request.url.path)))
        yield request


def _repo_of(path: str) -> str:
    """``/v2/<repo>/(blobs|manifests|tags)/...`` -> ``<repo>`` ("" for ``/v2/`` and the catalog)."""
    match = re.match(r"^/v2/(.+?)/(?:blobs|manifests|tags)/", path)
    return match.group(1) if match else ""


AuthArg = httpx.Auth | tuple[str, str] | None


def _client(auth: AuthArg) -> httpx.Client:
    chosen: httpx.Auth | None = RegistryAuth(*auth) if isinstance(auth, tuple) else auth
    return httpx.Client(auth=chosen, timeout=30.0, trust_env=False, follow_redirects=False)


def _check(response: httpx.Response, what: str, *expected: int) -> None:
    if response.status_code not in expected:
        raise RuntimeError(f"{what}: registry answered {response.status_code}: {response.text[:300]!r}")


def push_blob(client: httpx.Client, registry_url: str, repo: str, data: bytes, *, skip_existing: bool = True) -> str:
    """Upload ``data`` as a blob of ``repo`` (monolithic POST + PUT) and return its digest."""
    digest = sha256_bytes(data)
    base = f"{registry_url}/v2/{repo}/blobs"
    if skip_existing and client.head(f"{base}/{digest}").status_code == 200:
        return digest
    started = client.post(f"{base}/uploads/")
    _check(started, f"starting blob upload to {repo}", 202)
    location = httpx.URL(registry_url).join(started.headers["Location"])
    done = client.put(location.copy_merge_params({"digest": digest}), content=data,
                      headers={"Content-Type": "application/octet-stream"})
    _check(done, f"uploading blob {digest} to {repo}", 201)
    return digest


def push_manifest(client: httpx.Client, registry_url: str, repo: str, reference: str, body: bytes,
                  media_type: str) -> str:
    """PUT a manifest under ``reference`` (tag or digest); returns the digest the registry reports."""
    response = client.put(f"{registry_url}/v2/{repo}/manifests/{reference}", content=body,
                          headers={"Content-Type": media_type})
    _check(response, f"pushing manifest {repo}:{reference}", 201)
    return str(response.headers.get("Docker-Content-Digest", sha256_bytes(body)))


def _push_image_with(client: httpx.Client, registry_url: str, repo: str, reference: str, image: BuiltImage) -> None:
    for data in image.blobs.values():
        push_blob(client, registry_url, repo, data)
    pushed = push_manifest(client, registry_url, repo, reference, image.manifest, image.manifest_media_type)
    if pushed != image.manifest_digest:
        raise RuntimeError(f"registry stored {repo}:{reference} as {pushed}, expected {image.manifest_digest}")


def push_image(registry_url: str, repo: str, tag: str | None, image: BuiltImage, *, auth: AuthArg = None) -> str:
    """Push blobs then the manifest under ``tag`` (or only by digest when ``tag`` is None); returns the digest.

    ``auth`` is ``(user, password)`` (Basic or Bearer chosen from the challenge) or any ``httpx.Auth``.
    Synchronous on purpose: test setup, callable from async tests too (registry, token server and proxy all
    run outside the test's event loop, so blocking it briefly cannot deadlock).
    """
    with _client(auth) as client:
        _push_image_with(client, registry_url, repo, tag or image.manifest_digest, image)
    return image.manifest_digest


def push_index(registry_url: str, repo: str, tag: str | None, index: BuiltIndex, *, auth: AuthArg = None) -> str:
    """Push every image of ``index`` by digest, then the index under ``tag`` (or by digest); returns its digest."""
    with _client(auth) as client:
        for image in index.images:
            _push_image_with(client, registry_url, repo, image.manifest_digest, image)
        pushed = push_manifest(client, registry_url, repo, tag or index.digest, index.manifest, index.media_type)
    if pushed != index.digest:
        raise RuntimeError(f"registry stored index {repo}:{tag} as {pushed}, expected {index.digest}")
    return index.digest
