"""The bridge driver seam: every kernel side effect of bridge networking, real or recorded.

:class:`KernelBridge` does it on the real kernel with one long-lived rtnetlink socket in the host namespace
(:mod:`engine.network.netlink`) and short-lived sockets inside container namespaces
(:mod:`engine.network.netns`); :class:`FakeBridge` records the calls and keeps an in-memory picture for unit
tests. Methods raise :class:`~engine.errors.KernelError` naming the link or namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine.errors import Conflict, KernelError, from_oserror
from engine.network import netns
from engine.network.netlink import Netlink

__all__ = ["BridgeDriver", "FakeBridge", "KernelBridge"]


class BridgeDriver(Protocol):
    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> None:
        """Create the bridge if missing, give it the gateway address, route_localnet=1, bring it up."""

    def remove_bridge(self, name: str) -> None:
        """Delete the bridge; a missing one is fine."""

    def host_networks(self) -> list[ipaddress.IPv4Network]:
        """Destinations of the host's routes (every table, default route excluded): subnets in use."""

    def uplink_mtu(self) -> int:
        """The MTU of the interface holding the default route (1500 without one)."""

    def enable_forwarding(self) -> None:
        """net.ipv4.ip_forward=1 (outbound NAT needs it)."""

    def create_netns(self, path: Path) -> None:
        """A new network namespace pinned at ``path``, loopback up."""

    def remove_netns(self, path: Path) -> None:
        """Unpin and delete ``path``; missing is fine."""

    def attach(self, path: Path, *, bridge: str, veth: str, ifname: str, address: ipaddress.IPv4Interface,
               gateway: ipaddress.IPv4Address | None, mac: str, mtu: int) -> None:
        """A veth pair ``veth`` (on ``bridge``) / ``ifname`` (inside ``path``) with ``address``; a default route
        via ``gateway`` when given."""

    def detach(self, veth: str) -> None:
        """Delete the host end ``veth`` (which deletes its peer); missing is fine."""

    def ports_of(self, bridges: set[str]) -> list[str]:
        """Names of the links enslaved to any of ``bridges``."""


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


class KernelBridge:
    """The real kernel. Thread-safe (the host socket serialises its requests)."""

    def __init__(self) -> None:
        self._host: Netlink | None = None
        self._lock = threading.Lock()

    def _netlink(self) -> Netlink:
        with self._lock:
            if self._host is None:
                try:
                    self._host = Netlink()
                except OSError as err:
                    raise from_oserror(err, "netlink socket", KernelError) from err
            return self._host

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None

    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> None:
        host = self._netlink()
        try:
            link = host.link(name)
            if link is None:
                with contextlib.suppress(FileExistsError):  # another process won the race: fine
                    host.add_bridge(name, mtu)
                link = host.link(name)
            if link is None or link.kind != "bridge":
                raise KernelError(f"bridge {name}: a link of that name exists and is not a bridge")
            # A bridge of that name serving another subnet belongs to someone else (another Kitebox state
            # root, or the admin): never pile a second network onto it.
            foreign = sorted({str(r.destination) for r in host.routes()
                              if r.oif == link.index and r.table == 254 and r.gateway is None
                              and r.destination != gateway.network})
            if foreign:
                raise Conflict(f"bridge {name} already serves {', '.join(foreign)} (another Kitebox state root or "
                               "another program): choose another name with network.default_bridge in the config")
            host.add_address(link.index, gateway)
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
            if not link.up:
                host.set_up(link.index)
        except OSError as err:
            raise from_oserror(err, f"bridge {name}", KernelError) from err

    def remove_bridge(self, name: str) -> None:
        self.detach(name)

    def host_networks(self) -> list[ipaddress.IPv4Network]:
        try:
            routes = self._netlink().routes()
        except OSError as err:
            raise from_oserror(err, "host routes", KernelError) from err
        return [r.destination for r in routes if r.destination.prefixlen > 0]

    def uplink_mtu(self) -> int:
        host = self._netlink()
        try:
            defaults = [r for r in host.routes() if r.destination.prefixlen == 0 and r.table == 254 and r.oif]
            if not defaults:
                return 1500
            by_index = {link.index: link for link in host.links()}
        except OSError as err:
            raise from_oserror(err, "host uplink", KernelError) from err
        uplink = by_index.get(defaults[0].oif)
        return uplink.mtu if uplink and uplink.mtu else 1500

    def enable_forwarding(self) -> None:
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
            _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")

    def create_netns(self, path: Path) -> None:
        try:
            netns.create_netns(path).close()
        except OSError as err:
            raise from_oserror(err, f"network namespace {path}", KernelError) from err

    def remove_netns(self, path: Path) -> None:
        try:
            netns.remove_netns(path)
        except OSError as err:
            raise from_oserror(err, f"network namespace {path}", KernelError) from err

    def attach(self, path: Path, *, bridge: str, veth: str, ifname: str, address: ipaddress.IPv4Interface,
               gateway: ipaddress.IPv4Address | None, mac: str, mtu: int) -> None:
        host = self._netlink()
        try:
            master = host.link(bridge)
            if master is None:
                raise KernelError(f"bridge {bridge} does not exist")
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                try:
                    host.add_veth(veth, master=master.index, mtu=mtu, peer_name=ifname, peer_netns_fd=fd,
                                  peer_mac=_mac_bytes(mac))
                except FileExistsError:  # the veth of this container's previous run, not destroyed yet
                    self.detach(veth)
                    host.add_veth(veth, master=master.index, mtu=mtu, peer_name=ifname, peer_netns_fd=fd,
                                  peer_mac=_mac_bytes(mac))
            finally:
                os.close(fd)
            link = host.link(veth)
            if link is None:
                raise KernelError(f"veth {veth} vanished right after its creation")
            host.set_up(link.index)
            with netns.open_netlink_in(path) as inside:
                peer = inside.link(ifname)
                if peer is None:
                    raise KernelError(f"veth peer {ifname} missing in network namespace {path}")
                inside.add_address(peer.index, address)
                inside.set_up(peer.index)
                if gateway is not None:
                    inside.add_default_route(gateway, peer.index)
        except OSError as err:
            with contextlib.suppress(KernelError):
                self.detach(veth)
            raise from_oserror(err, f"veth {veth} to {bridge}", KernelError) from err

    def detach(self, veth: str) -> None:
        host = self._netlink()
        try:
            link = host.link(veth)
            if link is not None:
                host.delete_link(link.index)
        except OSError as err:
            if err.errno not in (19, 2):  # ENODEV / ENOENT: already gone
                raise from_oserror(err, f"link {veth}", KernelError) from err

    def ports_of(self, bridges: set[str]) -> list[str]:
        try:
            links = self._netlink().links()
        except OSError as err:
            raise from_oserror(err, "host links", KernelError) from err
        indexes = {link.index for link in links if link.name in bridges}
        return [link.name for link in links if link.master in indexes]


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as out:
            out.write(value)
    except OSError as err:
        raise from_oserror(err, f"sysctl {path}", KernelError) from err


@dataclass
class FakeBridge:
    """Records calls (``calls``) and models bridges, namespaces and veths in memory (unit tests)."""

    routes: list[ipaddress.IPv4Network] = field(default_factory=list)
    mtu: int = 1500
    calls: list[tuple[str, ...]] = field(default_factory=list)
    bridges: dict[str, str] = field(default_factory=dict)  # name -> gateway interface
    namespaces: set[str] = field(default_factory=set)
    veths: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # veth -> (bridge, netns, address)
    forwarding: bool = False
    fail_attach: bool = False

    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> None:
        self.calls.append(("ensure_bridge", name, str(gateway), str(mtu)))
        self.bridges[name] = str(gateway)

    def remove_bridge(self, name: str) -> None:
        self.calls.append(("remove_bridge", name))
        self.bridges.pop(name, None)
        for veth in [v for v, (b, _, _) in self.veths.items() if b == name]:
            del self.veths[veth]

    def host_networks(self) -> list[ipaddress.IPv4Network]:
        return [*self.routes, *(ipaddress.IPv4Interface(g).network for g in self.bridges.values())]

    def uplink_mtu(self) -> int:
        return self.mtu

    def enable_forwarding(self) -> None:
        self.calls.append(("enable_forwarding",))
        self.forwarding = True

    def create_netns(self, path: Path) -> None:
        self.calls.append(("create_netns", str(path)))
        if str(path) in self.namespaces:
            raise KernelError(f"network namespace {path}: File exists")
        self.namespaces.add(str(path))
        path.write_text("")

    def remove_netns(self, path: Path) -> None:
        self.calls.append(("remove_netns", str(path)))
        self.namespaces.discard(str(path))
        for veth in [v for v, (_, n, _) in self.veths.items() if n == str(path)]:
            del self.veths[veth]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def attach(self, path: Path, *, bridge: str, veth: str, ifname: str, address: ipaddress.IPv4Interface,
               gateway: ipaddress.IPv4Address | None, mac: str, mtu: int) -> None:
        self.calls.append(("attach", str(path), bridge, veth, ifname, str(address), str(gateway), mac, str(mtu)))
        if self.fail_attach:
            raise KernelError(f"veth {veth} to {bridge}: Operation not permitted")
        if bridge not in self.bridges or str(path) not in self.namespaces:
            raise KernelError(f"veth {veth}: no bridge {bridge} or namespace {path}")
        self.veths[veth] = (bridge, str(path), str(address))

    def detach(self, veth: str) -> None:
        self.calls.append(("detach", veth))
        self.veths.pop(veth, None)

    def ports_of(self, bridges: set[str]) -> list[str]:
        return [v for v, (b, _, _) in self.veths.items() if b in bridges]
