"""Docker-shaped documents built from the network state (pure functions): ``network inspect``/``ls`` and a
container's ``NetworkSettings``."""

from __future__ import annotations

from typing import Any

from engine.network.ipam import Endpoint, NetworkRecord, NetworkState
from engine.network.ports import PortBinding, ports_document

__all__ = ["BUILTIN_MODES", "mode_document", "network_document", "settings_document"]

BUILTIN_MODES = {"host": "host", "none": "null"}  # name -> driver


def _ipam(record: NetworkRecord | None) -> dict[str, Any]:
    config = [{"Subnet": record.subnet, "Gateway": record.gateway}] if record else []
    return {"Driver": "default", "Options": {}, "Config": config}


def network_document(state: NetworkState, record: NetworkRecord) -> dict[str, Any]:
    """``network inspect`` of a bridge network (default or user-defined)."""
    prefix = record.network.prefixlen
    containers = {}
    for endpoint in state.members(record.name):
        place = endpoint.networks[record.name]
        containers[endpoint.container_id] = {
            "Name": endpoint.name, "EndpointID": _endpoint_id(endpoint, record),
            "MacAddress": place.mac, "IPv4Address": f"{place.ip}/{prefix}", "IPv6Address": "",
        }
    return {
        "Name": record.name, "Id": record.id, "Created": record.created, "Scope": "local", "Driver": "bridge",
        "EnableIPv6": False, "IPAM": _ipam(record), "Internal": False, "Attachable": False, "Ingress": False,
        "Containers": containers,
        "Options": {"com.docker.network.bridge.name": record.bridge,
                    "com.docker.network.bridge.default_bridge": str(record.builtin).lower()},
        "Labels": dict(record.labels),
    }


def mode_document(state: NetworkState, name: str) -> dict[str, Any]:
    """``network inspect host`` / ``none``: containers using that mode."""
    containers = {e.container_id: {"Name": e.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "",
                                   "IPv6Address": ""}
                  for e in state.endpoints.values() if e.mode == name}
    return {
        "Name": name, "Id": name, "Created": "0001-01-01T00:00:00Z", "Scope": "local",
        "Driver": BUILTIN_MODES[name], "EnableIPv6": False, "IPAM": _ipam(None), "Internal": False,
        "Attachable": False, "Ingress": False, "Containers": containers, "Options": {}, "Labels": {},
    }


def _endpoint_id(endpoint: Endpoint, record: NetworkRecord) -> str:
    import hashlib

    return hashlib.sha256(f"{endpoint.container_id}/{record.id}".encode()).hexdigest()


def settings_document(state: NetworkState, endpoint: Endpoint) -> dict[str, Any]:
    """A container's ``NetworkSettings`` (Docker's shape). The top-level IPAddress/Gateway/MacAddress are
    those of the container's first network."""
    bindings = [PortBinding.from_json(p) for p in endpoint.ports]
    networks: dict[str, Any] = {}
    if endpoint.mode in BUILTIN_MODES:
        networks[endpoint.mode] = {"Aliases": None, "NetworkID": endpoint.mode, "EndpointID": "", "Gateway": "",
                                   "IPAddress": "", "IPPrefixLen": 0, "MacAddress": "", "DNSNames": None}
    for name, place in endpoint.networks.items():
        record = state.networks.get(name)
        if record is None:
            continue
        dns_names = None if record.builtin else list(dict.fromkeys(
            [endpoint.name, *place.aliases, endpoint.container_id[:12]]))
        networks[name] = {
            "Aliases": list(place.aliases) or None, "NetworkID": record.id,
            "EndpointID": _endpoint_id(endpoint, record), "Gateway": record.gateway, "IPAddress": place.ip,
            "IPPrefixLen": record.network.prefixlen, "MacAddress": place.mac, "DNSNames": dns_names,
        }
    first = next((v for v in networks.values() if v["IPAddress"]), None)
    return {
        "Bridge": "", "SandboxID": endpoint.container_id, "SandboxKey": endpoint.netns or "",
        "Ports": ports_document(bindings, endpoint.exposed) if endpoint.mode not in BUILTIN_MODES else {},
        "Gateway": first["Gateway"] if first else "", "IPAddress": first["IPAddress"] if first else "",
        "IPPrefixLen": first["IPPrefixLen"] if first else 0, "MacAddress": first["MacAddress"] if first else "",
        "Networks": networks,
    }
