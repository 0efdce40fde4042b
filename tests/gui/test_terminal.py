"""The in-app terminal: the emulator model (scrollback, alternate screen, replies, resize), the key mapping, the
view's painting, and real shells in a real container (root): colours, vi's alternate screen, top, and the
terminal size reaching the program (``stty size``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from app.gui.terminal import TerminalView
from app.gui.terminal_tabs import TerminalSession, TerminalTabs
from app.gui.theme import log_colours
from app.gui.vt import TerminalScreen, key_bytes, line_runs
from engine import CreateOptions, Engine
from tests.support.wait import async_wait_until as wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
_M = Qt.KeyboardModifier
_K = Qt.Key




def feed(screen: TerminalScreen, data: bytes) -> None:
    pyte.ByteStream(screen).feed(data)


def in_alternate(screen: TerminalScreen) -> bool:
    return screen.alternate


# -- the model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "modifiers", "text", "app", "expected"), [
    (_K.Key_Up, _M.NoModifier, "", False, b"\x1b[A"),
    (_K.Key_Up, _M.NoModifier, "", True, b"\x1bOA"),
    (_K.Key_Left, _M.ControlModifier, "", False, b"\x1b[1;5D"),
    (_K.Key_Home, _M.NoModifier, "", False, b"\x1b[H"),
    (_K.Key_End, _M.NoModifier, "", True, b"\x1bOF"),
    (_K.Key_PageUp, _M.NoModifier, "", False, b"\x1b[5~"),
    (_K.Key_PageDown, _M.ShiftModifier, "", False, b"\x1b[6;2~"),
    (_K.Key_Delete, _M.NoModifier, "", False, b"\x1b[3~"),
    (_K.Key_F1, _M.NoModifier, "", False, b"\x1bOP"),
    (_K.Key_F5, _M.NoModifier, "", False, b"\x1b[15~"),
    (_K.Key_F12, _M.AltModifier, "", False, b"\x1b[24;3~"),
    (_K.Key_C, _M.ControlModifier, "\x03", False, b"\x03"),
    (_K.Key_BracketLeft, _M.ControlModifier, "", False, b"\x1b"),
    (_K.Key_X, _M.AltModifier, "x", False, b"\x1bx"),
    (_K.Key_Tab, _M.NoModifier, "\t", False, b"\t"),
    (_K.Key_Backtab, _M.ShiftModifier, "", False, b"\x1b[Z"),
    (_K.Key_Backspace, _M.NoModifier, "\x08", False, b"\x7f"),
    (_K.Key_Return, _M.NoModifier, "\r", False, b"\r"),
    (_K.Key_Escape, _M.NoModifier, "\x1b", False, b"\x1b"),
    (_K.Key_E, _M.NoModifier, "é", False, "é".encode()),
    (_K.Key_Shift, _M.ShiftModifier, "", False, None),
])
def test_keys_map_to_xterm_sequences(key: Qt.Key, modifiers: Qt.KeyboardModifier, text: str, app: bool,
                                     expected: bytes | None) -> None:
    assert key_bytes(key, modifiers, text, application_cursor=app) == expected


def test_scrollback_alternate_screen_replies_and_resize() -> None:
    screen = TerminalScreen(20, 5, scrollback=100)
    feed(screen, b"\x1b[31mred\x1b[0m plain\r\n" + b"".join(b"line %d\r\n" % i for i in range(10)))
    assert screen.text(with_scrollback=True)[:3] == ["red plain", "line 0", "line 1"]
    assert len(screen.scrollback) == 7 and screen.pushed == 7
    runs = line_runs(screen.scrollback[0], 20)
    assert (runs[0].text, runs[0].fg) == ("red", "red") and runs[1].fg == "default"
    main = screen.text()
    feed(screen, b"\x1b[?1049h\x1b[2J\x1b[Hin vi")
    assert in_alternate(screen) and screen.text()[0] == "in vi"
    feed(screen, b"\r\n" * 10)  # scrolling in the alternate screen leaves no scrollback
    assert screen.pushed == 7
    feed(screen, b"\x1b[?1049l")
    assert not in_alternate(screen) and screen.text() == main and (screen.cursor.x, screen.cursor.y) == (0, 4)
    feed(screen, b"\x1b[6n\x1b[c")
    assert screen.take_replies() == b"\x1b[5;1R\x1b[?6c"
    screen.resize(3, 10)  # the cursor line stays on screen; the lines above it go to the scrollback
    assert screen.text() == ["line 8", "line 9", ""] and screen.pushed == 9
    short = TerminalScreen(20, 5)
    feed(short, b"$ ")
    short.resize(2, 20)  # a short session keeps its prompt (pyte alone would drop the top lines)
    assert short.text() == ["$", ""] and not short.scrollback


def test_scrolling_keeps_dirty_about_content() -> None:
    screen = TerminalScreen(10, 4)
    feed(screen, b"a\r\nb\r\nc\r\nd")
    screen.dirty.clear()
    feed(screen, b"\r\ne")  # one scroll: only the new bottom line changed
    assert screen.dirty == {3} and screen.text() == ["b", "c", "d", "e"]


# -- the view ------------------------------------------------------------------------------------------------------


def near(colour: QColor, wanted: QColor, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in ((colour.red(), wanted.red()), (colour.green(), wanted.green()),
                                                     (colour.blue(), wanted.blue())))


def cell_has_colour(image: QImage, view: TerminalView, row: int, columns: range, wanted: QColor) -> bool:
    ratio = image.devicePixelRatio()
    top, bottom = 4 + row * view.line_height, 4 + (row + 1) * view.line_height
    left, right = 4 + columns.start * view.cell_width, 4 + columns.stop * view.cell_width
    return any(near(image.pixelColor(int(x * ratio), int(y * ratio)), wanted)
               for y in range(top, bottom) for x in range(left, right))


def test_view_paints_colours_and_coalesces_frames(qtbot: QtBot) -> None:
    view = TerminalView(rows=10, columns=40)
    qtbot.addWidget(view)
    view.resize(600, 300)
    view.show()
    qtbot.waitExposed(view)
    view.feed(b"\x1b[31mred\x1b[0m \x1b[42mgreen bg\x1b[0m \x1b[38;2;120;80;255mtrue\x1b[0m\r\n")
    frames = view.painted_frames
    for i in range(2000):  # a flood is parsed at once, painted per frame
        view.feed(b"flood %d\r\n" % i)
    qtbot.waitUntil(lambda: view.painted_frames > frames, timeout=2000)
    assert view.painted_frames - frames < 10
    view.scroll_lines(10_000)  # back to the top of the scrollback: the coloured line
    assert view.offset == len(view.vt.scrollback)
    image = view.viewport().grab().toImage()
    colours = log_colours(False)
    assert cell_has_colour(image, view, 0, range(0, 3), colours.ansi[1])
    assert cell_has_colour(image, view, 0, range(4, 12), colours.ansi[2])
    assert cell_has_colour(image, view, 0, range(13, 17), QColor(120, 80, 255))
    assert not cell_has_colour(image, view, 0, range(0, 3), colours.ansi[2])
    view.select((view.vt.pushed - view.offset, 0), (view.vt.pushed - view.offset, 3))
    view.copy()
    assert QGuiApplication.clipboard().text() == "red"
    sent: list[bytes] = []
    view.input.connect(sent.append)
    feed_mode = b"\x1b[?2004h"
    view.feed(feed_mode)
    QGuiApplication.clipboard().setText("echo a\necho b")
    view.paste()
    assert sent == [b"\x1b[200~echo a\recho b\x1b[201~"] and view.offset == 0  # pasting returns to the screen


# -- real shells in a real container -------------------------------------------------------------------------------


async def running_container(engine: Engine, image: str) -> str:
    record = await engine.create_container(image, CreateOptions(cmd=("sleep", "1000"), network="none"))
    await engine.containers.start(record.id)
    return record.id


def screen_lines(view: TerminalView) -> list[str]:
    return view.vt.text(with_scrollback=True)


async def run_command(view: TerminalView, qtbot: QtBot, command: str, expected: Callable[[list[str]], bool],
                      what: str, timeout: float = 10.0) -> None:
    QTest.keyClicks(view, command)
    QTest.keyClick(view, _K.Key_Return)
    await wait_for(lambda: expected(screen_lines(view)), what, timeout, detail=lambda: screen_lines(view)[-12:])


@pytest.mark.root
@pytest.mark.registry
async def test_shell_colours_vi_top_and_resize_in_a_real_container(gui_engine: Engine, busybox_ref: str,
                                                                   qtbot: QtBot) -> None:
    container = await running_container(gui_engine, busybox_ref)
    tabs = TerminalTabs(gui_engine, container)
    qtbot.addWidget(tabs)
    tabs.resize(820, 480)
    tabs.show()
    qtbot.waitExposed(tabs)
    view = tabs.open_terminal()
    session: TerminalSession = tabs.sessions[0]
    try:
        await wait_for(lambda: any(line.endswith("#") for line in screen_lines(view)), "the shell prompt",
                       detail=lambda: screen_lines(view))
        assert session.shell == ("sh",)  # busybox has no bash: the next shell was used

        await run_command(view, qtbot, r"printf '\033[31mred\033[0m \033[1;32mbold green\033[0m\n'",
                          lambda lines: "red bold green" in lines, "coloured output")
        row = view.vt.text().index("red bold green")
        line = view.vt.buffer[row]
        assert (line[0].fg, line[4].fg, line[4].bold) == ("red", "green", True)
        await run_command(view, qtbot, "ls --color=always /", lambda lines: any("proc" in x for x in lines), "ls")
        await asyncio.sleep(0)  # let the frame timer fire before grabbing
        await wait_for(lambda: not view._repaint.isActive(), "the repaint")
        image = view.viewport().grab().toImage()
        row = view.vt.text().index("red bold green")
        assert cell_has_colour(image, view, row, range(0, 3), log_colours(False).ansi[1])
        ARTIFACTS.mkdir(exist_ok=True)
        assert tabs.grab().save(str(ARTIFACTS / "terminal.png"))

        rows, columns = view.vt.lines, view.vt.columns
        await run_command(view, qtbot, "stty size", lambda lines: f"{rows} {columns}" in lines, "stty size")
        tabs.resize(620, 330)
        await wait_for(lambda: (view.vt.lines, view.vt.columns) != (rows, columns), "the new grid")
        rows, columns = view.vt.lines, view.vt.columns
        await wait_for(lambda: session.sent_sizes[-1] == (rows, columns), "the resize to reach the session")
        await run_command(view, qtbot, "stty size", lambda lines: f"{rows} {columns}" in lines,
                          "stty size after resize")

        await run_command(view, qtbot, "vi /tmp/note", lambda _l: view.vt.alternate and "~" in view.vt.text(),
                          "vi's alternate screen")
        QTest.keyClicks(view, "ihello from vi")
        await wait_for(lambda: "hello from vi" in view.vt.text()[0], "the typed text", detail=view.vt.text)
        QTest.keyClick(view, _K.Key_Escape)  # (a lone ESC: vi waits to tell it from an escape sequence)
        await wait_for(lambda: view.vt.text()[-1].startswith("- "), "vi's command mode", detail=view.vt.text)
        QTest.keyClicks(view, ":wq")
        QTest.keyClick(view, _K.Key_Return)
        await wait_for(lambda: not view.vt.alternate, "vi to leave the alternate screen")
        assert not any("hello from vi" in line for line in screen_lines(view))  # vi's screen left no trace
        await run_command(view, qtbot, "cat /tmp/note", lambda lines: "hello from vi" in lines, "the file vi wrote")

        await run_command(view, qtbot, "top", lambda _l: any(x.lstrip().startswith("PID") for x in view.vt.text()),
                          "top's process list")
        assert any("Mem:" in x for x in view.vt.text())
        assert tabs.grab().save(str(ARTIFACTS / "terminal-top.png"))
        QTest.keyClick(view, _K.Key_Q)
        await wait_for(lambda: view.vt.text()[view.vt.cursor.y].endswith("#"), "the prompt after top")

        second = tabs.open_terminal()  # several terminals per container
        await wait_for(lambda: any(x.endswith("#") for x in screen_lines(second)), "the second shell")
        assert tabs.tabs.count() == 2
        QTest.keyClicks(second, "exit 3")
        QTest.keyClick(second, _K.Key_Return)
        await wait_for(lambda: second.ended_message is not None, "the second shell to end")
        assert second.ended_message == "[process exited with code 3]"
    finally:
        await tabs.aclose()
