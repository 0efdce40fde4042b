"""The CLI's terminal handling, run under a pseudo-terminal created by the test: raw mode while attached and
the exact terminal attributes restored on every exit path, window size propagation, detach keys."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine
from engine.runtime.pty import set_winsize
from tests.integration.exec.conftest import started

pytestmark = [pytest.mark.root, pytest.mark.registry]

REPO_ROOT = Path(__file__).resolve().parents[3]


class Terminal:
    """A pty pair; the CLI runs on the slave, the test types and reads on the master."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        set_winsize(self.master, 33, 111)
        self.screen = b""
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "app.main", "--root", str(root), *args],
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave, cwd=REPO_ROOT)

    def attrs(self) -> list[object]:
        return termios.tcgetattr(self.slave)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, marker: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.screen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{marker!r} never appeared; screen: {self.screen!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:
                    raise AssertionError(f"terminal closed before {marker!r}; screen: {self.screen!r}") from None
        return self.screen

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:  # keep draining, so the CLI never blocks writing to its terminal
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not exit; screen: {self.screen!r}")
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                with contextlib.suppress(OSError):
                    self.screen += os.read(self.master, 65536)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def wait_raw(term: Terminal, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while term.attrs()[3] & termios.ICANON:  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"the CLI never put the terminal in raw mode; screen: {term.screen!r}")
        time.sleep(0.01)


async def test_exec_it_raw_mode_resize_and_restore(engine: Engine, busybox: str, terminal: Terminal) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    before = terminal.attrs()
    terminal.spawn(engine.root, "exec", "-it", record.name, "sh")
    wait_raw(terminal)
    terminal.type(b"stty size; echo mark-$((1+1))\n")
    assert b"33 111\r\n" in terminal.expect(b"mark-2\r\n")
    set_winsize(terminal.master, 40, 120)
    assert terminal.proc is not None
    os.kill(terminal.proc.pid, signal.SIGWINCH)  # what the kernel sends a foreground job whose terminal resized
    for attempt in range(200):
        terminal.type(f"stty size; echo try-$(({attempt}+1000))\n".encode())
        if b"40 120\r\n" in terminal.expect(f"try-{attempt + 1000}\r\n".encode()):
            break
    else:
        raise AssertionError("the new window size never reached the container")
    terminal.type(b"exit 7\n")
    assert terminal.wait() == 7
    assert terminal.attrs() == before


async def test_terminal_restored_when_the_cli_is_terminated(engine: Engine, busybox: str,
                                                            terminal: Terminal) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    before = terminal.attrs()
    terminal.spawn(engine.root, "exec", "-it", record.name, "sh")
    wait_raw(terminal)
    assert terminal.proc is not None
    terminal.proc.send_signal(signal.SIGTERM)
    terminal.wait()
    assert terminal.attrs() == before


async def test_attach_detach_keys_leave_the_container_running(engine: Engine, busybox: str,
                                                              terminal: Terminal) -> None:
    record = await started(engine, busybox, "sh", tty=True, stdin_open=True)
    before = terminal.attrs()
    terminal.spawn(engine.root, "attach", record.name)
    wait_raw(terminal)
    terminal.type(b"echo hi-$((40+2))\n")
    terminal.expect(b"hi-42\r\n")
    terminal.type(b"\x10\x11")  # Ctrl-P Ctrl-Q
    assert terminal.wait() == 0
    terminal.expect(b"read escape sequence")  # written just before the CLI exited: may still be in the pty
    assert terminal.attrs() == before
    assert (await engine.containers.get(record.id)).state.status.value == "running"


async def test_run_it_and_start_ai(engine: Engine, busybox: str, terminal: Terminal) -> None:
    before = terminal.attrs()
    terminal.spawn(engine.root, "run", "-it", "--name", "interactive", busybox, "sh")
    wait_raw(terminal)
    terminal.type(b"stty size; echo run-$((5*5))\n")
    assert b"33 111\r\n" in terminal.expect(b"run-25\r\n")
    terminal.type(b"exit 3\n")
    assert terminal.wait() == 3
    assert terminal.attrs() == before
    second = Terminal()
    try:
        second.spawn(engine.root, "start", "-ai", "interactive")
        wait_raw(second)
        second.type(b"echo again-$((6*7))\n")
        second.expect(b"again-42\r\n")
        second.type(b"exit 5\n")
        assert second.wait() == 5
    finally:
        second.close()


async def test_exec_i_without_t_streams_stdin_with_eof(engine: Engine, busybox: str, tmp_path: Path) -> None:
    record = await started(engine, busybox, "sleep", "1000")
    done = subprocess.run([sys.executable, "-m", "app.main", "--root", str(engine.root), "exec", "-i", record.name,
                           "sh", "-c", "cat; echo end >&2; exit 4"], input=b"line one\nline two\n",
                          capture_output=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (4, b"line one\nline two\n", b"end\n")
