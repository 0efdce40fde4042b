"""The user database a container's ``--user`` is resolved against: the image's merged /etc/passwd and /etc/group,
regular files only (never a link out of the image), nothing else of its /etc."""

from __future__ import annotations

import os
from pathlib import Path

from engine.container_create import write_user_db


def _layer(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def test_the_upper_layers_files_win_and_links_are_dropped(tmp_path: Path) -> None:
    lower = _layer(tmp_path / "l1", {"etc/passwd": "root:x:0:0::/root:/bin/sh\n", "etc/group": "root:x:0:\n",
                                     "etc/hosts": "127.0.0.1 x\n"})
    upper = _layer(tmp_path / "l2", {"etc/group": "root:x:0:\napp:x:1000:\n"}, {"etc/passwd": "/etc/shadow"})
    target = write_user_db([lower, upper], tmp_path / "userdb")
    assert sorted(p.name for p in (target / "etc").iterdir()) == ["group"]
    assert (target / "etc" / "group").read_text() == "root:x:0:\napp:x:1000:\n"
    assert sorted(p.name for p in target.iterdir()) == ["etc"]


def test_an_image_without_them_gives_an_empty_database(tmp_path: Path) -> None:
    target = write_user_db([_layer(tmp_path / "l1", {"bin/sh": ""})], tmp_path / "userdb")
    assert list((target / "etc").iterdir()) == []
