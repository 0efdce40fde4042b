"""The user database a container's ``--user`` is resolved against: the image's /etc/passwd and /etc/group as its
layers show them (whiteouts and opaque directories honoured), regular files only (never a link out of the image)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.container_create import read_user_files
from engine.errors import InvalidArgument
from engine.runtime.users import UserFiles
from engine.volumes import read_from_layers

ROOT_PASSWD = "root:x:0:0::/root:/bin/sh\n"


def _layer(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, 0)


def test_the_upper_layers_files_win_and_links_are_dropped(tmp_path: Path) -> None:
    lower = _layer(tmp_path / "l1", {"etc/passwd": ROOT_PASSWD, "etc/group": "root:x:0:\n", "etc/hosts": "x\n"})
    upper = _layer(tmp_path / "l2", {"etc/group": "root:x:0:\napp:x:1000:\n"}, {"etc/passwd": "/etc/shadow"})
    assert read_user_files([lower, upper]) == UserFiles(None, "root:x:0:\napp:x:1000:\n")
    assert read_user_files([lower]) == UserFiles(ROOT_PASSWD, "root:x:0:\n")


def test_a_lower_layers_file_shows_through_an_upper_layer_without_it(tmp_path: Path) -> None:
    lower = _layer(tmp_path / "l1", {"etc/passwd": ROOT_PASSWD})
    middle = _layer(tmp_path / "l2", {"etc/hosts": "x\n"})
    upper = _layer(tmp_path / "l3", {"bin/sh": ""})
    assert read_user_files([lower, middle, upper]) == UserFiles(ROOT_PASSWD, None)


def test_an_image_without_them_gives_an_empty_database(tmp_path: Path) -> None:
    assert read_user_files([_layer(tmp_path / "l1", {"bin/sh": ""})]) == UserFiles(None, None)


def test_a_directory_or_a_symlinked_etc_is_no_file(tmp_path: Path) -> None:
    lower = _layer(tmp_path / "l1", {"etc/passwd": ROOT_PASSWD})
    as_dir = _layer(tmp_path / "l2", {"etc/passwd/inside": ""})
    assert read_from_layers([lower, as_dir], "/etc/passwd", 1024) is None
    linked_etc = _layer(tmp_path / "l3", {"host/passwd": ROOT_PASSWD}, {"etc": "/host"})
    assert read_from_layers([lower, linked_etc], "/etc/passwd", 1024) is None
    assert read_from_layers([lower], "/", 1024) is None


def test_a_file_over_the_limit_is_refused_naming_it(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "l1", {"etc/passwd": ROOT_PASSWD})
    assert read_from_layers([layer], "/etc/passwd", len(ROOT_PASSWD)) == ROOT_PASSWD.encode()
    with pytest.raises(InvalidArgument, match=r"^/etc/passwd in the image is larger than 10 bytes$"):
        read_from_layers([layer], "/etc/passwd", 10)


@pytest.mark.root
def test_a_whiteout_deletes_the_file_or_its_directory(tmp_path: Path) -> None:
    lower = _layer(tmp_path / "l1", {"etc/passwd": ROOT_PASSWD, "etc/group": "root:x:0:\n"})
    upper = _layer(tmp_path / "l2", {})
    _whiteout(upper / "etc/passwd")
    assert read_user_files([lower, upper]) == UserFiles(None, "root:x:0:\n")
    gone = _layer(tmp_path / "l3", {})
    _whiteout(gone / "etc")
    assert read_user_files([lower, gone]) == UserFiles(None, None)
    again = _layer(tmp_path / "l4", {"etc/passwd": "app:x:1:1::/:/bin/sh\n"})
    assert read_user_files([lower, gone, again]) == UserFiles("app:x:1:1::/:/bin/sh\n", None)


@pytest.mark.root
def test_an_opaque_directory_hides_what_lower_layers_put_under_it(tmp_path: Path) -> None:
    lower = _layer(tmp_path / "l1", {"etc/passwd": ROOT_PASSWD, "etc/group": "root:x:0:\n"})
    upper = _layer(tmp_path / "l2", {"etc/group": "app:x:1:\n"})
    os.setxattr(upper / "etc", "trusted.overlay.opaque", b"y")
    assert read_user_files([lower, upper]) == UserFiles(None, "app:x:1:\n")
