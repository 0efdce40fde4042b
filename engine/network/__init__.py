"""Container networking: bridge networks with NAT, published ports, ``none``/``host``, user networks with name
resolution. The entry point is :class:`~engine.network.manager.NetworkManager`; see its module for the
contract with the container side, and each room: ``netlink`` (rtnetlink client), ``netns`` (namespaces without
forking), ``bridge`` (kernel seam), ``firewall`` (nftables seam), ``ipam`` (persistent state and leases),
``ports`` (``-p``/``-P``), ``hosts`` (hosts and resolv.conf), ``documents`` (inspect documents).

Names load lazily (PEP 562): parsing a ``-p`` spec must not load the netlink and nftables machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.network.manager import DEFAULT_POOLS, NetworkAttachment, NetworkManager
    from engine.network.ports import PortBinding, exposed_ports, format_ports, parse_publish

_LOCATIONS = {
    "DEFAULT_POOLS": "engine.network.manager",
    "NetworkAttachment": "engine.network.manager",
    "NetworkManager": "engine.network.manager",
    "PortBinding": "engine.network.ports",
    "exposed_ports": "engine.network.ports",
    "format_ports": "engine.network.ports",
    "parse_publish": "engine.network.ports",
}

__all__ = ["DEFAULT_POOLS", "NetworkAttachment", "NetworkManager", "PortBinding", "exposed_ports", "format_ports",
           "parse_publish"]


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.network' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
