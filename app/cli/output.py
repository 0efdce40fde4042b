"""Output helpers shared by CLI commands: Docker-style human sizes and times, tables, JSON lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

SubCommands = Any
"""The argparse sub-command action that command modules register their parsers on."""
"""What command modules register their parsers on."""

__all__ = [
    "SubCommands",
    "each",
    "human_duration_since",
    "human_size",
    "inspect_each",
    "parse_rfc3339",
    "print_json_lines",
    "print_table",
]


def human_size(size: float) -> str:
    """Docker's HumanSize: decimal units with 3 significant digits ("4.26MB", "1.5GB", "512B")."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    value = float(size)
    index = 0
    while value >= 1000 and index < len(units) - 1:
        value /= 1000
        index += 1
    text = f"{value:.3g}"
    if "e" in text:  # 3 significant digits of e.g. 999.6 round to 1e+03: show 1000 instead
        text = f"{value:.0f}"
    return f"{text}{units[index]}"


def parse_rfc3339(text: str | None) -> float | None:
    if not text:
        return None
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    # Python 3.11 parses at most microseconds: trim nanoseconds.
    if "." in value:
        head, _, rest = value.partition(".")
        digits = ""
        for char in rest:
            if char.isdigit():
                digits += char
            else:
                break
        value = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def human_duration_since(timestamp: float | None, now: float | None = None) -> str:
    """Docker's "About an hour ago" style."""
    if timestamp is None:
        return "N/A"
    seconds = max(0.0, (now if now is not None else time.time()) - timestamp)
    return f"{human_duration(seconds)} ago"


def human_duration(seconds: float) -> str:
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if round(minutes) == 1:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if round(hours) == 1:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days"
    if days < 60:
        return f"{int(days / 7)} weeks"
    if days < 730:
        return f"{int(days / 30)} months"
    return f"{int(days / 365)} years"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Left-aligned columns separated by at least three spaces, like Docker's tabwriter output."""
    out = out or sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        out.write("   ".join(cells).rstrip() + "\n")


def print_json_lines(objects: Sequence[Mapping[str, Any]], out: TextIO | None = None) -> None:
    """One JSON object per line, like ``--format '{{json .}}'``."""
    out = out or sys.stdout
    for obj in objects:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")


async def each(names: Sequence[str], action: Callable[[str], Awaitable[object]], *, echo: bool = True) -> int:
    """Apply ``action`` to every name, reporting each failure like Docker and carrying on; echo successes."""
    from engine import KiteboxError

    status = 0
    for name in names:
        try:
            await action(name)
        except KiteboxError as err:
            print(f"Error response from daemon: {err}", file=sys.stderr)
            status = err.exit_code
            continue
        if echo:
            print(name)
    return status


async def inspect_each(names: Sequence[str], fetch: Callable[[str], Awaitable[Mapping[str, Any]]]) -> int:
    """Print the JSON array of ``fetch(name)`` documents; a name that fails is reported and skipped."""
    from engine import KiteboxError

    documents = []
    status = 0
    for name in names:
        try:
            documents.append(await fetch(name))
        except KiteboxError as err:
            print(f"Error: {err}", file=sys.stderr)
            status = err.exit_code
    print(json.dumps(documents, indent=4))
    return status
