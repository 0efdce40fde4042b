"""System commands: version (more join with the snapshot and runtime work)."""

from __future__ import annotations

import argparse

from app.cli.output import SubCommands
from engine import Engine

__all__ = ["register"]


def register(commands: SubCommands, image_group: SubCommands) -> None:
    p = commands.add_parser("version", help="Show the Kitebox version information")
    p.set_defaults(handler=version)


async def version(engine: Engine, args: argparse.Namespace) -> int:
    info = engine.version()
    print("Kitebox (engine in-process):")
    for key in ("Version", "ApiVersion", "PythonVersion", "Os", "Arch", "KernelVersion", "Root"):
        print(f" {key + ':':<16}{info[key]}")
    return 0
