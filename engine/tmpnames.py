"""Names for the temporary files that atomic replacements write first.

A temporary file must belong to one writer: two writers sharing one truncate each other's data and one of the
renames finds its file gone. The processes that share a state root (the app, CLIs, monitors) differ in pid,
and the threads of one process (two creates, a refresh racing a removal) in thread id: the name has both.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["temporary_sibling"]


def temporary_sibling(path: Path) -> Path:
    """A hidden name next to ``path`` that no other process or thread writes to at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
