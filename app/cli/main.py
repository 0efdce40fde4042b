"""The ``kitebox`` command line: Docker's verbs and flags over the in-process engine.

Every command is an ``async def handler(engine, args) -> int`` registered by a module of this package. Errors
from the engine are ``KiteboxError``s: printed as one line on stderr, exit code from the error (1 user-facing,
125 engine failure, 126/127 for ``run``'s command errors). Usage errors exit 125, like Docker's CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.forkclient import command_word
from engine import VERSION, Engine, KiteboxError

__all__ = ["build_parser", "main", "prebuild_parser"]

PROG = "kitebox"


class _Parser(argparse.ArgumentParser):
    """argparse with Docker's exit code for usage errors and a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(125, f"{self.prog}: {message}\nSee '{self.prog} --help'.\n")


class _Skip:
    """Stands in for the parsers of commands not being run: building all of argparse's ~60 sub-parsers costs
    ~50 ms, a third of a short command's run time, so only the requested command's parsers are built."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _OnlyCommand:
    """Wraps a sub-parsers action, passing through only ``wanted`` (every command when ``wanted`` is None)."""

    def __init__(self, action: Any, wanted: str | None) -> None:
        self._action = action
        self._wanted = wanted

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        names = [name, *kwargs.get("aliases", [])]
        if self._wanted is None or self._wanted in names:
            return self._action.add_parser(name, **kwargs)
        return _Skip()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``argv``, only the parsers that command needs are built (help shows all)."""
    from app.cli import containers, exec, images, networks, system, volumes

    wanted = command_word(argv) if argv is not None else None
    parser = _Parser(prog=PROG, description="Kitebox: containers without a daemon.")
    parser.add_argument("--root", type=Path, help="State root (default: $KITEBOX_ROOT, /var/lib/kitebox as root, "
                        "else $XDG_DATA_HOME/kitebox)")
    parser.add_argument("--config", type=Path, help="Configuration file (default: /etc/kitebox/config.json as root, "
                        "else $XDG_CONFIG_HOME/kitebox/config.json)")
    parser.add_argument("-v", "--version", action="store_true", help="Print version information and quit")
    action = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if wanted is not None and wanted not in _known_commands(action):
        wanted = None  # unknown: build everything, so argparse lists the valid choices
    commands = _OnlyCommand(action, wanted)
    image = commands.add_parser("image", help="Manage images")
    image_group = image.add_subparsers(dest="image_command", metavar="COMMAND", parser_class=_Parser,
                                       required=True)
    container = commands.add_parser("container", help="Manage containers")
    container_group = container.add_subparsers(dest="container_command", metavar="COMMAND", parser_class=_Parser,
                                               required=True)
    commands.add_parser("gui", help="Open the desktop app (also what kitebox does with no command)")
    images.register(commands, image_group)
    containers.register(commands, container_group)
    exec.register(commands, container_group)
    volumes.register(commands)
    networks.register(commands)
    system.register(commands, image_group)
    return parser


def _known_commands(action: Any) -> set[str]:
    """Every top-level command name, collected by a dry registration (cheap: nothing is built)."""
    from app.cli import containers, exec, images, networks, system, volumes

    class Collect:
        def __init__(self) -> None:
            self.names: set[str] = set()

        def add_parser(self, name: str, **kwargs: Any) -> Any:
            self.names.update([name, *kwargs.get("aliases", [])])
            return _Skip()

    collect = Collect()
    images.register(collect, _Skip())
    containers.register(collect, _Skip())
    exec.register(collect, _Skip())
    volumes.register(collect)
    networks.register(collect)
    system.register(collect, _Skip())
    return collect.names | {"image", "container", "gui"}


async def _run(args: argparse.Namespace, engine: Engine | None = None) -> int:
    from engine import load_config

    if engine is None:
        config = load_config(args.config) if args.config else load_config()
        engine = await Engine.open(args.root, config=config)
    else:
        try:
            await engine.recover()  # opened ahead without reconciling anything: now, as this command's
        except BaseException:
            await engine.close()
            raise
    try:
        result: int = await args.handler(engine, args)
        if "engine.forkserver" in sys.modules:  # run by the warm template (else: not worth importing it)
            from engine import report_exit

            report_exit(result)  # the client exits now, while this process closes the engine
        return result
    finally:
        await engine.close()


_prebuilt: argparse.ArgumentParser | None = None


# Parsed once by the warm template after building the parsers: argparse compiles (and caches) its regular
# expressions on first use, so forks inherit them compiled.
_SAMPLE_COMMANDS = (("run", "--rm", "-e", "A=1", "--network", "none", "image", "true"), ("exec", "name", "true"),
                    ("ps", "-a"))


def prebuild_parser() -> None:
    """Build every command's parser now (the CLI's warm template does, so its forks only parse)."""
    global _prebuilt
    _prebuilt = build_parser()
    for sample in _SAMPLE_COMMANDS:
        _prebuilt.parse_args(sample)


class _Prepared:
    """An engine opened by a spare worker of the CLI's warm template before its command arrived, with the event
    loop it belongs to (the command runs on that loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Engine, root: Path, config: object) -> None:
        self.loop, self.engine, self.root, self.config = loop, engine, root, config

    def discard(self) -> None:
        try:
            self.loop.run_until_complete(self.engine.close())
        finally:
            self.loop.close()


_prepared: _Prepared | None = None


def prepare_worker(state_root: str) -> None:
    """In a spare worker of the CLI's warm template, before its command arrives: open the engine of the template's
    state root with the default configuration, and its snapshotter, on a new event loop (~6 ms a command then
    skips). A command for another root or configuration (``--root``, ``--config``, ``KITEBOX_CONFIG``) closes it
    and opens its own. Opening changes nothing on disk or in the kernel (the engine shares its state root with
    other processes like any engine does); the reconciling an open does is left to the command that takes it."""
    global _prepared
    from engine import load_config

    loop = asyncio.new_event_loop()
    try:
        root, config = Path(state_root), load_config()

        async def open_warm() -> Engine:
            # No recover: reconciling (restarting containers, repairing networks) is the command's to do, with
            # its own configuration, once it has taken this engine.
            engine = await Engine.open(root, config=config, recover=False)
            try:
                await engine.warm_up()
            except BaseException:
                await engine.close()
                raise
            return engine

        _prepared = _Prepared(loop, loop.run_until_complete(open_warm()), root, config)
    except Exception:
        loop.close()  # nothing prepared: the command opens its engine itself, and reports what fails


def _take_prepared(args: argparse.Namespace) -> _Prepared | None:
    """The prepared engine when it is the one this command would open (else it is closed here)."""
    global _prepared
    prepared, _prepared = _prepared, None
    if prepared is None:
        return None
    from engine import default_root, load_config

    try:
        same = ((args.root or default_root()).absolute() == prepared.root
                and (load_config(args.config) if args.config else load_config()) == prepared.config)
    except KiteboxError:
        same = False  # a bad configuration: reported when the command opens its own engine
    if not same:
        prepared.discard()
        return None
    return prepared


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _prebuilt or build_parser(argv)
    args = parser.parse_args(argv)
    if args.version:
        print(f"Kitebox version {VERSION}")
        return 0
    if args.command in (None, "gui"):
        # The desktop app; Qt is imported only here, so every other command starts fast.
        from app.gui.app import run as run_gui

        return run_gui(args.root, args.config)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        prepared = _take_prepared(args)
        if prepared is None:
            return asyncio.run(_run(args))
        with asyncio.Runner(loop_factory=lambda: prepared.loop) as runner:
            return runner.run(_run(args, prepared.engine))
    except KiteboxError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``kitebox images | head``): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
