"""The log pipeline: compact buffer, Qt model (qtmodeltester), viewport view (follow/pause), panel actions
(search, filter, clear/undo, copy, save) and the feed's seam across a container restart."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from app.gui.logbuffer import LogBuffer, time_ns_of
from app.gui.logmodel import LogModel, compile_pattern
from app.gui.logpanel import HISTORY_CHOICES, LogPanel
from tests.gui.fakes import FakeLog, Line, stamp
from tests.support.wait import async_wait_until


def lines(texts: list[str], stream: str = "stdout") -> list[Line]:
    return [Line(stream, stamp(1_780_000_000_000_000_000 + i), t.encode() + b"\n") for i, t in enumerate(texts)]


wait_for = functools.partial(async_wait_until, timeout=5.0)


# -- buffer -------------------------------------------------------------------------------------------------------


def test_buffer_keeps_lines_streams_and_times() -> None:
    buffer = LogBuffer()
    buffer.extend([Line("stdout", "2026-11-30T04:51:44.668572462Z", b"one\n"),
                   Line("stderr", "2026-11-30T04:51:45Z", b"two"),
                   Line("stdout", "2026-11-30T06:51:45.5+02:00", "caf\u00e9 ".encode() + b"\xff")])
    assert len(buffer) == 3 and buffer.text(0) == "one" and buffer.text(1) == "two"
    assert buffer.stream(1) == 1 and buffer.stream(0) == 0
    assert buffer.time_ns(0) == 1_796_014_304_668_572_462
    assert buffer.time_ns(1) == 1_796_014_305_000_000_000
    assert buffer.time_ns(2) == 1_796_014_305_500_000_000
    assert buffer.text(2) == "caf\u00e9 \ufffd"


def test_buffer_trims_oldest_and_keeps_absolute_numbers() -> None:
    buffer = LogBuffer(max_lines=100)
    buffer.extend(lines([f"line {i}" for i in range(250)]))
    assert len(buffer) <= 100 and buffer.end == 250
    assert buffer.trimmed == buffer.start > 0
    assert buffer.text(buffer.start) == f"line {buffer.start}"
    assert buffer.text(249) == "line 249"
    with pytest.raises(IndexError, match="not held"):
        buffer.text(buffer.start - 1)
    matches = list(buffer.search(compile_pattern("line 24", regex=False), 0, buffer.end))
    assert matches == [i for i in range(buffer.start, 250) if f"line {i}".startswith("line 24")]


def test_buffer_search_maps_matches_to_lines_once() -> None:
    buffer = LogBuffer()
    buffer.extend(lines(["alpha beta alpha", "gamma", "", "Alpha"]))
    pattern = compile_pattern("alpha", regex=False)
    assert list(buffer.search(pattern, 0, 4)) == [0, 3]
    assert list(buffer.search(compile_pattern("^$", regex=True), 0, 4)) == [2]
    assert buffer.search_backwards(pattern, 3) == 0
    assert buffer.search_backwards(compile_pattern("zzz", regex=False), 4) is None


def test_compile_pattern_reports_bad_regex_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"invalid regular expression '\(': "):
        compile_pattern("(", regex=True)
    assert compile_pattern("(", regex=False).search(b"a(b")


def test_time_parsing_fast_and_slow_paths_agree() -> None:
    assert time_ns_of("2026-11-30T04:51:44.668Z") == 1_796_014_304_668_000_000
    assert time_ns_of("2026-11-30T05:51:44.668+01:00") == 1_796_014_304_668_000_000
    assert time_ns_of("garbage") == 0


# -- model ------------------------------------------------------------------------------------------------------


def test_model_passes_qtmodeltester_through_appends_filter_trim_and_clear(qtmodeltester: object,
                                                                           qtbot: QtBot) -> None:
    model = LogModel(buffer=LogBuffer(max_lines=50))
    qtmodeltester.check(model, force_py=True)  # type: ignore[attr-defined]
    model.append(lines([f"{'err' if i % 3 == 0 else 'out'} {i}" for i in range(40)]))
    model.flush()
    assert model.rowCount() == 40
    model.set_filter(compile_pattern("err", regex=False))
    assert model.rowCount() == 14
    model.append(lines([f"err more {i}" for i in range(30)]))
    model.flush()  # trims below 50 lines held: filtered rows of trimmed lines are removed
    assert all(model.number(r) >= model.buffer.start for r in range(model.rowCount()))
    assert model.data(model.index(model.rowCount() - 1)) == "err more 29"
    model.set_filter(None)
    model.clear()
    assert model.rowCount() == 0
    model.undo_clear()
    assert model.rowCount() == len(model.buffer)
    qtmodeltester.check(model, force_py=True)  # type: ignore[attr-defined]


def test_model_batches_one_insert_per_frame(qtbot: QtBot) -> None:
    model = LogModel()
    inserts: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _p, first, last: inserts.append((first, last)))
    for i in range(1000):
        model.append_one(Line("stdout", stamp(i), b"x %d\n" % i))
    assert model.rowCount() == 0 and model.pending == 1000
    qtbot.waitUntil(lambda: model.rowCount() == 1000, timeout=2000)
    assert inserts == [(0, 999)]


def test_model_roles_strip_ansi_for_display_and_keep_raw() -> None:
    model = LogModel()
    model.append([Line("stderr", "2026-11-30T04:51:44Z", b"\x1b[31mred\x1b[0m\n")])
    model.flush()
    index = model.index(0)
    assert model.data(index) == "red"
    assert model.data(index, LogModel.RawTextRole) == "\x1b[31mred\x1b[0m"
    assert model.data(index, LogModel.StreamRole) == "stderr"
    assert model.data(index, LogModel.TimeNsRole) == 1_796_014_304_000_000_000


def test_find_wraps_both_ways() -> None:
    model = LogModel()
    model.append(lines(["a match", "b", "c match", "d"]))
    model.flush()
    pattern = compile_pattern("match", regex=False)
    assert model.find(pattern, -1) == 0
    assert model.find(pattern, 0) == 2
    assert model.find(pattern, 2) == 0
    assert model.find(pattern, 0, backwards=True) == 2
    assert model.find(pattern, 3, backwards=True) == 2


# -- view and panel ---------------------------------------------------------------------------------------------


def make_panel(qtbot: QtBot) -> LogPanel:
    panel = LogPanel()
    panel.resize(800, 400)
    qtbot.addWidget(panel)
    panel.show()
    return panel


def test_follow_pauses_when_scrolled_up_and_resumes_at_bottom(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    view, model = panel.view, panel.model
    model.append(lines([f"line {i}" for i in range(500)]))
    model.flush()
    bar = view.verticalScrollBar()

    def following() -> bool:  # a call: mypy must not narrow the property across scrolls
        return view.following

    assert following() and bar.value() == bar.maximum() > 0
    bar.setValue(100)  # the user scrolls up
    assert not following() and not panel.follow_button.isChecked()
    assert "paused" in panel.status.text()
    model.append(lines([f"more {i}" for i in range(100)]))
    model.flush()
    assert bar.value() == 100 and view.top_row == 100  # stays where the user is
    bar.setValue(bar.maximum())
    assert following() and panel.follow_button.isChecked()
    model.append(lines([f"again {i}" for i in range(50)]))
    model.flush()
    assert bar.value() == bar.maximum()
    assert view.top_row + view.visible_rows() == model.rowCount()


def test_search_next_previous_and_matching_lines_only(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    panel.model.append(lines([f"{'ERROR' if i % 100 == 7 else 'info'} {i}" for i in range(1000)]))
    panel.model.flush()
    panel.search.setText("error")
    first = panel.find_next()
    assert first is not None and panel.model.text(first).startswith("ERROR")
    second = panel.find_next()
    assert second is not None and second > first
    assert panel.find_previous() == first
    panel.only_matching.setChecked(True)
    assert panel.model.rowCount() == 10
    assert all("ERROR" in panel.model.text(r) for r in range(10))
    assert "10 matching lines" in panel.status.text()
    panel.regex.setChecked(True)
    panel.search.setText("ERROR (1|2)07$")
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2, timeout=2000)
    panel.search.setText("([")
    qtbot.waitUntil(lambda: panel.search.property("invalid") is True, timeout=2000)
    assert "invalid regular expression" in panel.search.toolTip()
    panel.search.clear()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1000, timeout=2000)


def test_filter_applies_to_lines_arriving_later(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    panel.only_matching.setChecked(True)
    panel.search.setText("keep")
    qtbot.waitUntil(lambda: panel.model.filter_pattern is not None, timeout=2000)
    panel.model.append(lines(["keep 1", "drop", "keep 2"]))
    panel.model.flush()
    assert [panel.model.text(r) for r in range(panel.model.rowCount())] == ["keep 1", "keep 2"]


def test_clear_is_undoable_and_copy_strips_escapes(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    panel.model.append(lines(["\x1b[32mgreen\x1b[0m", "two", "three"]))
    panel.model.flush()
    panel.view.select_rows(0, 1)
    panel.copy()
    assert QGuiApplication.clipboard().text() == "green\ntwo"
    panel.clear()
    assert panel.model.rowCount() == 0 and panel.undo_button.isEnabled()
    panel.model.append(lines(["after clear"]))
    panel.model.flush()
    assert panel.model.rowCount() == 1
    panel.undo_clear()
    assert panel.model.rowCount() == 4 and not panel.undo_button.isEnabled()


def test_view_paints_ansi_and_stderr_rows(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    panel.model.append(lines(["\x1b[1;31mbold red\x1b[0m \x1b[38;2;1;2;3mtrue\x1b[4m ul"]))
    panel.model.append(lines(["oops"], stream="stderr"))
    panel.model.flush()
    panel.timestamps.setChecked(True)
    image = panel.view.viewport().grab().toImage()
    stderr_y = panel.view.line_height + panel.view.line_height // 2
    marker = image.pixelColor(1, stderr_y)
    assert marker.red() > 150 and marker.green() < 120  # the stderr tint marker
    assert image.pixelColor(1, panel.view.line_height // 2) == panel.view.colours.background


# -- feed -------------------------------------------------------------------------------------------------------


async def test_feed_history_then_live_then_restart_without_loss_or_repeat(qtbot: QtBot) -> None:
    log = FakeLog()
    for i in range(5):
        log.write(f"history {i}")
    panel = LogPanel(log)
    qtbot.addWidget(panel)
    await wait_for(lambda: panel.model.rowCount() + panel.model.pending >= 5, "history")
    log.write("live 0")
    log.write("live 1", "stderr", same_time=True)
    await wait_for(lambda: panel.model.rowCount() == 7, "live lines")
    log.stop()
    assert panel.feed is not None
    await wait_for(lambda: not panel.feed.running, "the stream to end")  # type: ignore[union-attr]
    # Lines written while the container was down and right at restart (same ns as the last one we have).
    log.write("between", "stderr", same_time=True)
    log.start()
    log.write("after restart")
    panel.feed.resume()
    await wait_for(lambda: panel.model.rowCount() == 9, "lines after restart")
    texts = [panel.model.text(r) for r in range(panel.model.rowCount())]
    assert texts == [f"history {i}" for i in range(5)] + ["live 0", "live 1", "between", "after restart"]
    await panel.feed.aclose()


async def test_tail_choice_reloads_and_save_writes_the_whole_file(qtbot: QtBot, tmp_path: Path) -> None:
    log = FakeLog()
    for i in range(3000):
        log.write(f"\x1b[34mline\x1b[0m {i}")
    log.stop()
    panel = LogPanel(log)
    qtbot.addWidget(panel)
    await wait_for(lambda: panel.model.rowCount() == 3000, "all history")
    index = next(i for i, h in enumerate(HISTORY_CHOICES) if h.tail == 1000)
    panel.history_box.setCurrentIndex(index)
    panel.history_box.activated.emit(index)
    await wait_for(lambda: panel.model.rowCount() == 1000 and not panel.feed.running,  # type: ignore[union-attr]
                   "the tail")
    assert panel.model.text(0).endswith(" 2000")
    saved = await panel.save_to(tmp_path / "out.log")
    content = (tmp_path / "out.log").read_text().splitlines()
    assert saved == 3000 and content[0] == "line 0" and content[-1] == "line 2999"
    with pytest.raises(ValueError, match="cannot save the log to"):
        await panel.save_to(tmp_path / "missing-dir" / "x.log")
    assert re.search(r"saved 3,000 lines", panel.status.text())
