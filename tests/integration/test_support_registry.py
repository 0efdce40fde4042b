"""Tests of the test infrastructure itself: the real registry, image builder, token server and faulty proxy.

Manifests we build are validated by an independent client (``skopeo inspect``) so engine tests can trust them.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

import tests.support.registry as registry_module
from engine.digest import sha256_bytes
from tests.support.faulty import FaultyProxy
from tests.support.fixtures import REGISTRY_PASSWORD, REGISTRY_USER, FaultyRegistry
from tests.support.images import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    BuiltImage,
    Compression,
    build_image,
    build_index,
    compress,
    device,
    directory,
    fifo,
    file,
    hardlink,
    make_layer,
    opaque_whiteout,
    push_image,
    push_index,
    symlink,
    whiteout,
)
from tests.support.images import (
    busybox_image as build_busybox_image,
)
from tests.support.registry import RegistryServer, RegistryStartError
from tests.support.tokenserver import TokenServer, TokenSigner, parse_scope

ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])  # fmt: skip


def _skopeo_inspect(host: str, ref: str, *extra: str) -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{host}/{ref}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _decompress(blob: bytes, media_type: str) -> bytes:
    if media_type.endswith("gzip"):
        import gzip

        return gzip.decompress(blob)
    if media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def _assert_served(url: str, repo: str, tag: str, image: BuiltImage, auth: httpx.Auth | None = None) -> None:
    with httpx.Client(auth=auth, trust_env=False) as client:
        for ref in (tag, image.manifest_digest):
            got = client.get(f"{url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
            assert got.status_code == 200
            assert got.content == image.manifest
            assert got.headers["Content-Type"] == image.manifest_media_type
            assert got.headers["Docker-Content-Digest"] == image.manifest_digest
        manifest = json.loads(got.content)
        config = client.get(f"{url}/v2/{repo}/blobs/{manifest['config']['digest']}")
        assert sha256_bytes(config.content) == image.config_digest
        diff_ids = json.loads(config.content)["rootfs"]["diff_ids"]
        for desc, diff_id in zip(manifest["layers"], diff_ids, strict=True):
            blob = client.get(f"{url}/v2/{repo}/blobs/{desc['digest']}").content
            assert (sha256_bytes(blob), len(blob)) == (desc["digest"], desc["size"])
            assert sha256_bytes(_decompress(blob, desc["mediaType"])) == diff_id


def _small_layer(text: str = "hello") -> bytes:
    return make_layer([directory("etc"), file("etc/greeting", text)])


# -- image builder (no registry needed) ------------------------------------------------------------------------


def test_make_layer_writes_every_entry_kind() -> None:
    tar = make_layer([
        directory("d", mode=0o750, uid=1000, gid=1000, mtime=1234),
        file("d/f", b"data", mode=0o600, xattrs={"user.k": b"v", "security.capability": b"\x01\xff\x00"}),
        symlink("d/s", "f"),
        hardlink("d/h", "d/f"),
        device("d/c", "char", 1, 3),
        fifo("d/p"),
        whiteout("old/gone"),
        opaque_whiteout("opaque"),
    ])  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert archive.extractfile("d/f").read() == b"data"  # type: ignore[union-attr]
    d = members["d"]
    assert (d.isdir(), d.mode, d.uid, d.gid, d.mtime) == (True, 0o750, 1000, 1000, 1234)
    f = members["d/f"]
    assert f.mode == 0o600
    assert f.pax_headers["SCHILY.xattr.user.k"] == "v"
    assert f.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == b"\x01\xff\x00"
    assert members["d/s"].issym() and members["d/s"].linkname == "f"
    assert members["d/h"].islnk() and members["d/h"].linkname == "d/f"
    assert members["d/c"].ischr() and (members["d/c"].devmajor, members["d/c"].devminor) == (1, 3)
    assert members["d/p"].isfifo()
    assert "old/.wh.gone" in members and "opaque/.wh..wh..opq" in members


def test_builds_are_deterministic_and_config_matches_layers() -> None:
    a = build_image([_small_layer()], oci=True, config={"Cmd": ["sh"]})
    b = build_image([_small_layer()], oci=True, config={"Cmd": ["sh"]})
    assert a.manifest_digest == b.manifest_digest
    config = json.loads(a.config)
    assert config["rootfs"]["diff_ids"] == [sha256_bytes(_small_layer())]
    assert config["config"] == {"Cmd": ["sh"]}
    assert (config["architecture"], config["os"]) == ("amd64", "linux")


def test_bad_builder_input_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown layer compression 'bzip2'"):
        compress(b"", "bzip2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compression list has 1 entries for 2 layers"):
        build_image([b"", b""], compression=["gzip"])
    with pytest.raises(ValueError, match="whiteout path '/' names no file"):
        whiteout("/")


# -- anonymous registry ----------------------------------------------------------------------------------------


@pytest.mark.registry
@pytest.mark.parametrize(
    ("oci", "compression"),
    [(False, "gzip"), (False, "zstd"), (False, "none"), (True, "gzip"), (True, "zstd"), (True, "none")],
)
def test_push_busybox_and_read_back(registry: RegistryServer, busybox_image: BuiltImage, repo_name: str,
                                    oci: bool, compression: Compression) -> None:
    image = busybox_image if (not oci and compression == "gzip") else build_busybox_image(
        compression=compression, oci=oci
    )
    assert json.loads(image.config)["config"]["Cmd"] == ["sh"]
    assert push_image(registry.url, repo_name, "v1", image) == image.manifest_digest
    _assert_served(registry.url, repo_name, "v1", image)
    if not oci and compression == "zstd":
        # containers/image knows no docker zstd layer type (containerd and moby do): check the raw bytes only.
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{registry.host}/{repo_name}:v1"], capture_output=True, timeout=30)
        assert raw.returncode == 0 and raw.stdout == image.manifest, raw.stderr
    else:
        inspected = _skopeo_inspect(registry.host, f"{repo_name}:v1")
        assert inspected["Digest"] == image.manifest_digest
        assert inspected["Layers"] == [layer.digest for layer in image.layers]
    # pushing again skips existing blobs (HEAD 200) and is idempotent
    assert push_image(registry.url, repo_name, "v1", image) == image.manifest_digest


@pytest.mark.registry
@pytest.mark.parametrize("oci", [False, True])
def test_push_multi_arch_index(registry: RegistryServer, repo_name: str, oci: bool) -> None:
    amd64 = build_image([_small_layer("amd64")], oci=oci)
    arm64 = build_image([_small_layer("arm64")], oci=oci, architecture="arm64", variant="v8")
    index = build_index([amd64, arm64], oci=oci)
    assert index.media_type == (OCI_INDEX if oci else DOCKER_MANIFEST_LIST)
    assert push_index(registry.url, repo_name, "multi", index) == index.digest
    got = httpx.get(f"{registry.url}/v2/{repo_name}/manifests/multi", headers={"Accept": ACCEPT})
    assert (got.content, got.headers["Content-Type"]) == (index.manifest, index.media_type)
    platforms = [m["platform"] for m in json.loads(got.content)["manifests"]]
    assert platforms == [{"architecture": "amd64", "os": "linux"},
                         {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    for image in (amd64, arm64):
        _assert_served(registry.url, repo_name, image.manifest_digest, image)
    picked = _skopeo_inspect(registry.host, f"{repo_name}:multi", "--override-arch", "arm64")
    assert picked["Digest"] == index.digest  # skopeo reports the index digest...
    assert picked["Layers"] == [arm64.layers[0].digest]  # ...and the arm64 child's layers


@pytest.mark.registry
def test_registry_stop_ends_the_process_and_port_retry_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        real_free_port = registry_module.free_port
        ports = iter([busy_port])
        monkeypatch.setattr(registry_module, "free_port", lambda: next(ports, None) or real_free_port())
        server = RegistryServer(tmp_path / "reg")
        with server:
            assert server.port != busy_port
            assert "address already in use" in server.log_tail(100)
            assert httpx.get(server.url + "/v2/").status_code == 200
            url = server.url
        assert server.pid is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/v2/")


@pytest.mark.registry
def test_registry_startup_failure_shows_the_log(tmp_path: Path, token_signer: TokenSigner) -> None:
    broken = TokenSigner(tmp_path / "missing.crt", token_signer.key_path, token_signer.key, token_signer.key_id)
    expected = r"exited with status \d+ during startup; log tail:\n"
    with TokenServer(tmp_path / "ts", signer=broken) as ts, pytest.raises(RegistryStartError, match=expected) as err:
        RegistryServer(tmp_path / "reg", token=ts).start()
    assert "missing.crt" in str(err.value)


# -- Basic auth ------------------------------------------------------------------------------------------------


@pytest.mark.registry
def test_basic_registry_accepts_right_and_refuses_wrong_password(basic_registry: RegistryServer,
                                                                  repo_name: str) -> None:
    assert httpx.get(basic_registry.url + "/v2/").status_code == 401
    assert httpx.get(basic_registry.url + "/v2/", auth=(REGISTRY_USER, "wrong")).status_code == 401
    assert httpx.get(basic_registry.url + "/v2/", auth=(REGISTRY_USER, REGISTRY_PASSWORD)).status_code == 200
    image = build_image([_small_layer()])
    push_image(basic_registry.url, repo_name, "v1", image, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    _assert_served(basic_registry.url, repo_name, "v1", image, auth=httpx.BasicAuth(REGISTRY_USER, REGISTRY_PASSWORD))
    with pytest.raises(RuntimeError, match="registry answered 401"):
        push_image(basic_registry.url, repo_name, "v2", image, auth=(REGISTRY_USER, "wrong"))


# -- token auth ------------------------------------------------------------------------------------------------


def _token(ts: TokenServer, scope: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    return httpx.get(ts.realm, params={"service": ts.service, "scope": scope}, auth=auth)


@pytest.mark.registry
def test_token_registry_push_pull_and_skopeo(token_registry: RegistryServer, token_server: TokenServer,
                                             repo_name: str) -> None:
    challenge = httpx.get(f"{token_registry.url}/v2/{repo_name}/manifests/v1")
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"].startswith(f'Bearer realm="{token_server.realm}"')
    image = build_image([_small_layer()], oci=True)
    push_image(token_registry.url, repo_name, "v1", image, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    asked = [parse_scope(s) for r in token_server.requests for s in r.scopes]  # action order varies (Go maps)
    assert ("repository", repo_name, {"pull", "push"}) in [(t, n, set(a)) for t, n, a in asked]
    assert all(r.user == REGISTRY_USER and r.status == 200 for r in token_server.requests)

    token = _token(token_server, f"repository:{repo_name}:pull", (REGISTRY_USER, REGISTRY_PASSWORD)).json()
    assert token["token"] == token["access_token"] and token["expires_in"] == token_server.expires_in
    got = httpx.get(f"{token_registry.url}/v2/{repo_name}/manifests/v1",
                    headers={"Accept": ACCEPT, "Authorization": f"Bearer {token['token']}"})
    assert got.status_code == 200 and got.content == image.manifest
    inspected = _skopeo_inspect(token_registry.host, f"{repo_name}:v1", "--creds",
                                f"{REGISTRY_USER}:{REGISTRY_PASSWORD}")
    assert inspected["Digest"] == image.manifest_digest


@pytest.mark.registry
def test_token_policy_wrong_password_anonymous_and_expiry(token_registry: RegistryServer,
                                                          token_server: TokenServer) -> None:
    assert _token(token_server, "repository:x/y:pull", (REGISTRY_USER, "wrong")).status_code == 401
    assert token_server.requests[-1].user is None and token_server.requests[-1].status == 401

    image = build_image([_small_layer()])
    push_image(token_registry.url, "public/app", "v1", image, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    push_image(token_registry.url, "private/app", "v1", image, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    for repo, expected in (("public/app", 200), ("private/app", 401)):
        anon = _token(token_server, f"repository:{repo}:pull").json()["token"]
        got = httpx.get(f"{token_registry.url}/v2/{repo}/manifests/v1",
                        headers={"Accept": ACCEPT, "Authorization": f"Bearer {anon}"})
        assert got.status_code == expected, repo
    assert 'error="insufficient_scope"' in got.headers["WWW-Authenticate"]

    token_server.valid_for = -120  # beyond the registry's 60 s leeway
    stale = _token(token_server, "repository:public/app:pull", (REGISTRY_USER, REGISTRY_PASSWORD)).json()["token"]
    got = httpx.get(f"{token_registry.url}/v2/public/app/manifests/v1", headers={"Authorization": f"Bearer {stale}"})
    assert got.status_code == 401 and 'error="invalid_token"' in got.headers["WWW-Authenticate"]


def test_token_server_oauth_post_and_bad_requests(token_server: TokenServer) -> None:
    form = {"grant_type": "password", "username": REGISTRY_USER, "password": REGISTRY_PASSWORD,
            "service": token_server.service, "scope": "repository:a/b:pull repository:c/d:push", "client_id": "t"}
    ok = httpx.post(token_server.realm, data=form)
    assert ok.status_code == 200 and ok.json()["access_token"]
    assert token_server.requests[-1].scopes == ("repository:a/b:pull", "repository:c/d:push")
    assert httpx.post(token_server.realm, data=form | {"grant_type": "refresh_token"}).status_code == 400
    bad_scope = _token(token_server, "nonsense", (REGISTRY_USER, REGISTRY_PASSWORD))
    assert bad_scope.status_code == 400 and "malformed scope 'nonsense'" in bad_scope.text
    assert httpx.get(token_server.realm, params={"service": "other"}).status_code == 400
    token_server.oauth_post = False
    assert httpx.post(token_server.realm, data=form).status_code == 405


def test_token_server_thread_ends_on_stop(tmp_path: Path, token_signer: TokenSigner) -> None:
    server = TokenServer(tmp_path, signer=token_signer).start()
    assert _token(server, "repository:public/x:pull").status_code == 200
    server.stop()
    assert not [t for t in threading.enumerate() if t.name == "token-server"]


# -- faulty proxy ----------------------------------------------------------------------------------------------


@pytest.fixture
def blob_repo(faulty_registry: FaultyRegistry, repo_name: str) -> Iterator[tuple[str, bytes, str]]:
    """A repository holding one 64 KiB blob (pushed directly upstream); yields (blob URL via proxy, data, digest)."""
    data = hashlib.sha256(b"seed").digest() * 2048
    image = build_image([make_layer([file("big", data)])], compression="none")
    push_image(faulty_registry.upstream.url, repo_name, "v1", image)
    layer = image.layers[0]
    yield f"{faulty_registry.url}/v2/{repo_name}/blobs/{layer.digest}", layer.blob, layer.digest


@pytest.mark.registry
def test_proxy_passes_through_and_pushes_work(faulty_registry: FaultyRegistry, repo_name: str) -> None:
    image = build_image([_small_layer()], oci=True)
    push_image(faulty_registry.url, repo_name, "v1", image)  # Location headers must point back at the proxy
    _assert_served(faulty_registry.url, repo_name, "v1", image)
    methods = [(r.method, r.fault) for r in faulty_registry.requests]
    assert ("POST", None) in methods and ("PUT", None) in methods
    layer = image.layers[0]
    assert faulty_registry.upstream.blob_path(layer.digest).read_bytes() == layer.blob
    faulty_registry.upstream.wipe_storage()
    gone = httpx.get(f"{faulty_registry.url}/v2/{repo_name}/manifests/v1", headers={"Accept": ACCEPT})
    assert gone.status_code == 404


@pytest.mark.registry
def test_proxy_refuse_and_status(faulty_registry: FaultyRegistry, blob_repo: tuple[str, bytes, str]) -> None:
    url, data, _ = blob_repo
    faulty_registry.refuse(r"/blobs/", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    faulty_registry.status(503, r"/blobs/", times=2, headers={"Retry-After": "1"})
    for _ in range(2):
        got = httpx.get(url)
        assert got.status_code == 503 and got.headers["Retry-After"] == "1"
        assert got.json()["errors"][0]["code"] == "INJECTED"
    assert httpx.get(url).content == data  # faults exhausted: traffic flows again
    assert [r.fault for r in faulty_registry.requests] == ["refuse", "status", "status", None]
    assert [r.status for r in faulty_registry.requests] == [None, 503, 503, 200]


@pytest.mark.registry
def test_proxy_stall_and_truncate(faulty_registry: FaultyRegistry, blob_repo: tuple[str, bytes, str]) -> None:
    url, data, _ = blob_repo
    faulty_registry.stall(1000, r"/blobs/", times=1)
    received = bytearray()
    with pytest.raises(httpx.ReadTimeout), httpx.stream("GET", url, timeout=httpx.Timeout(5.0, read=0.5)) as resp:
        assert resp.headers["Content-Length"] == str(len(data))
        for chunk in resp.iter_raw():
            received += chunk
    assert bytes(received) == data[:1000]

    faulty_registry.truncate(4096, r"/blobs/", times=1)
    received.clear()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as resp:
        for chunk in resp.iter_raw():
            received += chunk
    assert bytes(received) == data[:4096]


@pytest.mark.registry
def test_proxy_corrupt_and_lie_size(faulty_registry: FaultyRegistry, blob_repo: tuple[str, bytes, str]) -> None:
    url, data, digest = blob_repo
    faulty_registry.corrupt(r"/blobs/", offset=40_000, times=1)
    bad = httpx.get(url).content
    assert len(bad) == len(data) and sha256_bytes(bad) != digest
    assert [i for i, (x, y) in enumerate(zip(bad, data, strict=True)) if x != y] == [40_000]

    faulty_registry.lie_size(7, r"/blobs/", method="HEAD", times=1)
    assert httpx.head(url).headers["Content-Length"] == str(len(data) + 7)
    faulty_registry.lie_size(-10, r"/blobs/", method="GET", times=1)
    short = httpx.get(url)
    assert short.headers["Content-Length"] == str(len(data) - 10) and short.content == data[:-10]
    assert httpx.head(url).headers["Content-Length"] == str(len(data))  # faults used up


@pytest.mark.registry
def test_proxy_stop_while_stalled_leaves_no_thread(registry: RegistryServer, blob_repo: tuple[str, bytes, str],
                                                   faulty_registry: FaultyRegistry) -> None:
    proxy = FaultyProxy(registry.url).start()
    proxy.stall(0)
    path = blob_repo[0].split("/v2/", 1)[1]
    with httpx.stream("GET", f"{proxy.url}/v2/{path}", timeout=5.0) as resp:
        assert resp.status_code == 200
        proxy.stop()  # the stalled connection is cancelled and closed
        with pytest.raises(httpx.RemoteProtocolError):
            resp.read()
    assert sum(t.name == "faulty-proxy" for t in threading.enumerate()) == 1  # only the fixture's proxy
    with pytest.raises(ValueError, match="invalid fault path regex"):
        proxy.refuse("(")
