"""Content verification: manifest digests and size limit, blob size/digest checks, resumable streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from engine.config import Limits, RegistryConfig
from engine.errors import DigestMismatch, InvalidArgument, LimitExceeded, NotFound, RegistryUnavailable
from engine.manifest import Descriptor
from tests.unit.registry.conftest import ClientFactory
from tests.unit.registry.fake_registry import ChunkStream, FakeRegistry, Sleeps, digest_of, ref, streamed

BODY = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'
LAYER = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def __call__(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def test_manifest_by_digest_is_verified(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = fake.put_manifest("library/busybox", "latest", BODY)
    body, _, got = await make_client().get_manifest(ref(digest=digest))
    assert (body, got) == (BODY, digest)
    assert fake.requests[-1].url.path == f"/v2/library/busybox/manifests/{digest}"
    assert "application/vnd.oci.image.index.v1+json" in fake.requests[-1].headers["accept"]
    # A registry answering a digest request with other content is caught and the data discarded.
    other = "sha256:" + "0" * 64
    fake.manifests[f"library/busybox:{other}"] = (BODY, "application/vnd.oci.image.manifest.v1+json")
    fake.content_digest_header = other  # even a header agreeing with the request must not fool us
    with pytest.raises(DigestMismatch, match=rf"^manifest registry.example/library/busybox@{other}: .*{digest}"):
        await make_client().get_manifest(ref(digest=other))


async def test_manifest_by_tag_gets_its_digest_and_checks_the_header(
    fake: FakeRegistry, make_client: ClientFactory
) -> None:
    digest = fake.put_manifest("library/busybox", "latest", BODY)
    _, _, got = await make_client().get_manifest(ref())
    assert got == digest
    fake.content_digest_header = "sha256:" + "1" * 64
    with pytest.raises(DigestMismatch, match=r"Docker-Content-Digest sha256:1111.* does not match"):
        await make_client().get_manifest(ref())


async def test_content_type_parameters_are_dropped(fake: FakeRegistry, make_client: ClientFactory) -> None:
    fake.put_manifest("library/busybox", "latest", BODY, "application/vnd.oci.image.manifest.v1+json; charset=utf-8")
    _, content_type, _ = await make_client().get_manifest(ref())
    assert content_type == "application/vnd.oci.image.manifest.v1+json"


async def test_manifest_over_the_size_limit(fake: FakeRegistry, make_client: ClientFactory) -> None:
    big = b"{" + b" " * 5000 + b"}"
    fake.put_manifest("library/busybox", "latest", big)
    limits = Limits(max_manifest_bytes=4096)
    too_big = r"^manifest registry.example/library/busybox:latest is larger than the 4096-byte limit"
    with pytest.raises(LimitExceeded, match=too_big):
        await make_client(limits=limits).get_manifest(ref())
    # Without a Content-Length the client stops reading once past the limit: an endless body is harmless.
    served: list[int] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                served.append(1000)
                yield b" " * 1000

    fake.script = [lambda r: httpx.Response(200, stream=Endless())]
    with pytest.raises(LimitExceeded):
        await make_client(limits=limits).get_manifest(ref())
    assert sum(served) <= 5000


async def test_get_blob_checks_size_then_digest(fake: FakeRegistry, make_client: ClientFactory) -> None:
    config = b'{"architecture": "amd64"}'
    digest = fake.put_blob(config)
    client = make_client()
    assert await client.get_blob(ref(), Descriptor("c", digest, len(config))) == config
    fake.blobs[digest] = b'{"architecture": "arm64"}'
    with pytest.raises(DigestMismatch, match=rf"^blob {digest} from registry.example/library/busybox: content has"):
        await client.get_blob(ref(), Descriptor("c", digest, len(config)))
    with pytest.raises(LimitExceeded, match=rf"blob {digest} is 99999999 bytes"):
        await client.get_blob(ref(), Descriptor("c", digest, 99_999_999))
    with pytest.raises(InvalidArgument, match=r"invalid digest"):
        await client.get_blob(ref(), Descriptor("c", "sha256:../../x", 3))


async def test_stream_blob_resumes_after_a_dropped_connection(
    fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps
) -> None:
    digest = fake.put_blob(LAYER)
    fake.break_after = 3000
    sink = Sink()
    await make_client().stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), sink)
    assert sink.data == LAYER  # every byte exactly once, in order
    first, resumed = fake.registry_requests()
    assert "range" not in first.headers
    assert resumed.headers["range"] == "bytes=3000-"
    assert first.headers["accept-encoding"] == "identity"
    assert sleeps.durations == [0.5]


async def test_stream_blob_from_an_offset(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = fake.put_blob(LAYER)
    sink = Sink()
    await make_client().stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), sink, offset=4000)
    assert sink.data == LAYER[4000:]
    assert fake.requests[-1].headers["range"] == "bytes=4000-"
    await make_client().stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), sink, offset=len(LAYER))
    assert len(fake.requests) == 1  # nothing left to fetch: no request at all
    with pytest.raises(InvalidArgument, match=r"offset 10241 outside"):
        await make_client().stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), sink, offset=len(LAYER) + 1)


async def test_server_ignoring_range_is_skipped_client_side(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = fake.put_blob(LAYER)
    fake.ignore_range = True
    fake.break_after = 2500
    sink = Sink()
    await make_client().stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), sink)
    assert sink.data == LAYER
    assert fake.requests[-1].headers["range"] == "bytes=2500-"


async def test_resumed_response_at_the_wrong_offset_is_refused(
    fake: FakeRegistry, make_client: ClientFactory
) -> None:
    digest = fake.put_blob(LAYER)
    fake.break_after = 1000

    def wrong_range(request: httpx.Request) -> httpx.Response | None:
        if "range" not in request.headers:
            return None
        return streamed(206, LAYER[10:], {"Content-Range": f"bytes 10-{len(LAYER) - 1}/{len(LAYER)}"})

    fake.script = [lambda r: None, wrong_range]
    with pytest.raises(Exception, match=r"asked for bytes from 1000, got range 'bytes 10-"):
        await make_client().stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), Sink())


async def test_oversize_blob_is_a_digest_mismatch(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = fake.put_blob(LAYER)
    sink = Sink()
    small = Descriptor(GZIP, digest, 5000)
    with pytest.raises(DigestMismatch, match=rf"^blob {digest} is larger than its descriptor"):
        await make_client().stream_blob(ref(), small, sink)  # Content-Length says so up front
    fake.script = [lambda r: httpx.Response(200, stream=ChunkStream(LAYER))]  # no Content-Length
    with pytest.raises(DigestMismatch, match=r"larger than its descriptor"):
        await make_client().stream_blob(ref(), small, sink)
    assert sink.data == LAYER[:5000]  # never a byte past the descriptor's size


async def test_truncated_blob_after_retries(
    fake: FakeRegistry, make_client: ClientFactory, sleeps: Sleeps
) -> None:
    digest = fake.put_blob(LAYER)
    # The server always ends the body early at the same place and ignores Range: no progress is ever made.
    fake.script = [lambda r: streamed(200, LAYER[:4000])] * 10
    sink = Sink()
    with pytest.raises(RegistryUnavailable, match=rf"blob {digest} truncated at 4000 of 10240 bytes"):
        await make_client(RegistryConfig(retries=2)).stream_blob(ref(), Descriptor(GZIP, digest, len(LAYER)), sink)
    assert sink.data == LAYER[:4000]
    assert len(fake.requests) == 4  # one that made progress, then 1 + 2 retries without any
    assert sleeps.durations == [0.5, 0.5, 1.0]


async def test_blob_unknown(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = digest_of(b"missing")
    with pytest.raises(NotFound, match=rf"^blob {digest} unknown to registry.example"):
        await make_client().stream_blob(ref(), Descriptor(GZIP, digest, 7), Sink())


async def test_foreign_urls_are_tried_first_then_the_registry(fake: FakeRegistry, make_client: ClientFactory) -> None:
    digest = fake.put_blob(LAYER)
    foreign: list[httpx.Request] = []

    def cdn(request: httpx.Request) -> httpx.Response | None:
        if request.url.host != "cdn.example":
            return None
        foreign.append(request)
        return streamed(200, LAYER[:3000], error=httpx.ReadError("reset"))

    fake.script = [cdn] * 5
    desc = Descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", digest, len(LAYER),
                      urls=("http://insecure.example/layer", "https://cdn.example/layer"))
    sink = Sink()
    await make_client(RegistryConfig(retries=0)).stream_blob(ref(), desc, sink)
    assert sink.data == LAYER
    # The CDN broke at 3000, was asked to resume (progress does not use up the retry budget), broke again.
    assert [r.headers.get("range") for r in foreign] == [None, "bytes=3000-"]
    assert all("authorization" not in r.headers for r in foreign)
    # The plain-HTTP URL was refused without any request; the registry resumed where the CDN stopped.
    assert all(r.url.host != "insecure.example" for r in fake.requests)
    assert fake.requests[-1].url.host == "registry.example"
    assert fake.requests[-1].headers["range"] == "bytes=3000-"
