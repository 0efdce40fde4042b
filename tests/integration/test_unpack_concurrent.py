"""The concurrent (overlay) unpack gives the very layers the sequential one gives, and fails cleanly.

Blobs go into a real content store, layers into a real overlay snapshotter; the same image is unpacked with
``concurrency=3`` and with ``concurrency=1`` (the sequential path) into two state roots and every layer
directory is compared. The image exercises what a detached layer needs its lowers for: implied directories
(lower metadata), a hard link to a lower layer's file and a setgid lower directory (both re-applied).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine.unpack
import engine.unpacker
from engine.config import Limits
from engine.content import ContentStore
from engine.errors import DigestMismatch
from engine.images import LayerRecord
from engine.snapshots import OverlaySnapshotter
from engine.unpack import ApplyResult
from engine.unpack.zygote import WorkerZygote
from engine.unpacker import Unpacker, chain_ids
from tests.support.procs import children

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True, params=["thread", "process"])
def zygote(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerZygote | None]:
    """Every case twice: detached layers applied in threads, and every one in a worker process (all forked by
    one zygote, as in the engine)."""
    monkeypatch.setattr(engine.unpacker, "ISOLATE_BYTES", 0 if request.param == "process" else 2**62)
    if request.param == "thread":
        yield None
        return
    shared = WorkerZygote()
    try:
        yield shared
    finally:
        shared.close()
    assert not children(os.getpid()), "the zygote or a worker outlived the test"

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
T0 = 1_700_000_000


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644, uid: int = 0,
          gid: int = 0, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname = kind, mode, uid, gid, T0, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


IMAGE = [
    tar(entry("etc", tarfile.DIRTYPE, mode=0o750, uid=3, gid=4), entry("etc/passwd", data=b"root"),
        entry("var", tarfile.DIRTYPE), entry("var/mail", tarfile.DIRTYPE, mode=0o2775, gid=8),
        *(entry(f"bulk/f{i}", data=os.urandom(3000)) for i in range(300))),
    tar(entry("etc/deep/file", data=b"implied etc and etc/deep"), entry("etc/.wh.passwd"),
        entry("usr", tarfile.DIRTYPE), *(entry(f"usr/f{i}", data=b"x" * i) for i in range(200))),
    tar(entry("etc/deep/hard", tarfile.LNKTYPE, link="etc/deep/file")),  # a lower file: copied up
    tar(entry("var/mail/box/new", data=b"under a setgid lower directory")),
    tar(entry("top", data=b"top")),
]


def store_image(content: ContentStore, tars: list[bytes]) -> list[LayerRecord]:
    records = []
    for raw in tars:
        blob = gzip.compress(raw, mtime=0)
        digest = content.put(blob)
        records.append(LayerRecord(digest, GZIP, len(blob), "sha256:" + hashlib.sha256(raw).hexdigest()))
    return records


def layer_trees(sn: OverlaySnapshotter, top: str) -> list[dict[str, tuple[object, ...]]]:
    sn.view("inspect", top)
    try:
        dirs = sn.parent_dirs("inspect")
    finally:
        sn.remove("inspect")
    trees = []
    for layer_dir in dirs:
        tree: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(layer_dir):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = os.lstat(path)
                data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
                when = st.st_mtime_ns if st.st_mtime_ns <= T0 * 10**9 else None  # not "now" (whiteouts...)
                tree[str(path.relative_to(layer_dir))] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev, data, when)
        trees.append(tree)
    return trees


async def unpack(root: Path, tars: list[bytes], concurrency: int, zygote: WorkerZygote | None
                 ) -> tuple[OverlaySnapshotter, str]:
    content = ContentStore(root / "content")
    sn = OverlaySnapshotter(root / "snapshots")
    layers = store_image(content, tars)
    unpacker = Unpacker(sn, content, Limits(), concurrency=concurrency, zygote=zygote)
    assert unpacker.concurrent is (concurrency > 1)
    result = await unpacker.unpack(layers)
    assert result.top == chain_ids([layer.diff_id for layer in layers])[-1]
    assert [len(applied.diff_id) for applied in result.applied] == [71] * len(tars)
    return sn, result.top


async def test_concurrent_unpack_equals_sequential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  zygote: WorkerZygote | None) -> None:
    reapplied: list[str] = []
    real_apply_layer = engine.unpack.apply_layer

    def counting_apply_layer(*args: Any, **kwargs: Any) -> ApplyResult:
        reapplied.append(kwargs["layer_digest"])
        return real_apply_layer(*args, **kwargs)

    monkeypatch.setattr(engine.unpacker, "apply_layer", counting_apply_layer)
    concurrent, top = await unpack(tmp_path / "concurrent", IMAGE, 3, zygote)
    digests = [record.digest for record in store_image(ContentStore(tmp_path / "concurrent" / "content"), IMAGE)]
    assert reapplied == digests[2:4]  # the hard link into a lower layer, the setgid lower directory
    monkeypatch.undo()
    sequential, same_top = await unpack(tmp_path / "sequential", IMAGE, 1, zygote)
    assert top == same_top
    got, expected = layer_trees(concurrent, top), layer_trees(sequential, top)
    assert got == expected
    assert expected[3]["etc"][:3] == (stat.S_IFDIR | 0o750, 3, 4)  # layer 2 implied etc: the lower's owner
    assert "etc/deep/file" in expected[2]  # layer 3's hard link copied the file up
    infos = concurrent.walk()
    assert [info.kind for info in infos] == ["committed"] * len(IMAGE)  # no temporary snapshot left
    parents = {info.key: info.parent for info in infos}
    walk_down: str | None = top
    seen = 0
    while walk_down is not None:
        walk_down, seen = parents[walk_down], seen + 1
    assert seen == len(IMAGE)


async def test_unpack_again_skips_committed_layers(tmp_path: Path, zygote: WorkerZygote | None) -> None:
    sn, _top = await unpack(tmp_path, IMAGE[:2], 3, zygote)
    content = ContentStore(tmp_path / "content")
    layers = store_image(content, IMAGE)
    result = await Unpacker(sn, content, Limits(), concurrency=3, zygote=zygote).unpack(layers)
    assert len(result.applied) == len(IMAGE) - 2
    assert len(sn.walk()) == len(IMAGE)
    # every layer there already
    again = await Unpacker(sn, content, Limits(), concurrency=3, zygote=zygote).unpack(layers)
    assert again.applied == () and again.top == result.top


async def test_a_bad_layer_fails_the_unpack_and_leaves_only_whole_snapshots(tmp_path: Path,
                                                                              zygote: WorkerZygote | None) -> None:
    content = ContentStore(tmp_path / "content")
    sn = OverlaySnapshotter(tmp_path / "snapshots")
    layers = store_image(content, IMAGE)
    bad = layers[1]
    layers[1] = LayerRecord(bad.digest, bad.media_type, bad.size, "sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match=f"layer {bad.digest}: DiffID mismatch"):
        await Unpacker(sn, content, Limits(), concurrency=3, zygote=zygote).unpack(layers)
    infos = sn.walk()
    assert all(info.kind == "committed" for info in infos)  # temporaries removed, the rest cancelled
    assert [info.key for info in infos] in ([], chain_ids([layers[0].diff_id]))
