"""/etc/hosts and /etc/resolv.conf for containers; name resolution on user networks through /etc/hosts.

Containers on a user-defined network find each other by name, alias and short id through entries in their
/etc/hosts, kept current as peers come and go. The file is bind-mounted into the container from the container
directory, so it is rewritten IN PLACE (truncate + write on the same inode): a rename would leave the container
looking at the old inode forever.

resolv.conf follows the host's without loopback nameservers (unreachable from another network namespace); on
a systemd-resolved host whose only server is the 127.0.0.53 stub, the real upstream list in
/run/systemd/resolve/resolv.conf is used, as Docker does. ``--dns`` replaces the nameservers.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.errors import InvalidArgument, StoreError
from engine.runtime.plan import hosts_file, resolv_conf

__all__ = ["container_resolv_conf", "parse_add_host", "render_hosts", "write_in_place"]

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
SYSTEMD_RESOLV = Path("/run/systemd/resolve/resolv.conf")


def parse_add_host(spec: str, host_gateway: str | None) -> str:
    """``--add-host name:ip`` (also ``name=ip``) -> a hosts line ``ip\\tname``. ``host-gateway`` is the
    container's gateway (the host as seen from the bridge)."""
    sep = "=" if "=" in spec else ":"
    name, found, address = spec.partition(sep)
    if not found or not name or not address:
        raise InvalidArgument(f"invalid --add-host {spec!r}: expected name:ip")
    if not _HOSTNAME.match(name):
        raise InvalidArgument(f"invalid --add-host {spec!r}: {name!r} is not a valid host name")
    if address == "host-gateway":
        if host_gateway is None:
            raise InvalidArgument(f"--add-host {spec!r}: host-gateway needs a bridge network")
        address = host_gateway
    try:
        address = str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        raise InvalidArgument(f"invalid --add-host {spec!r}: {address!r} is not an IP address") from None
    return f"{address}\t{name}"


def render_hosts(hostname: str, own: Sequence[tuple[str, Sequence[str]]],
                 peers: Iterable[tuple[str, Sequence[str]]], extra: Sequence[str]) -> str:
    """Docker's standard entries; ``own`` (ip, names) lines; the ``peers`` (ip, names) sharing a user network;
    then the ``--add-host`` lines."""
    lines = hosts_file(hostname).rstrip("\n").split("\n")
    for ip, names in own:
        lines.append(f"{ip}\t{' '.join(dict.fromkeys([hostname, *names]))}")
    seen = set(lines)
    for ip, names in peers:
        line = f"{ip}\t{' '.join(dict.fromkeys(names))}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    lines.extend(extra)
    return "\n".join(lines) + "\n"


def container_resolv_conf(dns: Sequence[str], host_resolv: Path = Path("/etc/resolv.conf")) -> str:
    """The container's resolv.conf: the host's (see the module doc) with ``dns`` as nameservers if given."""
    servers = []
    for server in dns:
        try:
            servers.append(str(ipaddress.ip_address(server)))
        except ValueError:
            raise InvalidArgument(f"invalid --dns {server!r}: not an IP address") from None
    try:
        text = host_resolv.read_text() if host_resolv.exists() else ""
        if _only_loopback(text) and host_resolv == Path("/etc/resolv.conf") and SYSTEMD_RESOLV.exists():
            text = SYSTEMD_RESOLV.read_text()
    except OSError as err:
        raise StoreError(f"host resolv.conf {host_resolv}: {err.strerror}") from err
    if servers:
        kept = [line for line in text.splitlines() if line.split()[:1] != ["nameserver"]]
        return "\n".join([*(f"nameserver {s}" for s in servers), *kept]) + "\n"
    return resolv_conf(text)


def _only_loopback(text: str) -> bool:
    servers = [line.split()[1] for line in text.splitlines() if line.split()[:1] == ["nameserver"]
               and len(line.split()) > 1]
    try:
        return bool(servers) and all(ipaddress.ip_address(s.split("%")[0]).is_loopback for s in servers)
    except ValueError:
        return False


def write_in_place(path: Path, text: str) -> None:
    """Replace the content of ``path`` keeping its inode (bind mounts of it see the new content)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            data = text.encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
    except OSError as err:
        raise StoreError(f"container file {path}: {err.strerror}") from err
