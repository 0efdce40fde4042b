"""Applying image layers to a directory: streaming, exact, and safe against hostile images.

``apply_layer`` (blocking, run it in a thread) reads a compressed layer blob, verifies its DiffID and writes
it below a snapshot directory without ever touching anything outside it; ``ByteFeed`` lets a download on
the event loop feed it while it runs.
"""

from engine.unpack.apply import ApplyResult, WhiteoutMode, apply_layer
from engine.unpack.decompress import compression_for
from engine.unpack.feed import ByteFeed

__all__ = ["ApplyResult", "ByteFeed", "WhiteoutMode", "apply_layer", "compression_for"]
