"""Container start benchmarks (issues 4 and 5), as root:
``.venv/bin/python -m bench.run [--runs N] [--idle N] [--network none|bridge]``.

* ``kitebox run --rm --network none IMAGE true`` wall time (the CLI as a user runs it: the ``kitebox`` script,
  bytecode compiled as an installed package has it, the state root's monitor helper and CLI template running as
  after any earlier command) vs ``podman run --rm --network none`` of the same image, pulled from the same local
  registry, in the same run; with ``--network bridge`` both on their default bridge network (Kitebox's with throw-away
  bridge/table names and a free 10.214.x.0/24 subnet, removed at the end);
* in-process ``create + start + wait`` of ``true`` through the engine API (median);
* ``--idle N`` idle containers (``sleep``) at once: the supervision overhead per container, as the PSS of its
  monitor process (from /proc/<pid>/smaps_rollup), median and total.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import secrets
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import kitebox_command, local_registry, median_time, podman, push, report, run_quiet, scratch
from bench.exec import cli_env, stopping_helpers
from engine import CreateOptions, Engine
from engine.network.netlink import Netlink
from tests.support.images import busybox_image

REPO = Path(__file__).resolve().parents[1]


def _kitebox(root: Path, *args: str) -> list[str]:
    return [*kitebox_command(), "--root", str(root), *args]


async def _in_process(root: Path, ref: str, runs: int) -> float:
    samples = []
    async with await Engine.open(root) as engine:
        for _ in range(runs + 2):
            began = time.perf_counter()
            record = await engine.create_container(ref, CreateOptions(cmd=("true",), network="none"))
            await engine.containers.start(record.id)
            await engine.containers.wait(record.id)
            samples.append(time.perf_counter() - began)
            await engine.containers.remove(record.id)
    return statistics.median(samples[2:])  # the first two warm the helper and the caches


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


async def _idle(root: Path, ref: str, count: int) -> tuple[float, float]:
    async with await Engine.open(root) as engine:
        ids = []
        try:
            for _ in range(count):
                record = await engine.create_container(ref, CreateOptions(cmd=("sleep", "300"), network="none"))
                await engine.containers.start(record.id)
                ids.append(record.id)
            pss = []
            for container_id in ids:
                monitor = json.loads((root / "containers" / container_id / "monitor.json").read_text())
                pss.append(_pss_kib(int(monitor["monitor_pid"])))
            return statistics.median(pss) / 1024, sum(pss) / 1024
        finally:
            for container_id in ids:
                await engine.containers.remove(container_id, force=True)


def _bridge_config(work: Path) -> Path:
    """A config whose default bridge, nftables table and subnet are the benchmark's own."""
    tag = f"kbr{secrets.token_hex(2)}"
    with Netlink() as netlink:
        used = [r.destination for r in netlink.routes() if r.destination.prefixlen > 0]
    subnet = next((f"10.214.{third}.0/24" for third in range(240, 20, -1)
                   if not any(ipaddress.IPv4Network(f"10.214.{third}.0/24").overlaps(u) for u in used)), None)
    if subnet is None:
        raise SystemExit("no free 10.214.x.0/24 subnet")
    path = work / "config.json"
    path.write_text(json.dumps({"network": {"default_bridge": f"{tag}0", "bridge_prefix": f"{tag}-",
                                            "table": tag, "default_subnet": subnet}}))
    return path


def _remove_bridge(config: Path) -> None:
    network = json.loads(config.read_text())["network"]
    subprocess.run(["ip", "link", "del", network["default_bridge"]], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", network["table"]], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--network", choices=("none", "bridge"), default="none")
    args = parser.parse_args()
    with scratch("kitebox-bench-run-") as work, local_registry(work) as registry, stopping_helpers(work):
        env = cli_env(work)
        if args.network == "bridge":
            env["KITEBOX_CONFIG"] = str(_bridge_config(work))
        ref = push(registry, "bench/busybox", busybox_image(compression="gzip"))
        root = work / "kitebox"
        subprocess.run(_kitebox(root, "pull", "-q", ref), check=True, env=env, stdout=subprocess.DEVNULL)

        def kitebox_run() -> None:
            subprocess.run(_kitebox(root, "run", "--rm", "--network", args.network, ref, "true"), check=True,
                           env=env)

        try:
            kitebox_run()
            cli = median_time(args.runs, kitebox_run)
        finally:
            if args.network == "bridge":
                subprocess.run(_kitebox(root, "network", "prune", "-f"), env=env, capture_output=True)
                _remove_bridge(Path(env["KITEBOX_CONFIG"]))
        ours = f"kitebox run --rm --network {args.network}"
        theirs = f"podman run --rm --network {args.network}"
        rows: list[tuple[str, float | None]] = [(ours, cli)]
        prefix = podman(work / "podman")
        if prefix is not None:
            podman_run = [*prefix, "run", "--rm", "--network", args.network, ref, "true"]
            run_quiet([*prefix, "pull", "-q", "--tls-verify=false", ref])
            run_quiet(podman_run)
            rows.append((theirs, median_time(args.runs, lambda: run_quiet(podman_run))))
            subprocess.run([*prefix, "system", "reset", "-f"], capture_output=True)
        else:
            rows.append((theirs, None))
        print(f"median of {args.runs} runs:")
        report(rows, baseline=theirs)
        if args.network == "bridge":
            return
        in_process = asyncio.run(_in_process(root, ref, args.runs))
        print(f"  in-process create+start+wait of true: {in_process * 1000:.1f} ms (median)")
        if args.idle:
            median_pss, total = asyncio.run(_idle(root, ref, args.idle))
            print(f"  {args.idle} idle containers: monitor PSS {median_pss:.1f} MiB median, {total:.0f} MiB total")


if __name__ == "__main__":
    main()
