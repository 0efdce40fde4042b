"""The monitor helper is shared per state root, outlives the engines that use it, and goes away by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.runtime.helper import helper_pids, stop_helpers
from engine.runtime.supervisor import Supervisor, helper_idle_seconds, helper_socket_name
from tests.support.wait import wait_until


async def test_engines_share_one_helper_that_outlives_them(tmp_path: Path) -> None:
    first, second = await Supervisor.open(tmp_path), await Supervisor.open(tmp_path)
    try:
        pid = await first.helper_pid()
        assert await second.helper_pid() == pid
        assert helper_pids(tmp_path) == [pid]
        assert (tmp_path / helper_socket_name()).exists()
    finally:
        await first.close()
        await second.close()
    assert helper_pids(tmp_path) == [pid]  # a cache for the next engine, not tied to these
    third = await Supervisor.open(tmp_path)
    assert await third.helper_pid() == pid
    await third.close(stop_helper=True)
    assert helper_pids(tmp_path) == []
    assert not (tmp_path / helper_socket_name()).exists()


async def test_an_idle_helper_retires_and_the_next_engine_starts_another(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITEBOX_HELPER_IDLE", "0.2")
    sup = await Supervisor.open(tmp_path)
    pid = await sup.helper_pid()
    await sup.close()
    wait_until(lambda: not helper_pids(tmp_path), "the idle helper to exit")
    assert not (tmp_path / helper_socket_name()).exists()
    sup = await Supervisor.open(tmp_path)
    try:
        assert await sup.helper_pid() != pid
    finally:
        await sup.close(stop_helper=True)


async def test_a_helper_whose_socket_is_gone_exits(tmp_path: Path) -> None:
    sup = await Supervisor.open(tmp_path)
    await sup.helper_pid()
    await sup.close()
    (tmp_path / helper_socket_name()).unlink()  # as when the state root is deleted
    wait_until(lambda: not helper_pids(tmp_path), "the unreachable helper to exit")


async def test_stop_helpers_stops_only_those_under_the_directory(tmp_path: Path) -> None:
    sups = [await Supervisor.open(tmp_path / name) for name in ("a", "b")]
    for sup in sups:
        await sup.helper_pid()
        await sup.close()
    assert len(stop_helpers(tmp_path / "a")) == 1
    assert helper_pids(tmp_path / "a") == [] and len(helper_pids(tmp_path / "b")) == 1
    stop_helpers(tmp_path)
    assert helper_pids(tmp_path) == []


def test_helper_idle_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITEBOX_HELPER_IDLE", "1.5")
    assert helper_idle_seconds() == 1.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("KITEBOX_HELPER_IDLE", bad)
        with pytest.raises(InvalidArgument, match="KITEBOX_HELPER_IDLE"):
            helper_idle_seconds()
