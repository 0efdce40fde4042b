"""Benchmark of the desktop app's log view: ingest rate, event-loop lag and memory (not a timed test).

Two runs, each with a visible, following ``LogPanel`` (offscreen) on the qasync loop and a lag probe (a task
that asks to wake every 5 ms and records how late it is woken):

* ``model``: N synthetic lines (a third with ANSI colours, some stderr) fed the way ``LogFeed`` feeds them,
  in batches of 512 (what the engine's reader yields per thread hop) -- the GUI's own cost;
* ``engine``: a real json-file log written with the engine's ``LogWriter`` and read back through the engine's
  ``read_logs`` into the panel -- what a user sees, including JSON decoding.

Prints lines/s, lag p50/p99 and memory (RSS growth and the buffer's own bytes). Targets: >= 200,000 lines/s,
lag p99 <= 50 ms, 1,000,000 lines in <= 300 MB.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.gui_logs [--lines 1000000] [--engine-lines 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication

from app.gui.logbuffer import LogLine
from app.gui.logpanel import LogPanel
from app.gui.qtfix import EventLoop


@dataclass(frozen=True, slots=True)
class Line:
    stream: str
    time: str
    data: bytes


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    return 0.0


def synthetic(count: int) -> list[Line]:
    base = 1_796_014_304
    lines = []
    for i in range(count):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + i // 5000)) + f".{i % 1_000_000:06d}Z"
        if i % 3 == 0:
            text = f"\x1b[32mINFO\x1b[0m GET /api/items/{i} \x1b[1m200\x1b[0m in {i % 97}ms user=alice\n"
        elif i % 17 == 0:
            text = f"WARN upstream cache miss for key user:{i} after {i % 13} retries\n"
        else:
            text = f"request id={i:08x} path=/static/app.{i % 50}.js bytes={i * 7 % 100000} status=200\n"
        lines.append(Line("stderr" if i % 17 == 0 else "stdout", stamp, text.encode()))
    return lines


class LagProbe:
    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lags.append(max(0.0, loop.time() - planned))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def report(self) -> str:
        if not self.lags:
            return "lag: no samples"
        ordered = sorted(self.lags)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return f"lag p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


class ListSource:
    """Yields prepared lines in batches of 512 with a loop hop in between (like the engine's reader)."""

    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines

    async def follow(self, *, tail: int | None, since: float | None) -> AsyncIterator[Line]:
        for start in range(0, len(self.lines), 512):
            await asyncio.sleep(0)
            for line in self.lines[start : start + 512]:
                yield line

    async def before(self, time_ns: int, held: int, count: int) -> Sequence[Line]:
        return []  # everything is in memory: there is never an older page to load

    async def history(self) -> AsyncIterator[Line]:
        for line in self.lines:
            yield line


class EngineSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def follow(self, *, tail: int | None, since: float | None) -> AsyncIterator[LogLine]:
        from engine.logs import read_logs

        return read_logs(self.path, tail=tail, since=since)

    def history(self) -> AsyncIterator[LogLine]:
        return self.follow(tail=None, since=None)

    async def before(self, time_ns: int, held: int, count: int) -> Sequence[LogLine]:
        return []  # the benchmark measures ingest, not paging


async def measure(name: str, source: ListSource | EngineSource, expected: int) -> None:
    panel = LogPanel()
    panel.resize(1200, 800)
    panel.show()
    rss_before = rss_mb()
    probe = LagProbe()
    probe.start()
    started = time.perf_counter()
    panel.set_source(source)
    feed = panel.feed
    assert feed is not None
    while feed.running or panel.model.pending:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await probe.stop()
    rows = panel.model.rowCount()
    buffer = panel.model.buffer
    print(f"[{name}] {rows:,} rows (+{buffer.trimmed:,} trimmed) of {expected:,} in {elapsed:.2f} s: "
          f"{expected / elapsed:,.0f} lines/s; {probe.report()}; "
          f"RSS +{rss_mb() - rss_before:.0f} MB (total {rss_mb():.0f} MB), buffer {buffer.nbytes / 1e6:.0f} MB")
    panel.search.setText("cache miss")
    filter_started = time.perf_counter()
    panel.only_matching.setChecked(True)  # applies the filter at once
    print(f"[{name}] filter 'cache miss' over {rows:,} lines: {panel.model.rowCount():,} matches in "
          f"{(time.perf_counter() - filter_started) * 1000:.0f} ms")
    panel.close()
    panel.deleteLater()


def write_json_log(path: Path, count: int) -> None:
    from engine.logs import LogWriter

    writer = LogWriter(path)
    for line in synthetic(count):
        writer.write(line.stream, line.data)
    writer.close()


async def main(args: argparse.Namespace) -> None:
    print(f"python {sys.version.split()[0]}, start RSS {rss_mb():.0f} MB")
    lines = synthetic(args.lines)
    await measure("model", ListSource(lines), len(lines))
    del lines
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c-json.log"
        write_json_log(path, args.engine_lines)
        await measure("engine", EngineSource(path), args.engine_lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--engine-lines", type=int, default=300_000)
    app = QApplication(sys.argv[:1])
    loop = EventLoop(app)
    asyncio.set_event_loop(loop)
    with loop:
        loop.run_until_complete(main(parser.parse_args()))
