"""The ``kitebox`` CLI's container and volume commands, as real processes on the real kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import Cli

pytestmark = [pytest.mark.root, pytest.mark.registry]




def test_run_pulls_missing_image_and_returns_exit_code(cli: Cli) -> None:
    result = cli("run", "--rm", cli.image, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr
    assert cli("ps", "-aq").stdout == ""


def test_run_command_errors_map_to_126_127_125(cli: Cli) -> None:
    missing = cli("run", "--rm", cli.image, "nosuchcommand")
    assert missing.returncode == 127
    assert "executable file not found" in missing.stderr
    not_exec = cli("run", "--rm", cli.image, "/etc/passwd")
    assert not_exec.returncode == 126
    bad = cli("run", "--rm", "--memory", "lots", cli.image, "true")
    assert bad.returncode == 125
    assert "--memory" in bad.stderr


def test_detached_lifecycle_ps_logs_stop_rm(cli: Cli) -> None:
    started = cli("run", "-d", "--name", "web", "-l", "tier=front", cli.image, "sh", "-c",
                  "echo ready; exec sleep 300")
    assert started.returncode == 0, started.stderr
    container_id = started.stdout.strip()
    assert len(container_id) == 64
    rows = [json.loads(line) for line in cli("ps", "--format", "json").stdout.splitlines()]
    assert [(r["ID"], r["Names"], r["State"]) for r in rows] == [(container_id[:12], "web", "running")]
    assert cli("ps", "-q", "--filter", "label=tier=front").stdout.split() == [container_id[:12]]
    assert cli("ps", "-q", "--filter", "status=exited").stdout == ""
    assert cli("ps", "-q", "--filter", "name=nomatch").stdout == ""
    logs = cli("logs", "web")
    assert logs.stdout == "ready\n"
    assert cli("logs", "-t", "web").stdout.split(" ", 1)[1] == "ready\n"
    assert cli("stop", "-t", "1", "web").stdout == "web\n"
    assert cli("ps", "-aq", "--filter", "status=exited").stdout.split() == [container_id[:12]]
    inspect = json.loads(cli("inspect", "web").stdout)[0]
    assert inspect["State"]["Status"] == "exited"
    assert inspect["Config"]["Labels"]["tier"] == "front"
    assert cli("rm", "web").returncode == 0
    gone = cli("inspect", "web")
    assert gone.returncode == 1


def test_rm_running_needs_force_and_unknown_container(cli: Cli) -> None:
    assert cli("run", "-d", "--name", "busy", cli.image, "sleep", "300").returncode == 0
    refused = cli("rm", "busy")
    assert refused.returncode == 1
    assert "Stop the container" in refused.stderr
    assert cli("rm", "-f", "busy").returncode == 0
    missing = cli("stop", "nosuch")
    assert missing.returncode == 1
    assert "No such container: nosuch" in missing.stderr


def test_volume_commands(cli: Cli) -> None:
    assert cli("volume", "create", "data").stdout == "data\n"
    assert cli("volume", "ls", "-q").stdout.split() == ["data"]
    inspect = json.loads(cli("volume", "inspect", "data").stdout)[0]
    assert inspect["Name"] == "data" and inspect["Driver"] == "local"
    wrote = cli("run", "--rm", "-v", "data:/d", cli.image, "sh", "-c", "echo kept > /d/file")
    assert wrote.returncode == 0, wrote.stderr
    read = cli("run", "--rm", "-v", "data:/d:ro", cli.image, "cat", "/d/file")
    assert read.stdout == "kept\n"
    assert cli("volume", "rm", "data").returncode == 0
    assert cli("volume", "rm", "data").returncode == 1
    assert cli("volume", "create", "bad/name").returncode == 1


def test_env_file_and_workdir(cli: Cli, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\n")
    result = cli("run", "--rm", "--env-file", str(env_file), "-e", "DIRECT=2", "-w", "/made/here", cli.image,
                 "sh", "-c", "echo $FROM_FILE $DIRECT $(pwd)")
    assert result.stdout == "1 2 /made/here\n"
