"""Published ports: parse ``-p``/``-P``, check host ports are free, render Docker's documents.

Grammar (Docker's): ``[hostip:][hostport:]port[/tcp|/udp]`` where ports may be ranges (``8000-8002:80-82``;
the two ranges must have the same length, or the host range may be given for a single container port, which
Docker treats as "any free port of the range" -- here: the first free one). A missing or empty host port means
a random free one. IPv6 host addresses go in brackets (``[::1]:8080:80``) and are refused: the bridge is IPv4.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import Conflict, InvalidArgument

__all__ = ["PortBinding", "bind_check", "candidate_ports", "exposed_ports", "format_ports", "parse_publish",
           "ports_document"]


@dataclass(frozen=True)
class PortBinding:
    """``host_port`` 0 means "pick a free one at start"; ``host_ip`` "" means every address (0.0.0.0);
    ``host_port_last`` above ``host_port`` means "the first free port of that range"."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int = 0
    host_port_last: int = 0

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"

    def to_json(self) -> dict[str, Any]:
        return {"container_port": self.container_port, "protocol": self.protocol, "host_ip": self.host_ip,
                "host_port": self.host_port, "host_port_last": self.host_port_last}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PortBinding:
        return cls(int(raw["container_port"]), str(raw["protocol"]), str(raw["host_ip"]), int(raw["host_port"]),
                   int(raw.get("host_port_last", 0)))


def _port_range(text: str, spec: str, what: str) -> list[int]:
    first, sep, last = text.partition("-")
    try:
        start = int(first)
        end = int(last) if sep else start
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r} in port specification {spec!r}") from None
    if not (1 <= start <= 65535 and 1 <= end <= 65535) or end < start:
        raise InvalidArgument(f"invalid {what} {text!r} in port specification {spec!r}: must be 1-65535")
    return list(range(start, end + 1))


def parse_publish(spec: str) -> list[PortBinding]:
    """One ``-p`` value -> its bindings. InvalidArgument naming the spec for anything malformed."""
    rest, _, proto = spec.partition("/")
    protocol = proto.lower() or "tcp"
    if protocol not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid protocol {proto!r} in port specification {spec!r}: expected tcp or udp")
    host_ip = ""
    if rest.startswith("["):
        raise InvalidArgument(f"port specification {spec!r}: IPv6 host addresses are not supported")
    parts = rest.split(":")
    if len(parts) == 1:
        host_text, container_text = "", parts[0]
    elif len(parts) == 2:
        host_text, container_text = parts
    elif len(parts) == 3:
        host_ip, host_text, container_text = parts
    else:
        raise InvalidArgument(f"invalid port specification {spec!r}: expected [hostip:][hostport:]port[/proto]")
    if host_ip:
        try:
            address = ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidArgument(f"invalid host address {host_ip!r} in port specification {spec!r}") from None
        if address.version != 4:
            raise InvalidArgument(f"port specification {spec!r}: IPv6 host addresses are not supported")
        host_ip = "" if address == ipaddress.IPv4Address("0.0.0.0") else str(address)
    if not container_text:
        raise InvalidArgument(f"invalid port specification {spec!r}: no container port")
    container_ports = _port_range(container_text, spec, "container port")
    host_ports = _port_range(host_text, spec, "host port") if host_text else [0] * len(container_ports)
    if len(container_ports) == 1 and len(host_ports) > 1:
        # Docker: a host range for one container port means "one free port of the range".
        return [PortBinding(container_ports[0], protocol, host_ip, host_ports[0], host_ports[-1])]
    if len(host_ports) != len(container_ports):
        raise InvalidArgument(f"invalid port specification {spec!r}: host and container port ranges differ in size")
    return [PortBinding(c, protocol, host_ip, h) for c, h in zip(container_ports, host_ports, strict=True)]


def candidate_ports(binding: PortBinding) -> list[int]:
    """The host ports a binding may use: its fixed port, its range, or ``[0]`` for "any"."""
    if binding.host_port_last > binding.host_port:
        return list(range(binding.host_port, binding.host_port_last + 1))
    return [binding.host_port]


def exposed_ports(image_config: Mapping[str, Any]) -> list[PortBinding]:
    """``-P``: every EXPOSEd port of the image config (``{"80/tcp": {}}``) to a random host port."""
    result = []
    for key in sorted((image_config.get("ExposedPorts") or {}).keys()):
        port, _, proto = str(key).partition("/")
        result.extend(parse_publish(f"{port}/{proto or 'tcp'}"))
    return result


def bind_check(host_ip: str, port: int, protocol: str) -> int:
    """Bind ``host_ip:port`` (0: the kernel picks) to prove it free; return the port. Conflict when taken."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host_ip or "0.0.0.0", port))
        except OSError as err:
            where = f"{host_ip or '0.0.0.0'}:{port}/{protocol}"
            if err.errno == errno.EADDRINUSE:
                raise Conflict(f"host port {where} is already in use") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"host address {host_ip} of port {where} is not an address of this host"
                                      ) from None
            raise Conflict(f"host port {where}: {err.strerror}") from None
        bound: int = sock.getsockname()[1]
        return bound


def ports_document(bindings: Iterable[PortBinding], exposed: Iterable[str] = ()) -> dict[str, Any]:
    """Docker's ``NetworkSettings.Ports``: ``{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}``,
    with ``None`` for exposed but unpublished ports."""
    document: dict[str, Any] = {key: None for key in exposed}
    for binding in bindings:
        entry = {"HostIp": binding.host_ip or "0.0.0.0", "HostPort": str(binding.host_port)}
        current = document.get(binding.key)
        document[binding.key] = [*(current or []), entry]
    return document


def format_ports(document: Mapping[str, Any] | None) -> str:
    """``ps``'s PORTS column: ``0.0.0.0:8080->80/tcp, 53/udp``."""
    items = []
    for key, entries in sorted((document or {}).items()):
        if not entries:
            items.append(key)
            continue
        for entry in entries:
            items.append(f"{entry['HostIp']}:{entry['HostPort']}->{key}")
    return ", ".join(items)
