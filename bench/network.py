"""Bench: the cost of bridge networking per container (root; real kernel).

    .venv/bin/python -m bench.network [--count 50]

Measures, with a throw-away bridge/table/state root (names ``kbb<random>``, subnet in 10.213.x.0/24):

* ``prepare`` + ``release`` of one container on the default bridge network (namespace, veth, lease, hosts
  files; no nft run when the rules do not change) -- sequential, median and p90;
* the same with a published port (one ``nft -f`` run each way);
* a busybox ``true`` through the executor helper on ``none`` vs on the bridge (prepare + run + release), which
  is the networking share of ``kitebox run --rm IMAGE true``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engine.network import NetworkManager, PortBinding
from engine.network.netlink import Netlink
from engine.runtime.cgroups import cgroup_manager
from engine.runtime.executor import run_spec_for_test
from engine.runtime.plan import RunOptions, plan_container
from tests.support.busybox import make_busybox_rootfs
from tests.support.networks import tear_down


def _subnet() -> str:
    with Netlink() as netlink:
        used = [r.destination for r in netlink.routes() if r.destination.prefixlen > 0]
    for third in range(240, 20, -1):
        candidate = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise SystemExit("no free 10.213.x.0/24")


def _timed(count: int, step: Callable[[int], None]) -> list[float]:
    times = []
    for index in range(count):
        start = time.perf_counter()
        step(index)
        times.append(time.perf_counter() - start)
    return times


def _report(label: str, times: list[float]) -> None:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    print(f"{label:<44} median {statistics.median(times) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50)
    count = parser.parse_args().count
    tag = f"kbb{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manager = NetworkManager(root / "state", default_bridge=tag, bridge_prefix=tag, table=tag,
                                 default_subnet=_subnet(), ip_forward=False)
        rootfs = make_busybox_rootfs(root / "rootfs")
        try:
            def plain(i: int) -> None:
                asyncio.run(manager.prepare(f"{tag}{i:04d}", name=f"c{i}", hostname="c"))
                asyncio.run(manager.release(f"{tag}{i:04d}"))

            def published(i: int) -> None:
                asyncio.run(manager.prepare(f"{tag}p{i:04d}", name=f"p{i}", hostname="p",
                                            ports=[PortBinding(80, "tcp", "127.0.0.1", 0)]))
                asyncio.run(manager.release(f"{tag}p{i:04d}"))

            def container(network: str) -> Callable[[int], None]:
                def step(i: int) -> None:
                    cid = f"{tag}{network[0]}{i:04d}"
                    bundle = root / "c" / cid
                    netns = None
                    if network == "bridge":
                        netns = asyncio.run(manager.prepare(cid, name=cid, hostname="h")).netns_path
                    spec = plan_container(container_id=cid, image_config={"Cmd": ["true"]},
                                          options=RunOptions(network=network, netns_path=netns), rootfs=rootfs,
                                          root_mounts=[], bundle_dir=bundle, cgroup_parent="kitebox-bench")
                    code, _, err = run_spec_for_test(spec, work_dir=bundle)
                    if network == "bridge":
                        asyncio.run(manager.release(cid))
                    cgroup_manager(spec.cgroup).destroy()
                    if code:
                        raise SystemExit(err.decode())
                return step

            plain(9999)  # warm up: the bridge and the table exist from here on
            _report("prepare+release (bridge)", _timed(count, plain))
            _report("prepare+release (bridge, -p 127.0.0.1::80)", _timed(count, published))
            runs = max(5, count // 5)
            _report("run true, --network none (executor)", _timed(runs, container("none")))
            _report("run true, bridge (prepare+executor+release)", _timed(runs, container("bridge")))
        finally:
            tear_down(manager, tag)


if __name__ == "__main__":
    main()
