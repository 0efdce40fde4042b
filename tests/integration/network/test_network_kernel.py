"""Networking on the real kernel: NetworkManager + the real executor, busybox containers.

Every test uses its own state root, bridge names ``kbt<random>...``, its own nftables table and /24 subnets in
10.213.0.0/16 that collide with no route of the host, so tests run alongside a user's Kitebox. IPv4 forwarding
is left alone (nothing here leaves the host). Teardown releases everything and checks that no link, namespace
mount, nftables table or lease is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.errors import Conflict
from engine.network import NetworkAttachment, NetworkManager, PortBinding
from engine.network.manager import veth_name
from engine.network.netlink import Netlink
from engine.runtime.cgroups import cgroup_manager
from engine.runtime.executor import run_spec_for_test
from engine.runtime.plan import RunOptions, plan_container
from engine.runtime.spec import RuntimeSpec
from tests.integration.runtime.common import PARENT as RUNTIME_TEST_PARENT
from tests.integration.runtime.common import remove_cgroups
from tests.support.busybox import make_busybox_rootfs
from tests.support.networks import tear_down

pytestmark = pytest.mark.root
PARENT = RUNTIME_TEST_PARENT


def _free_subnet_base() -> int:
    with Netlink() as netlink:
        used = [r.destination for r in netlink.routes() if r.destination.prefixlen > 0]
    for _ in range(200):
        third = secrets.randbelow(200) + 20
        candidate = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return third
    raise AssertionError("no free 10.213.x.0/24 subnet")


class _RecordingManager(NetworkManager):
    """Remembers every container id it prepared, so teardown can look for their veths."""

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.seen: set[str] = set()

    async def prepare(self, container_id: str, **options: Any) -> NetworkAttachment:
        self.seen.add(container_id)
        return await super().prepare(container_id, **options)


@dataclass
class Net:
    manager: _RecordingManager
    tag: str
    root: Path
    rootfs: Path
    subnet: str


def _links_named(names: set[str], *, within: float = 10.0) -> list[str]:
    """The links of ``names`` still present once ``within`` seconds passed or none is left (the kernel
    destroys an unpinned namespace and its veths in the background)."""
    deadline = time.monotonic() + within
    while True:
        with Netlink() as netlink:
            present = sorted(link.name for link in netlink.links() if link.name in names)
        if not present or time.monotonic() > deadline:
            return present
        time.sleep(0.02)  # polling interval of a deadline-bounded wait


def _leftovers(tag: str, root: Path, veths: set[str]) -> list[str]:
    """Links named after the test's bridges or its containers, its nft table, namespace mounts under its root."""
    found = _links_named(veths)
    with Netlink() as netlink:
        found += [link.name for link in netlink.links() if link.name.startswith(tag)]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    if f"table ip {tag}" in tables:
        found.append(f"nft table {tag}")
    mounts = Path("/proc/self/mountinfo").read_text()
    if str(root / "netns") in mounts:
        found.append("netns mount")
    return found


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    tag = f"kbt{secrets.token_hex(3)}"
    third = _free_subnet_base()
    root = tmp_path / "state"
    manager = _RecordingManager(root, default_bridge=tag, bridge_prefix=tag, table=tag,
                                default_subnet=f"10.213.{third}.0/24", pools=[("10.213.0.0/16", 24)],
                                ip_forward=False)
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    try:
        yield Net(manager, tag, root, rootfs, f"10.213.{third}.0/24")
        assert manager.store.read().endpoints == {}, "a test left an attachment"
    finally:
        tear_down(manager, tag)
        veths = {veth_name(cid, i) for cid in manager.seen for i in range(3)}
        assert _leftovers(tag, root, veths) == []


class Container:
    """A busybox container run by the executor helper in a background thread."""

    def __init__(self, net: Net, name: str, script: str, *, network: str) -> None:
        cid = f"{net.tag}{secrets.token_hex(8)}"
        self.id = cid
        netns_path = str(net.manager.netns_path(cid)) if network not in ("none", "host") else None
        self.dir = net.root.parent / "containers" / cid
        self.spec: RuntimeSpec = plan_container(
            container_id=cid, image_config={"Cmd": ["sh", "-c", script]},
            options=RunOptions(network=network, netns_path=netns_path, hostname=name), rootfs=net.rootfs,
            root_mounts=[], bundle_dir=self.dir, cgroup_parent=PARENT)
        self.result: tuple[int, bytes, bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Container:
        def body() -> None:
            self.result = run_spec_for_test(self.spec, work_dir=self.dir, timeout=20)

        self._thread = threading.Thread(target=body)
        self._thread.start()
        return self

    def run(self) -> tuple[int, str, str]:
        self.start()
        return self.wait()

    def wait(self) -> tuple[int, str, str]:
        assert self._thread is not None
        self._thread.join(30)
        remove_cgroups([cgroup_manager(self.spec.cgroup)])  # and the shared parent, once no test uses it
        assert self.result is not None
        code, out, err = self.result
        return code, out.decode(), err.decode()


def _setup(net: Net, name: str, script: str, network: str, **prepare: Any) -> tuple[Container, dict[str, Any]]:
    """Plan first (create), then prepare (start) -- the order the container manager uses."""
    container = Container(net, name, script, network=network)
    attachment = asyncio.run(net.manager.prepare(
        container.id, name=name, hostname=name, networks=[(network, prepare.pop("aliases", ()))],
        container_dir=container.dir, **prepare)) if network not in ("none", "host") else None
    return container, (attachment.settings if attachment else {})


def _connect_until(port: int, deadline: float) -> bytes:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                data = sock.recv(100)
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on 127.0.0.1:{port}")
        time.sleep(0.05)  # polling interval of a deadline-bounded wait, not synchronisation by sleeping


def test_user_network_resolves_names_and_aliases(net: Net) -> None:
    asyncio.run(net.manager.create("appnet"))
    server, settings = _setup(net, "web", "nc -l -p 80 -e echo hello-from-web", "appnet", aliases=("www",))
    server.start()
    client, _ = _setup(net, "client",
                       "grep -w web /etc/hosts; cat /etc/resolv.conf | grep -c nameserver; "
                       "i=0; while [ $i -lt 100 ]; do nc www 80 && break; i=$((i+1)); usleep 50000; done",
                       "appnet")
    try:
        code, out, err = client.run()
        assert code == 0, err
        assert "hello-from-web" in out
        ip = settings["Networks"]["appnet"]["IPAddress"]
        assert f"{ip}\tweb www" in out
        server_code, _, server_err = server.wait()
        assert server_code == 0, server_err
        # The server's hosts file (bind-mounted, rewritten in place) learned about the client.
        assert "client" in (server.dir / "hosts").read_text()
        inspect = asyncio.run(net.manager.inspect("appnet"))
        assert set(inspect["Containers"]) == {server.id, client.id}
    finally:
        for container in (client, server):
            asyncio.run(net.manager.release(container.id))
    assert "client" not in (server.dir / "hosts").read_text()
    asyncio.run(net.manager.remove("appnet"))


def test_published_port_answers_on_loopback_and_conflicts_are_refused(net: Net) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server, settings = _setup(net, "pub", "nc -l -p 8080 -e echo published", "bridge",
                              ports=[PortBinding(8080, "tcp", "", free)])
    try:
        assert settings["Ports"] == {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(free)}]}
        server.start()
        assert _connect_until(free, time.monotonic() + 15).strip() == b"published"
        code, _, err = server.wait()
        assert code == 0, err
        with pytest.raises(Conflict, match=f"{free}/tcp is already published by container pub"):
            asyncio.run(net.manager.prepare(f"{net.tag}other", name="other", hostname="other",
                                            ports=[PortBinding(80, "tcp", "", free)]))
    finally:
        asyncio.run(net.manager.release(server.id))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(Conflict, match=f"0.0.0.0:{taken}/tcp is already in use"):
            asyncio.run(net.manager.prepare(f"{net.tag}third", name="third", hostname="third",
                                            ports=[PortBinding(80, "tcp", "", taken)]))
    assert not net.manager.netns_path(f"{net.tag}third").exists()


def test_none_has_only_loopback_and_host_sees_host_interfaces(net: Net) -> None:
    none, _ = _setup(net, "alone", "ls /sys/class/net; ip -o link show lo", "none")
    code, out, err = none.run()
    assert code == 0, err
    assert out.split("\n")[0] == "lo" and "UP" in out
    host, _ = _setup(net, "hosty", "ls /sys/class/net", "host")
    code, out, err = host.run()
    assert code == 0, err
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))
    assert "net" not in host.spec.namespaces and host.spec.sysctl == {}


def test_twenty_parallel_attachments_get_distinct_addresses_and_leave_nothing(net: Net) -> None:
    ids = [f"{net.tag}p{i:02d}" for i in range(20)]

    async def all_of_them() -> list[dict[str, Any]]:
        attachments = await asyncio.gather(*(net.manager.prepare(cid, name=cid, hostname=cid[-3:])
                                             for cid in ids))
        return [a.settings for a in attachments]

    settings = asyncio.run(all_of_them())
    try:
        addresses = [s["IPAddress"] for s in settings]
        assert len(set(addresses)) == 20
        assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network(net.subnet) for a in addresses)
        with Netlink() as netlink:
            veths = [link for link in netlink.links() if link.name in {veth_name(cid, 0) for cid in ids}]
        assert len(veths) == 20 and all(link.up for link in veths)
    finally:
        async def release_all() -> None:
            await asyncio.gather(*(net.manager.release(cid) for cid in ids))

        asyncio.run(release_all())
    assert _links_named({veth_name(cid, 0) for cid in ids}) == []
    assert list((net.root / "netns").iterdir()) == []


def test_repair_removes_leftovers_of_dead_containers(net: Net) -> None:
    asyncio.run(net.manager.prepare(f"{net.tag}dead", name="dead", hostname="dead",
                                    ports=[PortBinding(80, "tcp", "127.0.0.1", 0)]))
    live = asyncio.run(net.manager.prepare(f"{net.tag}live", name="live", hostname="live"))
    rules = subprocess.run(["nft", "list", "table", "ip", net.tag], capture_output=True, text=True).stdout
    assert "dnat to" in rules
    released = asyncio.run(net.manager.repair([f"{net.tag}live"]))
    assert released == [f"{net.tag}dead"]
    rules = subprocess.run(["nft", "list", "table", "ip", net.tag], capture_output=True, text=True).stdout
    assert "dnat to" not in rules and "masquerade" in rules
    assert [p.name for p in (net.root / "netns").iterdir()] == [f"{net.tag}live"]
    assert live.netns_path is not None
    asyncio.run(net.manager.release(f"{net.tag}live"))
