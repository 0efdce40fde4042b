"""The CLI's prepared engine (opened by a spare worker of the warm template before its command): taken by a
command for the same state root and configuration, closed (with its loop) for any other."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

import app.cli.main as cli_main
from engine import load_config


class _FakeEngine:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def _prepare(root: Path) -> tuple[cli_main._Prepared, _FakeEngine]:
    engine = _FakeEngine()
    prepared = cli_main._Prepared(asyncio.new_event_loop(), engine, root, load_config())  # type: ignore[arg-type]
    cli_main._prepared = prepared
    return prepared, engine


@pytest.fixture(autouse=True)
def _nothing_left_prepared() -> object:
    yield None
    if cli_main._prepared is not None:
        cli_main._prepared.loop.close()
        cli_main._prepared = None


def test_the_same_root_and_configuration_take_it(tmp_path: Path) -> None:
    prepared, engine = _prepare(tmp_path)
    assert cli_main._take_prepared(argparse.Namespace(root=tmp_path, config=None)) is prepared
    assert not engine.closed and not prepared.loop.is_closed()
    assert cli_main._take_prepared(argparse.Namespace(root=tmp_path, config=None)) is None  # taken once
    prepared.loop.close()


def test_another_root_closes_it(tmp_path: Path) -> None:
    prepared, engine = _prepare(tmp_path / "one")
    assert cli_main._take_prepared(argparse.Namespace(root=tmp_path / "two", config=None)) is None
    assert engine.closed and prepared.loop.is_closed()


def test_another_configuration_closes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared, engine = _prepare(tmp_path)
    other = tmp_path / "config.json"
    other.write_text('{"snapshotter": "copy"}')
    monkeypatch.setenv("KITEBOX_CONFIG", str(other))
    assert cli_main._take_prepared(argparse.Namespace(root=tmp_path, config=None)) is None
    assert engine.closed and prepared.loop.is_closed()


def test_a_bad_configuration_closes_it_and_is_left_to_the_command(tmp_path: Path) -> None:
    prepared, engine = _prepare(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main._take_prepared(argparse.Namespace(root=tmp_path, config=bad)) is None
    assert engine.closed and prepared.loop.is_closed()
