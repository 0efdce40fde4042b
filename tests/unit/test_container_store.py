"""The container store on disk: atomic saves, and saves racing saves and removals."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest

from engine.containers import ContainerRecord, ContainerStore, Status
from engine.errors import NotFound
from tests.support.threads import at_once


def _record(store: ContainerStore, name: str = "web") -> ContainerRecord:
    record = ContainerRecord(id=store.new_id(), name=name, created="2026-01-01T00:00:00Z", image="busybox",
                             image_id="sha256:" + "0" * 64, config={}, host_config={}, path="true", args=[],
                             snapshot_key="k")
    store.dir(record.id).mkdir()  # what create does before its first save
    store.save(record)
    return record


def test_threads_saving_one_container_at_once_never_fail(tmp_path: Path) -> None:
    # A refresh (exited) and a removal (removing) may save the same record from two threads of one process.
    store = ContainerStore(tmp_path)
    record = _record(store)
    states = [record.with_state(status=Status.EXITED), record.with_state(status=Status.REMOVING)]
    assert at_once([functools.partial(store.save, state, sync=False) for state in states], 300) == []
    assert store.load(record.id).state.status in (Status.EXITED, Status.REMOVING)
    assert sorted(p.name for p in store.dir(record.id).iterdir()) == ["container.json"]


def test_a_save_after_removal_is_not_found_and_brings_nothing_back(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    record = _record(store)
    store.delete(record.id)
    with pytest.raises(NotFound, match=record.id):
        store.save(record.with_state(status=Status.EXITED))
    assert not store.dir(record.id).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_saves_racing_a_removal_leave_nothing_behind(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    for _ in range(30):
        record = _record(store)
        started = threading.Event()
        failures: list[BaseException] = []

        def keep_saving(record: ContainerRecord = record, started: threading.Event = started,
                        failures: list[BaseException] = failures) -> None:
            started.set()
            try:
                for _ in range(20_000):
                    store.save(record.with_state(status=Status.EXITED), sync=False)
            except NotFound:
                return  # the removal won: the expected end
            except BaseException as err:  # reported by the assertion below
                failures.append(err)
                return
            failures.append(AssertionError("saves went on succeeding after the container was removed"))

        saver = threading.Thread(target=keep_saving)
        saver.start()
        started.wait()
        store.delete(record.id)
        saver.join()
        assert failures == []
        store.all()  # sweeps what a removal left half-way, if anything
        assert sorted(p.name for p in tmp_path.iterdir()) == [], "a removed container's files came back"


def test_a_crashed_removals_leftover_is_swept(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    leftover = tmp_path / f".{'a' * 64}.123.removing"
    (leftover / "rootfs").mkdir(parents=True)
    (leftover / "container.json").write_text("{}")
    assert store.all() == []
    assert not leftover.exists()


def test_recent_gives_what_this_store_saved_only_while_the_file_is_that_save(tmp_path: Path) -> None:
    store, other = ContainerStore(tmp_path), ContainerStore(tmp_path)  # another process's store
    record = _record(store)
    assert store.recent(record.id) is record
    assert other.recent(record.id) is None and store.recent(record.name) is None  # never saved there; not an id
    running = record.with_state(status=Status.RUNNING, pid=42)
    store.save(running, sync=False)
    assert store.recent(record.id) is running
    other.save(record.with_state(status=Status.EXITED, exit_code=3))  # replaced by someone else: not ours now
    assert store.recent(record.id) is None
    assert other.recent(record.id) == store.load(record.id) == record.with_state(status=Status.EXITED, exit_code=3)
    other.delete(record.id)
    assert other.recent(record.id) is None and store.recent(record.id) is None
