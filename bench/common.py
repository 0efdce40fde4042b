"""Shared benchmark plumbing: a local registry, a distro-shaped test image, peers (podman, skopeo, docker).

Benchmarks are scripts (``python -m bench.pull``), not tests: they print figures and ratios against the peers
that are installed, and clean up every process, mount and directory they create.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.images import BuiltImage, build_image, push_image
from tests.support.registry import RegistryServer

__all__ = [
    "FreshStores",
    "distro_image",
    "kitebox_command",
    "local_registry",
    "median_time",
    "podman",
    "report",
    "scratch",
]


def kitebox_command() -> list[str]:
    """How a user runs Kitebox: the ``kitebox`` script installed beside this interpreter (``python -m app.main``
    when there is none, which adds runpy's ~5 ms)."""
    script = Path(sys.executable).with_name("kitebox")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.main"]


def _tar_of_files(rng: random.Random, prefix: str, files: int, total_bytes: int) -> bytes:
    """A layer shaped like a distro's: many small files, a few big ones, half compressible."""
    buf = io.BytesIO()
    text = (b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 60000)[: 1 << 22]
    noise = rng.randbytes(1 << 22)
    weights = [rng.paretovariate(1.2) for _ in range(files)]
    scale = total_bytes / sum(weights)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = max(1, files // 25)
        for d in range(dirs):
            info = tarfile.TarInfo(f"{prefix}/d{d:04d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for index, weight in enumerate(weights):
            size = min(int(weight * scale), (1 << 22) - 1)
            source = noise if index % 2 else text
            start = rng.randrange(0, len(source) - size) if size < len(source) else 0
            info = tarfile.TarInfo(f"{prefix}/d{index % dirs:04d}/f{index:05d}")
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(source[start : start + size]))
    return buf.getvalue()


def distro_image(*, layers: int = 5, files: int = 7000, total_mb: int = 220, seed: int = 11) -> BuiltImage:
    """A 5-layer image of ~220 MB / ~7,000 files, ~110 MB gzip (like a Debian-based app image)."""
    rng = random.Random(seed)
    share = [0.55, 0.2, 0.15, 0.07, 0.03][:layers]
    tars = [_tar_of_files(rng, f"layer{i}", max(1, int(files * s)), int(total_mb * 1e6 * s))
            for i, s in enumerate(share)]
    return build_image(tars, compression="gzip")


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("KITEBOX_BENCH_TMP", "/var/tmp")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def local_registry(workdir: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(workdir / "registry")
    try:
        yield server.start()
    finally:
        server.stop()


def push(server: RegistryServer, repo: str, image: BuiltImage) -> str:
    push_image(server.url, repo, "latest", image)
    return f"{server.host}/{repo}:latest"


def median_time(
    runs: int,
    action: Callable[[], object],
    *,
    before: Callable[[], object] | None = None,
    cpu: dict[str, float] | None = None,
    name: str = "",
) -> float:
    """Median wall time of ``runs`` calls of ``action``; with ``cpu``, ``cpu[name]`` gets the median CPU time
    this process and the children it waited for (the pull's unpack workers) spent in them."""
    samples = []
    cpu_samples = []
    for _ in range(runs):
        if before is not None:
            before()
        began, began_cpu = time.perf_counter(), _cpu_seconds()
        action()
        samples.append(time.perf_counter() - began)
        cpu_samples.append(_cpu_seconds() - began_cpu)
    if cpu is not None:
        cpu[name] = statistics.median(cpu_samples)
    return statistics.median(samples)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class FreshStores:
    """A new empty directory per timed run (``next()``, then ``current``); all removed by ``remove_all()``.

    Deleting a store right before the next timed run would charge that run for the deletion (see bench.pull).
    """

    def __init__(self, parent: Path) -> None:
        self._parent = parent
        self._count = 0
        self.current = parent / "unused"

    def next(self) -> None:
        self._count += 1
        self.current = self._parent / f"{self._count:03d}"  # short: podman refuses runroots over 50 bytes

    def remove_all(self) -> None:
        if self._parent.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self._parent)], check=True)


def podman(storage: Path) -> list[str] | None:
    """podman's command prefix with private storage under ``storage`` (None when podman is missing)."""
    if shutil.which("podman") is None:
        return None
    conf = storage / "containers.conf"
    if not conf.exists():
        storage.mkdir(parents=True, exist_ok=True)
        conf.write_text("[containers]\ndefault_ulimits = []\n")
    return ["env", f"CONTAINERS_CONF={conf}", "podman", "--root", str(storage / "root"), "--runroot",
            str(storage / "run"), "--runtime", "runc", "--cgroup-manager", "cgroupfs",
            "--storage-driver", "overlay"]


def run_quiet(command: list[str]) -> None:
    """Run a peer tool; on failure, raise with the end of its stderr (what went wrong, not just the status)."""
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[:4]}... exited {result.returncode}: {result.stderr.strip()[-500:]}")


def report(rows: list[tuple[str, float | None]], *, baseline: str, unit: str = "s") -> None:
    """Print one line per tool with its figure and its ratio to ``baseline``."""
    figures = dict(rows)
    base = figures.get(baseline)
    for name, value in rows:
        if value is None:
            print(f"  {name:<40} not installed")
            continue
        ratio = f"  ({value / base:.2f}x {baseline})" if base and name != baseline else ""
        print(f"  {name:<40} {value:8.3f} {unit}{ratio}")
