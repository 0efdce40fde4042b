"""exec, stats, top, diff, commit -- and the interactive terminal plumbing shared with run -it / start -ai /
attach.

:func:`interact` connects a session (exec or attach: byte streams in and out plus resize) to this process's
terminal: with a tty the caller's terminal goes raw (restored on every exit path: normal end, error, Ctrl-C in
the engine, SIGTERM/SIGHUP), the window size follows SIGWINCH, every key (Ctrl-C included) goes to the
container, and Ctrl-P Ctrl-Q detaches leaving the process running. Without a tty, stdin is streamed and its end
closes the process's stdin (EOF); stdout and stderr stay apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any, Final, Protocol

from app.cli.output import SubCommands, human_size, print_table
from engine import Engine, InvalidArgument

__all__ = ["DetachKeys", "interact", "raw_terminal", "register", "terminal_size"]

DETACH_KEYS: Final = b"\x10\x11"  # Ctrl-P Ctrl-Q
_STATS_HEADERS: Final = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O",
                         "PIDS"]


class Session(Protocol):
    """What :func:`interact` needs of an engine exec / attach session."""

    tty: bool

    async def read_stream(self) -> tuple[str, bytes] | None: ...
    async def write(self, data: bytes) -> None: ...
    async def resize(self, rows: int, cols: int) -> None: ...
    async def close_stdin(self) -> None: ...
    async def close(self) -> None: ...


class DetachKeys:
    """Docker's detach sequence detector: bytes pass through, except a complete ``keys`` sequence, which
    detaches; a partial match is held back until the next byte decides."""

    def __init__(self, keys: bytes = DETACH_KEYS) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to forward, detach?)."""
        out = bytearray()
        for byte in data:
            candidate = self.held + bytes([byte])
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    self.held = b""
                    return bytes(out), True
                self.held = candidate
            else:
                out += candidate
                self.held = b""
        return bytes(out), False


def terminal_size(fd: int | None = None) -> tuple[int, int] | None:
    """(rows, cols) of our terminal (stdout's, else stdin's), or None when neither is a terminal."""
    for candidate in ([fd] if fd is not None else [sys.stdout.fileno(), sys.stdin.fileno()]):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(candidate)
            if size.lines > 0 and size.columns > 0:
                return size.lines, size.columns
    return None


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the duration; its attributes restored exactly, whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def interact(session: Session, *, stdin: bool, detach_keys: bytes = DETACH_KEYS) -> bool:
    """Pump ``session`` <-> our stdio until the process's output ends or the user detaches; True if detached.

    Raw mode and SIGWINCH forwarding apply when the session has a tty and our stdin is a terminal."""
    loop = asyncio.get_running_loop()
    in_fd = sys.stdin.fileno()
    use_raw = session.tty and stdin and os.isatty(in_fd)
    detached = asyncio.Event()
    stop_reading = asyncio.Event()
    keys = DetachKeys(detach_keys)
    main_task = asyncio.current_task()
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def resize() -> None:
        size = terminal_size()
        if size is not None:
            with contextlib.suppress(Exception):
                await session.resize(*size)

    async def pump_out() -> None:
        out, err = sys.stdout.buffer, sys.stderr.buffer
        while (frame := await session.read_stream()) is not None:
            target = err if frame[0] == "stderr" and not session.tty else out
            target.write(frame[1])
            target.flush()

    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def on_readable() -> None:
        try:
            data = os.read(in_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        queue.put_nowait(data)
        if not data:
            loop.remove_reader(in_fd)

    async def pump_in() -> None:
        try:
            loop.add_reader(in_fd, on_readable)
            watching = True
        except (PermissionError, OSError):  # a regular file: epoll refuses it, read it in a thread
            watching = False
        try:
            while not stop_reading.is_set():
                data = await queue.get() if watching else await loop.run_in_executor(None, os.read, in_fd, 65536)
                if not data:
                    await session.close_stdin()
                    return
                forward, detach = keys.feed(data) if session.tty else (data, False)
                if forward:
                    await session.write(forward)
                if detach:
                    detached.set()
                    return
        finally:
            if watching:
                loop.remove_reader(in_fd)

    def on_stop_signal() -> None:
        if main_task is not None:
            main_task.cancel()

    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_stop_signal)
        handled.append(sig)
    if session.tty:
        loop.add_signal_handler(signal.SIGWINCH, lambda: spawn(resize()))
        handled.append(signal.SIGWINCH)
    raw = raw_terminal(in_fd) if use_raw else contextlib.nullcontext()
    try:
        with raw:
            if session.tty:
                await resize()
            output = loop.create_task(pump_out())
            input_task = loop.create_task(pump_in()) if stdin else None
            waiting: set[asyncio.Future[Any]] = {output, loop.create_task(detached.wait())}
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if output in done:
                    output.result()
            finally:
                stop_reading.set()
                for task in (*waiting, *([input_task] if input_task else []), *tasks):
                    task.cancel()
                for task in (*waiting, *([input_task] if input_task else []), *tasks):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return detached.is_set()


def register(commands: SubCommands, container_group: SubCommands) -> None:
    for group in (commands, container_group):
        p = group.add_parser("exec", help="Execute a command in a running container")
        p.add_argument("-d", "--detach", action="store_true", help="Detached mode: run command in the background")
        p.add_argument("-i", "--interactive", action="store_true", help="Keep STDIN open even if not attached")
        p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
        p.add_argument("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])")
        p.add_argument("-w", "--workdir", help="Working directory inside the container")
        p.add_argument("-e", "--env", action="append", help="Set environment variables")
        p.add_argument("--privileged", action="store_true", help="Give extended privileges to the command")
        p.add_argument("container")
        p.add_argument("command", nargs=argparse.REMAINDER)
        p.set_defaults(handler=exec_command)
        p = group.add_parser("stats", help="Display a live stream of container resource usage statistics")
        p.add_argument("--no-stream", action="store_true", help="Disable streaming stats and only pull the first "
                       "result")
        p.add_argument("--format", choices=["table", "json"], default="table")
        p.add_argument("containers", nargs="*", metavar="CONTAINER")
        p.set_defaults(handler=stats)
        p = group.add_parser("top", help="Display the running processes of a container")
        p.add_argument("container")
        p.set_defaults(handler=top)
        p = group.add_parser("diff", help="Inspect changes to files or directories on a container's filesystem")
        p.add_argument("container")
        p.set_defaults(handler=diff)
        p = group.add_parser("commit", help="Create a new image from a container's changes")
        p.add_argument("-a", "--author", default="", help="Author")
        p.add_argument("-m", "--message", default="", help="Commit message")
        p.add_argument("-p", "--pause", action=argparse.BooleanOptionalAction, default=True,
                       help="Pause container during commit")
        p.add_argument("container")
        p.add_argument("reference", nargs="?")
        p.set_defaults(handler=commit)


def env_items(items: list[str] | None) -> tuple[str, ...]:
    """``-e K=V`` / ``-e K`` (taken from our environment when set, left out otherwise), Docker's rules."""
    env = []
    for item in items or []:
        if not item or item.startswith("="):
            raise InvalidArgument(f"invalid environment variable: {item!r}")
        if "=" in item:
            env.append(item)
        elif item in os.environ:
            env.append(f"{item}={os.environ[item]}")
    return tuple(env)


async def exec_command(engine: Engine, args: argparse.Namespace) -> int:
    if not args.command:
        raise InvalidArgument("exec: requires at least 2 arguments: a container and a command")
    tty_wanted = args.tty and not args.detach
    session = await engine.containers.exec(
        args.container, args.command, user=args.user, workdir=args.workdir, env=env_items(args.env), tty=tty_wanted,
        stdin=args.interactive and not args.detach, privileged=args.privileged, detach=args.detach,
        size=terminal_size() if tty_wanted else None)
    if args.detach:
        return 0
    try:
        if await interact(session, stdin=args.interactive):
            await session.detach()
            print("read escape sequence", file=sys.stderr)
            return 0
        code: int = await session.wait()
        return code
    finally:
        await session.close()


def binary_size(size: float) -> str:
    """go-units BytesSize: binary units, 4 significant digits ("1.465MiB", "7.668GiB", "0B")."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(size)
    index = 0
    while value >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{value:.4g}{units[index]}"


def stats_row(sample: Any) -> dict[str, str]:
    """Docker's ``stats --format json`` fields for one sample."""
    return {
        "BlockIO": f"{human_size(sample.block_read)} / {human_size(sample.block_write)}",
        "CPUPerc": f"{sample.cpu_percent:.2f}%", "Container": sample.id[:12], "ID": sample.id[:12],
        "MemPerc": f"{sample.memory_percent:.2f}%",
        "MemUsage": f"{binary_size(sample.memory_usage)} / {binary_size(sample.memory_limit)}",
        "Name": sample.name, "NetIO": f"{human_size(sample.net_rx)} / {human_size(sample.net_tx)}",
        "PIDs": str(sample.pids),
    }


async def stats(engine: Engine, args: argparse.Namespace) -> int:
    records = ([await engine.containers.get(n) for n in args.containers] if args.containers
               else await engine.containers.list())
    expected = len(records)
    batch: list[dict[str, str]] = []
    streaming = not args.no_stream
    clear_screen = streaming and sys.stdout.isatty()
    if expected == 0 and args.format == "table":
        print_table(_STATS_HEADERS, [])
        return 0
    async for sample in engine.containers.stats([r.id for r in records], stream=streaming):
        batch.append(stats_row(sample))
        if len(batch) < expected:
            continue
        if args.format == "json":
            for row in batch:
                print(json.dumps(row))
        else:
            if clear_screen:
                sys.stdout.write("\033[2J\033[H")
            print_table(_STATS_HEADERS, [[r["ID"], r["Name"], r["CPUPerc"], r["MemUsage"], r["MemPerc"], r["NetIO"],
                                         r["BlockIO"], r["PIDs"]] for r in batch])
        sys.stdout.flush()
        batch = []
    return 0


async def top(engine: Engine, args: argparse.Namespace) -> int:
    rows = await engine.containers.top(args.container)
    print_table(["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                [[r.uid, str(r.pid), str(r.ppid), str(r.c), r.stime, r.tty, r.time, r.cmd] for r in rows])
    return 0


async def diff(engine: Engine, args: argparse.Namespace) -> int:
    for change in await engine.containers.diff(args.container):
        print(f"{change.kind} {change.path}")
    return 0


async def commit(engine: Engine, args: argparse.Namespace) -> int:
    image = await engine.containers.commit(args.container, args.reference, pause=args.pause, author=args.author,
                                           message=args.message)
    print(image.id)
    return 0
