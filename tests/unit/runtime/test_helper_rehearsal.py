"""A spare monitor rehearses parsing the last config the helper handed out (so the pages that parsing writes are
copied while it waits, not while a start waits for it)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.runtime.backend import RealBackend
from engine.runtime.helper import _rehearse
from engine.runtime.plan import RunOptions, plan_container
from engine.runtime.users import UserFiles


def test_a_spare_parses_the_config_it_rehearses_as_its_own_would_be(tmp_path: Path) -> None:
    spec = plan_container(container_id="c" * 64, image_config={"Cmd": ["true"]}, options=RunOptions(seccomp=False),
                          rootfs=tmp_path / "rootfs", root_mounts=[], bundle_dir=tmp_path / "bundle",
                          user_files=UserFiles(None, None))
    config = json.dumps({"spec": spec.to_json(), "restart_policy": "no"}).encode()
    assert _rehearse(RealBackend(), config) == spec


def test_nothing_to_rehearse_or_a_config_that_does_not_parse_is_no_error() -> None:
    backend = RealBackend()
    assert _rehearse(backend, b"") is None
    assert _rehearse(backend, b"{not json") is None
    assert _rehearse(backend, json.dumps({"spec": "{}"}).encode()) is None
