"""Pull benchmark: download + verify, and pull + unpack, against skopeo / podman / docker when installed.

Run as root: ``.venv/bin/python -m bench.pull [--runs N]``. It builds a 5-layer image of ~110 MB gzip /
~220 MB / ~7,000 files, pushes it to a local Debian docker-registry on 127.0.0.1, then times, each from an
empty store:

* ``kitebox download+verify``: the puller alone (every blob fetched, size- and sha256-checked, committed);
* ``kitebox pull``: download + verify + unpack into overlay snapshots (what ``kitebox pull`` does);
* ``skopeo copy docker:// dir:`` (download + verify), ``podman pull`` and ``docker pull`` where installed.

``kitebox pull`` and ``podman pull`` (the two that create ~7,000 files each) alternate run by run.

Every run of every tool starts from a *new* empty store directory, and the stores are deleted only after all
timings. Deleting the previous run's ~7,000 files right before a timed run (what this script did at first)
makes the next run's file creations pay for the deletions on a journal-less ext4 (``recently_deleted()``
skips every inode freed in the last seconds, scanning whole block groups per ``open(O_CREAT)``: measured
50 us -> 1.5 s for 7,000 creations); that is the benchmark's own doing, not the pull's.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import (
    FreshStores,
    distro_image,
    local_registry,
    median_time,
    podman,
    push,
    report,
    run_quiet,
    scratch,
)
from engine import Config, Engine, parse_reference


async def _download_only(root: Path, ref: str) -> None:
    from engine.content import ContentStore
    from engine.pull import Puller
    from engine.registry import CredentialStore, RegistryClient

    config = Config()
    client = RegistryClient(config.registries, CredentialStore(root / "creds.json"), limits=config.limits)
    try:
        puller = Puller(client, ContentStore(root / "content"), limits=config.limits,
                        parallel=config.registries.parallel_downloads)
        await puller.pull(parse_reference(ref))
    finally:
        await client.aclose()


async def _full_pull(root: Path, ref: str) -> None:
    async with await Engine.open(root) as engine:
        await engine.pull(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with scratch("kitebox-bench-pull-") as work:
        print("building the image ...", flush=True)
        image = distro_image()
        compressed = sum(layer_size for layer_size in (len(layer.blob) for layer in image.layers))
        with local_registry(work) as registry:
            ref = push(registry, "bench/distro", image)
            print(f"image: {len(image.layers)} layers, {compressed / 1e6:.0f} MB compressed, pushed to {ref}")
            stores = FreshStores(work / "s")
            cpu: dict[str, float] = {}
            download = median_time(args.runs, lambda: asyncio.run(_download_only(stores.current, ref)),
                                   before=stores.next, cpu=cpu, name="download")
            skopeo: float | None = None
            if shutil.which("skopeo"):
                skopeo = median_time(args.runs, lambda: run_quiet(
                    ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{stores.current}"]),
                    before=stores.next)
            podman_roots: list[list[str]] = []
            with_podman = podman(work / "podman-probe") is not None

            def fresh_podman() -> None:
                stores.next()
                prefix = podman(stores.current)
                assert prefix is not None
                podman_roots.append(prefix)

            # The two unpacking pulls alternate, run by run: on a journal-less ext4 every file creation is
            # slower for minutes after many deletions (see above), so running all of one tool's pulls first
            # would hand that tool a different disk than the other's.
            full_samples: list[float] = []
            full_cpu: list[float] = []
            podman_samples: list[float] = []
            for _ in range(args.runs):
                full_samples.append(median_time(1, lambda: asyncio.run(_full_pull(stores.current, ref)),
                                                before=stores.next, cpu=cpu, name="full"))
                full_cpu.append(cpu["full"])
                if with_podman:
                    podman_samples.append(median_time(1, lambda: run_quiet(
                        [*podman_roots[-1], "pull", "-q", "--tls-verify=false", ref]), before=fresh_podman))
            full = statistics.median(full_samples)
            cpu["full"] = statistics.median(full_cpu)
            podman_time = statistics.median(podman_samples) if podman_samples else None
            rows: list[tuple[str, float | None]] = [
                ("kitebox download+verify", download),
                ("kitebox pull (download+verify+unpack)", full),
                ("skopeo copy (download+verify)", skopeo),
                ("podman pull", podman_time),
            ]
            docker_time: float | None = None
            if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
                docker_time = median_time(args.runs, lambda: run_quiet(["docker", "pull", "-q", ref]),
                                          before=lambda: subprocess.run(["docker", "rmi", "-f", ref],
                                                                        capture_output=True))
            rows.append(("docker pull", docker_time))
            for prefix in podman_roots:  # podman's own cleanup first: it may hold mounts under its root
                subprocess.run([*prefix, "system", "reset", "-f"], capture_output=True)
            stores.remove_all()
        print(f"median of {args.runs} runs, each from an empty store:")
        report(rows, baseline="podman pull" if podman_time else "kitebox pull (download+verify+unpack)")
        print(f"  kitebox download+verify throughput: {compressed / download / 1e6:.0f} MB/s"
              f" (process CPU {cpu['download']:.2f} s)")
        print(f"  kitebox pull CPU (process and unpack workers): {cpu['full']:.2f} s (median)")
        if skopeo:
            print(f"  download+verify vs skopeo: {download / skopeo:.2f}x")
        files = 7000
        print(f"  kitebox pull+unpack: {files / full:.0f} entries/s overall")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
