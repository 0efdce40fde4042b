"""Light and dark looks following the desktop, the log view's colours, and the SVG icon set.

The desktop's colour scheme comes from ``QStyleHints.colorScheme()`` (Qt 6.5+); ``KITEBOX_THEME=light|dark``
overrides it (screenshots, testing). The app uses the Fusion style with a palette per scheme, so it looks the
same on every desktop and both schemes are tested offscreen. Icons live in ``resources/icons/*.svg`` drawn in
``currentColor``; they are recoloured for the current scheme when loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from PySide6.QtCore import QByteArray, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication

__all__ = ["BUTTON_ACCENT", "DANGER", "ICON_DIR", "LogColours", "apply_theme", "icon", "is_dark", "log_colours",
           "status_colour"]

ICON_DIR: Final = Path(__file__).resolve().parents[2] / "resources" / "icons"

ACCENT: Final = "#2f80ed"
BUTTON_ACCENT: Final = "#1f6fd6"  # white text on it: 4.9:1 (ACCENT gives 3.9:1, below WCAG AA)
DANGER: Final = {False: "#c62828", True: "#ff7b7b"}  # 5.0:1 / 5.2:1 on the button colour of each scheme


def is_dark() -> bool:
    """Whether the app is (or should be) dark: ``KITEBOX_THEME``, else the desktop's colour scheme."""
    forced = os.environ.get("KITEBOX_THEME", "").lower()
    if forced in ("light", "dark"):
        return forced == "dark"
    app = QGuiApplication.instance()
    if isinstance(app, QGuiApplication):
        return app.styleHints().colorScheme() == Qt.ColorScheme.Dark
    return False


def apply_theme(app: QApplication) -> None:
    """Fusion + a palette for the scheme; follows later desktop changes of the scheme."""
    app.setStyle("Fusion")
    app.setProperty("kiteboxTheme", True)
    _apply_palette(app, is_dark())
    hints = app.styleHints()
    hints.colorSchemeChanged.connect(lambda _scheme: _apply_palette(app, is_dark()))


def _apply_palette(app: QApplication, dark: bool) -> None:
    icon.cache_clear()
    palette = QPalette()
    colours = _DARK if dark else _LIGHT
    for role, value in colours.items():
        palette.setColor(role, QColor(value))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor(colours[_MUTED]))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor(colours[_MUTED]))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText, QColor(colours[_MUTED]))
    app.setPalette(palette)
    app.setStyleSheet(_STYLE_SHEET.replace("@accent", BUTTON_ACCENT).replace("@danger", DANGER[dark])
                      .replace("@line", "#3a3f47" if dark else "#d9dde3")
                      .replace("@side", "#1f2329" if dark else "#f3f5f8"))


_MUTED: Final = QPalette.ColorRole.PlaceholderText
_R = QPalette.ColorRole
_LIGHT: Final = {
    _R.Window: "#fafbfc", _R.WindowText: "#1d2330", _R.Base: "#ffffff", _R.AlternateBase: "#f3f5f8",
    _R.Text: "#1d2330", _R.Button: "#f0f2f5", _R.ButtonText: "#1d2330", _R.Highlight: ACCENT,
    _R.HighlightedText: "#ffffff", _R.ToolTipBase: "#ffffff", _R.ToolTipText: "#1d2330", _R.Link: "#1a66c9",
    _R.PlaceholderText: "#646c7a", _R.Mid: "#c9ced6", _R.Dark: "#9aa2ae", _R.Light: "#ffffff",
}
_DARK: Final = {
    _R.Window: "#22262c", _R.WindowText: "#e3e6eb", _R.Base: "#1a1d22", _R.AlternateBase: "#262a31",
    _R.Text: "#e3e6eb", _R.Button: "#2d3239", _R.ButtonText: "#e3e6eb", _R.Highlight: ACCENT,
    _R.HighlightedText: "#ffffff", _R.ToolTipBase: "#2d3239", _R.ToolTipText: "#e3e6eb", _R.Link: "#6aa8ff",
    _R.PlaceholderText: "#8f96a2", _R.Mid: "#3a3f47", _R.Dark: "#15181c", _R.Light: "#3a3f47",
}

_STYLE_SHEET: Final = """
#Sidebar { background: @side; border-right: 1px solid @line; }
#Sidebar QListView { background: transparent; border: none; }
#PageHeader { border-bottom: 1px solid @line; }
#PageTitle { font-size: 16pt; font-weight: 600; }
#Subtle { color: palette(placeholder-text); }
#Banner { background: rgba(47,128,237,0.12); border: 1px solid rgba(47,128,237,0.4); border-radius: 6px;
          padding: 8px; }
#Warning { background: rgba(235,87,87,0.12); border: 1px solid rgba(235,87,87,0.5); border-radius: 6px;
           padding: 8px; }
QPushButton#Primary { background: @accent; color: white; border: none; border-radius: 4px; padding: 5px 14px; }
QPushButton#Primary:disabled { background: palette(mid); }
QPushButton#Danger { color: @danger; }
QLineEdit[invalid="true"] { border: 1px solid @danger; }
QTabWidget::pane { border-top: 1px solid @line; }
"""


# -- log colours ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogColours:
    ansi: tuple[QColor, ...]  # the 16 themed palette entries
    foreground: QColor
    background: QColor
    stderr_background: QColor
    stderr_marker: QColor
    timestamp: QColor
    selection: QColor
    match: QColor
    current_match: QColor


_ANSI_LIGHT: Final = ("#1d2330", "#c62828", "#2e7d32", "#a86500", "#1565c0", "#8e24aa", "#00838f", "#9aa2ae",
                      "#5c6370", "#e53935", "#43a047", "#d18a00", "#1e88e5", "#ab47bc", "#00acc1", "#1d2330")
_ANSI_DARK: Final = ("#3a3f47", "#ef6b6b", "#7ccf7c", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#c8ccd4",
                     "#7d8592", "#ff8080", "#98e698", "#f0d080", "#8cc4ff", "#dda0f0", "#7fd8e0", "#ffffff")


@cache
def log_colours(dark: bool) -> LogColours:
    if dark:
        return LogColours(tuple(QColor(c) for c in _ANSI_DARK), QColor("#d7dae0"), QColor("#15181c"),
                          QColor(235, 87, 87, 34), QColor("#e06c75"), QColor("#7d8592"), QColor(47, 128, 237, 90),
                          QColor(229, 192, 123, 80), QColor(229, 192, 123, 170))
    return LogColours(tuple(QColor(c) for c in _ANSI_LIGHT), QColor("#1d2330"), QColor("#ffffff"),
                      QColor(235, 87, 87, 22), QColor("#d64545"), QColor("#646c7a"), QColor(47, 128, 237, 60),
                      QColor(255, 214, 0, 90), QColor(255, 170, 0, 170))


def status_colour(status: str, *, pulling: bool = False) -> QColor:
    """The sidebar's status dot."""
    if pulling:
        return QColor(ACCENT)
    return QColor({"running": "#27ae60", "restarting": "#f2994a", "paused": "#f2c94c", "dead": "#eb5757",
                   "removing": "#eb5757"}.get(status, "#9aa2ae"))


# -- icons ---------------------------------------------------------------------------------------------------------


@cache
def icon(name: str, colour: str | None = None) -> QIcon:
    """``resources/icons/<name>.svg`` recoloured (``currentColor``) for the scheme, at 1x and 2x."""
    path = ICON_DIR / f"{name}.svg"
    try:
        svg = path.read_text()
    except OSError:
        raise ValueError(f"icon {name!r}: no such file {path}") from None
    if colour is None:
        app = QGuiApplication.instance()
        colour = (app.palette().color(QPalette.ColorRole.WindowText).name()
                  if isinstance(app, QGuiApplication) else "#1d2330")
    renderer = QSvgRenderer(QByteArray(svg.replace("currentColor", colour).encode()))
    result = QIcon()
    for size in (16, 24, 32, 48):
        pixmap = QPixmap(QSize(size, size))
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        result.addPixmap(pixmap)
    return result
