"""Path resolution inside a root: openat2 and the O_NOFOLLOW walk must agree."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from engine.unpack.safepath import DirCache, NotADirectoryInLayer, RootDir, clean_parts, openat2_available


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/sub").mkdir(parents=True)
    (root / "file").write_text("f")
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../etc", root / "rel")
    os.symlink("abs/sub", root / "chain")
    os.symlink("..", root / "etc/up")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("/nowhere", root / "dangling")
    (tmp_path / "outside").mkdir()
    return root


def identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    os.close(fd)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
@pytest.mark.parametrize(
    ("path", "expected"),
    [("abs", "etc"), ("rel", "etc"), ("chain", "etc/sub"), ("etc/up/etc/up/abs/sub", "etc/sub"),
     ("etc/up/etc/up/..", ""), ("../../..", ""), ("", "")],
)
def test_resolution_is_clamped(tree: Path, use_openat2: bool, path: str, expected: str) -> None:
    with RootDir(tree, use_openat2=use_openat2) as root:
        got = identity(root.open_dir(tuple(part for part in path.split("/") if part)))  # ".." kept: kernel-clamped
        want = os.stat(tree / expected)
        assert got == (want.st_dev, want.st_ino)


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
@pytest.mark.parametrize(("path", "code"), [("loop1", errno.ELOOP), ("dangling", errno.ENOENT),
                                            ("file", errno.ENOTDIR), ("missing/x", errno.ENOENT)])
def test_errors_match(tree: Path, use_openat2: bool, path: str, code: int) -> None:
    with RootDir(tree, use_openat2=use_openat2) as root, pytest.raises(OSError) as caught:
        root.open_dir(tuple(path.split("/")))
    assert caught.value.errno == code


def test_openat2_is_available_on_this_kernel() -> None:
    assert openat2_available()  # kernel 6.x: if this fails, the walk silently carries every layer


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_dir_cache_creates_implied_parents_and_reports_non_directories(tree: Path, use_openat2: bool) -> None:
    made: list[tuple[str, ...]] = []
    with RootDir(tree, use_openat2=use_openat2) as root:
        cache = DirCache(root, lambda parts, fd: made.append(parts))
        assert cache.get(("abs", "new", "deeper"), create=True) is not None
        assert (tree / "etc/new/deeper").is_dir() and made == [("abs", "new"), ("abs", "new", "deeper")]
        assert cache.get(("nope",), create=False) is None
        with pytest.raises(NotADirectoryInLayer) as caught:
            cache.get(("file", "x", "y"), create=True)
        assert caught.value.parts == ("file",)
        with pytest.raises(NotADirectoryInLayer):
            cache.get(("dangling", "x"), create=True)
        cache.invalidate()
    assert not (tree.parent / "nowhere").exists() and not Path("/nowhere").exists()


def test_clean_parts() -> None:
    assert clean_parts("../../a/./b//c/..") == ("a", "b")
    assert clean_parts("/../victim/x") == ("victim", "x")
    assert clean_parts("./") == () and clean_parts("a/..") == () and clean_parts("") == ()


def test_dir_cache_evicts_the_least_recently_used_fd_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer cycling through more directories than the cache holds keeps its recent fds (no full flush)."""
    monkeypatch.setattr("engine.unpack.safepath._CACHED_DIRS", 3)
    for name in "abcd":
        (tmp_path / name).mkdir()
    with RootDir(tmp_path) as root:
        cache = DirCache(root, lambda parts, fd: None)
        fd_a = cache.get(("a",), create=False)
        fd_b = cache.get(("b",), create=False)
        cache.get(("c",), create=False)
        assert cache.get(("a",), create=False) == fd_a  # a hit makes "a" the most recently used
        cache.get(("d",), create=False)  # evicts "b", the least recently used, and only it
        assert cache.get(("a",), create=False) == fd_a
        assert fd_b is not None
        with pytest.raises(OSError):
            os.fstat(fd_b)  # closed on eviction (nothing reopened in between)
        held = [cache.get((name,), create=False) for name in "acd"]
        assert all(fd is not None and os.path.samestat(os.fstat(fd), os.stat(tmp_path / name))
                   for fd, name in zip(held, "acd", strict=True))
        cache.invalidate()


def test_dir_cache_size_follows_the_fd_limit() -> None:
    from engine.unpack.safepath import _cached_dirs

    assert 64 <= _cached_dirs() <= 512
