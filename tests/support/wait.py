"""Waiting on a condition with a deadline: how tests synchronise with other processes (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["async_wait_until", "wait_until"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def async_wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0,
                           detail: Callable[[], object] | None = None) -> None:
    """Poll ``condition`` while the event loop runs; ``detail`` is added to the failure (what was seen)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))
        await asyncio.sleep(0.01)
