"""``OverlaySnapshotter.rebase``: a layer prepared without a parent is stacked on its parent afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import Conflict, NotFound
from engine.snapshots import TEMPORARY_LABEL, OverlaySnapshotter, mount_all, unmount


def committed(sn: OverlaySnapshotter, name: str, parent: str | None, files: dict[str, str]) -> None:
    key = f"extract-{name}"
    sn.prepare(key, parent, labels={TEMPORARY_LABEL: "1"})
    for rel, text in files.items():
        (sn.upper_dir(key) / rel).write_text(text)
    sn.commit(name, key)


def test_rebase_then_commit_makes_a_chain(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path / "snapshots")
    committed(sn, "base", None, {"a": "base"})
    sn.prepare("early", None, labels={TEMPORARY_LABEL: "1"})  # filled before "base2" even exists
    (sn.upper_dir("early") / "b").write_text("early")
    committed(sn, "base2", "base", {"c": "base2"})
    sn.rebase("early", "base2")
    assert sn.stat("early").parent == "base2"
    assert sn.stat("early").labels == {TEMPORARY_LABEL: "1"}  # still scratch until committed
    lowers = sn.parent_dirs("early")
    assert [sorted(p.name for p in d.iterdir()) for d in lowers] == [["c"], ["a"]]
    sn.commit("top", "early")
    assert sn.stat("top").parent == "base2" and sn.stat("top").kind == "committed"
    with pytest.raises(Conflict, match="other snapshots are based on it"):
        sn.remove("base2")


def test_rebase_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path / "snapshots")
    committed(sn, "base", None, {})
    sn.prepare("stacked", "base")
    sn.prepare("free", None)
    with pytest.raises(Conflict, match="'stacked': already has parent 'base'"):
        sn.rebase("stacked", "base")
    with pytest.raises(Conflict, match="'base': is committed, cannot rebase"):
        sn.rebase("base", None)
    with pytest.raises(Conflict, match="'stacked': is active, only committed snapshots can be parents"):
        sn.rebase("free", "stacked")
    with pytest.raises(NotFound, match="'nope'"):
        sn.rebase("free", "nope")
    with pytest.raises(NotFound, match="'missing'"):
        sn.rebase("missing", "base")
    sn.rebase("free", None)  # no parent stays no parent
    assert sn.stat("free").parent is None


@pytest.mark.root
def test_rebased_snapshot_mounts_over_its_new_parent(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path / "snapshots")
    committed(sn, "base", None, {"below": "base"})
    sn.prepare("layer", None, labels={TEMPORARY_LABEL: "1"})
    (sn.upper_dir("layer") / "above").write_text("layer")
    sn.rebase("layer", "base")
    sn.commit("layer-c", "layer")
    mounts = sn.view("look", "layer-c")
    target = tmp_path / "mnt"
    target.mkdir()
    mount_all(mounts, target)
    try:
        assert sorted(p.name for p in target.iterdir()) == ["above", "below"]
    finally:
        unmount(target)
        sn.remove("look")
