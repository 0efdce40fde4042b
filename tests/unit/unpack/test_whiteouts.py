"""engine-anchors §1 cases 16-22: whiteout names, semantics in "delete" mode, overlay conversion, AUFS."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.errors import LayerRejected
from tests.unit.unpack.tarbuild import D, F, H, Sandbox


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def prepare_etc(box: Sandbox) -> None:
    (box.root / "etc").mkdir()
    (box.root / "etc/passwd").write_text("all users")


# -- 16: invalid names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "etc/.wh..", "etc/.wh...", "some/path/.wh."])
@pytest.mark.parametrize("mode", ["delete", "overlay"])
def test_case16_invalid_whiteouts_are_rejected(sandbox: Sandbox, name: str, mode: str) -> None:
    prepare_etc(sandbox)
    with pytest.raises(LayerRejected, match=r"entry '.*': invalid whiteout '\.wh\.\.{0,2}'"):
        sandbox.apply(F(name), whiteouts=mode)  # type: ignore[arg-type]
    assert (sandbox.root / "etc/passwd").read_text() == "all users"


# -- 17-19: whiteouts and symlinks ------------------------------------------------------------------------------

def test_case17_whiteout_removes_only_the_symlink(sandbox: Sandbox) -> None:
    prepare_etc(sandbox)
    os.symlink("/etc", sandbox.root / "localetc")
    sandbox.apply(F(".wh.localetc"))
    assert not os.path.lexists(sandbox.root / "localetc")
    assert (sandbox.root / "etc/passwd").read_text() == "all users"


def test_case17_whiteout_of_directory_symlink_never_recurses(sandbox: Sandbox) -> None:
    os.symlink(str(sandbox.victim), sandbox.root / "outside")  # a link to the real victim/ (host path)
    sandbox.apply(F(".wh.outside"))
    assert not os.path.lexists(sandbox.root / "outside")  # victim/ itself is checked by the sandbox


def test_case18_whiteout_through_symlinked_parent(sandbox: Sandbox) -> None:
    prepare_etc(sandbox)
    (sandbox.root / "etc/whitedout").write_text("ahhhh whiteout")
    os.symlink("/etc", sandbox.root / "localetc")
    sandbox.apply(F("localetc/.wh.whitedout"))
    assert not (sandbox.root / "etc/whitedout").exists()
    assert (sandbox.root / "etc/passwd").read_text() == "all users"


def test_case18_whiteout_under_dead_symlink_does_nothing(sandbox: Sandbox) -> None:
    prepare_etc(sandbox)
    os.symlink("/dne", sandbox.root / "localetc")
    sandbox.apply(F("localetc/.wh.etc"))
    assert (sandbox.root / "etc/passwd").read_text() == "all users"


def test_case18_relative_whiteout_path_is_cleaned(sandbox: Sandbox) -> None:
    prepare_etc(sandbox)
    os.symlink("/dne", sandbox.root / "localetc")
    sandbox.apply(F("dne/../.wh.etc"))
    assert not (sandbox.root / "etc").exists()


def test_case19_whiteout_prefix_only_counts_in_basename(sandbox: Sandbox) -> None:
    prepare_etc(sandbox)
    sandbox.apply(F(".wh.etc/somefile", b"non-empty"))
    assert (sandbox.root / ".wh.etc/somefile").read_bytes() == b"non-empty"
    assert (sandbox.root / "etc/passwd").read_text() == "all users"


# -- 20-21: semantics -----------------------------------------------------------------------------------------

def lower_for_case20(box: Sandbox) -> None:
    box.apply(
        F(".baz"), D("bar"), F("bar/x"), F("baz"), D("foo"), F("foo/.abc"), D("foo/.bcd"), F("foo/.bcd/a"),
        D("foo/cde"), F("foo/cde/def"), F("foo/cde/efg", b"lower"), F("foo/fgh"), F("foobar"),
    )


ORDERS = {
    "marker-first": [F(".wh.baz"), F("foo/.wh..wh..opq"), F("foo/.bce"), F("foo/cde/efg", b"upper")],
    "marker-middle": [F(".wh.baz"), F("foo/.bce"), F("foo/.wh..wh..opq"), F("foo/cde/efg", b"upper")],
    "marker-last": [F(".wh.baz"), F("foo/.bce"), F("foo/cde/efg", b"upper"), F("foo/.wh..wh..opq")],
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_case20_whiteouts_and_opaque_in_any_order(sandbox: Sandbox, order: str) -> None:
    lower_for_case20(sandbox)
    sandbox.apply(*ORDERS[order])
    assert tree(sandbox.root) == {".baz", "bar", "bar/x", "foo", "foo/.bce", "foo/cde", "foo/cde/efg", "foobar"}
    assert (sandbox.root / "foo/cde/efg").read_bytes() == b"upper"
    sandbox.apply(F(".wh..baz"))
    assert not (sandbox.root / ".baz").exists()


def test_case20_opaque_keeps_merged_directory_but_drops_its_lower_children(sandbox: Sandbox) -> None:
    lower_for_case20(sandbox)
    sandbox.apply(D("foo"), D("foo/cde"), F("foo/.wh..wh..opq"), F("foo/cde/new"))
    assert tree(sandbox.root / "foo") == {"cde", "cde/new"}


def test_case21_whiteouts_never_remove_this_layers_entries(sandbox: Sandbox) -> None:
    sandbox.apply(F("fileC", b"lower"))
    sandbox.apply(F(".wh.fileB"), F("fileA", b"A"), F("fileB", b"B"), F(".wh.fileA"), F(".wh.fileC"))
    assert tree(sandbox.root) == {"fileA", "fileB"}


@pytest.mark.parametrize("mode", ["delete", "overlay"])
def test_case21_whiteout_preserves_parent_times(sandbox: Sandbox, mode: str) -> None:
    (sandbox.root / "dir").mkdir()
    (sandbox.root / "dir/gone").write_text("x")
    os.utime(sandbox.root / "dir", ns=(5 * 10**9, 7 * 10**9))
    sandbox.apply(F("dir/.wh.gone"), whiteouts=mode)  # type: ignore[arg-type]
    st = os.stat(sandbox.root / "dir")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5 * 10**9, 7 * 10**9)


# -- 22: overlay conversion --------------------------------------------------------------------------------

def test_case22_overlay_whiteout_is_a_0_0_char_device(sandbox: Sandbox) -> None:
    sandbox.apply(D("etc"), F("etc/.wh.passwd"), F(".wh.gone"), whiteouts="overlay-user")
    for rel in ("etc/passwd", "gone"):
        st = os.lstat(sandbox.root / rel)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not os.path.lexists(sandbox.root / "etc/.wh.passwd")


@pytest.mark.root
def test_case22_overlay_whiteout_is_chowned_to_header_ids(sandbox: Sandbox) -> None:
    info, data = F(".wh.gone", uid=1234, gid=4321)
    sandbox.apply((info, data), whiteouts="overlay")
    st = os.lstat(sandbox.root / "gone")
    assert (st.st_uid, st.st_gid) == (1234, 4321)


@pytest.mark.root
def test_case22_overlay_opaque_sets_trusted_xattr(sandbox: Sandbox) -> None:
    sandbox.apply(F("foo/.wh..wh..opq"), F("foo/kept"), whiteouts="overlay")
    assert os.getxattr(sandbox.root / "foo", "trusted.overlay.opaque") == b"y"
    assert tree(sandbox.root) == {"foo", "foo/kept"}


def test_case22_overlay_user_opaque_sets_user_xattr(sandbox: Sandbox) -> None:
    sandbox.apply(D("foo"), F("foo/.wh..wh..opq"), whiteouts="overlay-user")
    assert os.getxattr(sandbox.root / "foo", "user.overlay.opaque") == b"y"


def test_case22_overlay_whiteout_skips_this_layers_entry(sandbox: Sandbox) -> None:
    sandbox.apply(F("fileA", b"A"), F(".wh.fileA"), F(".wh.fileB"), F("fileB", b"B"), whiteouts="overlay-user")
    assert (sandbox.root / "fileA").read_bytes() == b"A"
    assert (sandbox.root / "fileB").read_bytes() == b"B"


def test_case22_aufs_hardlink_sources_kept_and_metadata_skipped(sandbox: Sandbox) -> None:
    sandbox.apply(
        D(".wh..wh.plnk"), F(".wh..wh.plnk/1234.5678", b"shared"), D(".wh..wh.orph"), F(".wh..wh.aufs"),
        D("usr"), H("usr/a", "/.wh..wh.plnk/1234.5678"), H("usr/b", ".wh..wh.plnk/1234.5678"),
    )
    assert tree(sandbox.root) == {"usr", "usr/a", "usr/b"}
    assert (sandbox.root / "usr/a").read_bytes() == b"shared"
    assert sandbox.same_inode("usr/a", "usr/b")
