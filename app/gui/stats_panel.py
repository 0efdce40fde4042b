"""The Stats tab: live CPU and memory plots plus network, block I/O and process figures of one container.

Samples come from ``engine.containers.stats([id], stream=True)`` (one per interval, CPU % measured over it). The
panel samples only while it is visible: ``showEvent`` starts the stream and ``hideEvent`` cancels it (closing
the engine's generator), so a container page left on another tab, or another container, costs nothing. The
plots are drawn with QPainter (a ring of the last ``history`` values, no plotting dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QHideEvent, QPainter, QPainterPath, QPaintEvent, QPalette, QPen, QShowEvent
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from app.gui.aio import cancel_and_wait
from app.gui.images_page import human_size
from app.gui.theme import ACCENT
from engine import Engine, KiteboxError, StatsSample

__all__ = ["Plot", "StatsPanel", "StatsSource", "engine_stats"]

StatsSource = Callable[[str, float], AsyncIterator[StatsSample]]
_HISTORY: Final = 120


def engine_stats(engine: Engine) -> StatsSource:
    """The engine's sample stream for one container."""

    def source(container: str, interval: float) -> AsyncIterator[StatsSample]:
        return engine.containers.stats([container], stream=True, interval=interval)

    return source


class Plot(QWidget):
    """A filled line chart of the last values, with the latest value and the scale written on it."""

    def __init__(self, title: str, colour: str, formatter: Callable[[float], str], parent: QWidget | None = None,
                 *, ceiling: Callable[[], float] | None = None, history: int = _HISTORY) -> None:
        super().__init__(parent)
        self.title = title
        self.colour = QColor(colour)
        self.formatter = formatter
        self.ceiling = ceiling  # the top of the scale (memory limit, 100 % x CPUs...), else the largest value
        self.values: deque[float] = deque(maxlen=history)
        self.setMinimumHeight(140)

    def add(self, value: float) -> None:
        self.values.append(value)
        self.update()

    def clear(self) -> None:
        self.values.clear()
        self.update()

    def top(self) -> float:
        peak = max(self.values, default=0.0)
        limit = self.ceiling() if self.ceiling is not None else 0.0
        return max(max(limit, peak) if 0 < limit < peak * 50 else peak * 1.2, 1e-9)

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        area = QRectF(self.rect()).adjusted(8, 26, -8, -8)
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        grid = QColor(palette.color(QPalette.ColorRole.Mid))
        painter.setPen(QPen(grid, 1))
        for i in range(5):
            y = area.top() + area.height() * i / 4
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        painter.setPen(palette.color(QPalette.ColorRole.Text))
        latest = self.formatter(self.values[-1]) if self.values else "–"
        painter.drawText(QRectF(8, 4, self.width() - 16, 20), Qt.AlignmentFlag.AlignLeft, f"{self.title}: {latest}")
        painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
        painter.drawText(QRectF(8, 4, self.width() - 16, 20), Qt.AlignmentFlag.AlignRight,
                         f"scale {self.formatter(self.top())}")
        if len(self.values) >= 2:
            top = self.top()
            step = area.width() / max(1, (self.values.maxlen or _HISTORY) - 1)
            x0 = area.right() - step * (len(self.values) - 1)
            line = QPainterPath()
            for i, value in enumerate(self.values):
                point = QPointF(x0 + i * step, area.bottom() - area.height() * min(value, top) / top)
                line.moveTo(point) if i == 0 else line.lineTo(point)
            fill = QPainterPath(line)
            fill.lineTo(QPointF(area.right(), area.bottom()))
            fill.lineTo(QPointF(x0, area.bottom()))
            fill.closeSubpath()
            shade = QColor(self.colour)
            shade.setAlpha(60)
            painter.fillPath(fill, shade)
            painter.setPen(QPen(self.colour, 2))
            painter.drawPath(line)
        painter.end()


class StatsPanel(QWidget):
    """Plots and figures for one container; samples only while shown (see the module docstring)."""

    def __init__(self, source: StatsSource, parent: QWidget | None = None, *, interval: float = 1.0) -> None:
        super().__init__(parent)
        self.source = source
        self.interval = interval
        self.container: str | None = None
        self.samples = 0  # received since the panel was created (tests, status)
        self.last: StatsSample | None = None
        self._previous: StatsSample | None = None
        self._task: asyncio.Task[None] | None = None
        self.cpu = Plot("CPU", ACCENT, lambda v: f"{v:.1f} %", self, ceiling=self._cpu_ceiling)
        self.memory = Plot("Memory", "#27ae60", lambda v: human_size(int(v)), self, ceiling=self._memory_ceiling)
        self.figures: dict[str, QLabel] = {}
        grid = QGridLayout()
        for row, (key, title) in enumerate((("net", "Network"), ("block", "Block I/O"), ("pids", "Processes"),
                                            ("limit", "Memory limit"))):
            label = QLabel(title, self)
            label.setObjectName("Subtle")
            value = QLabel("–", self)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(label, row, 0)
            grid.addWidget(value, row, 1)
            self.figures[key] = value
        grid.setColumnStretch(1, 1)
        self.status = QLabel(self)
        self.status.setObjectName("Subtle")
        layout = QVBoxLayout(self)
        layout.addWidget(self.cpu, 1)
        layout.addWidget(self.memory, 1)
        layout.addLayout(grid)
        layout.addWidget(self.status)

    def _cpu_ceiling(self) -> float:
        return 100.0

    def _memory_ceiling(self) -> float:
        return float(self.last.memory_limit) if self.last is not None else 0.0

    @property
    def sampling(self) -> bool:
        return self._task is not None and not self._task.done()

    def set_container(self, container: str | None) -> None:
        """Show ``container`` (an id or name); the plots start empty."""
        if container == self.container:
            return
        self.stop()
        self.container = container
        self.last = self._previous = None
        self.cpu.clear()
        self.memory.clear()
        for label in self.figures.values():
            label.setText("–")
        if self.isVisible():
            self.start()

    def start(self) -> None:
        if self.container is not None and not self.sampling:
            self._task = asyncio.ensure_future(self._run(self.container))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.start()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self.stop()

    async def _run(self, container: str) -> None:
        self.status.setText("Sampling every second…" if self.interval == 1.0 else "Sampling…")
        stream = self.source(container, self.interval)
        try:
            async for sample in stream:
                self.add(sample)
        except KiteboxError as err:
            self.status.setText(f"Stats unavailable: {err}")
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    def add(self, sample: StatsSample) -> None:
        """One sample: plots move, figures update (rates from the previous sample)."""
        self.samples += 1
        self._previous, self.last = self.last, sample
        self.cpu.add(sample.cpu_percent)
        self.memory.add(float(sample.memory_usage))
        previous = self._previous
        elapsed = sample.read - previous.read if previous is not None else 0.0
        if previous is not None and elapsed > 0:
            rx = max(0, sample.net_rx - previous.net_rx) / elapsed
            tx = max(0, sample.net_tx - previous.net_tx) / elapsed
            rates = f"  (↓ {human_size(int(rx))}/s  ↑ {human_size(int(tx))}/s)"
        else:
            rates = ""
        self.figures["net"].setText(f"received {human_size(sample.net_rx)}, sent {human_size(sample.net_tx)}{rates}")
        self.figures["block"].setText(f"read {human_size(sample.block_read)}, written {human_size(sample.block_write)}")
        self.figures["pids"].setText(str(sample.pids))
        limit = sample.memory_limit
        self.figures["limit"].setText(f"{human_size(limit)} ({sample.memory_percent:.1f} % used)" if limit else "none")
        self.status.setText(f"{self.samples:,} samples")
