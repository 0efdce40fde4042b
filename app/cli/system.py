"""System commands: version, system df, image mount/unmount."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli.output import SubCommands, human_size, print_table
from engine import Engine

__all__ = ["register"]


def register(commands: SubCommands, image_group: SubCommands) -> None:
    p = commands.add_parser("version", help="Show the Kitebox version information")
    p.set_defaults(handler=version)
    system = commands.add_parser("system", help="Manage Kitebox")
    system_group = system.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    p = system_group.add_parser("df", help="Show disk usage")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=system_df)
    p = image_group.add_parser("mount", help="Mount a read-only view of an image's root filesystem at DIR")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("target", metavar="DIR", type=Path)
    p.set_defaults(handler=image_mount)
    p = image_group.add_parser("unmount", aliases=["umount"], help="Remove a view made by 'image mount'")
    p.add_argument("target", metavar="DIR", type=Path)
    p.set_defaults(handler=image_unmount)


async def version(engine: Engine, args: argparse.Namespace) -> int:
    info = engine.version()
    print("Kitebox (engine in-process):")
    for key in ("Version", "ApiVersion", "PythonVersion", "Os", "Arch", "KernelVersion", "Root"):
        print(f" {key + ':':<16}{info[key]}")
    return 0


async def system_df(engine: Engine, args: argparse.Namespace) -> int:
    usage = await engine.disk_usage()
    if args.format == "json":
        for kind in ("Images", "Snapshots", "Blobs"):
            row = usage[kind]
            print(json.dumps({"Type": kind, "TotalCount": row["Total"], "Size": human_size(row["Size"]),
                              "Reclaimable": human_size(row["Reclaimable"])}, separators=(",", ":")))
        return 0
    rows = []
    for kind in ("Images", "Snapshots", "Blobs"):
        row = usage[kind]
        share = f" ({100 * row['Reclaimable'] // row['Size']}%)" if row["Size"] else ""
        rows.append([kind, str(row["Total"]), human_size(row["Size"]), human_size(row["Reclaimable"]) + share])
    print_table(["TYPE", "TOTAL", "SIZE", "RECLAIMABLE"], rows)
    print(f"\nSnapshotter: {usage['Snapshotter']}")
    return 0


async def image_mount(engine: Engine, args: argparse.Namespace) -> int:
    await engine.mount_image(args.image, args.target)
    print(args.target.absolute())
    return 0


async def image_unmount(engine: Engine, args: argparse.Namespace) -> int:
    await engine.unmount_image(args.target)
    return 0
