"""Volume commands: volume create, ls, inspect, rm, prune."""

from __future__ import annotations

import argparse
import sys

from app.cli.output import SubCommands, each, inspect_each, print_json_lines, print_table
from engine import Engine

__all__ = ["register"]


def register(commands: SubCommands) -> None:
    volume = commands.add_parser("volume", help="Manage volumes")
    group = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    p = group.add_parser("create", help="Create a volume")
    p.add_argument("-l", "--label", action="append", help="Set metadata for a volume")
    p.add_argument("name", nargs="?")
    p.set_defaults(handler=create)
    p = group.add_parser("ls", aliases=["list"], help="List volumes")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display volume names")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=ls)
    p = group.add_parser("inspect", help="Display detailed information on one or more volumes")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    p.set_defaults(handler=inspect)
    p = group.add_parser("rm", aliases=["remove"], help="Remove one or more volumes")
    p.add_argument("-f", "--force", action="store_true", help="Do not fail when a volume does not exist")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    p.set_defaults(handler=rm)
    p = group.add_parser("prune", help="Remove unused anonymous volumes (-a: all unused volumes)")
    p.add_argument("-a", "--all", action="store_true", help="Remove all unused volumes, not just anonymous ones")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.set_defaults(handler=prune)


async def create(engine: Engine, args: argparse.Namespace) -> int:
    labels = dict(item.partition("=")[::2] for item in args.label or [])
    volume = await engine.create_volume(args.name, labels=labels)
    print(volume["Name"])
    return 0


async def ls(engine: Engine, args: argparse.Namespace) -> int:
    volumes = await engine.volumes()
    if args.quiet:
        for volume in volumes:
            print(volume["Name"])
    elif args.format == "json":
        print_json_lines([{"Driver": v["Driver"], "Labels": ",".join(f"{k}={x}" for k, x in v["Labels"].items()),
                           "Mountpoint": v["Mountpoint"], "Name": v["Name"], "Scope": v["Scope"]}
                          for v in volumes])
    else:
        print_table(["DRIVER", "VOLUME NAME"], [[v["Driver"], v["Name"]] for v in volumes])
    return 0


async def inspect(engine: Engine, args: argparse.Namespace) -> int:
    return await inspect_each(args.names, engine.inspect_volume)


async def rm(engine: Engine, args: argparse.Namespace) -> int:
    return await each(args.names, lambda name: engine.remove_volume(name, missing_ok=args.force))


async def prune(engine: Engine, args: argparse.Namespace) -> int:
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove unused volumes.\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    removed = await engine.prune_volumes(all_volumes=args.all)
    if removed:
        print("Deleted Volumes:")
        print("\n".join(removed))
        print()
    print("Total reclaimed space: 0B")
    return 0
