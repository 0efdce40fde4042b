"""Pull benchmark: download + verify, and pull + unpack, against skopeo / podman / docker when installed.

Run as root: ``.venv/bin/python -m bench.pull [--runs N]``. It builds a 5-layer image of ~110 MB gzip /
~220 MB / ~7,000 files, pushes it to a local Debian docker-registry on 127.0.0.1, then times, each from an
empty store:

* ``kitebox download+verify``: the puller alone (every blob fetched, size- and sha256-checked, committed);
* ``kitebox pull``: download + verify + unpack into overlay snapshots (what ``kitebox pull`` does);
* ``skopeo copy docker:// dir:`` (download + verify), ``podman pull`` and ``docker pull`` where installed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import distro_image, local_registry, median_time, podman, push, report, run_quiet, scratch
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


def _wipe(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


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
            root = work / "kitebox"
            download = median_time(args.runs, lambda: asyncio.run(_download_only(root, ref)),
                                   before=lambda: _wipe(root))
            full = median_time(args.runs, lambda: asyncio.run(_full_pull(root, ref)), before=lambda: _wipe(root))
            _wipe(root)
            rows: list[tuple[str, float | None]] = [
                ("kitebox download+verify", download),
                ("kitebox pull (download+verify+unpack)", full),
            ]
            skopeo: float | None = None
            if shutil.which("skopeo"):
                target = work / "skopeo"
                skopeo = median_time(args.runs, lambda: run_quiet(
                    ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{target}"]),
                    before=lambda: _wipe(target))
            rows.append(("skopeo copy (download+verify)", skopeo))
            prefix = podman(work / "podman")
            podman_time: float | None = None
            if prefix is not None:
                def reset_podman() -> None:
                    subprocess.run([*prefix, "rmi", "-af"], capture_output=True)

                podman_time = median_time(args.runs, lambda: run_quiet([*prefix, "pull", "-q", "--tls-verify=false",
                                                                        ref]), before=reset_podman)
                reset_podman()
                subprocess.run([*prefix, "system", "reset", "-f"], capture_output=True)
            rows.append(("podman pull", podman_time))
            docker_time: float | None = None
            if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
                docker_time = median_time(args.runs, lambda: run_quiet(["docker", "pull", "-q", ref]),
                                          before=lambda: subprocess.run(["docker", "rmi", "-f", ref],
                                                                        capture_output=True))
            rows.append(("docker pull", docker_time))
        print(f"median of {args.runs} runs, each from an empty store:")
        report(rows, baseline="podman pull" if podman_time else "kitebox pull (download+verify+unpack)")
        print(f"  kitebox download+verify throughput: {compressed / download / 1e6:.0f} MB/s")
        if skopeo:
            print(f"  download+verify vs skopeo: {download / skopeo:.2f}x")
        files = 7000
        print(f"  kitebox pull+unpack: {files / full:.0f} entries/s overall")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
