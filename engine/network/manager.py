"""``NetworkManager``: networks (create/ls/inspect/rm/prune/connect/disconnect) and container attachment.

The container side calls three things (see each method): :meth:`prepare` before a container's process starts
(returns the namespace path for ``RuntimeSpec.netns_path`` and the ``NetworkSettings`` for inspect),
:meth:`release` when it stops for good or is removed, :meth:`repair` when the engine opens.

Every change happens under the state lock (:class:`~engine.network.ipam.StateStore`), kernel work included, so
leases, links, NAT rules and hosts files always move together; a kernel failure undoes the kernel work of that
change and leaves the state untouched. A crash in between leaves kernel objects without state (or the reverse),
which :meth:`repair` removes. Networking outlives the app: namespaces are pinned by bind mounts under
``<root>/netns`` and ports are kernel DNAT rules.

Modes: ``none`` (the executor gives the container its own namespace with only ``lo``, up), ``host`` (no
namespace of its own), ``bridge`` (the default network, bridge ``default_bridge``) and user-defined bridge
networks, where containers find each other by name, ``--network-alias`` and short id through /etc/hosts.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Conflict, InvalidArgument, KiteboxError, NotFound
from engine.network import hosts
from engine.network.bridge import BridgeDriver, KernelBridge
from engine.network.documents import BUILTIN_MODES, mode_document, network_document, settings_document
from engine.network.firewall import Firewall, FirewallNetwork, FirewallPort, NftFirewall, render_ruleset
from engine.network.ipam import (
    Endpoint,
    EndpointNetwork,
    NetworkRecord,
    NetworkState,
    StateStore,
    allocate_address,
    mac_for,
)
from engine.network.ports import PortBinding, bind_check, candidate_ports, exposed_ports

__all__ = ["DEFAULT_POOLS", "NetworkAttachment", "NetworkManager", "veth_name"]

DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    ("172.17.0.0/16", 16), ("172.18.0.0/15", 16), ("172.20.0.0/14", 16), ("172.24.0.0/13", 16),
    ("192.168.0.0/16", 20),
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


@dataclass(frozen=True)
class NetworkAttachment:
    """What :meth:`NetworkManager.prepare` hands the container side.

    ``netns_path``: the namespace to join (``RuntimeSpec.netns_path``), ``None`` for ``host`` and ``none``;
    ``settings``: ``NetworkSettings`` for inspect; ``hosts``/``resolv_conf``: the files' text (already written
    in place when a container directory was given); ``ports``: the bindings with host ports resolved.
    """

    netns_path: str | None
    settings: dict[str, Any]
    hosts: str
    resolv_conf: str
    ports: tuple[PortBinding, ...]


def _now() -> str:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class NetworkManager:
    """Bridge networking for one state root. ``default_bridge`` names the default network's bridge,
    ``bridge_prefix`` starts user networks' bridge names, ``table`` is Kitebox's nftables table: all three are
    configurable so several state roots (and tests) can share a host. ``default_subnet`` fixes the default
    network's subnet (else the first pool subnet not colliding with the host's routes)."""

    def __init__(self, root: Path, *, default_bridge: str = "kitebox0", bridge_prefix: str = "kb-",
                 table: str = "kitebox", default_subnet: str | None = None,
                 pools: Sequence[tuple[str, int]] = DEFAULT_POOLS, driver: BridgeDriver | None = None,
                 firewall: Firewall | None = None, ip_forward: bool = True,
                 host_resolv: Path = Path("/etc/resolv.conf"), host_hosts: Path = Path("/etc/hosts")) -> None:
        if len(default_bridge) > 15 or not default_bridge.isascii():
            raise InvalidArgument(f"bridge name {default_bridge!r} is longer than 15 characters")
        self.root = root
        self.store = StateStore(root / "networks")
        self.netns_dir = root / "netns"
        self.default_bridge = default_bridge
        self.bridge_prefix = bridge_prefix
        self.table = table
        self.default_subnet = default_subnet
        self.pools = tuple(pools)
        self._driver = driver
        self._firewall = firewall
        self.ip_forward = ip_forward
        self.host_resolv = host_resolv
        self.host_hosts = host_hosts
        self._forwarding_done = False

    @property
    def driver(self) -> BridgeDriver:
        if self._driver is None:
            self._driver = KernelBridge()
        return self._driver

    @property
    def firewall(self) -> Firewall:
        if self._firewall is None:
            self._firewall = NftFirewall()
        return self._firewall

    def close(self) -> None:
        if isinstance(self._driver, KernelBridge):
            self._driver.close()

    def netns_path(self, container_id: str) -> Path:
        return self.netns_dir / container_id

    # -- networks ----------------------------------------------------------------------------------------------

    def _pick_subnet(self, state: NetworkState) -> ipaddress.IPv4Network:
        used = [*self.driver.host_networks(), *(r.network for r in state.networks.values())]
        for base, prefix in self.pools:
            for candidate in ipaddress.IPv4Network(base).subnets(new_prefix=prefix):
                if not any(candidate.overlaps(u) for u in used):
                    return candidate
        raise Conflict("no free subnet left in the address pools: give one with --subnet")

    def _default_record(self, state: NetworkState) -> NetworkRecord:
        record = state.networks.get("bridge")
        if record is None:
            subnet = ipaddress.IPv4Network(self.default_subnet) if self.default_subnet else self._pick_subnet(state)
            record = NetworkRecord(secrets.token_hex(32), "bridge", self.default_bridge, str(subnet),
                                   str(next(subnet.hosts())), _now(), {}, builtin=True)
            state.networks["bridge"] = record
        return record

    def _find(self, state: NetworkState, text: str) -> NetworkRecord:
        if text in ("bridge", "default"):
            return self._default_record(state)
        if text in state.networks:
            return state.networks[text]
        matches = [r for r in state.networks.values() if len(text) >= 3 and r.id.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"network id prefix {text!r} is ambiguous")
        raise NotFound(f"network {text} not found")

    def _create(self, name: str, subnet: str | None, gateway: str | None,
                labels: Mapping[str, str]) -> dict[str, Any]:
        if not _NAME.match(name):
            raise InvalidArgument(f"invalid network name {name!r}: use letters, digits, '_', '.' and '-'")
        if name in ("bridge", "default", *BUILTIN_MODES):
            raise Conflict(f"network {name} is a pre-defined network and cannot be created")
        if gateway and not subnet:
            raise InvalidArgument("--gateway needs --subnet")
        with self.store.transaction() as state:
            if name in state.networks:
                raise Conflict(f"network with name {name} already exists")
            self._default_record(state)
            if subnet:
                try:
                    network = ipaddress.IPv4Network(subnet)
                except ValueError as err:
                    raise InvalidArgument(f"invalid --subnet {subnet!r}: {err}") from None
                if network.prefixlen > 30:
                    raise InvalidArgument(f"invalid --subnet {subnet!r}: too small, at most /30")
                for other in state.networks.values():
                    if other.network.overlaps(network):
                        raise Conflict(f"subnet {subnet} overlaps network {other.name} ({other.subnet})")
            else:
                network = self._pick_subnet(state)
            hosts_list = list(network.hosts())
            if gateway:
                try:
                    gw = ipaddress.IPv4Address(gateway)
                except ValueError:
                    raise InvalidArgument(f"invalid --gateway {gateway!r}: not an IPv4 address") from None
                if gw not in hosts_list:
                    raise InvalidArgument(f"--gateway {gateway} is not a host address of {network}")
            else:
                gw = hosts_list[0]
            network_id = secrets.token_hex(32)
            record = NetworkRecord(network_id, name, (self.bridge_prefix + network_id)[:15], str(network), str(gw),
                                   _now(), dict(labels))
            state.networks[name] = record
            return network_document(state, record)

    def _remove(self, text: str) -> str:
        with self.store.transaction() as state:
            if text in BUILTIN_MODES or text in ("bridge", "default"):
                raise Conflict(f"{text} is a pre-defined network and cannot be removed")
            record = self._find(state, text)
            members = state.members(record.name)
            if members:
                names = ", ".join(sorted(e.name for e in members))
                raise Conflict(f"network {record.name} has active endpoints: {names}")
            del state.networks[record.name]
            self.driver.remove_bridge(record.bridge)
            self._apply_firewall(state)
            return record.name

    def _list(self) -> list[dict[str, Any]]:
        with self.store.transaction() as state:
            self._default_record(state)
            documents = [network_document(state, r) for r in state.networks.values()]
            documents += [mode_document(state, name) for name in BUILTIN_MODES]
        return sorted(documents, key=lambda d: str(d["Name"]))

    def _inspect(self, text: str) -> dict[str, Any]:
        with self.store.transaction() as state:
            if text in BUILTIN_MODES:
                return mode_document(state, text)
            return network_document(state, self._find(state, text))

    def _prune(self) -> list[str]:
        removed = []
        for document in self._list():
            name = str(document["Name"])
            if name in BUILTIN_MODES or name == "bridge" or document["Containers"]:
                continue
            with contextlib.suppress(Conflict, NotFound):
                removed.append(self._remove(name))
        return removed

    async def create(self, name: str, *, subnet: str | None = None, gateway: str | None = None,
                     labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``network create``: a user-defined bridge network; returns its inspect document. The bridge itself
        appears with the first container."""
        return await asyncio.to_thread(self._create, name, subnet, gateway, labels or {})

    async def list(self) -> builtins.list[dict[str, Any]]:
        """``network ls``: every network's inspect document (bridge, host, none and the user's), by name."""
        return await asyncio.to_thread(self._list)

    async def inspect(self, text: str) -> dict[str, Any]:
        """``network inspect`` by name or id prefix: subnet, gateway, attached containers. NotFound if unknown."""
        return await asyncio.to_thread(self._inspect, text)

    async def remove(self, text: str) -> str:
        """``network rm``; Conflict naming the attached containers if any. Returns the network's name."""
        return await asyncio.to_thread(self._remove, text)

    async def prune(self) -> builtins.list[str]:
        """``network prune``: remove every user network without containers; returns their names."""
        return await asyncio.to_thread(self._prune)

    # -- kernel helpers (called with the state lock held) -------------------------------------------------------

    def _apply_firewall(self, state: NetworkState, *, force: bool = False) -> None:
        """Make Kitebox's table match the state: one ``nft -f`` run, skipped when nothing changed (the text
        last applied is kept in the state file, so the comparison holds across processes)."""
        # Every known network gets its masquerade rules, used or not: a container coming or going then changes
        # no rule (no nft run) unless it publishes ports. A rule naming a bridge not created yet matches nothing.
        networks = [FirewallNetwork(r.bridge, r.network) for r in sorted(state.networks.values(), key=lambda r: r.name)]
        ports = []
        for endpoint in state.endpoints.values():
            target = next(iter(endpoint.networks.values()), None)
            if target is None:
                continue
            for raw in endpoint.ports:
                binding = PortBinding.from_json(raw)
                ports.append(FirewallPort(binding.host_ip, binding.host_port, binding.protocol, target.ip,
                                          binding.container_port))
        ruleset = render_ruleset(self.table, networks, ports)
        marker = self.store.directory / "firewall.applied"
        if not force and marker.exists() and marker.read_text() == ruleset:
            return
        self.firewall.apply(ruleset)
        hosts.write_in_place(marker, ruleset)

    def _ensure_forwarding(self) -> None:
        if self.ip_forward and not self._forwarding_done:
            self.driver.enable_forwarding()
            self._forwarding_done = True

    def _resolve_ports(self, state: NetworkState, container_id: str,
                       bindings: Sequence[PortBinding]) -> builtins.list[PortBinding]:
        """Give each binding a free host port: not published by another container, and bindable right now."""
        taken: dict[tuple[int, str], builtins.list[tuple[str, str]]] = {}
        for endpoint in state.endpoints.values():
            if endpoint.container_id == container_id:
                continue
            for raw in endpoint.ports:
                other = PortBinding.from_json(raw)
                taken.setdefault((other.host_port, other.protocol), []).append((other.host_ip, endpoint.name))

        def clash(ip: str, port: int, protocol: str) -> str | None:
            for other_ip, owner in taken.get((port, protocol), []):
                if not ip or not other_ip or ip == other_ip:
                    return owner
            return None

        resolved: builtins.list[PortBinding] = []
        for binding in bindings:
            port = _free_port(binding, clash)
            resolved.append(PortBinding(binding.container_port, binding.protocol, binding.host_ip, port))
            taken.setdefault((port, binding.protocol), []).append((binding.host_ip, "this container"))
        return resolved

    def _hosts_text(self, state: NetworkState, endpoint: Endpoint) -> str:
        if endpoint.mode == "host":
            try:
                base = self.host_hosts.read_text()
            except OSError:
                base = hosts.render_hosts(endpoint.hostname, [], [], [])
            return base.rstrip("\n") + "\n" + "".join(line + "\n" for line in endpoint.add_hosts)
        own: builtins.list[tuple[str, builtins.list[str]]] = []
        peers: builtins.list[tuple[str, builtins.list[str]]] = []
        for name, place in endpoint.networks.items():
            record = state.networks.get(name)
            user_network = record is not None and not record.builtin
            own.append((place.ip, [endpoint.name, *place.aliases] if user_network else []))
            if not user_network:
                continue
            for peer in state.members(name):
                if peer.container_id != endpoint.container_id:
                    spot = peer.networks[name]
                    peers.append((spot.ip, [peer.name, *spot.aliases, peer.container_id[:12]]))
        return hosts.render_hosts(endpoint.hostname, own, peers, endpoint.add_hosts)

    def _refresh_hosts(self, state: NetworkState, networks: set[str], skip: str | None = None) -> None:
        """Rewrite (in place) the hosts file of every container on one of ``networks``."""
        for endpoint in state.endpoints.values():
            if endpoint.container_id == skip or not endpoint.hosts_path or not networks & set(endpoint.networks):
                continue
            if os.path.exists(endpoint.hosts_path):
                hosts.write_in_place(Path(endpoint.hosts_path), self._hosts_text(state, endpoint))

    def _join(self, state: NetworkState, endpoint: Endpoint, record: NetworkRecord, aliases: Sequence[str],
              *, default_route: bool) -> EndpointNetwork:
        """Lease an address on ``record`` and wire the container's namespace to its bridge."""
        if aliases and record.builtin:
            raise InvalidArgument("network-scoped aliases are only supported for user-defined networks")
        for alias in aliases:
            if not _ALIAS.match(alias):
                raise InvalidArgument(f"invalid network alias {alias!r}")
        address = allocate_address(record, state.leased(record.name))
        used = {p.ifname for p in endpoint.networks.values()}
        index = next(i for i in range(len(used) + 1) if f"eth{i}" not in used)
        place = EndpointNetwork(str(address), mac_for(address), list(aliases),
                                veth_name(endpoint.container_id, index), f"eth{index}")
        mtu = self.driver.uplink_mtu()
        gateway = ipaddress.IPv4Address(record.gateway)
        self.driver.ensure_bridge(record.bridge, ipaddress.IPv4Interface(f"{gateway}/{record.network.prefixlen}"),
                                  mtu)
        assert endpoint.netns is not None
        self.driver.attach(Path(endpoint.netns), bridge=record.bridge, veth=place.veth, ifname=place.ifname,
                           address=ipaddress.IPv4Interface(f"{address}/{record.network.prefixlen}"),
                           gateway=gateway if default_route else None, mac=place.mac, mtu=mtu)
        endpoint.networks[record.name] = place
        return place

    def _teardown(self, endpoint: Endpoint) -> None:
        """Remove an endpoint's kernel objects; each step tolerates "already gone".

        Unpinning the namespace is enough: with no process left in it the kernel destroys it, and with it the
        veth pairs, in the background. Deleting the veths here would cost 20-40 ms each (the kernel waits for
        an RCU grace period per unregistered device) on the path of ``run --rm``. Veths kept alive by a
        namespace something still pins are deleted by :meth:`repair`; a veth name still in use when the same
        container starts again is handled by the bridge driver (delete, retry)."""
        if endpoint.netns:
            self.driver.remove_netns(Path(endpoint.netns))
        else:
            for place in endpoint.networks.values():
                self.driver.detach(place.veth)


    # -- container attachment ----------------------------------------------------------------------------------

    def _prepare(self, container_id: str, name: str, hostname: str,
                 networks: Sequence[tuple[str, Sequence[str]]], ports: Sequence[PortBinding], publish_all: bool,
                 exposed: Sequence[str], dns: Sequence[str], add_hosts: Sequence[str],
                 container_dir: Path | None) -> NetworkAttachment:
        if not networks:
            networks = [("bridge", ())]
        names = [n for n, _ in networks]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"container {name}: a network is given twice")
        mode = "bridge"
        if any(n in BUILTIN_MODES for n in names):
            if len(names) > 1:
                raise InvalidArgument(f"container {name}: network mode {names[0]} cannot be combined with others")
            mode = names[0]
            if networks[0][1]:
                raise InvalidArgument("network-scoped aliases are only supported for user-defined networks")
        resolv = hosts.container_resolv_conf(dns, self.host_resolv) if mode != "host" or dns else \
            _read_text(self.host_resolv)
        with self.store.transaction() as state:
            stale = state.endpoints.pop(container_id, None)
            if stale is not None:  # a start after a crash or a missed release: start clean
                self._teardown(stale)
            records = [self._find(state, n) for n in names] if mode == "bridge" else []
            gateway = records[0].gateway if records else None
            extra = [hosts.parse_add_host(spec, gateway) for spec in add_hosts]
            endpoint = Endpoint(container_id, name, hostname, mode, None, {}, [],
                                list(exposed), extra, str(container_dir / "hosts") if container_dir else None)
            if mode == "bridge":
                wanted = [*ports, *(exposed_ports({"ExposedPorts": dict.fromkeys(exposed)}) if publish_all else [])]
                endpoint.ports = [p.to_json() for p in self._resolve_ports(state, container_id, wanted)]
                endpoint.netns = str(self.netns_path(container_id))
                self.netns_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                if mode == "bridge":
                    self._ensure_forwarding()
                    self.driver.remove_netns(Path(str(endpoint.netns)))
                    self.driver.create_netns(Path(str(endpoint.netns)))
                    for index, (record, (_, aliases)) in enumerate(zip(records, networks, strict=True)):
                        self._join(state, endpoint, record, aliases, default_route=index == 0)
                state.endpoints[container_id] = endpoint
                self._apply_firewall(state)
            except BaseException:
                state.endpoints.pop(container_id, None)
                with contextlib.suppress(KiteboxError):
                    self._teardown(endpoint)
                raise
            hosts_text = self._hosts_text(state, endpoint)
            if container_dir is not None:
                hosts.write_in_place(container_dir / "hosts", hosts_text)
                hosts.write_in_place(container_dir / "resolv.conf", resolv)
            self._refresh_hosts(state, set(endpoint.networks), skip=container_id)
            return NetworkAttachment(endpoint.netns, settings_document(state, endpoint), hosts_text, resolv,
                                     tuple(PortBinding.from_json(p) for p in endpoint.ports))

    def _release(self, container_id: str) -> bool:
        with self.store.transaction() as state:
            endpoint = state.endpoints.pop(container_id, None)
            if endpoint is None:
                self.driver.remove_netns(self.netns_path(container_id))
                return False
            self._teardown(endpoint)
            self._apply_firewall(state)
            self._refresh_hosts(state, set(endpoint.networks))
            return True

    def _connect(self, network: str, container_id: str, aliases: Sequence[str]) -> dict[str, Any]:
        with self.store.transaction() as state:
            endpoint = state.endpoints.get(container_id)
            if endpoint is None:
                raise Conflict(f"container {container_id[:12]} is not running: start it to connect it to {network}")
            if endpoint.mode != "bridge":
                raise Conflict(f"container {endpoint.name} uses network mode {endpoint.mode}: it cannot join "
                               f"network {network}")
            record = self._find(state, network)
            if record.name in endpoint.networks:
                raise Conflict(f"container {endpoint.name} is already connected to network {record.name}")
            place = self._join(state, endpoint, record, aliases, default_route=not endpoint.networks)
            try:
                self._apply_firewall(state)
            except BaseException:
                endpoint.networks.pop(record.name, None)
                self.driver.detach(place.veth)
                raise
            self._refresh_hosts(state, {record.name})
            return settings_document(state, endpoint)

    def _disconnect(self, network: str, container_id: str) -> dict[str, Any]:
        with self.store.transaction() as state:
            endpoint = state.endpoints.get(container_id)
            record = self._find(state, network)
            if endpoint is None or record.name not in endpoint.networks:
                raise NotFound(f"container {container_id[:12]} is not connected to network {record.name}")
            place = endpoint.networks.pop(record.name)
            self.driver.detach(place.veth)
            self._apply_firewall(state)
            self._refresh_hosts(state, {record.name, *endpoint.networks})
            return settings_document(state, endpoint)

    def _repair(self, live: set[str]) -> builtins.list[str]:
        released = []
        with self.store.transaction() as state:
            for container_id in sorted(set(state.endpoints) - live):
                endpoint = state.endpoints.pop(container_id)
                with contextlib.suppress(KiteboxError):
                    self._teardown(endpoint)
                released.append(container_id)
            known = {str(e.netns) for e in state.endpoints.values() if e.netns}
            if self.netns_dir.is_dir():
                for entry in sorted(self.netns_dir.iterdir()):
                    if str(entry) not in known:
                        with contextlib.suppress(KiteboxError):
                            self.driver.remove_netns(entry)
            bridges = {r.bridge for r in state.networks.values()}
            ours = {p.veth for e in state.endpoints.values() for p in e.networks.values()}
            for veth in self.driver.ports_of(bridges):
                if veth not in ours:
                    with contextlib.suppress(KiteboxError):
                        self.driver.detach(veth)
            self._apply_firewall(state, force=True)
            for endpoint in state.endpoints.values():
                if endpoint.hosts_path and os.path.exists(endpoint.hosts_path):
                    hosts.write_in_place(Path(endpoint.hosts_path), self._hosts_text(state, endpoint))
        return released

    def _destroy(self) -> None:
        with self.store.transaction() as state:
            for container_id in sorted(state.endpoints):
                with contextlib.suppress(KiteboxError):
                    self._teardown(state.endpoints.pop(container_id))
            for record in state.networks.values():
                with contextlib.suppress(KiteboxError):
                    self.driver.remove_bridge(record.bridge)
            # "add then delete" removes the table whether or not it exists, in one nft transaction.
            self.firewall.apply(f"add table ip {self.table}\ndelete table ip {self.table}\n")
            with contextlib.suppress(FileNotFoundError):
                (self.store.directory / "firewall.applied").unlink()

    async def destroy(self) -> None:
        """Remove every kernel object this state root made (attachments, bridges, the nftables table).

        The networks stay defined and come back (new bridges) on next use. For tests and full resets: running
        containers lose their network.
        """
        await asyncio.to_thread(self._destroy)

    def _settings(self, container_id: str) -> dict[str, Any] | None:
        state = self.store.read()
        endpoint = state.endpoints.get(container_id)
        return settings_document(state, endpoint) if endpoint else None

    async def prepare(self, container_id: str, *, name: str, hostname: str,
                      networks: Sequence[tuple[str, Sequence[str]]] = (), ports: Sequence[PortBinding] = (),
                      publish_all: bool = False, exposed: Sequence[str] = (), dns: Sequence[str] = (),
                      add_hosts: Sequence[str] = (), container_dir: Path | None = None) -> NetworkAttachment:
        """Give a container its network before its process starts.

        ``networks``: ``[(network, aliases)]`` -- ``[("none", ())]``, ``[("host", ())]``, or bridge networks
        (``"bridge"`` is the default network; empty means it). ``ports``: ``-p`` bindings (host port 0 = a
        random free one); ``publish_all`` adds every port of ``exposed`` (the image's ExposedPorts keys, also
        listed in NetworkSettings.Ports). ``add_hosts``: ``name:ip`` (``host-gateway`` allowed); ``dns``:
        nameservers. With ``container_dir``, its ``hosts`` and ``resolv.conf`` are written in place and the
        hosts file is kept current as peers come and go. Preparing a container again replaces its previous
        attachment. Raises Conflict for a busy host port, NotFound for an unknown network, InvalidArgument
        for bad values, KernelError if the kernel refuses; nothing is left behind on failure.
        """
        return await asyncio.to_thread(self._prepare, container_id, name, hostname, networks, ports, publish_all,
                                       exposed, dns, add_hosts, container_dir)

    async def release(self, container_id: str) -> bool:
        """Undo :meth:`prepare` (veths, namespace, lease, port rules, peers' hosts entries). Idempotent:
        False when the container had nothing to release."""
        return await asyncio.to_thread(self._release, container_id)

    async def repair(self, live_container_ids: Sequence[str]) -> builtins.list[str]:
        """At engine open: release every attachment of a container not in ``live_container_ids`` (running or
        restarting ones), delete pinned namespaces and veths on Kitebox's bridges that belong to nobody, and
        re-apply the NAT table from the state. Returns the released container ids."""
        return await asyncio.to_thread(self._repair, set(live_container_ids))

    async def connect(self, network: str, container_id: str, *, aliases: Sequence[str] = ()) -> dict[str, Any]:
        """``network connect``: add a prepared (running) container to another bridge network (next ethN, no
        default route). Returns the container's new NetworkSettings."""
        return await asyncio.to_thread(self._connect, network, container_id, aliases)

    async def disconnect(self, network: str, container_id: str) -> dict[str, Any]:
        """``network disconnect``: remove the container's link to ``network``; returns its NetworkSettings."""
        return await asyncio.to_thread(self._disconnect, network, container_id)

    async def settings(self, container_id: str) -> dict[str, Any] | None:
        """The container's current NetworkSettings, or None when it is not prepared (for inspect)."""
        return await asyncio.to_thread(self._settings, container_id)

def _free_port(binding: PortBinding, clash: Callable[[str, int, str], str | None]) -> int:
    """The first host port of ``binding``'s candidates that is bindable now and published by nobody else."""
    error: KiteboxError | None = None
    for candidate in candidate_ports(binding):
        for _ in range(20 if candidate == 0 else 1):  # a random port may collide with a published one: retry
            try:
                port = bind_check(binding.host_ip, candidate, binding.protocol)
            except Conflict as err:
                error = err
                break
            owner = clash(binding.host_ip, port, binding.protocol)
            if owner is None:
                return port
            error = Conflict(f"host port {binding.host_ip or '0.0.0.0'}:{port}/{binding.protocol} is already "
                             f"published by container {owner}")
    assert error is not None
    raise error


def veth_name(container_id: str, index: int) -> str:
    """The host end of a container's ``eth<index>``: ``kb`` + 10 hex of a hash of the id + the index (at most
    15 characters, the kernel's limit; hashed so ids sharing a prefix still get distinct names)."""
    return f"kb{hashlib.sha256(container_id.encode()).hexdigest()[:10]}{index}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
