"""The unpack worker processes and their zygote: failure paths and lifetimes (the workers' successes are the
detached-layer cases, run both ways)."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import engine.unpack.zygote as zygote_module
from engine.config import Limits
from engine.errors import LimitExceeded, RuntimeFailure
from engine.unpack.worker import UnpackWorker, apply_layer_detached_isolated
from engine.unpack.zygote import WorkerZygote
from tests.support.procs import children, parent_of
from tests.unit.unpack.tarbuild import DIGEST, PLAIN, F, layer

pytestmark = pytest.mark.root


def _until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _apply(worker: UnpackWorker, target: Path) -> None:
    target.mkdir(exist_ok=True)
    worker.apply(io.BytesIO(layer(F("a", b"a" * 100_000))), PLAIN, target, expected_diff_id=None,
                 whiteouts="overlay", limits=Limits()).close()


def test_a_zygote_that_cannot_start_is_a_runtime_failure_naming_the_layer(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote_module, "_BOOTSTRAP", "import sys\nsys.stderr.write('zygote broke\\n')\nsys.exit(3)\n")
    with pytest.raises(RuntimeFailure, match=f"layer {DIGEST}: starting the unpack worker failed: zygote broke"):
        apply_layer_detached_isolated(io.BytesIO(layer(F("a", b"a" * 100_000))), PLAIN, tmp_path,
                                      layer_digest=DIGEST, expected_diff_id=None, whiteouts="overlay",
                                      limits=Limits())
    assert not children(os.getpid())


def test_a_worker_that_dies_without_answering_is_a_runtime_failure(tmp_path: Path) -> None:
    zygote = WorkerZygote()
    try:
        worker = UnpackWorker(DIGEST, zygote=zygote)
        os.kill(worker.pid, signal.SIGKILL)  # the OOM killer, say
        with pytest.raises(RuntimeFailure, match=f"layer {DIGEST}: the unpack worker died: no answer"):
            _apply(worker, tmp_path)
        _apply(UnpackWorker(DIGEST, zygote=zygote), tmp_path / "next")  # the zygote serves on
    finally:
        zygote.close()
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


def test_workers_are_forked_by_one_zygote_and_end_with_it(tmp_path: Path) -> None:
    zygote = WorkerZygote()
    try:
        first, second = UnpackWorker(DIGEST, zygote=zygote), UnpackWorker(DIGEST, zygote=zygote)
        (zygote_pid,) = children(os.getpid())
        assert parent_of(first.pid) == parent_of(second.pid) == zygote_pid
        _apply(first, tmp_path / "first")
        zygote.close()  # the engine closing mid-pull: the work it asked for ends too
        _until(lambda: not children(os.getpid()) and parent_of(second.pid) == 0, "the zygote and its worker")
        with pytest.raises(RuntimeFailure, match="the unpack worker died"):
            _apply(second, tmp_path / "second")
    finally:
        zygote.close()


def test_a_zygote_that_idled_out_is_replaced(tmp_path: Path) -> None:
    zygote = WorkerZygote(idle_seconds=0.01)
    try:
        zygote.start()
        _until(lambda: not children(os.getpid()), "the idle zygote's end")
        _apply(UnpackWorker(DIGEST, zygote=zygote), tmp_path)
        assert (tmp_path / "a").read_bytes() == b"a" * 100_000
    finally:
        zygote.close()
    assert not children(os.getpid())


def test_a_zygote_that_never_answers_is_killed_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote_module, "_BOOTSTRAP", "import time\ntime.sleep(1000)\n")
    monkeypatch.setattr(zygote_module, "_ANSWER_SECONDS", 0.2)
    monkeypatch.setattr(zygote_module, "_EXIT_SECONDS", 0.1)
    with pytest.raises(RuntimeFailure, match=f"layer {DIGEST}: starting the unpack worker failed: no answer"):
        UnpackWorker(DIGEST)
    assert not children(os.getpid())
