"""Persistent network state: networks, endpoints (a container's attachment) and their address leases.

One JSON file, ``<root>/networks/state.json``, read-modified-written under an exclusive ``flock`` on
``<root>/networks/lock`` (flock locks belong to the open file, so they exclude other threads of this process as
well as other processes: the app and a CLI allocate safely side by side). The file is replaced atomically
(write + fsync + rename), so a crash leaves either the old or the new state, never half of one: a lease is on
disk before its address is configured, and an address is never handed out twice, across restarts and crashes.
Leases of containers that died with the engine are reclaimed by ``NetworkManager.repair``.

Addresses: the gateway is the subnet's first host; containers get the lowest free host address after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import LimitExceeded, StoreError
from engine.tmpnames import temporary_sibling

__all__ = ["Endpoint", "EndpointNetwork", "NetworkRecord", "NetworkState", "StateStore", "allocate_address",
           "mac_for"]


@dataclass
class NetworkRecord:
    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    builtin: bool = False  # the default "bridge" network

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "bridge": self.bridge, "subnet": self.subnet,
                "gateway": self.gateway, "created": self.created, "labels": dict(self.labels),
                "builtin": self.builtin}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NetworkRecord:
        return cls(str(raw["id"]), str(raw["name"]), str(raw["bridge"]), str(raw["subnet"]), str(raw["gateway"]),
                   str(raw["created"]), {str(k): str(v) for k, v in dict(raw.get("labels") or {}).items()},
                   bool(raw.get("builtin", False)))


@dataclass
class EndpointNetwork:
    """One container's place on one network: its lease and its links."""

    ip: str
    mac: str
    aliases: list[str]
    veth: str  # host side
    ifname: str  # inside the container (eth0, eth1...)

    def to_json(self) -> dict[str, Any]:
        return {"ip": self.ip, "mac": self.mac, "aliases": list(self.aliases), "veth": self.veth,
                "ifname": self.ifname}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EndpointNetwork:
        return cls(str(raw["ip"]), str(raw["mac"]), [str(a) for a in raw.get("aliases") or []], str(raw["veth"]),
                   str(raw["ifname"]))


@dataclass
class Endpoint:
    """A prepared container: its namespace, networks, published ports and the files kept current."""

    container_id: str
    name: str
    hostname: str
    mode: str  # "bridge" (some bridge networks), "none" or "host"
    netns: str | None
    networks: dict[str, EndpointNetwork] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortBinding.to_json(), host ports resolved
    exposed: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)  # "name\tip" lines, already validated
    hosts_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"container_id": self.container_id, "name": self.name, "hostname": self.hostname, "mode": self.mode,
                "netns": self.netns, "networks": {k: v.to_json() for k, v in self.networks.items()},
                "ports": list(self.ports), "exposed": list(self.exposed), "add_hosts": list(self.add_hosts),
                "hosts_path": self.hosts_path}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Endpoint:
        return cls(str(raw["container_id"]), str(raw["name"]), str(raw["hostname"]), str(raw["mode"]),
                   raw.get("netns"), {str(k): EndpointNetwork.from_json(v) for k, v in raw["networks"].items()},
                   list(raw.get("ports") or []), [str(e) for e in raw.get("exposed") or []],
                   [str(h) for h in raw.get("add_hosts") or []], raw.get("hosts_path"))


@dataclass
class NetworkState:
    networks: dict[str, NetworkRecord] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "networks": {k: v.to_json() for k, v in self.networks.items()},
                "endpoints": {k: v.to_json() for k, v in self.endpoints.items()}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NetworkState:
        return cls({str(k): NetworkRecord.from_json(v) for k, v in dict(raw.get("networks") or {}).items()},
                   {str(k): Endpoint.from_json(v) for k, v in dict(raw.get("endpoints") or {}).items()})

    def leased(self, network: str) -> set[str]:
        return {e.networks[network].ip for e in self.endpoints.values() if network in e.networks}

    def members(self, network: str) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if network in e.networks]


def allocate_address(record: NetworkRecord, taken: set[str]) -> ipaddress.IPv4Address:
    """The lowest host address of the subnet that is neither the gateway nor ``taken``."""
    gateway = ipaddress.IPv4Address(record.gateway)
    for address in record.network.hosts():
        if address != gateway and str(address) not in taken:
            return address
    raise LimitExceeded(f"network {record.name}: no free address left in {record.subnet}")


def mac_for(address: ipaddress.IPv4Address) -> str:
    """Docker's locally administered MAC derived from the address: 02:42:<the four address bytes>."""
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *address.packed))


class StateStore:
    """``with store.transaction() as state:`` -- read, change, and (on normal exit) write atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = directory / "state.json"

    def _ensure(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise StoreError(f"network state directory {self.directory}: {err.strerror}") from err

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure()
        try:
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StoreError(f"network state lock in {self.directory}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> NetworkState:
        try:
            text = self._path.read_text()
        except FileNotFoundError:
            return NetworkState()
        except OSError as err:
            raise StoreError(f"network state {self._path}: {err.strerror}") from err
        try:
            return NetworkState.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StoreError(f"network state {self._path}: corrupted ({err})") from err

    def _write(self, state: NetworkState) -> None:
        tmp = temporary_sibling(self._path)
        try:
            with open(tmp, "w") as out:
                json.dump(state.to_json(), out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"network state {self._path}: {err.strerror}") from err

    def read(self) -> NetworkState:
        with self._locked():
            return self._read()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[NetworkState]:
        with self._locked():
            state = self._read()
            before = json.dumps(state.to_json(), sort_keys=True)
            yield state
            if json.dumps(state.to_json(), sort_keys=True) != before:
                self._write(state)
