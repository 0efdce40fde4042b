"""Container commands: run, create, start, stop, restart, kill, pause, unpause, rm, rename, wait, ps, logs,
inspect, export, container prune."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.exec import env_items
from app.cli.networks import add_run_flags, network_flags
from app.cli.output import (
    SubCommands,
    each,
    human_duration,
    human_duration_since,
    parse_rfc3339,
    print_json_lines,
    print_table,
)
from app.cli.progress import PullPrinter
from engine import (
    ContainerRecord,
    CreateOptions,
    Engine,
    InvalidArgument,
    KiteboxError,
    NotFound,
    parse_time_arg,
)

__all__ = ["parse_bytes", "register"]


def parse_bytes(text: str, what: str) -> int:
    """Docker's RAMInBytes: 512, 512k, 64m, 1g (binary units, optional trailing b)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", text.strip().lower())
    if not match:
        raise InvalidArgument(f"invalid {what} value {text!r}: expected a size like 512m or 1g")
    number = float(match.group(1))
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2)]
    return int(number * scale)


def _env_list(args: argparse.Namespace) -> tuple[str, ...]:
    env: list[str] = []
    for path in args.env_file or []:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as err:
            raise InvalidArgument(f"open {path}: {err.strerror}") from err
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                env.append(line if "=" in line else f"{line}={os.environ.get(line, '')}")
    return (*env, *env_items(args.env))


def _labels(items: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid label {item!r}")
        labels[key] = value
    return labels


def _log_opts(items: list[str] | None) -> dict[str, str]:
    opts = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid log opt {item!r}: expected key=value")
        opts[key] = value
    return opts


def _add_create_flags(p: argparse.ArgumentParser) -> None:
    # Docker's -h is --hostname, so these parsers are made with add_help=False and get --help back here.
    p.add_argument("--help", action="help", help="Show this help message and exit")
    p.add_argument("--name", help="Assign a name to the container")
    p.add_argument("-e", "--env", action="append", help="Set environment variables")
    p.add_argument("--env-file", action="append", help="Read in a file of environment variables")
    p.add_argument("-w", "--workdir", help="Working directory inside the container")
    p.add_argument("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("--entrypoint", help="Overwrite the default ENTRYPOINT of the image")
    p.add_argument("-h", "--hostname", help="Container host name")
    p.add_argument("-v", "--volume", action="append", help="Bind mount a volume")
    p.add_argument("--tmpfs", action="append", help="Mount a tmpfs directory")
    p.add_argument("-m", "--memory", help="Memory limit")
    p.add_argument("--cpus", type=float, help="Number of CPUs")
    p.add_argument("--pids-limit", type=int, help="Tune container pids limit (-1 for unlimited)")
    p.add_argument("--read-only", action="store_true", help="Mount the container's root filesystem as read only")
    p.add_argument("--privileged", action="store_true", help="Give extended privileges to this container")
    p.add_argument("--cap-add", action="append", help="Add Linux capabilities")
    p.add_argument("--cap-drop", action="append", help="Drop Linux capabilities")
    p.add_argument("--restart", default="no", help="Restart policy to apply when a container exits")
    p.add_argument("--rm", action="store_true", help="Automatically remove the container when it exits")
    p.add_argument("-l", "--label", action="append", help="Set meta data on a container")
    p.add_argument("--log-opt", action="append", help="Log driver options")
    p.add_argument("--network", "--net", default="bridge",
                   help="Connect a container to a network (bridge, none, host or a network's name)")
    add_run_flags(p)
    p.add_argument("-i", "--interactive", action="store_true", help="Keep STDIN open even if not attached")
    p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    p.add_argument("--security-opt", action="append", default=[],
                   help="Security options (seccomp=unconfined, no-new-privileges)")
    p.add_argument("--stop-signal", help="Signal to stop the container")
    p.add_argument("--stop-timeout", type=int, help="Timeout (in seconds) to stop a container")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)


def _create_options(args: argparse.Namespace) -> CreateOptions:
    if args.cpus is not None and args.cpus <= 0:
        raise InvalidArgument(f"invalid --cpus value {args.cpus}: must be positive")
    pids = args.pids_limit if args.pids_limit is None or args.pids_limit > 0 else None
    net = network_flags(args)
    for item in args.security_opt:
        if item.replace(":", "=", 1) not in ("seccomp=unconfined", "no-new-privileges", "no-new-privileges=true",
                                             "no-new-privileges=false"):
            raise InvalidArgument(f"invalid --security-opt {item!r}: supported are seccomp=unconfined and "
                                  "no-new-privileges")
    return CreateOptions(
        name=args.name,
        cmd=tuple(args.command) if args.command else None,
        entrypoint=(tuple([args.entrypoint]) if args.entrypoint else ()) if args.entrypoint is not None else None,
        env=_env_list(args), workdir=args.workdir, user=args.user, hostname=args.hostname,
        labels=_labels(args.label), volumes=tuple(args.volume or ()), tmpfs=tuple(args.tmpfs or ()),
        memory=parse_bytes(args.memory, "--memory") if args.memory else None, cpus=args.cpus,
        pids_limit=pids, read_only=args.read_only, privileged=args.privileged,
        cap_add=tuple(args.cap_add or ()), cap_drop=tuple(args.cap_drop or ()), restart=args.restart,
        auto_remove=args.rm, log_opts=_log_opts(args.log_opt), network=args.network,
        publish=net.publish, publish_all=net.publish_all, network_aliases=net.aliases, add_hosts=net.add_hosts,
        dns=net.dns, security_opt=tuple(item.replace(":", "=", 1) for item in args.security_opt),
        tty=args.tty, stdin_open=args.interactive, stop_signal=args.stop_signal, stop_timeout=args.stop_timeout,
    )


def register(commands: SubCommands, container_group: SubCommands) -> None:
    for group in (commands, container_group):
        p = group.add_parser("run", help="Create and run a new container from an image", add_help=False)
        p.add_argument("-d", "--detach", action="store_true", help="Run container in background and print its ID")
        _add_create_flags(p)
        p.set_defaults(handler=run)
        p = group.add_parser("create", help="Create a new container", add_help=False)
        _add_create_flags(p)
        p.set_defaults(handler=create)
        p = group.add_parser("start", help="Start one or more stopped containers")
        p.add_argument("-a", "--attach", action="store_true", help="Attach STDOUT/STDERR and forward signals")
        p.add_argument("-i", "--interactive", action="store_true", help="Attach container's STDIN")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=start)
        for name, handler, help_text in (("stop", stop, "Stop one or more running containers"),
                                         ("restart", restart, "Restart one or more containers")):
            p = group.add_parser(name, help=help_text)
            p.add_argument("-t", "--time", type=int, help="Seconds to wait before killing the container")
            p.add_argument("containers", nargs="+", metavar="CONTAINER")
            p.set_defaults(handler=handler)
        p = group.add_parser("kill", help="Kill one or more running containers")
        p.add_argument("-s", "--signal", default="KILL", help="Signal to send to the container")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=kill)
        for name, handler, help_text in (("pause", pause, "Pause all processes within one or more containers"),
                                         ("unpause", unpause, "Unpause all processes within containers"),
                                         ("wait", wait, "Block until containers stop, then print exit codes")):
            p = group.add_parser(name, help=help_text)
            p.add_argument("containers", nargs="+", metavar="CONTAINER")
            p.set_defaults(handler=handler)
        p = group.add_parser("rm", help="Remove one or more containers")
        p.add_argument("-f", "--force", action="store_true", help="Force the removal of a running container")
        p.add_argument("-v", "--volumes", action="store_true", help="Remove anonymous volumes too")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=rm)
        p = group.add_parser("attach", help="Attach local standard input, output, and error streams to a running "
                             "container")
        p.add_argument("--no-stdin", action="store_true", help="Do not attach STDIN")
        p.add_argument("container")
        p.set_defaults(handler=attach)
        p = group.add_parser("rename", help="Rename a container")
        p.add_argument("container")
        p.add_argument("new_name")
        p.set_defaults(handler=rename)
        p = group.add_parser("logs", help="Fetch the logs of a container")
        p.add_argument("-f", "--follow", action="store_true", help="Follow log output")
        p.add_argument("-n", "--tail", default="all", help="Number of lines to show from the end of the logs")
        p.add_argument("--since", help="Show logs since timestamp or relative (e.g. 42m)")
        p.add_argument("--until", help="Show logs before a timestamp or relative (e.g. 42m)")
        p.add_argument("-t", "--timestamps", action="store_true", help="Show timestamps")
        p.add_argument("container")
        p.set_defaults(handler=logs)
        p = group.add_parser("export", help="Export a container's filesystem as a tar archive")
        p.add_argument("-o", "--output", required=True, help="Write to a file")
        p.add_argument("container")
        p.set_defaults(handler=export)
    for group, name, aliases in ((commands, "ps", []), (container_group, "ls", ["list"])):
        p = group.add_parser(name, aliases=aliases, help="List containers")
        p.add_argument("-a", "--all", action="store_true", help="Show all containers (default shows just running)")
        p.add_argument("-q", "--quiet", action="store_true", help="Only display container IDs")
        p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
        p.add_argument("--format", choices=["table", "json"], default="table")
        p.add_argument("-f", "--filter", action="append", help="Filter output (status=, name=, label=)")
        p.set_defaults(handler=ps)
    p = commands.add_parser("inspect", help="Return low-level information on containers or images")
    p.add_argument("objects", nargs="+", metavar="NAME|ID")
    p.set_defaults(handler=inspect)
    p = container_group.add_parser("inspect", help="Display detailed information on one or more containers")
    p.add_argument("objects", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=inspect, containers_only=True)
    p = container_group.add_parser("prune", help="Remove all stopped containers")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.set_defaults(handler=container_prune)


async def _stream_logs(engine: Engine, container_id: str, *, follow: bool, tail: int | None = None,
                       since: float | None = None, until: float | None = None,
                       timestamps: bool = False) -> None:
    out, err = sys.stdout.buffer, sys.stderr.buffer
    async for record in engine.containers.logs(container_id, follow=follow, tail=tail, since=since, until=until):
        target = err if record.stream == "stderr" else out
        if timestamps:
            target.write(record.time.encode() + b" ")
        target.write(record.data)
        target.flush()


async def _pump_stdin(engine: Engine, container_id: str) -> None:
    """``-i`` without ``-t``: copy our stdin to the container's, then close it (EOF)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    while True:
        data = await loop.run_in_executor(None, os.read, fd, 65536)
        if not data:
            break
        await engine.containers.write_stdin(container_id, data)
    await engine.containers.close_stdin(container_id)


async def run(engine: Engine, args: argparse.Namespace) -> int:
    # Like `docker run`: whatever fails before the container's command runs (options, pull, create) is 125.
    try:
        options = _create_options(args)
        record = await engine.create_container(args.image, options, on_progress=PullPrinter())
    except KiteboxError as err:
        print(f"kitebox: {err}", file=sys.stderr)
        return 125
    if args.detach:
        try:
            await engine.containers.start(record.id)
        except KiteboxError as err:
            return await _start_failed(engine, record.id, err, remove=args.rm)
        print(record.id)
        return 0
    # Held from before the start: nobody (not even a `ps` elsewhere) removes an --rm container we stream.
    with engine.containers.attached(record.id):
        try:
            await engine.containers.start(record.id)
        except KiteboxError as err:
            return await _start_failed(engine, record.id, err, remove=args.rm)
        if args.tty:
            exit_code = await _attach_session(engine, record.id, stdin=args.interactive, replay=True)
            if exit_code is None:  # detached (Ctrl-P Ctrl-Q): the container keeps running
                return 0
            code = exit_code
        else:
            stdin_task = asyncio.create_task(_pump_stdin(engine, record.id)) if args.interactive else None
            try:
                await _stream_logs(engine, record.id, follow=True)
                # --rm: removed by the same call, which knows it has stopped for good.
                code = await engine.containers.wait(record.id, remove=args.rm)
            finally:
                if stdin_task is not None:
                    stdin_task.cancel()
            return code
    if args.rm:
        # NotFound: removed already by whoever saw it exit first (the engine removes --rm ones on refresh).
        with contextlib.suppress(NotFound):
            await engine.containers.remove(record.id, force=True, volumes=True)
    return code


async def _attach_session(engine: Engine, name: str, *, stdin: bool, replay: bool) -> int | None:
    """Attach our terminal (raw, resized, detach keys) or our stdio to the container's main process; its exit
    code, or None when the user detached."""
    from app.cli.exec import interact, terminal_size

    session = await engine.containers.attach(name, replay=replay, size=terminal_size())
    try:
        if await interact(session, stdin=stdin):
            print("read escape sequence", file=sys.stderr)
            return None
        return await session.wait()
    finally:
        await session.close()


async def attach(engine: Engine, args: argparse.Namespace) -> int:
    record = await engine.containers.get(args.container)
    code = await _attach_session(engine, record.id, stdin=not args.no_stdin and bool(record.config.get("OpenStdin")),
                                 replay=False)
    return 0 if code is None else code


async def _start_failed(engine: Engine, container_id: str, err: KiteboxError, *, remove: bool) -> int:
    """``run``'s start failure: one line, Docker's exit code (126/127 for the command, else 125)."""
    print(f"kitebox: Error response from daemon: {err}", file=sys.stderr)
    if remove:
        with contextlib.suppress(NotFound):
            await engine.containers.remove(container_id, force=True, volumes=True)
    return err.exit_code if err.exit_code in (126, 127) else 125


async def create(engine: Engine, args: argparse.Namespace) -> int:
    record = await engine.create_container(args.image, _create_options(args), on_progress=PullPrinter())
    print(record.id)
    return 0


async def start(engine: Engine, args: argparse.Namespace) -> int:
    if args.attach:
        if len(args.containers) != 1:
            raise InvalidArgument("you cannot start and attach multiple containers at once")
        record = await engine.containers.start(args.containers[0])
        if record.config.get("Tty") or args.interactive:
            code = await _attach_session(engine, record.id, stdin=args.interactive, replay=True)
            return 0 if code is None else code
        await _stream_logs(engine, record.id, follow=True)
        return await engine.containers.wait(record.id)
    return await each(args.containers, engine.containers.start)


async def stop(engine: Engine, args: argparse.Namespace) -> int:
    timeout = None if args.time is None else float(args.time)
    return await each(args.containers, lambda name: engine.containers.stop(name, timeout=timeout))


async def restart(engine: Engine, args: argparse.Namespace) -> int:
    timeout = None if args.time is None else float(args.time)
    return await each(args.containers, lambda name: engine.containers.restart(name, timeout=timeout))


async def kill(engine: Engine, args: argparse.Namespace) -> int:
    return await each(args.containers, lambda name: engine.containers.kill(name, args.signal))


async def pause(engine: Engine, args: argparse.Namespace) -> int:
    return await each(args.containers, engine.containers.pause)


async def unpause(engine: Engine, args: argparse.Namespace) -> int:
    return await each(args.containers, engine.containers.unpause)


async def wait(engine: Engine, args: argparse.Namespace) -> int:
    async def one(name: str) -> None:
        print(await engine.containers.wait(name))

    return await each(args.containers, one, echo=False)


async def rm(engine: Engine, args: argparse.Namespace) -> int:
    return await each(args.containers,
                      lambda name: engine.containers.remove(name, force=args.force, volumes=args.volumes))


async def rename(engine: Engine, args: argparse.Namespace) -> int:
    await engine.containers.rename(args.container, args.new_name)
    return 0


def _status_text(record: ContainerRecord, now: float) -> str:
    state = record.state
    started = parse_rfc3339(state.started_at)
    finished = parse_rfc3339(state.finished_at)
    status = state.status.value
    if status == "running":
        return f"Up {human_duration(now - (started or now))}"
    if status == "paused":
        return f"Up {human_duration(now - (started or now))} (Paused)"
    if status == "restarting":
        return f"Restarting ({state.exit_code}) {human_duration_since(finished, now)}"
    if status == "exited":
        return f"Exited ({state.exit_code}) {human_duration_since(finished, now)}"
    if status == "dead":
        return "Dead"
    return status.capitalize()


def _matches(record: ContainerRecord, filters: list[str]) -> bool:
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"bad format of filter (expected name=value): {item}")
        if key == "status":
            if value not in ("created", "restarting", "running", "removing", "paused", "exited", "dead"):
                raise InvalidArgument(f"invalid filter 'status={value}'")
            if record.state.status.value != value:
                return False
        elif key == "name":
            if not re.search(value, record.name):
                return False
        elif key == "label":
            label_key, has_value, label_value = value.partition("=")
            labels = record.config.get("Labels") or {}
            if label_key not in labels or (has_value and labels[label_key] != label_value):
                return False
        elif key == "id":
            if not record.id.startswith(value):
                return False
        else:
            raise InvalidArgument(f"invalid filter '{key}'")
    return True


async def ps(engine: Engine, args: argparse.Namespace) -> int:
    from engine import format_ports  # loads the network room: only ps needs it here

    filters = list(args.filter or [])
    show_all = args.all or any(f.startswith("status=") for f in filters)
    records = [r for r in await engine.containers.list(all_containers=show_all) if _matches(r, filters)]
    if args.quiet:
        for record in records:
            print(record.id if args.no_trunc else record.id[:12])
        return 0
    now = time.time()
    rows = []
    for record in records:
        command = " ".join([record.path, *record.args])
        if not args.no_trunc and len(command) > 20:
            command = command[:19] + "…"
        rows.append({
            "ID": record.id if args.no_trunc else record.id[:12], "Image": record.image,
            "Command": json.dumps(command, ensure_ascii=False) if args.format == "table" else command,
            "CreatedAt": record.created, "RunningFor": human_duration_since(parse_rfc3339(record.created), now),
            "Status": _status_text(record, now), "State": record.state.status.value,
            "Ports": format_ports((record.network or {}).get("Ports")),
            "Names": record.name, "Labels": ",".join(f"{k}={v}" for k, v in
                                                      (record.config.get("Labels") or {}).items()),
            "Mounts": ",".join(m.get("Name", m.get("Source", "")) for m in record.mounts),
            "Networks": record.host_config.get("NetworkMode", ""),
        })
    if args.format == "json":
        print_json_lines(rows)
        return 0
    print_table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                [[r["ID"], r["Image"], r["Command"], r["RunningFor"], r["Status"], r["Ports"], r["Names"]]
                 for r in rows])
    return 0


async def logs(engine: Engine, args: argparse.Namespace) -> int:
    now = time.time()
    tail: int | None = None
    if args.tail != "all":
        try:
            tail = int(args.tail)
        except ValueError:
            tail = None  # Docker: any non-integer means "all"
        if tail is not None and tail < 0:
            tail = None
    since = parse_time_arg(args.since, now) if args.since else None
    until = parse_time_arg(args.until, now) if args.until else None
    await _stream_logs(engine, args.container, follow=args.follow, tail=tail, since=since, until=until,
                       timestamps=args.timestamps)
    return 0


async def inspect(engine: Engine, args: argparse.Namespace) -> int:
    documents: list[dict[str, Any]] = []
    status = 0
    for name in args.objects:
        try:
            record = await engine.containers.get(name)
            documents.append(engine.containers.inspect_document(record))
            continue
        except NotFound:
            if getattr(args, "containers_only", False):
                print(f"Error: No such container: {name}", file=sys.stderr)
                status = 1
                continue
        try:
            documents.append(await engine.inspect_image(name))
        except NotFound:
            print(f"Error: No such object: {name}", file=sys.stderr)
            status = 1
    print(json.dumps(documents, indent=4))
    return status


async def export(engine: Engine, args: argparse.Namespace) -> int:
    await engine.containers.export(args.container, Path(args.output))
    return 0


async def container_prune(engine: Engine, args: argparse.Namespace) -> int:
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    removed = await engine.containers.prune()
    if removed:
        print("Deleted Containers:")
        print("\n".join(removed))
        print()
    print("Total reclaimed space: 0B")
    return 0
