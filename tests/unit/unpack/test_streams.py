"""Decompression, DiffID, limits and corrupt input."""

from __future__ import annotations

import io
import tarfile
import threading

import pytest
import zstandard

from engine.config import Limits
from engine.errors import DigestMismatch, LayerRejected, LimitExceeded, ManifestInvalid
from engine.unpack import apply_layer
from tests.unit.unpack.tarbuild import DIGEST, GZIP, PLAIN, ZSTD, D, F, H, S, Sandbox, diff_id, gz, layer

TAR = layer(D("etc"), F("etc/hostname", b"kitebox\n"), F("big", bytes(range(256)) * 4096))


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("media", "blob"),
    [(PLAIN, TAR), (GZIP, gz(TAR)), (GZIP, gz(TAR[:5000]) + gz(TAR[5000:])), (ZSTD, zst(TAR)),
     (ZSTD, zst(TAR[:7000]) + zst(TAR[7000:])),
     ("application/vnd.docker.image.rootfs.diff.tar.gzip", gz(TAR))],
    ids=["plain", "gzip", "gzip-multi-member", "zstd", "zstd-multi-frame", "docker-gzip"],
)
def test_each_compression_applies_and_verifies(sandbox: Sandbox, media: str, blob: bytes) -> None:
    result = sandbox.apply(data=blob, media=media, expected_diff_id=diff_id(TAR))
    assert (result.diff_id, result.entries, result.uncompressed_bytes) == (diff_id(TAR), 3, len(TAR))
    assert (sandbox.root / "etc/hostname").read_bytes() == b"kitebox\n"
    assert (sandbox.root / "big").read_bytes() == bytes(range(256)) * 4096


def test_diff_id_mismatch_names_the_layer(sandbox: Sandbox) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch, match=f"layer {DIGEST}: DiffID mismatch: got {diff_id(TAR)}, expected {wrong}"):
        sandbox.apply(data=gz(TAR), media=GZIP, expected_diff_id=wrong)


def test_trailing_bytes_after_end_of_archive_count_in_diff_id(sandbox: Sandbox) -> None:
    padded = TAR + bytes(10240) + b"trailing junk"
    result = sandbox.apply(data=gz(padded), media=GZIP, expected_diff_id=diff_id(padded))
    assert result.uncompressed_bytes == len(padded)


def test_a_layers_size_is_its_files_bytes_hard_links_once(sandbox: Sandbox) -> None:
    blob = layer(D("etc"), F("etc/hostname", b"kitebox\n"), F("big", b"x" * 100_000), H("big-link", "big"),
                 S("soft", "big"))
    assert sandbox.apply(data=blob).file_bytes == 8 + 100_000


def test_empty_layers(sandbox: Sandbox) -> None:
    assert sandbox.apply(data=b"").entries == 0
    assert sandbox.apply(data=gz(bytes(1024)), media=GZIP).diff_id == diff_id(bytes(1024))


def test_unknown_media_type(sandbox: Sandbox) -> None:
    with pytest.raises(ManifestInvalid, match="application/x-rar"):
        sandbox.apply(data=TAR, media="application/x-rar")


class CountingSource(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.consumed += len(data)
        return data


@pytest.mark.parametrize("media", [GZIP, ZSTD])
def test_decompression_bomb_is_refused_early(sandbox: Sandbox, media: str) -> None:
    member = gz(bytes(8 << 20)) if media == GZIP else zst(bytes(8 << 20))
    bomb = member * (512 if media == GZIP else 1024)  # 4 GiB of zeros from ~4 MiB (gzip), 8 GiB from ~280 KiB (zstd)
    source = CountingSource(bomb)
    with pytest.raises(LimitExceeded, match=rf"layer {DIGEST}: uncompressed size exceeds the limit of 4194304 bytes"):
        apply_layer(source, media, sandbox.root, layer_digest=DIGEST, expected_diff_id=None, whiteouts="delete",
                    limits=Limits(max_uncompressed_layer_bytes=4 << 20), use_openat2=sandbox.use_openat2)
    assert source.consumed < len(bomb) // 4


def test_entry_limit(sandbox: Sandbox) -> None:
    with pytest.raises(LimitExceeded, match=rf"layer {DIGEST}: more than 2 entries"):
        sandbox.apply(F("a"), F("b"), F("c"), limits=Limits(max_layer_entries=2))


def test_path_limit(sandbox: Sandbox) -> None:
    with pytest.raises(LimitExceeded, match=r"entry 'aaaa.*': path longer than 64 bytes"):
        sandbox.apply(F("a" * 65), limits=Limits(max_path_bytes=64))


@pytest.mark.parametrize(
    ("media", "blob", "message"),
    [
        (GZIP, gz(TAR)[:-10], "corrupt gzip stream"),
        (GZIP, b"not gzip at all" * 10, "corrupt gzip stream"),
        (GZIP, gz(TAR) + b"garbage after the member", "corrupt gzip stream"),
        (ZSTD, zst(TAR)[:-10], "corrupt zstd stream"),
        (ZSTD, b"not zstd at all" * 10, "corrupt zstd stream"),
        (PLAIN, b"x" * 1024, "corrupt tar stream"),
        (PLAIN, TAR[:1536] + b"\x01" * 512 + TAR[2048:], "corrupt tar stream"),
        (PLAIN, TAR[:3000], "truncated tar stream"),
        (PLAIN, TAR[:700], "truncated tar stream"),
    ],
    ids=["gzip-truncated", "gzip-garbage", "gzip-trailing-garbage", "zstd-truncated", "zstd-garbage", "tar-garbage",
         "tar-bad-header", "tar-truncated-data", "tar-truncated-header"],
)
def test_corrupt_streams_are_rejected(sandbox: Sandbox, media: str, blob: bytes, message: str) -> None:
    with pytest.raises(LayerRejected, match=f"layer {DIGEST}: {message}"):
        sandbox.apply(data=blob, media=media)


def test_unsupported_entry_type(sandbox: Sandbox) -> None:
    info = tarfile.TarInfo("weird")
    info.type = b"Z"
    with pytest.raises(LayerRejected, match=r"entry 'weird': unsupported tar entry type b'Z'"):
        sandbox.apply((info, None))


def test_source_errors_propagate_and_the_thread_ends(sandbox: Sandbox) -> None:
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise LayerRejected("download broke")

    before = threading.active_count()
    with pytest.raises(LayerRejected, match="download broke"):
        apply_layer(Failing(), GZIP, sandbox.root, layer_digest=DIGEST, expected_diff_id=None,
                    whiteouts="delete", limits=Limits(), use_openat2=sandbox.use_openat2)
    assert threading.active_count() == before
