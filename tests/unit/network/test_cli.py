"""The network CLI handlers against a NetworkManager on recording fakes (the engine wiring is the lead's)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from app.cli import networks as cli
from engine import Engine
from engine.network import NetworkManager
from engine.network.bridge import FakeBridge
from engine.network.firewall import FakeFirewall


class _Containers:
    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids

    async def get(self, text: str) -> Any:
        return SimpleNamespace(id=self.ids[text], name=text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser


async def _run(engine: Any, *argv: str) -> int:
    args = _parser().parse_args(list(argv))
    result: int = await args.handler(cast(Engine, engine), args)
    return result


async def test_network_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.2\n")
    manager = NetworkManager(tmp_path, driver=FakeBridge(), firewall=FakeFirewall(), host_resolv=resolv)
    engine = SimpleNamespace(networks=manager, containers=_Containers({"web": "a" * 64}))
    assert await _run(engine, "network", "create", "--subnet", "10.7.0.0/24", "--label", "a=b", "front") == 0
    network_id = capsys.readouterr().out.strip()
    assert len(network_id) == 64
    assert await _run(engine, "network", "ls") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [line.split()[1] for line in table[1:]] == ["bridge", "front", "host", "none"]
    assert await _run(engine, "network", "inspect", "front", "missing") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["IPAM"]["Config"] == [{"Subnet": "10.7.0.0/24", "Gateway": "10.7.0.1"}]
    assert "network missing not found" in captured.err
    await manager.prepare("a" * 64, name="web", hostname="web", networks=[("front", ["w"])],
                          ports=[cli_port(8080)])
    assert await _run(engine, "port", "web") == 0
    assert capsys.readouterr().out == "8080/tcp -> 0.0.0.0:18080\n"
    assert await _run(engine, "port", "web", "8080") == 0
    assert capsys.readouterr().out == "0.0.0.0:18080\n"
    assert await _run(engine, "network", "rm", "front") == 1
    assert "network front has active endpoints: web" in capsys.readouterr().err
    await manager.create("back")
    assert await _run(engine, "network", "connect", "--alias", "x", "back", "web") == 0
    assert (await manager.settings("a" * 64) or {})["Networks"]["back"]["Aliases"] == ["x"]
    assert await _run(engine, "network", "disconnect", "back", "web") == 0
    await manager.release("a" * 64)
    assert await _run(engine, "network", "prune", "-f") == 0
    assert capsys.readouterr().out == "Deleted Networks:\nback\nfront\n"


def cli_port(port: int) -> Any:
    from engine.network import PortBinding

    return PortBinding(port, "tcp", "", 10000 + port)


def test_run_flags() -> None:
    parser = argparse.ArgumentParser()
    cli.add_run_flags(parser)
    args = parser.parse_args(["-p", "80", "-p", "127.0.0.1:8080:80/udp", "-P", "--network-alias", "a",
                              "--add-host", "h:1.2.3.4", "--dns", "9.9.9.9"])
    assert cli.network_flags(args) == cli.NetworkFlags(("80", "127.0.0.1:8080:80/udp"), True, ("a",),
                                                       ("h:1.2.3.4",), ("9.9.9.9",))
