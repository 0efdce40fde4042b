"""The pure pieces: -p parsing, Docker's port documents, the nft ruleset text, hosts and resolv.conf, the
planner's network modes."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from engine.errors import InvalidArgument, LimitExceeded
from engine.network.firewall import FirewallNetwork, FirewallPort, render_ruleset
from engine.network.hosts import container_resolv_conf, parse_add_host, render_hosts, write_in_place
from engine.network.ipam import NetworkRecord, allocate_address, mac_for
from engine.network.ports import (
    PortBinding,
    candidate_ports,
    exposed_ports,
    format_ports,
    parse_publish,
    ports_document,
)
from engine.runtime.plan import RunOptions, plan_container
from engine.runtime.spec import RuntimeSpec
from tests.support.busybox import PASSWD


@pytest.mark.parametrize(("spec", "expected"), [
    ("80", [PortBinding(80)]),
    ("8080:80", [PortBinding(80, "tcp", "", 8080)]),
    ("127.0.0.1:8080:80/udp", [PortBinding(80, "udp", "127.0.0.1", 8080)]),
    ("0.0.0.0::53/UDP", [PortBinding(53, "udp", "", 0)]),
    ("8000-8001:80-81", [PortBinding(80, "tcp", "", 8000), PortBinding(81, "tcp", "", 8001)]),
    ("9000-9002:80", [PortBinding(80, "tcp", "", 9000, 9002)]),
])
def test_parse_publish(spec: str, expected: list[PortBinding]) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("80/sctp", "invalid protocol"), ("a:b:c:d", "expected"), ("70000", "must be 1-65535"),
    ("x:80", "invalid host port"), ("1.2.3:80:80", "invalid host address"), ("[::1]:80:80", "IPv6"),
    ("8000-8002:80-81", "differ in size"), ("8080:", "no container port"), ("90-80", "must be 1-65535"),
])
def test_parse_publish_refuses(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_publish(spec)


def test_port_documents() -> None:
    assert candidate_ports(PortBinding(80, "tcp", "", 9000, 9002)) == [9000, 9001, 9002]
    assert exposed_ports({"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}) == [PortBinding(53, "udp"),
                                                                             PortBinding(80, "tcp")]
    doc = ports_document([PortBinding(80, "tcp", "", 8080), PortBinding(80, "tcp", "127.0.0.1", 9090)], ["443/tcp"])
    assert doc == {"443/tcp": None, "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                               {"HostIp": "127.0.0.1", "HostPort": "9090"}]}
    assert format_ports(doc) == "443/tcp, 0.0.0.0:8080->80/tcp, 127.0.0.1:9090->80/tcp"
    assert PortBinding.from_json(PortBinding(1, "udp", "1.2.3.4", 5, 6).to_json()) == PortBinding(1, "udp",
                                                                                                  "1.2.3.4", 5, 6)


def test_ruleset_text() -> None:
    text = render_ruleset("kbx", [FirewallNetwork("br0", ipaddress.IPv4Network("10.1.0.0/24"))],
                          [FirewallPort("", 8080, "tcp", "10.1.0.2", 80), FirewallPort("127.0.0.1", 53, "udp",
                                                                                       "10.1.0.3", 53)])
    assert text.startswith("table ip kbx\ndelete table ip kbx\ntable ip kbx {\n")
    assert "    ip daddr 127.0.0.1 udp dport 53 dnat to 10.1.0.3:53\n    tcp dport 8080 dnat to 10.1.0.2:80\n" in text
    assert 'ip saddr 10.1.0.0/24 oifname != "br0" masquerade' in text
    assert 'ip saddr 127.0.0.0/8 oifname "br0" masquerade' in text
    assert render_ruleset("kbx", [], []) == "table ip kbx\ndelete table ip kbx\n"


def test_addresses() -> None:
    record = NetworkRecord("id", "n", "br", "10.0.0.0/30", "10.0.0.1", "now")
    assert allocate_address(record, set()) == ipaddress.IPv4Address("10.0.0.2")
    with pytest.raises(LimitExceeded, match=r"no free address left in 10\.0\.0\.0/30"):
        allocate_address(record, {"10.0.0.2"})
    assert mac_for(ipaddress.IPv4Address("172.17.0.2")) == "02:42:ac:11:00:02"


def test_hosts_and_resolv(tmp_path: Path) -> None:
    text = render_hosts("h", [("10.0.0.2", ["web", "w"])], [("10.0.0.3", ["db", "abc"]), ("10.0.0.3", ["db", "abc"])],
                        ["1.2.3.4\tx"])
    assert text.endswith("10.0.0.2\th web w\n10.0.0.3\tdb abc\n1.2.3.4\tx\n")
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert parse_add_host("a.b:1.2.3.4", None) == "1.2.3.4\ta.b"
    assert parse_add_host("gw=host-gateway", "10.0.0.1") == "10.0.0.1\tgw"
    for bad in ("x", "bad name:1.2.3.4", "x:1.2.3", "gw:host-gateway"):
        with pytest.raises(InvalidArgument):
            parse_add_host(bad, None)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nsearch lan\n")
    assert container_resolv_conf([], resolv) == "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    assert container_resolv_conf(["1.1.1.1"], resolv) == "nameserver 1.1.1.1\nsearch lan\n"
    with pytest.raises(InvalidArgument, match="invalid --dns"):
        container_resolv_conf(["one"], resolv)
    target = tmp_path / "hosts"
    target.write_text("a much longer original content\n")
    inode = target.stat().st_ino
    write_in_place(target, "short\n")
    assert target.read_text() == "short\n" and target.stat().st_ino == inode


def _plan(tmp_path: Path, **options: Any) -> RuntimeSpec:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    return plan_container(container_id="c1", image_config={"Cmd": ["true"]}, options=RunOptions(**options),
                          rootfs=tmp_path, root_mounts=[], bundle_dir=tmp_path / "b")


def test_plan_network_modes(tmp_path: Path) -> None:
    host = _plan(tmp_path, network="host")
    assert "net" not in host.namespaces and host.sysctl == {}
    bridged = _plan(tmp_path, network="appnet", netns_path="/x/netns/c1")
    assert "net" in bridged.namespaces and bridged.netns_path == "/x/netns/c1"
    with pytest.raises(InvalidArgument, match="cannot join"):
        _plan(tmp_path, network="none", netns_path="/x")
    with pytest.raises(InvalidArgument, match="invalid network"):
        _plan(tmp_path, network="")
