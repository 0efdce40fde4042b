"""The CLI fast start's pure parts: which commands go to the template, the state root, the request format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.forkclient import MAGIC, command_word, encode_request, socket_name, state_root
from engine.config import default_root
from engine.forkserver import MAGIC as SERVER_MAGIC
from engine.forkserver import Request, decode_request
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "word"), [
    ([], None),
    (["--help"], None),
    (["ps", "-a"], "ps"),
    (["--root", "ps", "images"], "images"),  # "ps" is --root's value
    (["--config", "c.json", "--root=/x", "run", "--rm", "img"], "run"),
    (["-v"], None),
    (["gui"], "gui"),
])
def test_command_word(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


@pytest.mark.parametrize("env", [
    {"KITEBOX_ROOT": "/srv/kb"},
    {"KITEBOX_ROOT": ""},
    {},
    {"XDG_DATA_HOME": "/data"},
])
def test_state_root_defaults_match_the_engine(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KITEBOX_ROOT", "XDG_DATA_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert state_root(["ps"]) == str(default_root().absolute())


def test_state_root_from_the_command_line_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KITEBOX_ROOT", "/ignored")
    assert state_root(["--root", "state", "ps"]) == str(tmp_path / "state")
    assert state_root(["--root=/abs/state", "ps"]) == "/abs/state"
    # A --root after the command word is the command's business, not the global option.
    assert state_root(["run", "--root", "x"]) == "/ignored"


def test_request_round_trip_keeps_every_byte() -> None:
    argv = ["run", "", "--env", "A=b=c", "sh", "-c", "echo 'ü' \n x"]
    env = {"PATH": "/bin", "EMPTY": "", "EQ": "a=b", "LANG": "C.UTF-8"}
    frame = encode_request("/some/dir", 0o027, argv, env)
    head, _, body = frame.partition(b"\n")
    assert int(head) == len(body)
    assert decode_request(body) == Request("/some/dir", 0o027, argv, env)


@pytest.mark.parametrize("body", [
    b"",
    b"KB0\0/\x0022\x000",
    b"KB1\0/\x0022\x005\0only-one",
    b"KB1\0/\x0022\x000\0NOEQUALS",
    b"KB1\0/\x0022\x000\0=value",
    b"KB1\0/\x0099\x000",
])
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_request(body)


def test_client_and_server_agree_on_the_magic() -> None:
    assert MAGIC == SERVER_MAGIC


def test_socket_name_changes_with_the_sources(tmp_path: Path) -> None:
    first = socket_name()
    assert first == socket_name()
    assert first.startswith("cli-") and first.endswith(".sock")
    source = ROOT / "app" / "forkclient.py"
    stat = source.stat()
    try:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert socket_name() != first
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert socket_name() == first


def test_the_client_imports_nothing_heavy() -> None:
    code = ("import sys; import app.forkclient; "
            "print(sorted(m for m in ('asyncio', 'json', 'socket', 'signal', 'typing', 'engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_exit_sends_the_code_once_and_lets_go_of_the_callers_stdio(tmp_path: Path) -> None:
    """In a worker, a command that reports its exit code early: the client gets the code, a reader of its stdout
    pipe sees EOF although the worker goes on (closing its engine), and a second report changes nothing."""
    import textwrap

    received = tmp_path / "received"
    code = textwrap.dedent("""
        import pathlib, socket, sys, time
        import engine.forkserver as fs
        ours, theirs = socket.socketpair()
        fs._client = theirs
        print("out")
        fs.report_exit(3)
        fs.report_exit(4)
        print("lost", flush=True)
        theirs.close()
        pathlib.Path(sys.argv[1] + ".tmp").write_bytes(ours.recv(64))
        pathlib.Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
        time.sleep(30)
    """)
    with subprocess.Popen([sys.executable, "-c", code, str(received)], stdout=subprocess.PIPE,
                          cwd=Path(__file__).resolve().parents[2]) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.read() == b"out\n"  # EOF while it still runs: its stdout was let go of
            wait_until(lambda: received.exists() and received.read_bytes() == b"X3\n", "the exit code sent once")
            assert process.poll() is None
        finally:
            process.kill()
