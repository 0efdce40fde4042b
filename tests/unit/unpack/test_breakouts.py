"""engine-anchors §1 cases 1-15 and 25: symlinks, hardlinks, names and replacements that try to escape.

Policy under test (containerd's): names and link targets are clamped inside the root; hardlinks to missing
targets or directories are rejected. The ``sandbox`` fixture checks, after every test, that nothing outside
the root changed, whatever the outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import LayerRejected
from tests.unit.unpack.tarbuild import D, F, H, S, Sandbox


def read(box: Sandbox, rel: str) -> bytes:
    return (box.root / rel).read_bytes()


# -- 1-4: symlinks and hardlinks resolved inside the root -------------------------------------------------

def test_case1_absolute_symlink_parent_lands_inside(sandbox: Sandbox) -> None:
    sandbox.apply(D("etc"), S("localetc", "/etc"), F("/localetc/unbroken", b"ok"))
    assert read(sandbox, "etc/unbroken") == b"ok"


@pytest.mark.parametrize(
    "links",
    [
        [S("localetc", "/dummy/../etc")],
        [S("/dummy/etc", "/etc"), S("localetc", "/dummy/etc")],
        [S("/dummy/etc", "/etc"), S("localetc", "./dummy/etc")],
    ],
    ids=["up-and-out", "multiple-absolute", "multiple-relative"],
)
def test_case2_symlink_chains_land_inside(sandbox: Sandbox, links: list[object]) -> None:
    sandbox.apply(D("etc"), D("dummy"), *links, F("/localetc/unbroken", b"ok"))  # type: ignore[arg-type]
    assert read(sandbox, "etc/unbroken") == b"ok"


def test_case2_empty_file_through_symlink(sandbox: Sandbox) -> None:
    sandbox.apply(D("etc"), F("etc/emptied", b"notempty"), S("localetc", "/etc"), F("/localetc/emptied", b""))
    assert read(sandbox, "etc/emptied") == b""


@pytest.mark.parametrize("target", ["../../etc", "../downandout/../../etc", "../../../../../../../etc", "/etc"])
def test_case3_hardlink_through_escaping_symlink(sandbox: Sandbox, target: str) -> None:
    sandbox.apply(
        D("etc", 0o770), F("/etc/passwd", b"inside"), D("breakouts"), D("downandout"),
        S("breakouts/d1", target), H("breakouts/mypasswd", "/breakouts/d1/passwd"),
    )
    assert sandbox.same_inode("breakouts/mypasswd", "etc/passwd")


@pytest.mark.parametrize("target", ["../../../../../etc/passwd", "/etc/passwd"])
def test_case4_direct_hardlink_targets_are_clamped(sandbox: Sandbox, target: str) -> None:
    sandbox.apply(D("etc"), F("/etc/passwd", b"inside"), H("localpasswd", target))
    assert sandbox.same_inode("localpasswd", "etc/passwd")


def test_case4_absolute_hardlink(sandbox: Sandbox) -> None:
    sandbox.apply(D("usr"), D("usr/bin"), F("usr/bin/perlbug", b"perl"), H("usr/bin/perlthanks", "/usr/bin/perlbug"))
    assert sandbox.same_inode("usr/bin/perlthanks", "usr/bin/perlbug")


@pytest.mark.parametrize("target", ["../victim/hello", "/../victim/hello"])
def test_case4_hardlink_out_of_root_is_rejected(sandbox: Sandbox, target: str) -> None:
    with pytest.raises(LayerRejected, match=r"layer sha256:abab.*: entry 'dotdot': hard link target .* not found"):
        sandbox.apply(H("dotdot", target))
    assert not (sandbox.root / "dotdot").exists()


# -- 5-9: names and links that escape -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "lands"),
    [("../victim/dotdot", "victim/dotdot"), ("/../victim/slash-dotdot", "victim/slash-dotdot"),
     ("../pwned", "pwned"), ("../../pwned", "pwned"), ("/../file", "file"), ("../file", "file")],
)
def test_case5_parent_traversal_names_are_contained(sandbox: Sandbox, name: str, lands: str) -> None:
    sandbox.apply(F(name, b"x"))
    assert read(sandbox, lands) == b"x"


def test_case5_dotdot_file_for_the_root_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match=r"entry '\.\.': not a directory: the layer root"):
        sandbox.apply(F("..", b"x"))


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_case6a_file_through_loophole(sandbox: Sandbox, kind: str) -> None:
    if kind == "symlink":  # ../victim is clamped to <root>/victim, which does not exist: a dangling parent
        with pytest.raises(LayerRejected, match="parent 'loophole-victim' is not a directory"):
            sandbox.apply(S("loophole-victim", "../victim"), F("loophole-victim/file", b"x"))
    else:
        with pytest.raises(LayerRejected, match="not found"):
            sandbox.apply(H("loophole-victim", "../victim"), F("loophole-victim/file", b"x"))


def test_case6b_hardlink_through_loophole(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match=r"entry 'x': hard link target 'loophole-victim/hello' not found"):
        sandbox.apply(S("loophole-victim", "../victim"), H("x", "loophole-victim/hello"))


def test_case6c_file_replaces_the_loophole_link(sandbox: Sandbox) -> None:
    os.symlink("../victim", sandbox.root / "loophole-victim")
    sandbox.apply(F("loophole-victim", b"plain"))
    assert not (sandbox.root / "loophole-victim").is_symlink()
    assert read(sandbox, "loophole-victim") == b"plain"


def test_case6_implied_parents_stay_inside(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match=r"parent 'dir/loophole' is not a directory"):
        sandbox.apply(D("dir"), S("dir/loophole", "../../victim"), F("dir/loophole/newdir/newfile", b"x"))
    assert not (sandbox.root / "victim").exists()


def test_case6_implied_parents_through_existing_clamped_dir(sandbox: Sandbox) -> None:
    (sandbox.root / "victim").mkdir()
    sandbox.apply(D("dir"), S("dir/loophole", "../../victim"), F("dir/loophole/newdir/newfile", b"x"))
    assert read(sandbox, "victim/newdir/newfile") == b"x"


def test_case7_two_hop_symlink(sandbox: Sandbox) -> None:
    (sandbox.root / "victim").mkdir()
    sandbox.apply(D("inner"), S("inner/go_up", ".."), S("inner/go_up/escape", "../victim"),
                  F("inner/go_up/escape/newfile", b"x"))
    assert read(sandbox, "victim/newfile") == b"x"


def test_case8_sibling_prefix_is_not_inside(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match="not found"):
        sandbox.apply(H("grab", "../dest-evil/secret"))
    assert not (sandbox.root / "grab").exists()


def test_case9_relative_escape_then_absolute_symlink(sandbox: Sandbox) -> None:
    os.symlink("..", sandbox.root / "escape")
    os.symlink("/target", sandbox.root / "absolute")
    os.mkdir(sandbox.root / "target")
    sandbox.apply(F("escape/absolute/file", b"x"))  # clamped at each hop: <root>/target/file
    assert read(sandbox, "target/file") == b"x"


def test_case9_through_absolute_symlink(sandbox: Sandbox) -> None:
    os.makedirs(sandbox.root / "var")
    os.makedirs(sandbox.root / "run/existing")
    os.symlink("/run", sandbox.root / "var/run")
    sandbox.apply(F("var/run/existing/x/file", b"x"))
    assert read(sandbox, "run/existing/x/file") == b"x"


# -- 10-15: replacing existing paths ------------------------------------------------------------------------

def test_case10_symlink_override_path(sandbox: Sandbox) -> None:
    sandbox.apply(
        D("foo"), D("foo/tmp"), F("foo/tmp/b", b"012"), S("foo", "/"), F("foo/tmp/b", b"345"),
        D("foo"), D("foo/tmp"), F("foo/tmp/b", b"678"),
    )
    assert read(sandbox, "foo/tmp/b") == b"678"
    assert read(sandbox, "tmp/b") == b"345"  # written through the symlink, clamped inside
    assert not (sandbox.root / "foo").is_symlink()


def test_case11_directory_replaces_symlink(sandbox: Sandbox) -> None:
    (sandbox.root / "etc").mkdir()
    (sandbox.root / "etc/passwd").write_text("inside")
    os.symlink("/etc", sandbox.root / "localetc")
    sandbox.apply(D("/localetc/"), H("/localetc/localpasswd", "/etc/passwd"))
    assert (sandbox.root / "localetc").is_dir() and not (sandbox.root / "localetc").is_symlink()
    assert sandbox.same_inode("localetc/localpasswd", "etc/passwd")


def test_case11_symlink_replaces_directory(sandbox: Sandbox) -> None:
    (sandbox.root / "etc").mkdir()
    (sandbox.root / "etc/passwd").write_text("inside")
    (sandbox.root / "localetc").mkdir()
    sandbox.apply(S("localetc", "/etc"), H("/localetc/localpasswd", "/etc/passwd"))
    assert sandbox.same_inode("etc/localpasswd", "etc/passwd")


def test_case12_file_over_hardlink_makes_a_new_inode(sandbox: Sandbox) -> None:
    (sandbox.root / "etc").mkdir()
    (sandbox.root / "etc/passwd").write_text("inside")
    os.symlink("etc", sandbox.root / "localetc")
    os.link(sandbox.root / "etc/passwd", sandbox.root / "etc/localpasswd")
    sandbox.apply(D("/localetc/"), F("/localetc/localpasswd", b"different"))
    assert read(sandbox, "localetc/localpasswd") == b"different"
    assert read(sandbox, "etc/passwd") == b"inside"
    assert not sandbox.same_inode("localetc/localpasswd", "etc/passwd")


def test_case12_never_truncates_in_place(sandbox: Sandbox) -> None:
    (sandbox.root / "a").write_text("old")
    os.link(sandbox.root / "a", sandbox.root / "b")
    sandbox.apply(F("a", b"new"))
    assert read(sandbox, "a") == b"new" and read(sandbox, "b") == b"old"


@pytest.mark.parametrize("name", ["..", "", "localetc/sub/.."])
def test_case13_symlinks_resolving_to_root(sandbox: Sandbox, name: str) -> None:
    sandbox.apply(D("etc", 0o770), F("/etc/passwd", b"inside"), S(name, "/etc/"),
                  H("/localetc/localpasswd", "/etc/passwd"))
    assert sandbox.root.is_dir() and not sandbox.root.is_symlink()
    if name == "localetc/sub/..":  # cleaned to "localetc": the symlink is made, the link lands through it
        assert os.readlink(sandbox.root / "localetc") == "/etc/"
        assert sandbox.same_inode("etc/localpasswd", "etc/passwd")
    else:  # skipped ("resolved to root"); localetc is an implied directory
        assert not (sandbox.root / "localetc").is_symlink()
        assert sandbox.same_inode("localetc/localpasswd", "etc/passwd")


@pytest.mark.parametrize("entry", [F(".", b"x"), F("./", b"x"), H("/.", "etc/passwd"), F("a/..", b"x")])
def test_case13_non_directory_for_root_is_rejected(sandbox: Sandbox, entry: object) -> None:
    with pytest.raises(LayerRejected, match="not a directory: the layer root can only be a directory"):
        sandbox.apply(D("etc"), F("etc/passwd", b"p"), entry)  # type: ignore[arg-type]
    assert sandbox.root.is_dir() and not sandbox.root.is_symlink()


def test_case13_root_directory_entry_sets_root_metadata(sandbox: Sandbox) -> None:
    sandbox.apply(D("./", 0o710, mtime=1_600_000_000), F("x", b"x"))
    st = os.stat(sandbox.root)
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o710, 1_600_000_000 * 10**9)


def test_case14_hardlink_to_symlink_links_the_symlink(sandbox: Sandbox) -> None:
    sandbox.apply(S("symlink1", "regfile"), H("symlink2", "symlink1"), F("regfile", b"r"))
    assert (sandbox.root / "symlink2").is_symlink()
    assert sandbox.same_inode("symlink1", "symlink2")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../../etc/passwd"])
def test_case14_hardlink_to_escaping_symlink(sandbox: Sandbox, target: str) -> None:
    sandbox.apply(D("etc"), F("/etc/passwd", b"inside"), S("passwdlink", target), H("localpasswd", "/passwdlink"))
    assert sandbox.same_inode("localpasswd", "passwdlink")
    assert os.readlink(sandbox.root / "localpasswd") == target


def test_case14_hardlink_symlink_before_target(sandbox: Sandbox) -> None:
    sandbox.apply(D("etc"), S("localpasswd", "/etc/passwd"), H("localpasswd-dup", "localpasswd"),
                  F("/etc/passwd", b"after"))
    assert sandbox.same_inode("localpasswd-dup", "localpasswd")
    assert read(sandbox, "etc/passwd") == b"after"


def test_case15_no_chmod_through_symlink(sandbox: Sandbox) -> None:
    host = sandbox.base / "host-file"  # mode 0400, outside the root: must stay so (checked at teardown)
    os.symlink(str(host), sandbox.root / "ep")
    sandbox.apply(H("sketchylink", "ep"), S("other", str(host)))
    assert sandbox.same_inode("sketchylink", "ep")
    assert os.stat(host).st_mode & 0o777 == 0o400


def test_case15_symlink_metadata_never_reaches_target(sandbox: Sandbox) -> None:
    host = sandbox.base / "host-file"
    sandbox.apply(S("ep", str(host), uid=1234, gid=1234, mtime=1_000))
    st = os.lstat(sandbox.root / "ep")
    assert st.st_mtime_ns == 1_000 * 10**9
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 1234)


# -- 25: non-directory parent (containerd's choice: rejected, nothing replaced) ----------------------------

def test_case25_non_directory_parent_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match=r"entry 'nondir/foo/bar/baz': parent 'nondir' is not a directory"):
        sandbox.apply(F("nondir", b"f"), F("nondir/foo/bar/baz", b"x"))
    assert read(sandbox, "nondir") == b"f"


def test_case25_dangling_symlink_parent_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match="is not a directory"):
        sandbox.apply(S("dangling", "/nowhere"), F("dangling/x", b"x"))
    assert not Path(sandbox.root / "nowhere").exists()
