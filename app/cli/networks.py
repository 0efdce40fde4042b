"""Network commands: ``network create/ls/inspect/rm/connect/disconnect/prune``, ``port``, and the networking
flags of ``run``/``create`` (``-p``, ``-P``, ``--network-alias``, ``--add-host``, ``--dns``).

The commands talk to ``engine.networks`` (the engine's ``NetworkManager``), typed here by the small protocol
below so this module imports nothing but ``engine``'s public names.
"""

from __future__ import annotations

import argparse
import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.cli.output import SubCommands, each, inspect_each, print_json_lines, print_table
from engine import Engine, NotFound

__all__ = ["NetworkFlags", "add_run_flags", "network_flags", "register"]


class _Networks(Protocol):
    async def create(self, name: str, *, subnet: str | None = None, gateway: str | None = None,
                     labels: Mapping[str, str] | None = None) -> dict[str, Any]: ...
    async def list(self) -> list[dict[str, Any]]: ...
    async def inspect(self, text: str) -> dict[str, Any]: ...
    async def remove(self, text: str) -> str: ...
    async def prune(self) -> builtins.list[str]: ...
    async def connect(self, network: str, container_id: str, *, aliases: Sequence[str] = ()) -> dict[str, Any]: ...
    async def disconnect(self, network: str, container_id: str) -> dict[str, Any]: ...
    async def settings(self, container_id: str) -> dict[str, Any] | None: ...


def _networks(engine: Engine) -> _Networks:
    manager: _Networks | None = getattr(engine, "networks", None)
    if manager is None:
        raise NotFound("this engine has no network manager")
    return manager


@dataclass(frozen=True)
class NetworkFlags:
    """The networking flags of ``run``/``create``, as given (the engine parses and validates them)."""

    publish: tuple[str, ...]
    publish_all: bool
    aliases: tuple[str, ...]
    add_hosts: tuple[str, ...]
    dns: tuple[str, ...]


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``-p/--publish``, ``-P/--publish-all``, ``--network-alias``, ``--add-host``, ``--dns`` to ``parser``."""
    parser.add_argument("-p", "--publish", action="append", default=[],
                        help="Publish a container's port(s) to the host ([hostip:][hostport:]port[/proto])")
    parser.add_argument("-P", "--publish-all", action="store_true",
                        help="Publish all exposed ports to random host ports")
    parser.add_argument("--network-alias", action="append", default=[],
                        help="Add a network-scoped alias for the container")
    parser.add_argument("--add-host", action="append", default=[],
                        help="Add a custom host-to-IP mapping (host:ip; host-gateway allowed)")
    parser.add_argument("--dns", action="append", default=[], help="Set custom DNS servers")


def network_flags(args: argparse.Namespace) -> NetworkFlags:
    """The values of the flags :func:`add_run_flags` added."""
    return NetworkFlags(tuple(args.publish), bool(args.publish_all), tuple(args.network_alias),
                        tuple(args.add_host), tuple(args.dns))


def register(commands: SubCommands) -> None:
    network = commands.add_parser("network", help="Manage networks")
    group = network.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    p = group.add_parser("create", help="Create a network")
    p.add_argument("--subnet", help="Subnet in CIDR format (default: a free one from the address pools)")
    p.add_argument("--gateway", help="IPv4 gateway for the subnet")
    p.add_argument("-d", "--driver", default="bridge", choices=["bridge"], help="Driver (only bridge)")
    p.add_argument("--label", action="append", default=[], help="Set metadata on a network")
    p.add_argument("name")
    p.set_defaults(handler=create)
    p = group.add_parser("ls", aliases=["list"], help="List networks")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display network IDs")
    p.add_argument("--no-trunc", action="store_true", help="Do not truncate the output")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=ls)
    p = group.add_parser("inspect", help="Display detailed information on one or more networks")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(handler=inspect)
    p = group.add_parser("rm", aliases=["remove"], help="Remove one or more networks")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(handler=rm)
    p = group.add_parser("connect", help="Connect a running container to a network")
    p.add_argument("--alias", action="append", default=[], help="Add a network-scoped alias for the container")
    p.add_argument("network")
    p.add_argument("container")
    p.set_defaults(handler=connect)
    p = group.add_parser("disconnect", help="Disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true", help="Accepted for compatibility")
    p.add_argument("network")
    p.add_argument("container")
    p.set_defaults(handler=disconnect)
    p = group.add_parser("prune", help="Remove all unused networks")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.set_defaults(handler=prune)
    p = commands.add_parser("port", help="List port mappings or a specific mapping for the container")
    p.add_argument("container")
    p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    p.set_defaults(handler=port)


async def create(engine: Engine, args: argparse.Namespace) -> int:
    labels = dict(item.partition("=")[::2] for item in args.label)
    document = await _networks(engine).create(args.name, subnet=args.subnet, gateway=args.gateway, labels=labels)
    print(document["Id"])
    return 0


async def ls(engine: Engine, args: argparse.Namespace) -> int:
    documents = await _networks(engine).list()
    width = 64 if args.no_trunc else 12
    if args.quiet:
        for document in documents:
            print(str(document["Id"])[:width])
    elif args.format == "json":
        print_json_lines([{"ID": str(d["Id"])[:width], "Name": d["Name"], "Driver": d["Driver"],
                           "Scope": d["Scope"]} for d in documents])
    else:
        print_table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                    [[str(d["Id"])[:width], d["Name"], d["Driver"], d["Scope"]] for d in documents])
    return 0


async def inspect(engine: Engine, args: argparse.Namespace) -> int:
    return await inspect_each(args.names, _networks(engine).inspect)


async def rm(engine: Engine, args: argparse.Namespace) -> int:
    return await each(args.names, _networks(engine).remove)


async def connect(engine: Engine, args: argparse.Namespace) -> int:
    record = await engine.containers.get(args.container)
    await _networks(engine).connect(args.network, record.id, aliases=tuple(args.alias))
    return 0


async def disconnect(engine: Engine, args: argparse.Namespace) -> int:
    record = await engine.containers.get(args.container)
    await _networks(engine).disconnect(args.network, record.id)
    return 0


async def prune(engine: Engine, args: argparse.Namespace) -> int:
    removed = await _networks(engine).prune()
    if removed:
        print("Deleted Networks:")
        for name in removed:
            print(name)
    return 0


async def port(engine: Engine, args: argparse.Namespace) -> int:
    """``port NAME [PORT[/PROTO]]``: ``80/tcp -> 0.0.0.0:8080`` lines (just ``0.0.0.0:8080`` for one port)."""
    record = await engine.containers.get(args.container)
    settings = await _networks(engine).settings(record.id) or {}
    ports: Mapping[str, Any] = settings.get("Ports") or {}
    if args.private_port:
        key = args.private_port if "/" in args.private_port else f"{args.private_port}/tcp"
        entries = ports.get(key)
        if not entries:
            raise NotFound(f"no public port '{key}' published for {record.name}")
        for entry in entries:
            print(f"{entry['HostIp']}:{entry['HostPort']}")
        return 0
    for key, entries in sorted(ports.items()):
        for entry in entries or []:
            print(f"{key} -> {entry['HostIp']}:{entry['HostPort']}")
    return 0
