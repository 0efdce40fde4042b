"""NAT for the bridges: outbound masquerade and published ports, as one nftables table owned by Kitebox.

Describe, then perform: :func:`render_ruleset` turns the whole desired state (every bridge network, every
published port) into the text of one ``nft -f`` transaction that replaces Kitebox's table atomically
(``table ip T`` + ``delete table ip T`` + ``table ip T {...}``: create-if-missing, drop, rebuild, all or
nothing). Rebuilding from the state on each change costs one ``nft`` run (~5 ms) and makes crash repair
trivial: whatever rules a dead engine left behind are replaced by what the state says now.

Published ports are kernel DNAT, netavark's way, so they keep working while the app is closed:

* ``prerouting`` (traffic from other hosts and from containers) and ``output`` (traffic from this host,
  loopback included) jump to ``ports`` for packets addressed to a local address (``fib daddr type local``);
* ``ports`` DNATs ``[ip daddr HOSTIP] tcp|udp dport HOSTPORT`` to the container's address and port;
* ``postrouting`` masquerades the subnets' traffic leaving by another interface (outbound NAT), and traffic
  from 127.0.0.0/8 entering a bridge (loopback clients DNAT-ed to a container; the bridge also needs
  ``route_localnet=1``, set by the bridge driver), and hairpin traffic (a container reaching a published port
  of a container on its own bridge).

Nothing outside Kitebox's table is touched; :meth:`Firewall.apply` with no networks deletes the table.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.errors import KernelError

__all__ = ["FakeFirewall", "Firewall", "FirewallNetwork", "FirewallPort", "NftFirewall", "render_ruleset"]


@dataclass(frozen=True)
class FirewallNetwork:
    bridge: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class FirewallPort:
    host_ip: str  # "" = every local address
    host_port: int
    protocol: str
    container_ip: str
    container_port: int


def _quote(name: str) -> str:
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise KernelError(f"interface name {name!r} cannot be used in a firewall rule")
    return f'"{name}"'


def render_ruleset(table: str, networks: Sequence[FirewallNetwork], ports: Sequence[FirewallPort]) -> str:
    """The ``nft -f`` text making table ``ip <table>`` exactly what ``networks`` and ``ports`` need."""
    if not table.replace("_", "").isalnum():
        raise KernelError(f"firewall table name {table!r} is not a plain identifier")
    lines = [f"table ip {table}", f"delete table ip {table}"]
    if not networks:
        return "\n".join(lines) + "\n"
    lines += [
        f"table ip {table} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    fib daddr type local jump ports",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump ports",
        "  }",
        "  chain ports {",
    ]
    for port in sorted(ports, key=lambda p: (p.host_port, p.protocol, p.host_ip)):
        match = f"ip daddr {ipaddress.IPv4Address(port.host_ip)} " if port.host_ip else ""
        target = f"{ipaddress.IPv4Address(port.container_ip)}:{int(port.container_port)}"
        if port.protocol not in ("tcp", "udp"):
            raise KernelError(f"protocol {port.protocol!r} cannot be forwarded")
        lines.append(f"    {match}{port.protocol} dport {int(port.host_port)} dnat to {target}")
    lines += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for network in networks:
        bridge = _quote(network.bridge)
        lines += [
            f"    ip saddr {network.subnet} oifname != {bridge} masquerade",
            f"    ip saddr 127.0.0.0/8 oifname {bridge} masquerade",
            f"    ip saddr {network.subnet} oifname {bridge} ct status dnat masquerade",
        ]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


class Firewall(Protocol):
    """The seam: apply a rendered ruleset."""

    def apply(self, ruleset: str) -> None: ...


class NftFirewall:
    """Runs ``nft -f -`` with the ruleset on stdin (one transaction)."""

    def __init__(self, nft: str | None = None) -> None:
        found = nft or shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
        if not found:
            raise KernelError("the nft tool (package nftables) is needed for bridge networks and published ports")
        self._nft = found

    def apply(self, ruleset: str) -> None:
        try:
            done = subprocess.run([self._nft, "-f", "-"], input=ruleset.encode(), capture_output=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelError(f"nft: {err}") from err
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip().splitlines()
            raise KernelError(f"nft refused Kitebox's ruleset: {message[0] if message else done.returncode}")


class FakeFirewall:
    """Records every ruleset applied (unit tests)."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    def apply(self, ruleset: str) -> None:
        self.applied.append(ruleset)

    @property
    def current(self) -> str:
        return self.applied[-1] if self.applied else ""
