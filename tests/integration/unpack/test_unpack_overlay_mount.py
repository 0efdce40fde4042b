"""Layers applied in "overlay" mode really behave under the kernel's overlayfs (whiteouts, opaque dirs,
hardlinks copied up from a lower layer), and the busybox layer unpacks into a runnable tree."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Limits
from engine.unpack import apply_layer
from tests.support.busybox import busybox_layer_tar
from tests.unit.unpack.tarbuild import DIGEST, PLAIN, D, F, H, layer


def apply(data: bytes, target: Path, lower: list[Path]) -> None:
    target.mkdir()
    apply_layer(io.BytesIO(data), PLAIN, target, layer_digest=DIGEST, expected_diff_id=None, whiteouts="overlay",
                lower=lower, limits=Limits())


@pytest.fixture
def merged(tmp_path: Path) -> Iterator[Path]:
    l1, l2, upper, work, mnt = (tmp_path / n for n in ("l1", "l2", "upper", "work", "mnt"))
    apply(layer(D("etc"), F("etc/keep", b"k"), F("etc/gone", b"g"), D("opq"), F("opq/old", b"o"),
                F("bin-x", b"binary")), l1, [])
    apply(layer(F("etc/.wh.gone"), D("opq"), F("opq/.wh..wh..opq"), F("opq/new", b"n"), H("bin-y", "bin-x")),
          l2, [l1])
    for d in (upper, work, mnt):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={l2}:{l1},upperdir={upper},workdir={work}", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_overlay_whiteouts_and_opaque_are_honoured(merged: Path) -> None:
    assert sorted(os.listdir(merged / "etc")) == ["keep"]
    assert sorted(os.listdir(merged / "opq")) == ["new"]
    assert (merged / "bin-y").read_bytes() == b"binary"
    assert os.stat(merged / "bin-x").st_ino == os.stat(merged / "bin-y").st_ino


@pytest.mark.root
def test_busybox_layer_runs(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    apply(busybox_layer_tar(), root, [])
    out = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo $((6*7)); ls /bin | wc -l"],
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == "42" and int(out[1]) > 100
