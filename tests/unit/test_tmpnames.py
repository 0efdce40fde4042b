"""Temporary names for atomic replacements: one per writer."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.runtime.protocol import read_json, write_json_atomic
from engine.tmpnames import temporary_sibling
from tests.support.threads import at_once


def test_each_thread_gets_its_own_hidden_sibling(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    names: list[Path] = []
    thread = threading.Thread(target=lambda: names.append(temporary_sibling(target)))
    thread.start()
    thread.join()
    mine = temporary_sibling(target)
    assert mine == temporary_sibling(target) and names[0] != mine
    assert mine.parent == tmp_path and mine.name.startswith(".state.json.") and mine.name.endswith(".tmp")


def test_threads_replacing_one_file_at_once_never_tear_or_fail_it(tmp_path: Path) -> None:
    target = tmp_path / "exit.json"
    writes = [lambda code=code: write_json_atomic(target, {"exit_code": code, "padding": "x" * (code * 50)})
              for code in (1, 2)]
    assert at_once(writes, 300) == []
    final = read_json(target)
    assert final is not None and final["padding"] == "x" * (final["exit_code"] * 50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit.json"]
