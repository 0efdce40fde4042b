"""One conformance suite for every snapshotter (containerd's core/snapshots/testsuite idea).

Each test runs against both ``overlay`` and ``copy`` on a fresh state root. Tests that mount are ``root``-marked;
every test checks afterwards that nothing under its ``tmp_path`` is still mounted.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.errors import Conflict, InvalidArgument, NotFound
from engine.snapshots import (
    TEMPORARY_LABEL,
    Mount,
    Snapshotter,
    is_mountpoint,
    mount_all,
    open_snapshotter,
    unmount,
)
from engine.snapshots.mount import mount_points

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_leaked_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    leaked = [point for point in mount_points() if point.startswith(str(tmp_path))]
    for point in reversed(leaked):  # do not let one failure leak into the next tests
        unmount(Path(point), detach=True)
    assert leaked == []


@pytest.fixture(params=["overlay", "copy"])
def sn(request: pytest.FixtureRequest, tmp_path: Path) -> Snapshotter:
    return open_snapshotter(tmp_path / "state" / "snapshots", request.param)


@contextmanager
def mounted(mounts: Sequence[Mount], target: Path) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    mount_all(mounts, target)
    try:
        yield target
    finally:
        unmount(target)


def layer(sn: Snapshotter, name: str, parent: str | None, files: dict[str, str]) -> None:
    """Commit a snapshot ``name`` holding ``files`` on top of ``parent`` (what unpack does)."""
    key = f"extract-{name}"
    sn.prepare(key, parent, labels={TEMPORARY_LABEL: "1"})
    upper = sn.upper_dir(key)
    for rel, text in files.items():
        (upper / rel).parent.mkdir(parents=True, exist_ok=True)
        (upper / rel).write_text(text)
    sn.commit(name, key)


def whiteout(sn: Snapshotter, key: str, rel: str) -> None:
    """Hide ``rel`` of the lower layers in active ``key``, the way ``sn.whiteout_mode`` asks."""
    target = sn.upper_dir(key) / rel
    if sn.whiteout_mode == "delete":
        target.unlink()
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def snapshot_dirs(sn: Snapshotter, key: str) -> list[str]:
    """The entries of the snapshotter's ``snapshots/`` directory (found through an active snapshot's dir)."""
    return sorted(os.listdir(sn.upper_dir(key).parent.parent))


# --- lifecycle and errors (no mounts) --------------------------------------------------------------------------


def test_lifecycle_prepare_commit_view_remove(sn: Snapshotter) -> None:
    layer(sn, "base", None, {"etc/hostname": "base\n"})
    info = sn.stat("base")
    assert (info.key, info.parent, info.kind) == ("base", None, "committed")
    assert TEMPORARY_LABEL not in info.labels
    assert not sn.exists("extract-base")

    sn.prepare("ctr", "base", labels={"owner": "c1"})
    sn.view("look", "base")
    assert sn.stat("ctr").kind == "active"
    assert sn.stat("ctr").labels == {"owner": "c1"}
    assert sn.stat("look").kind == "view"
    assert [(i.key, i.parent, i.kind) for i in sn.walk()] == [
        ("base", None, "committed"), ("ctr", "base", "active"), ("look", "base", "view"),
    ]
    assert (sn.upper_dir("ctr") / "etc/hostname").exists() == (sn.name == "copy")  # copy: a full tree

    sn.remove("ctr")
    sn.remove("look")
    sn.remove("base")
    assert sn.walk() == []
    with pytest.raises(NotFound, match="'base'"):
        sn.stat("base")


def test_parent_chain_and_parent_dirs(sn: Snapshotter) -> None:
    layer(sn, "l1", None, {"one": "1"})
    layer(sn, "l2", "l1", {"two": "2"})
    layer(sn, "l3", "l2", {"three": "3"})
    sn.prepare("top", "l3")
    assert [sn.stat(k).parent for k in ("l1", "l2", "l3", "top")] == [None, "l1", "l2", "l3"]
    dirs = sn.parent_dirs("top")
    if sn.name == "overlay":
        assert [sorted(os.listdir(d)) for d in dirs] == [["three"], ["two"], ["one"]]
    else:  # the copy's upper directory already holds the whole tree
        assert dirs == []
        assert sorted(os.listdir(sn.upper_dir("top"))) == ["one", "three", "two"]


def test_errors_name_the_snapshot(sn: Snapshotter) -> None:
    layer(sn, "base", None, {"f": "x"})
    sn.prepare("work", "base")
    sn.view("look", "base")
    with pytest.raises(Conflict, match=r"'work'.*exists"):
        sn.prepare("work", "base")
    with pytest.raises(Conflict, match=r"'base'.*exists"):
        sn.prepare("base", None)
    with pytest.raises(NotFound, match="'missing'"):
        sn.prepare("other", "missing")
    with pytest.raises(Conflict, match=r"'work'.*active"):
        sn.prepare("other", "work")
    with pytest.raises(Conflict, match=r"'base'.*exists"):
        sn.commit("base", "work")
    with pytest.raises(Conflict, match=r"'look'.*view"):
        sn.commit("done", "look")
    with pytest.raises(Conflict, match=r"'base'.*committed"):
        sn.commit("done", "base")
    with pytest.raises(Conflict, match=r"'base'.*based on it"):
        sn.remove("base")
    with pytest.raises(Conflict, match=r"'base'.*not mountable"):
        sn.mounts("base")
    with pytest.raises(Conflict, match=r"'look'.*view"):
        sn.upper_dir("look")
    with pytest.raises(NotFound, match="'nope'"):
        sn.remove("nope")
    with pytest.raises(InvalidArgument, match="snapshot key ''"):
        sn.prepare("", None)
    assert {i.key for i in sn.walk()} == {"base", "work", "look"}
    assert sn.exists("work") and not sn.exists("other")


def test_usage_counts_own_layer_and_hard_links_once(sn: Snapshotter) -> None:
    layer(sn, "empty", None, {})
    sn.prepare("data", "empty")
    upper = sn.upper_dir("data")
    (upper / "blob").write_bytes(os.urandom(256 * 1024))
    os.link(upper / "blob", upper / "blob-link")
    active = sn.usage("data")
    assert 256 * 1024 <= active < 2 * 256 * 1024
    sn.commit("full", "data")
    assert sn.usage("full") == active
    assert sn.usage("empty") < 64 * 1024
    with pytest.raises(NotFound):
        sn.usage("data")


def test_a_size_given_at_commit_is_the_usage(sn: Snapshotter) -> None:
    # what an unpacked layer is committed with: its files' bytes, known without walking the directory
    sn.prepare("layer", None)
    (sn.upper_dir("layer") / "file").write_bytes(b"x" * 5000)
    sn.commit("committed", "layer", size=5000)
    assert sn.usage("committed") == 5000


def test_two_snapshotters_on_one_root(tmp_path: Path, sn: Snapshotter) -> None:
    other = open_snapshotter(tmp_path / "state" / "snapshots", sn.name)
    assert other.name == sn.name

    def build(which: Snapshotter, prefix: str) -> None:
        parent = None
        for i in range(8):
            layer(which, f"{prefix}{i}", parent, {f"{prefix}{i}": str(i)})
            parent = f"{prefix}{i}"

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(build, sn, "a"), pool.submit(build, other, "b")]:
            future.result()
    assert {i.key for i in sn.walk()} == {i.key for i in other.walk()} == {f"{p}{i}" for p in "ab" for i in range(8)}

    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def race(which: Snapshotter) -> None:
        barrier.wait()
        try:
            which.prepare("same", "a7")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=race, args=(w,)) for w in (sn, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "created"]
    assert other.stat("same").parent == "a7"


# --- crash safety ----------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engine.snapshots import TEMPORARY_LABEL, open_snapshotter
    sn = open_snapshotter(Path(sys.argv[1]), sys.argv[2])
    sn.prepare("extract-1", None, labels={TEMPORARY_LABEL: "1"})
    (sn.upper_dir("extract-1") / "kept").write_text("committed before the crash")
    sn.commit("layer-1", "extract-1")
    sn.prepare("extract-2", "layer-1", labels={TEMPORARY_LABEL: "1"})
    (sn.upper_dir("extract-2") / "lost").write_text("half-applied layer")
    sn.prepare("container", "layer-1")
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_cleanup_removes_what_a_killed_process_left(sn: Snapshotter, tmp_path: Path) -> None:
    root = tmp_path / "state" / "snapshots"
    sn.prepare("mine", None, labels={TEMPORARY_LABEL: "1"})  # owner alive: must survive cleanup
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), sn.name],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None and child.stdin is not None
        child.stdout.close()
        child.stdin.close()
    assert sn.stat("extract-2").kind == "active"

    snapshots = sn.upper_dir("mine").parent.parent
    dead_owner = f"{child.pid}-1"
    (snapshots / f"new-{dead_owner}-0abc").mkdir()  # a create interrupted before it was recorded
    (snapshots / "999").mkdir()  # a create interrupted between the rename and the commit
    (snapshots / "999" / "fs").mkdir()

    reopened = open_snapshotter(root, sn.name)  # cleanup runs on open
    assert {i.key for i in reopened.walk()} == {"mine", "layer-1", "container"}
    assert reopened.stat("layer-1").kind == "committed"
    assert len([name for name in snapshot_dirs(reopened, "mine") if name.isdigit()]) == 3
    assert all(name.isdigit() for name in snapshot_dirs(reopened, "mine"))
    assert (reopened.upper_dir("container").parent.parent / "999").exists() is False
    if reopened.name == "overlay":
        assert len(os.listdir(root / "overlay" / "l")) == 3


# --- through the kernel ----------------------------------------------------------------------------------------


@pytest.mark.root
def test_files_visible_through_active_mounts_and_writes_land_in_upper(sn: Snapshotter, tmp_path: Path) -> None:
    layer(sn, "l1", None, {"etc/os": "one\n", "shared": "from l1\n"})
    layer(sn, "l2", "l1", {"shared": "from l2\n"})
    with mounted(sn.prepare("ctr", "l2"), tmp_path / "rootfs") as rootfs:
        assert (rootfs / "etc/os").read_text() == "one\n"
        assert (rootfs / "shared").read_text() == "from l2\n"
        (rootfs / "shared").write_text("changed\n")
        (rootfs / "new").write_text("new\n")
    assert (sn.upper_dir("ctr") / "new").read_text() == "new\n"
    assert (sn.upper_dir("ctr") / "shared").read_text() == "changed\n"
    with mounted(sn.mounts("ctr"), tmp_path / "again") as again:
        assert (again / "shared").read_text() == "changed\n"
    with mounted(sn.view("look", "l2"), tmp_path / "look") as look:
        assert (look / "shared").read_text() == "from l2\n"  # committed layers did not change
        assert not (look / "new").exists()


@pytest.mark.root
def test_fresh_active_without_parent_is_writable(sn: Snapshotter, tmp_path: Path) -> None:
    with mounted(sn.prepare("scratch", None), tmp_path / "m") as m:
        (m / "file").write_text("x")
    assert (sn.upper_dir("scratch") / "file").read_text() == "x"


@pytest.mark.root
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_views_are_read_only(sn: Snapshotter, tmp_path: Path, depth: int) -> None:
    parent = None
    for i in range(depth):
        layer(sn, f"l{i}", parent, {f"f{i}": str(i)})
        parent = f"l{i}"
    with mounted(sn.view("look", parent), tmp_path / "look") as look:
        assert sorted(os.listdir(look)) == [f"f{i}" for i in range(depth)]
        with pytest.raises(OSError) as caught:
            (look / "f0").write_text("nope")
        assert caught.value.errno == errno.EROFS
        assert is_mountpoint(look)
    assert not is_mountpoint(tmp_path / "look")


@pytest.mark.root
def test_whiteouts_hide_lower_files(sn: Snapshotter, tmp_path: Path) -> None:
    layer(sn, "l1", None, {"keep": "k", "gone": "g", "dir/inner": "i"})
    key = "extract-l2"
    sn.prepare(key, "l1", labels={TEMPORARY_LABEL: "1"})
    whiteout(sn, key, "gone")
    whiteout(sn, key, "dir/inner")
    with mounted(sn.mounts(key), tmp_path / "active") as active:
        assert sorted(os.listdir(active)) == ["dir", "keep"]
        assert os.listdir(active / "dir") == []
    sn.commit("l2", key)
    layer(sn, "l3", "l2", {"more": "m"})
    with mounted(sn.view("look", "l3"), tmp_path / "look") as look:
        assert sorted(os.listdir(look)) == ["dir", "keep", "more"]


@pytest.mark.root
def test_unmount_of_unmounted_target_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not a mount point"):
        unmount(tmp_path)


@pytest.mark.root
def test_130_layer_chain_mounts_with_overlay(tmp_path: Path) -> None:
    sn = open_snapshotter(tmp_path / "state" / "snapshots", "overlay")
    parent = None
    for i in range(130):
        layer(sn, f"layer-{i:03}", parent, {f"f{i:03}": str(i)})
        parent = f"layer-{i:03}"
    with mounted(sn.prepare("ctr", parent), tmp_path / "rootfs") as rootfs:
        assert sorted(os.listdir(rootfs)) == [f"f{i:03}" for i in range(130)]
        assert (rootfs / "f000").read_text() == "0"
    with mounted(sn.view("look", parent), tmp_path / "look") as look:
        assert len(os.listdir(look)) == 130
