"""Container networking: bridge networks with NAT, published ports, ``none``/``host``, user networks with name
resolution. The entry point is :class:`~engine.network.manager.NetworkManager`; see its module for the
contract with the container side, and each room: ``netlink`` (rtnetlink client), ``netns`` (namespaces without
forking), ``bridge`` (kernel seam), ``firewall`` (nftables seam), ``ipam`` (persistent state and leases),
``ports`` (``-p``/``-P``), ``hosts`` (hosts and resolv.conf), ``documents`` (inspect documents)."""

from engine.network.manager import DEFAULT_POOLS, NetworkAttachment, NetworkManager
from engine.network.ports import PortBinding, exposed_ports, format_ports, parse_publish

__all__ = ["DEFAULT_POOLS", "NetworkAttachment", "NetworkManager", "PortBinding", "exposed_ports", "format_ports",
           "parse_publish"]
