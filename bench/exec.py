"""Measure ``kitebox exec NAME true`` against ``podman exec`` of the same container state, in one run.

Run as root: ``.venv/bin/python -m bench.exec [--runs N]``. Both engines get the same busybox image (a
docker-save archive written here) in throw-away state roots under /tmp, one running ``sleep`` container each
(no network), then each ``exec ... true`` is timed from process start to exit (the CLI's whole cost, as a user
sees it; bytecode cached as an installed package has it, see :func:`cli_env`). Podman runs with ``--runtime
runc --cgroup-manager cgroupfs`` (crun refuses hybrid cgroups) and ``default_ulimits = []``; it is skipped when
not installed. Prints the median and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from app.forkclient import BOOTSTRAP as TEMPLATE_BOOTSTRAP
from bench.common import kitebox_command
from engine.runtime.helper import stop_helpers
from tests.support.busybox import busybox_layer_tar

REPO = Path(__file__).resolve().parents[1]
TAG = "localhost/bench/busybox:latest"


def write_archive(path: Path) -> None:
    """A docker-save archive of the busybox image (one layer), loadable by both engines."""
    layer = busybox_layer_tar()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
                         }).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [TAG], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("layer.tar", layer), ("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def cli_env(work: Path) -> dict[str, str]:
    """The environment the CLI is timed in: bytecode cached (in ``work``, not the source tree) as an installed
    package has it, even when the caller's environment sets PYTHONDONTWRITEBYTECODE (compiling the engine's
    modules on every run would cost ~80 ms); helpers started by the benchmark idle out after 30 s."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONPYCACHEPREFIX": str(work / "pycache"),
            "KITEBOX_CONFIG": "/nonexistent/kitebox.json", "KITEBOX_HELPER_IDLE": "30"}


@contextlib.contextmanager
def stopping_helpers(work: Path) -> Iterator[None]:
    """Stop the monitor helpers and CLI templates of the state roots under ``work`` on the way out."""
    try:
        yield
    finally:
        stop_helpers(work, bootstrap=TEMPLATE_BOOTSTRAP)
        stop_helpers(work)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    return time.perf_counter() - start


def median_of(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    timed(argv, env)  # warm the page cache
    return statistics.median(timed(argv, env) for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    archive = work / "busybox.tar"
    write_archive(archive)
    kitebox = [*kitebox_command(), "--root", str(work / "kitebox")]
    env = cli_env(work)
    results: dict[str, float] = {}
    podman_base: list[str] | None = None
    podman_env: dict[str, str] | None = None
    try:
        subprocess.run([*kitebox, "load", "-i", str(archive)], check=True, stdout=subprocess.DEVNULL, cwd=REPO,
                       env=env)
        subprocess.run([*kitebox, "run", "-d", "--name", "bench", "--network", "none", TAG, "sleep", "1000"],
                       check=True, stdout=subprocess.DEVNULL, cwd=REPO, env=env)
        results["kitebox"] = median_of([*kitebox, "exec", "bench", "true"], args.runs, env)
        if shutil.which("podman"):
            conf = work / "containers.conf"
            conf.write_text("[containers]\ndefault_ulimits = []\n")
            podman_env = {**os.environ, "CONTAINERS_CONF": str(conf)}
            podman_base = ["podman", "--root", str(work / "podman"), "--runroot", str(work / "podman-run"),
                           "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
            subprocess.run([*podman_base, "load", "-i", str(archive)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=podman_env)
            subprocess.run([*podman_base, "run", "-d", "--name", "bench", "--network", "none", TAG, "sleep",
                            "1000"], check=True, stdout=subprocess.DEVNULL, env=podman_env)
            results["podman"] = median_of([*podman_base, "exec", "bench", "true"], args.runs, podman_env)
    finally:
        subprocess.run([*kitebox, "rm", "-f", "bench"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=REPO, check=False, env=env)
        stop_helpers(work, bootstrap=TEMPLATE_BOOTSTRAP)
        stop_helpers(work)
        if podman_base is not None:
            subprocess.run([*podman_base, "rm", "-f", "-t", "0", "bench"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=podman_env, check=False)
            subprocess.run([*podman_base, "system", "reset", "-f"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=podman_env, check=False)
        shutil.rmtree(work, ignore_errors=True)
    for name, seconds in results.items():
        print(f"{name:8s} exec true: median {seconds * 1000:.1f} ms over {args.runs} runs")
    if "podman" in results:
        print(f"ratio kitebox/podman: {results['kitebox'] / results['podman']:.2f} (target <= 0.5)")
    else:
        print("podman not installed: no comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
