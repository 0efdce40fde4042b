"""NetworkManager against the recording kernel and firewall fakes: state, leases, documents, faults."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from engine.errors import Conflict, InvalidArgument, KernelError, NotFound
from engine.network import NetworkManager, PortBinding
from engine.network.bridge import FakeBridge
from engine.network.firewall import FakeFirewall
from engine.network.manager import veth_name


def _manager(root: Path, bridge: FakeBridge | None = None, firewall: FakeFirewall | None = None) -> NetworkManager:
    resolv = root / "resolv.conf"
    resolv.parent.mkdir(parents=True, exist_ok=True)
    resolv.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\n")
    return NetworkManager(root, driver=bridge or FakeBridge(routes=[ipaddress.IPv4Network("172.17.0.0/16")]),
                          firewall=firewall or FakeFirewall(), host_resolv=resolv)


async def test_default_network_avoids_host_routes_and_leases_distinct_addresses(tmp_path: Path) -> None:
    bridge, firewall = FakeBridge(routes=[ipaddress.IPv4Network("172.17.0.0/16")]), FakeFirewall()
    manager = _manager(tmp_path, bridge, firewall)
    one = await manager.prepare("a" * 64, name="one", hostname="one")
    two = await manager.prepare("b" * 64, name="two", hostname="two")
    assert one.settings["Networks"]["bridge"]["Gateway"] == "172.18.0.1"
    assert (one.settings["IPAddress"], two.settings["IPAddress"]) == ("172.18.0.2", "172.18.0.3")
    assert one.settings["MacAddress"] == "02:42:ac:12:00:02"
    assert one.netns_path == str(tmp_path / "netns" / ("a" * 64))
    assert bridge.forwarding and bridge.bridges == {"kitebox0": "172.18.0.1/16"}
    assert 'ip saddr 172.18.0.0/16 oifname != "kitebox0" masquerade' in firewall.current
    assert len(firewall.applied) == 1  # the second container changed no rule: no nft run
    # A new manager (a restarted engine) sees the leases: no duplicate address.
    again = _manager(tmp_path, bridge, firewall)
    three = await again.prepare("c" * 64, name="three", hostname="three")
    assert three.settings["IPAddress"] == "172.18.0.4"
    assert await again.release("b" * 64) is True
    four = await again.prepare("d" * 64, name="four", hostname="four")
    assert four.settings["IPAddress"] == "172.18.0.3"
    assert await again.release("b" * 64) is False


async def test_ports_published_rendered_and_conflicting(tmp_path: Path) -> None:
    firewall = FakeFirewall()
    manager = _manager(tmp_path, firewall=firewall)
    attachment = await manager.prepare("a" * 64, name="web", hostname="web", ports=[PortBinding(80, "tcp", "", 0)],
                                       exposed=["80/tcp", "443/tcp"])
    host_port = attachment.ports[0].host_port
    assert host_port > 0
    assert attachment.settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(host_port)}],
                                            "443/tcp": None}
    assert f"tcp dport {host_port} dnat to 172.18.0.2:80" in firewall.current
    with pytest.raises(Conflict, match=f"{host_port}/tcp is already published by container web"):
        await manager.prepare("b" * 64, name="other", hostname="other",
                              ports=[PortBinding(81, "tcp", "127.0.0.1", host_port)])
    assert "b" * 64 not in manager.store.read().endpoints
    everything = await manager.prepare("c" * 64, name="all", hostname="all", publish_all=True,
                                       exposed=["53/udp", "8080/tcp"])
    assert sorted(everything.settings["Ports"]) == ["53/udp", "8080/tcp"]
    await manager.release("a" * 64)
    assert "dnat to 172.18.0.2:80" not in firewall.current


async def test_user_network_hosts_kept_current_in_place(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    await manager.create("appnet", subnet="10.9.0.0/24", gateway="10.9.0.254")
    dir_a, dir_b = tmp_path / "ca", tmp_path / "cb"
    dir_a.mkdir()
    dir_b.mkdir()
    (dir_a / "hosts").write_text("old\n")
    inode = (dir_a / "hosts").stat().st_ino
    a = await manager.prepare("a" * 64, name="api", hostname="h-a", networks=[("appnet", ["svc"])],
                              container_dir=dir_a, add_hosts=["gw:host-gateway"], dns=["9.9.9.9"])
    assert a.settings["Networks"]["appnet"]["IPAddress"] == "10.9.0.1"
    assert a.settings["Networks"]["appnet"]["DNSNames"] == ["api", "svc", "a" * 12]
    await manager.prepare("b" * 64, name="db", hostname="h-b", networks=[("appnet", [])], container_dir=dir_b)
    hosts_a = (dir_a / "hosts").read_text()
    assert (dir_a / "hosts").stat().st_ino == inode
    assert "10.9.0.1\th-a api svc\n" in hosts_a and f"10.9.0.2\tdb {'b' * 12}\n" in hosts_a
    assert "10.9.0.254\tgw" in hosts_a
    assert (dir_a / "resolv.conf").read_text().startswith("nameserver 9.9.9.9\n")
    resolv_b = (dir_b / "resolv.conf").read_text()
    assert "127.0.0.53" not in resolv_b and "nameserver 10.0.0.2" in resolv_b
    assert "10.9.0.1\tapi svc" in (dir_b / "hosts").read_text()
    with pytest.raises(Conflict, match="network appnet has active endpoints: api, db"):
        await manager.remove("appnet")
    await manager.release("b" * 64)
    assert "db" not in (dir_a / "hosts").read_text()
    await manager.release("a" * 64)
    assert await manager.remove("appnet") == "appnet"
    with pytest.raises(NotFound, match="network appnet not found"):
        await manager.inspect("appnet")


async def test_network_verbs_and_bad_input(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    made = await manager.create("n1", labels={"k": "v"})
    assert made["IPAM"]["Config"] == [{"Subnet": "172.19.0.0/16", "Gateway": "172.19.0.1"}]
    assert made["Options"]["com.docker.network.bridge.name"] == ("kb-" + made["Id"])[:15]
    assert [d["Name"] for d in await manager.list()] == ["bridge", "host", "n1", "none"]
    assert (await manager.inspect(made["Id"][:6]))["Name"] == "n1"
    for bad, error in [("n1", Conflict), ("host", Conflict), ("bad name", InvalidArgument)]:
        with pytest.raises(error):
            await manager.create(bad)
    with pytest.raises(Conflict, match="overlaps network n1"):
        await manager.create("n2", subnet="172.19.5.0/24")
    with pytest.raises(InvalidArgument, match="not a host address"):
        await manager.create("n3", subnet="10.1.0.0/24", gateway="10.2.0.1")
    with pytest.raises(InvalidArgument, match="invalid --subnet"):
        await manager.create("n4", subnet="10.1.0.0/33")
    with pytest.raises(InvalidArgument, match="user-defined networks"):
        await manager.prepare("a" * 64, name="x", hostname="x", networks=[("bridge", ["alias"])])
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        await manager.prepare("a" * 64, name="x", hostname="x", networks=[("host", []), ("n1", [])])
    with pytest.raises(InvalidArgument, match="--add-host"):
        await manager.prepare("a" * 64, name="x", hostname="x", add_hosts=["nocolon"])
    with pytest.raises(NotFound, match="network nope not found"):
        await manager.prepare("a" * 64, name="x", hostname="x", networks=[("nope", [])])
    assert manager.store.read().endpoints == {}
    await manager.create("n5")
    assert await manager.prune() == ["n1", "n5"]


async def test_host_and_none_modes(tmp_path: Path) -> None:
    bridge = FakeBridge()
    manager = _manager(tmp_path, bridge)
    hosts_file = tmp_path / "etc-hosts"
    hosts_file.write_text("127.0.0.1 localhost\n10.0.0.5 buildbox\n")
    manager.host_hosts = hosts_file
    host = await manager.prepare("a" * 64, name="h", hostname="h", networks=[("host", [])],
                                 add_hosts=["extra:10.1.1.1"])
    assert host.netns_path is None and "10.0.0.5 buildbox" in host.hosts and "10.1.1.1\textra" in host.hosts
    assert host.settings["Networks"] == {"host": {"Aliases": None, "NetworkID": "host", "EndpointID": "",
                                                  "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                                                  "MacAddress": "", "DNSNames": None}}
    none = await manager.prepare("b" * 64, name="n", hostname="n", networks=[("none", [])])
    assert none.netns_path is None and none.settings["IPAddress"] == ""
    assert bridge.calls == []
    assert set((await manager.inspect("host"))["Containers"]) == {"a" * 64}


async def test_kernel_failure_rolls_back_and_repair_cleans(tmp_path: Path) -> None:
    bridge = FakeBridge(fail_attach=True)
    manager = _manager(tmp_path, bridge)
    with pytest.raises(KernelError, match="Operation not permitted"):
        await manager.prepare("a" * 64, name="x", hostname="x")
    assert manager.store.read().endpoints == {} and bridge.namespaces == set()
    bridge.fail_attach = False
    await manager.prepare("b" * 64, name="live", hostname="live")
    await manager.prepare("c" * 64, name="dead", hostname="dead")
    (tmp_path / "netns" / "stray").write_text("")  # a namespace file of a container the state never knew
    bridge.veths["kbstray0"] = ("kitebox0", "elsewhere", "172.18.0.99/16")
    assert await manager.repair(["b" * 64]) == ["c" * 64]
    assert sorted(p.name for p in (tmp_path / "netns").iterdir()) == ["b" * 64]
    assert set(bridge.veths) == {veth_name("b" * 64, 0)}
    assert set(manager.store.read().endpoints) == {"b" * 64}


async def test_connect_and_disconnect(tmp_path: Path) -> None:
    bridge = FakeBridge()
    manager = _manager(tmp_path, bridge)
    await manager.create("extra", subnet="10.50.0.0/24")
    with pytest.raises(Conflict, match="is not running"):
        await manager.connect("extra", "a" * 64)
    await manager.prepare("a" * 64, name="c", hostname="c")
    settings = await manager.connect("extra", "a" * 64, aliases=["x1"])
    assert set(settings["Networks"]) == {"bridge", "extra"}
    assert bridge.calls[-1][4] == "eth1" and bridge.calls[-1][6] == "None"  # no second default route
    with pytest.raises(Conflict, match="already connected"):
        await manager.connect("extra", "a" * 64)
    settings = await manager.disconnect("extra", "a" * 64)
    assert set(settings["Networks"]) == {"bridge"} and veth_name("a" * 64, 1) not in bridge.veths
    with pytest.raises(NotFound, match="not connected"):
        await manager.disconnect("extra", "a" * 64)
    await manager.release("a" * 64)
    assert await manager.settings("a" * 64) is None
