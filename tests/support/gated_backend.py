"""A runtime backend for tests: the real one, but a container's init waits for a gate file before it sets up.

Loaded by the monitor helper (``module:Class``, standard library and engine only), so a test can hold a
container in its ``starting`` state for as long as it needs, then open the gate (:func:`gate_path`)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from engine.runtime.backend import CgroupLike, RealBackend

__all__ = ["GatedBackend", "gate_path"]

_WAIT_SECONDS = 30.0


def gate_path(container_id: str) -> Path:
    """The file whose creation lets container ``container_id``'s init go on."""
    return Path(tempfile.gettempdir()) / f"kitebox-test-gate-{container_id}"


class GatedBackend(RealBackend):
    def run_container_init(self, spec: Any, *, stdin_fd: int, stdout_fd: int, stderr_fd: int, error_fd: int,
                           console_fd: int = -1, cgroup: CgroupLike | None = None, netns_fd: int = -1) -> NoReturn:
        gate = gate_path(spec.id)
        deadline = time.monotonic() + _WAIT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # a stand-in runtime, polling for the test's go-ahead
        super().run_container_init(spec, stdin_fd=stdin_fd, stdout_fd=stdout_fd, stderr_fd=stderr_fd,
                                   error_fd=error_fd, console_fd=console_fd, cgroup=cgroup, netns_fd=netns_fd)
