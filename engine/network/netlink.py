"""A small rtnetlink client over a raw ``AF_NETLINK`` socket: links, addresses and routes.

Why not pyroute2's ``IPRoute``: importing pyroute2 costs 0.14-0.24 s (more than half the whole budget of
``kitebox run --rm IMAGE true``), its sync API keeps one socket *per thread* (created lazily in whatever network
namespace that thread is in at the time), and its netns access forks, which is unsafe in the multi-threaded Qt
app. A raw socket is bound for life to the network namespace it was created in, so a socket opened by a thread
that briefly ``setns()``-ed into a container's namespace keeps talking to that namespace from any thread.

Only the handful of messages the bridge driver needs are encoded here (struct layouts from
``linux/rtnetlink.h``, ``linux/if_link.h``, ``linux/veth.h``). Every failure is an ``OSError`` carrying the
kernel's errno, like the ``os`` functions; callers translate it at their boundary.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["Link", "Netlink", "Route"]

NETLINK_ROUTE: Final = 0
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_NEWROUTE: Final = 24
RTM_GETROUTE: Final = 26
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLA_F_NESTED: Final = 0x8000
IFF_UP: Final = 0x1
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_MASTER: Final = 10
IFLA_LINKINFO: Final = 18
IFLA_NET_NS_FD: Final = 28
IFLA_INFO_KIND: Final = 1
IFLA_INFO_DATA: Final = 2
VETH_INFO_PEER: Final = 1
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_BROADCAST: Final = 4
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_TABLE: Final = 15
RT_TABLE_MAIN: Final = 254
RT_TABLE_LOCAL: Final = 255
RTPROT_STATIC: Final = 4
RTN_UNICAST: Final = 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _attr_str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _attr_u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without flag bits, payload) for each rtattr in ``data``."""
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _RTATTR.size: offset + length]
        offset += _align(length)


def _cstr(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "bridge", "veth", ... ("" for a device without IFLA_LINKINFO, such as lo or a NIC)
    master: int  # the index of the bridge the link is enslaved to; 0 for none
    mtu: int
    up: bool


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv4Network
    oif: int
    table: int
    gateway: str | None


class Netlink:
    """One rtnetlink socket (thread-safe: requests are serialised by a lock).

    The socket belongs to the network namespace the calling thread is in when the object is created; see
    :func:`engine.network.netns.open_netlink_in` for a namespace other than the caller's.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, 0))
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------------

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) of each reply message (a dump's parts, or nothing
        for an acknowledged change). A kernel error becomes ``OSError(errno)``."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0)
            self._sock.send(header + body)
            replies: list[tuple[int, bytes]] = []
            while True:
                data = self._sock.recv(1 << 16)
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, mtype, _, mseq, _ = _NLMSGHDR.unpack_from(data, offset)
                    payload = data[offset + _NLMSGHDR.size: offset + length]
                    offset += _align(length)
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_DONE:
                        return replies
                    if mtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", payload)
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        return replies
                    replies.append((mtype, payload))
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return replies

    def _change(self, kind: int, body: bytes, flags: int = 0) -> None:
        self._request(kind, NLM_F_ACK | flags, body)

    # -- links -------------------------------------------------------------------------------------------------

    def links(self) -> list[Link]:
        result = []
        for _, payload in self._request(RTM_GETLINK, NLM_F_DUMP, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            result.append(_parse_link(payload))
        return result

    def link(self, name: str) -> Link | None:
        try:
            replies = self._request(RTM_GETLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                                    + _attr_str(IFLA_IFNAME, name))
        except OSError as err:
            if err.errno in (19, 2):  # ENODEV, ENOENT
                return None
            raise
        return _parse_link(replies[0][1]) if replies else None

    def add_bridge(self, name: str, mtu: int) -> None:
        info = _attr(IFLA_LINKINFO | NLA_F_NESTED, _attr_str(IFLA_INFO_KIND, "bridge"))
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr_str(IFLA_IFNAME, name) + \
            _attr_u32(IFLA_MTU, mtu) + info
        self._change(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_veth(self, name: str, *, master: int, mtu: int, peer_name: str, peer_netns_fd: int,
                 peer_mac: bytes) -> None:
        """A veth pair: ``name`` here, enslaved to the bridge ``master``; the peer created directly inside the
        namespace ``peer_netns_fd`` (no rename/move dance, no window where the peer exists on the host)."""
        peer = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr_str(IFLA_IFNAME, peer_name) + \
            _attr_u32(IFLA_NET_NS_FD, peer_netns_fd) + _attr_u32(IFLA_MTU, mtu) + _attr(IFLA_ADDRESS, peer_mac)
        data = _attr(IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER, peer))
        info = _attr(IFLA_LINKINFO | NLA_F_NESTED, _attr_str(IFLA_INFO_KIND, "veth") + data)
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr_str(IFLA_IFNAME, name) + \
            _attr_u32(IFLA_MTU, mtu) + _attr_u32(IFLA_MASTER, master) + info
        self._change(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def set_up(self, index: int) -> None:
        self._change(RTM_NEWLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))

    def delete_link(self, index: int) -> None:
        self._change(RTM_DELLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    # -- addresses and routes ----------------------------------------------------------------------------------

    def add_address(self, index: int, interface: ipaddress.IPv4Interface) -> None:
        """Add ``interface`` (address/prefix) to the link; an address already there is fine."""
        addr = interface.ip.packed
        body = _IFADDRMSG.pack(socket.AF_INET, interface.network.prefixlen, 0, 0, index) + \
            _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr) + \
            _attr(IFA_BROADCAST, interface.network.broadcast_address.packed)
        with contextlib.suppress(FileExistsError):
            self._change(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_default_route(self, gateway: ipaddress.IPv4Address, oif: int) -> None:
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST, 0) + \
            _attr(RTA_GATEWAY, gateway.packed) + _attr_u32(RTA_OIF, oif)
        self._change(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)

    def routes(self) -> list[Route]:
        """Every IPv4 route in every table (local and broadcast routes included)."""
        result = []
        for _, payload in self._request(RTM_GETROUTE, NLM_F_DUMP,
                                        _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            family, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(payload)
            if family != socket.AF_INET:
                continue
            dst = "0.0.0.0"
            oif = 0
            gateway = None
            for kind, value in _attrs(payload[_RTMSG.size:]):
                if kind == RTA_DST:
                    dst = socket.inet_ntoa(value[:4])
                elif kind == RTA_OIF:
                    (oif,) = struct.unpack_from("=I", value)
                elif kind == RTA_TABLE:
                    (table,) = struct.unpack_from("=I", value)
                elif kind == RTA_GATEWAY:
                    gateway = socket.inet_ntoa(value[:4])
            network = ipaddress.IPv4Network(f"{dst}/{dst_len}", strict=False)
            result.append(Route(network, oif, table, gateway))
        return result


def _parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
    name = kind = ""
    master = mtu = 0
    for attr, value in _attrs(payload[_IFINFOMSG.size:]):
        if attr == IFLA_IFNAME:
            name = _cstr(value)
        elif attr == IFLA_MASTER:
            (master,) = struct.unpack_from("=I", value)
        elif attr == IFLA_MTU:
            (mtu,) = struct.unpack_from("=I", value)
        elif attr == IFLA_LINKINFO:
            for sub, subvalue in _attrs(value):
                if sub == IFLA_INFO_KIND:
                    kind = _cstr(subvalue)
    return Link(index, name, kind, master, mtu, bool(flags & IFF_UP))
