"""The CLI's fast start for real: commands run in forks of the state root's warm template, with the caller's
stdio, working directory, environment and exit code; signals reach them; a killed client takes its command
along; the template is reused, retired when its code changes, and optional."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.forkclient import BOOTSTRAP
from engine.runtime.helper import helper_pids
from tests.support.cli import REPO, Cli
from tests.support.procs import children, parent_of, state_of
from tests.support.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.registry]


def _templates(root: Path) -> list[int]:
    """The templates of ``root`` (not their workers, which share their command line)."""
    found = helper_pids(root, bootstrap=BOOTSTRAP)
    return [pid for pid in found if parent_of(pid) not in found]


def _worker_of(template: int, client: subprocess.Popen[str]) -> int:
    """The template's child running ``client``'s command: the one holding the client's stdout (the template's
    other child is the spare, forked ahead for the next command)."""
    wanted = os.readlink(f"/proc/{client.pid}/fd/1")
    (worker,) = [pid for pid in children(template) if _readlink(f"/proc/{pid}/fd/1") == wanted]
    return worker


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _popen(root: Path, *args: str, cwd: Path = REPO, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "app.main", "--root", str(root), *args], text=True, env=env, cwd=cwd, **kwargs)
    return process


@pytest.fixture
def loaded(cli: Cli) -> Cli:
    """The CLI fixture with its image pulled (the first command, which also starts the template)."""
    pulled = cli("pull", "-q", cli.image)
    assert pulled.returncode == 0, pulled.stderr
    return cli


def test_commands_run_in_one_reused_template_with_the_callers_stdio_and_codes(loaded: Cli) -> None:
    templates = _templates(loaded.root)
    assert len(templates) == 1
    code = loaded("run", "--rm", "--network", "none", loaded.image, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (code.returncode, code.stdout, code.stderr) == (7, "out\n", "err\n")
    echoed = loaded("run", "--rm", "-i", "--network", "none", loaded.image, "cat", stdin="through stdin\n")
    assert echoed.stdout == "through stdin\n"
    usage = loaded("ps", "--no-such-flag")
    assert usage.returncode == 125 and "--no-such-flag" in usage.stderr
    assert _templates(loaded.root) == templates  # every command went to the same template


def test_the_callers_working_directory_and_environment_apply(tmp_path: Path, loaded: Cli) -> None:
    work = tmp_path / "work"
    work.mkdir()
    saved = _popen(loaded.root, "save", "-o", "relative.tar", loaded.image, cwd=work, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    _, err = saved.communicate(timeout=60)
    assert saved.returncode == 0, err
    assert (work / "relative.tar").stat().st_size > 0
    env_file = work / "env.list"
    env_file.write_text("FROM_FILE=1\n")
    os.environ["KITEBOX_TEST_PASSED"] = "from the caller"
    try:
        shown = _popen(loaded.root, "run", "--rm", "--network", "none", "--env-file", "env.list",
                       "-e", "KITEBOX_TEST_PASSED", loaded.image, "sh", "-c", 'echo "$FROM_FILE $KITEBOX_TEST_PASSED"',
                       cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = shown.communicate(timeout=60)
    finally:
        del os.environ["KITEBOX_TEST_PASSED"]
    assert (shown.returncode, out) == (0, "1 from the caller\n"), err


def test_ctrl_c_reaches_the_command_and_a_killed_client_takes_it_along(loaded: Cli) -> None:
    started = loaded("run", "-d", "--name", "talker", "--network", "none", loaded.image, "sh", "-c",
                     "echo ready; exec sleep 300")
    assert started.returncode == 0, started.stderr
    (template,) = _templates(loaded.root)

    follower = _popen(loaded.root, "logs", "-f", "talker", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert follower.stdout is not None
    assert follower.stdout.readline() == "ready\n"
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=20)
    assert follower.returncode == 130, err
    assert "Traceback" not in err

    killed = _popen(loaded.root, "logs", "-f", "talker", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert killed.stdout is not None
    assert killed.stdout.readline() == "ready\n"
    worker = _worker_of(template, killed)
    killed.kill()
    killed.communicate(timeout=20)
    wait_until(lambda: worker not in children(template), "the command's process to end with its client")
    assert loaded("rm", "-f", "talker").returncode == 0


def test_ctrl_z_stops_the_command_with_its_client(loaded: Cli) -> None:
    assert loaded("run", "-d", "--name", "talker", "--network", "none", loaded.image, "sh", "-c",
                  "echo ready; exec sleep 300").returncode == 0
    (template,) = _templates(loaded.root)
    follower = _popen(loaded.root, "logs", "-f", "talker", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "ready\n"
        worker = _worker_of(template, follower)
        follower.send_signal(signal.SIGTSTP)
        wait_until(lambda: state_of(follower.pid) == "T" and state_of(worker) == "T", "client and command to stop")
        follower.send_signal(signal.SIGCONT)
        wait_until(lambda: state_of(worker) != "T", "the command to go on")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=20)
    assert follower.returncode == 130
    assert loaded("rm", "-f", "talker").returncode == 0


def _spares(template: int) -> list[int]:
    """The template's children that hold no client's stdio: the spare forked ahead for the next command."""
    return [pid for pid in children(template) if _readlink(f"/proc/{pid}/fd/1") == "/dev/null"]


def test_a_command_runs_in_the_spare_forked_ahead_and_a_dead_spare_is_replaced(loaded: Cli) -> None:
    (template,) = _templates(loaded.root)
    wait_until(lambda: len(_spares(template)) == 1, "a spare worker")
    (spare,) = _spares(template)
    assert Path(f"/proc/{spare}/comm").read_text().strip() == "kb-worker"
    follower = _popen(loaded.root, "ps", "--format", "json")  # any command: served by that spare
    follower.communicate(timeout=20)
    assert follower.returncode == 0
    wait_until(lambda: spare not in children(template), "the spare to have run the command")
    wait_until(lambda: len(_spares(template)) == 1, "the next spare")
    (replacement,) = _spares(template)
    os.kill(replacement, signal.SIGKILL)  # a dead spare: the next command is forked on the spot
    wait_until(lambda: replacement not in children(template), "the killed spare to go")
    result = loaded("run", "--rm", "--network", "none", loaded.image, "echo", "still served")
    assert (result.returncode, result.stdout) == (0, "still served\n"), result.stderr
    wait_until(lambda: len(_spares(template)) == 1, "a spare again")


def test_the_spare_ends_with_its_template(loaded: Cli) -> None:
    (template,) = _templates(loaded.root)
    wait_until(lambda: len(_spares(template)) == 1, "a spare worker")
    (spare,) = _spares(template)
    next(loaded.root.glob("cli-*.sock")).unlink()  # retires the template (as a newer one would)
    wait_until(lambda: not os.path.exists(f"/proc/{template}") and not os.path.exists(f"/proc/{spare}"),
               "the template and its spare to exit")


def test_commands_with_the_default_configuration_run_on_the_engine_the_spare_opened(loaded: Cli) -> None:
    """The spare opens the state root's engine with the default configuration (the test commands have a config of
    their own, so they always close it and open theirs): commands without one run on it."""
    (template,) = _templates(loaded.root)
    wait_until(lambda: len(_spares(template)) == 1, "a spare worker")
    (spare,) = _spares(template)
    wait_until(lambda: any(link.endswith("/images.db") for link in _fd_links(spare)), "the spare's engine")
    env = {key: value for key, value in os.environ.items() if key != "KITEBOX_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "app.main", "--root", str(loaded.root), "run", "--rm",
                             "--network", "none", loaded.image, "echo", "prepared"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)
    assert (result.returncode, result.stdout) == (0, "prepared\n"), result.stderr
    assert loaded("ps", "-a", "-q").stdout == ""  # removed: the --rm ran to its end on that engine


def _fd_links(pid: int) -> list[str]:
    links = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        link = _readlink(f"/proc/{pid}/fd/{name}")
        if link is not None:
            links.append(link)
    return links


def test_a_template_running_other_code_is_retired(loaded: Cli) -> None:
    (old,) = _templates(loaded.root)
    stale = loaded.root / "cli-0000000000000000.sock"
    os.rename(next(loaded.root.glob("cli-*.sock")), stale)  # as if the sources had changed since
    assert loaded("ps").returncode == 0
    wait_until(lambda: old not in _templates(loaded.root), "the old template to exit")
    assert not stale.exists()
    assert len(_templates(loaded.root)) == 1


def test_fast_start_can_be_turned_off(tmp_path: Path) -> None:
    root = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KITEBOX_FORKSERVER": "0"}
    result = subprocess.run([sys.executable, "-m", "app.main", "--root", str(root), "ps"], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert _templates(root) == []
    assert not list(root.glob("cli-*.sock"))
