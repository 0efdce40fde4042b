"""Tearing down a throw-away NetworkManager (tests, benches): attachments, bridges, its nftables table."""

from __future__ import annotations

import contextlib
import subprocess

from engine.network import NetworkManager
from engine.network.bridge import KernelBridge

__all__ = ["tear_down"]


def tear_down(manager: NetworkManager, table: str) -> None:
    """Release every attachment, delete every bridge of ``manager`` and the nftables ``table``; close it."""
    with contextlib.suppress(Exception):
        manager._repair(set())
    driver = KernelBridge()
    for record in manager.store.read().networks.values():
        driver.remove_bridge(record.bridge)
    driver.close()
    subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True, check=False)
    manager.close()
