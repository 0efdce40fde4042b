"""``parse_basic`` reads exactly what ``tarfile`` reads, or declines (and ``tarfile`` reads it instead)."""

from __future__ import annotations

import io
import random
import tarfile
from typing import Literal

import pytest

from engine.unpack.tarheader import parse_basic

FIELDS = ("name", "linkname", "type", "size", "mode", "uid", "gid", "mtime", "devmajor", "devminor",
          "pax_headers", "sparse")


def tarfile_view(block: bytes) -> tuple[tuple[object, ...], int] | None:
    """What ``tarfile`` makes of one header block followed by ample data: (fields, offset of the next header)."""
    archive = block + bytes(512 * 64)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
            member = tar.next()
            if member is None:
                return None
            return tuple(getattr(member, f) for f in FIELDS), tar.offset
    except (tarfile.TarError, ValueError, UnicodeError):
        return None


def fast_view(block: bytes) -> tuple[tuple[object, ...], int] | None:
    parsed = parse_basic(block)
    if parsed is None:
        return None
    member, data_size = parsed
    return tuple(getattr(member, f) for f in FIELDS), 512 + data_size


def header(info: tarfile.TarInfo, fmt: Literal[0, 1, 2] = tarfile.USTAR_FORMAT) -> bytes:
    return info.tobuf(fmt, "utf-8", "surrogateescape")[:512]


def sample_headers() -> list[bytes]:
    blocks = []
    for kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE,
                 tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE):
        for name in ("etc/passwd", "usr/" + "x" * 120 + "/file", "dir/", "./a b/ü", "caf\udce9"):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, 1234, 0o4755
            info.uid, info.gid, info.mtime = 1000, 1001, 1_700_000_000
            info.linkname = "target/of link" if kind in (tarfile.LNKTYPE, tarfile.SYMTYPE) else ""
            info.devmajor, info.devminor = 8, 3
            if kind == tarfile.AREGTYPE and name == "dir/":
                info.size = 0  # the V7 directory
            for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):  # type: Literal[0, 1]
                try:
                    block = header(info, fmt)
                except ValueError:  # a name ustar cannot hold
                    continue
                if block[156:157] == kind:  # not a GNU long-name header in front of it
                    blocks.append(block)
    return blocks


@pytest.mark.parametrize("index", range(len(sample_headers())))
def test_basic_headers_match_tarfile(index: int) -> None:
    block = sample_headers()[index]
    expected = tarfile_view(block)
    assert expected is not None
    assert fast_view(block) == expected


def test_v7_directory_and_prefix_are_tarfile_s() -> None:
    info = tarfile.TarInfo("usr/" + "p" * 120 + "/leaf/")
    info.type = tarfile.AREGTYPE
    block = header(info)
    fast = fast_view(block)
    assert fast is not None and fast == tarfile_view(block)
    assert fast[0][0] == "usr/" + "p" * 120 + "/leaf" and fast[0][2] == tarfile.DIRTYPE


def test_symlink_size_is_not_data() -> None:
    """``tarfile`` reads the next header right after a non-regular entry, whatever its size field says."""
    info = tarfile.TarInfo("link")
    info.type, info.linkname, info.size = tarfile.SYMTYPE, "t", 5000
    fast = fast_view(header(info))
    assert fast is not None and fast[1] == 512


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                                  tarfile.GNUTYPE_SPARSE, b"V", b"Z"])
def test_extended_and_unknown_types_are_declined(kind: bytes) -> None:
    info = tarfile.TarInfo("x")
    info.type = kind
    assert parse_basic(header(info, tarfile.GNU_FORMAT)) is None


def test_base256_and_negative_numbers_are_declined() -> None:
    info = tarfile.TarInfo("big")
    info.size = 2**40
    block = header(info, tarfile.GNU_FORMAT)  # GNU writes base-256 for what octal cannot hold
    assert block[124] == 0o200
    assert parse_basic(block) is None
    negative = bytearray(header(tarfile.TarInfo("neg")))
    negative[108:116] = b"-000001\0"
    assert parse_basic(fix_checksum(negative)) is None


def test_signed_checksum_is_accepted_like_tarfile() -> None:
    block = bytearray(header(tarfile.TarInfo("\udcff\udcfe")))  # bytes >= 128 in the name
    signed = 256 + sum(b - 256 if b >= 128 else b for b in block[:148] + block[156:])
    block[148:156] = b"%06o\0 " % signed
    assert tarfile_view(bytes(block)) is not None
    assert fast_view(bytes(block)) == tarfile_view(bytes(block))


def fix_checksum(block: bytearray) -> bytes:
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % (sum(block))
    return bytes(block)


def test_mutated_headers_never_disagree_with_tarfile() -> None:
    """Random corruption: where the fast path answers, tarfile answers the same; bad blocks are declined."""
    rng = random.Random(20261130)
    blocks = sample_headers()
    answered = declined = 0
    for _ in range(4000):
        block = bytearray(rng.choice(blocks))
        for _ in range(rng.randint(1, 3)):
            block[rng.randrange(512)] = rng.choice([0, 0x20, 0x30, 0x37, 0x38, 0x2F, 0x2D, 0x80, 0xFF, 0x41])
        candidate = fix_checksum(block) if rng.random() < 0.7 else bytes(block)
        if candidate.count(0) == 512:
            continue
        fast = fast_view(candidate)
        if fast is None:
            declined += 1
            continue
        answered += 1
        assert fast == tarfile_view(candidate), candidate
    assert answered > 1000 and declined > 100  # both branches were really exercised
