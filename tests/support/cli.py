"""Running the ``kitebox`` CLI as a real process in tests (the current interpreter, this checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "Cli", "kitebox"]


def kitebox(root: Path, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kitebox --root ROOT ARGS...``; the config is the test's (``KITEBOX_CONFIG`` from the autouse fixture)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "app.main", "--root", str(root), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


class Cli:
    """A state root and the test image, for tests that run many commands."""

    def __init__(self, root: Path, image: str) -> None:
        self.root = root
        self.image = image

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return kitebox(self.root, *args, stdin=stdin)
