"""Measure ``apply_layer`` on a synthetic layer shaped like a distro image: ~7,000 files, ~200 MB.

Run: ``.venv/bin/python -m bench.unpack [--files N] [--mb M] [--plain] [--walk]``. Prints entries/s and
MB/s (uncompressed) for applying the layer from memory into a fresh directory under /tmp (removed after).
The file contents are half random (incompressible) and half text-like, so gzip ratio is ~2 like real layers.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from isal import igzip

from engine.config import Limits
from engine.unpack import apply_layer


def _directory(path: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 1_700_000_000
    return info


def synthetic_layer(files: int, total_mb: int, seed: int = 7) -> bytes:
    """An uncompressed tar, in directory order like real layers: ``files`` files in files/20 dirs, symlinks."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    text = (b"lorem ipsum dolor sit amet consectetur adipiscing elit " * 4096)[: 1 << 20]
    random_block = rng.randbytes(1 << 20)
    # Sizes follow a rough distro distribution: many small files, a few large ones.
    weights = [rng.paretovariate(1.2) for _ in range(files)]
    scale = total_mb * 2**20 / sum(weights)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = [f"usr/share/pkg{n:04d}" for n in range(max(1, files // 20))]
        for path in ("usr", "usr/share"):
            tar.addfile(_directory(path))
        for n in range(files):
            if n * len(dirs) % files < len(dirs):  # first file of a directory: the directory entry first
                tar.addfile(_directory(dirs[n * len(dirs) // files]))
            size = max(1, int(weights[n] * scale))
            source = random_block if n % 2 else text
            data = (source * (size // len(source) + 1))[:size]
            info = tarfile.TarInfo(f"{dirs[n * len(dirs) // files]}/file{n:05d}")
            info.size = size
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
            if n % 10 == 0:
                link = tarfile.TarInfo(f"{dirs[n * len(dirs) // files]}/link{n:05d}")
                link.type = tarfile.SYMTYPE
                link.linkname = f"file{n:05d}"
                tar.addfile(link)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=7000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--plain", action="store_true", help="apply the uncompressed tar")
    parser.add_argument("--walk", action="store_true", help="force the O_NOFOLLOW walk instead of openat2")
    args = parser.parse_args()
    raw = synthetic_layer(args.files, args.mb)
    blob = raw if args.plain else igzip.compress(raw, compresslevel=1)
    media = "application/vnd.oci.image.layer.v1.tar" + ("" if args.plain else "+gzip")
    print(f"layer: {args.files} files, {len(raw) / 2**20:.0f} MiB tar, {len(blob) / 2**20:.0f} MiB blob")
    scratch = Path(tempfile.mkdtemp(prefix="kitebox-bench-"))
    try:
        target = scratch / "rootfs"
        target.mkdir()
        start = time.perf_counter()
        result = apply_layer(
            io.BytesIO(blob), media, target, layer_digest="sha256:" + "0" * 64, expected_diff_id=None,
            whiteouts="overlay", limits=Limits(), use_openat2=False if args.walk else None,
        )
        elapsed = time.perf_counter() - start
        print(
            f"applied {result.entries} entries, {result.uncompressed_bytes / 2**20:.0f} MiB in {elapsed:.2f} s: "
            f"{result.entries / elapsed:,.0f} entries/s, {result.uncompressed_bytes / 2**20 / elapsed:.0f} MiB/s"
        )
    finally:
        shutil.rmtree(scratch)
        os.sync()


if __name__ == "__main__":
    main()
