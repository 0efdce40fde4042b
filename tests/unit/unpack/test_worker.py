"""The unpack worker process's failure paths (its successes are the detached-layer cases, run both ways)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

import engine.unpack.worker as worker
from engine.config import Limits
from engine.errors import LimitExceeded, RuntimeFailure
from engine.unpack.worker import UnpackWorker, apply_layer_detached_isolated
from tests.support.procs import children
from tests.unit.unpack.tarbuild import DIGEST, PLAIN, F, layer

pytestmark = pytest.mark.root


def test_a_worker_that_dies_without_answering_is_a_runtime_failure(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_BOOTSTRAP", "import sys\nsys.stderr.write('worker broke\\n')\nsys.exit(3)\n")
    with pytest.raises(RuntimeFailure, match=f"layer {DIGEST}: the unpack worker died: worker broke"):
        apply_layer_detached_isolated(io.BytesIO(layer(F("a", b"a" * 100_000))), PLAIN, tmp_path,
                                      layer_digest=DIGEST, expected_diff_id=None, whiteouts="overlay",
                                      limits=Limits())
    assert not children(os.getpid())


def test_the_workers_errors_come_back_as_the_same_kind(tmp_path: Path) -> None:
    blob = layer(*(F(f"f{i}") for i in range(20)))
    with pytest.raises(LimitExceeded, match=DIGEST):
        apply_layer_detached_isolated(io.BytesIO(blob), PLAIN, tmp_path, layer_digest=DIGEST,
                                      expected_diff_id=None, whiteouts="overlay",
                                      limits=Limits(max_layer_entries=5))
    assert not children(os.getpid())


class _Breaking(io.BytesIO):
    """A download that breaks half-way."""

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() > 0:
            raise OSError("connection reset")
        return super().read(size if size is not None and size > 0 else 4096)


def test_a_source_that_breaks_kills_the_worker_and_propagates(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="connection reset"):
        apply_layer_detached_isolated(_Breaking(layer(F("a", b"a" * 100_000))), PLAIN, tmp_path,
                                      layer_digest=DIGEST, expected_diff_id=None, whiteouts="overlay",
                                      limits=Limits())
    assert not children(os.getpid())


def test_a_worker_started_but_never_used_is_ended_by_close(tmp_path: Path) -> None:
    unused = UnpackWorker(DIGEST)
    assert children(os.getpid())
    unused.close()
    unused.close()  # idempotent
    assert not children(os.getpid())
