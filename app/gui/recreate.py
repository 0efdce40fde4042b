"""Editing a container's settings: the options a container was created with, what an edit changes, and the
safe recreate plan (no Qt here).

Containers are immutable after ``create`` (as in Docker), so most edits mean a new container. Kitematic
recreated silently and lost data (#2117 #1991 #3957...). Here: a rename alone happens in place; anything else is
shown as a list of changes first, with a warning that the container is recreated, and then:

1. the old container is stopped and its writable layer (every file written outside a volume) is committed to an
   image, ``localhost/kitebox-saved/<name>:<old id>`` (``keep_data``, the default; without it the new container
   starts from the original image);
2. the old container is renamed out of the way and the new one is created from that image with the new
   settings, volumes (named *and* anonymous) re-attached by name so their data stays too;
3. only then is the old container removed -- or kept, stopped, as ``<name>-previous`` when asked. If creating
   the new container fails, the old one gets its name back (and is restarted if it was running).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final

from engine import ContainerRecord, CreateOptions

__all__ = ["Change", "RecreatePlan", "diff_options", "normalise_name", "options_from_record", "plan_recreate",
           "publish_spec", "saved_image_reference"]

_INVALID: Final = re.compile(r"[^a-zA-Z0-9_.-]+")


def normalise_name(text: str) -> str:
    """What a typed name becomes: invalid characters -> ``-``, leading non-alphanumerics dropped.

    ``"My Web App!"`` -> ``"My-Web-App"``; ``""`` stays ``""`` (the caller then asks for a name).
    """
    name = _INVALID.sub("-", text.strip()).strip("-")
    return name.lstrip("_.-")


def publish_spec(binding: Mapping[str, Any]) -> str:
    """A stored port binding (the engine's ``PortBindings`` entry) as the ``-p`` text that recreates it."""
    host_port = int(binding.get("host_port") or 0)
    last = int(binding.get("host_port_last") or 0)
    host = f"{host_port}-{last}" if host_port and last > host_port else str(host_port) if host_port else ""
    ip = str(binding.get("host_ip") or "")
    container = f"{binding['container_port']}/{binding.get('protocol') or 'tcp'}"
    if ip:
        return f"{ip}:{host}:{container}"
    return f"{host}:{container}" if host else container


def saved_image_reference(record: ContainerRecord) -> str:
    """Where a recreate keeps the old container's files: ``localhost/kitebox-saved/<name>:<id prefix>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", record.name.lower()).strip("-") or "container"
    return f"localhost/kitebox-saved/{slug}:{record.id[:12]}"


def options_from_record(record: ContainerRecord) -> CreateOptions:
    """The ``CreateOptions`` that would recreate ``record`` as it is (volumes by name, binds by path)."""
    config, host = record.config, record.host_config
    volumes = []
    for mount in record.mounts:
        source = mount.get("Source") if mount.get("Type") == "bind" else mount.get("Name")
        if not source:
            continue
        volumes.append(f"{source}:{mount['Destination']}" + ("" if mount.get("RW", True) else ":ro"))
    policy = host.get("RestartPolicy") or {}
    restart = str(policy.get("Name") or "no")
    if restart == "on-failure" and policy.get("MaximumRetryCount"):
        restart += f":{policy['MaximumRetryCount']}"
    nano = int(host.get("NanoCpus") or 0)
    return CreateOptions(
        name=record.name,
        cmd=tuple(config["Cmd"]) if config.get("Cmd") is not None else None,
        entrypoint=tuple(config["Entrypoint"]) if config.get("Entrypoint") is not None else None,
        # HOSTNAME is set by the runtime planner from the container id: a new container gets its own.
        env=tuple(e for e in config.get("Env") or () if not e.startswith("HOSTNAME=")),
        workdir=config.get("WorkingDir") or None,
        user=config.get("User") or None,
        labels=dict(config.get("Labels") or {}),
        volumes=tuple(volumes),
        tmpfs=tuple(f"{d}:{o}" if o else d for d, o in (host.get("Tmpfs") or {}).items()),
        memory=int(host.get("Memory") or 0) or None,
        cpus=nano / 1e9 if nano else None,
        pids_limit=host.get("PidsLimit"),
        read_only=bool(host.get("ReadonlyRootfs")),
        privileged=bool(host.get("Privileged")),
        cap_add=tuple(host.get("CapAdd") or ()),
        cap_drop=tuple(host.get("CapDrop") or ()),
        restart=restart,
        log_opts=dict((host.get("LogConfig") or {}).get("Config") or {}),
        network=str(host.get("NetworkMode") or "none"),
        publish=tuple(publish_spec(b) for b in host.get("PortBindings") or ()),
        publish_all=bool(host.get("PublishAllPorts")),
        tty=bool(config.get("Tty")),
        stdin_open=bool(config.get("OpenStdin")),
        stop_signal=config.get("StopSignal") or None,
        stop_timeout=config.get("StopTimeout"),
    )


_LABELS: Final = {
    "name": "Name", "cmd": "Command", "entrypoint": "Entrypoint", "env": "Environment", "workdir": "Working dir",
    "user": "User", "labels": "Labels", "volumes": "Volumes", "tmpfs": "Tmpfs", "memory": "Memory limit",
    "cpus": "CPU limit", "pids_limit": "PIDs limit", "read_only": "Read-only root", "privileged": "Privileged",
    "cap_add": "Added capabilities", "cap_drop": "Dropped capabilities", "restart": "Restart policy",
    "log_opts": "Log options", "network": "Network", "tty": "TTY", "stdin_open": "Keep stdin open",
    "stop_signal": "Stop signal", "stop_timeout": "Stop timeout", "hostname": "Hostname",
    "auto_remove": "Remove on exit", "publish": "Published ports", "publish_all": "Publish all exposed ports",
}


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    label: str
    old: Any
    new: Any

    def describe(self) -> str:
        return f"{self.label}: {_show(self.old)} → {_show(self.new)}"


def _show(value: Any) -> str:
    if value is None or value == () or value == {}:
        return "(none)"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def diff_options(old: CreateOptions, new: CreateOptions) -> list[Change]:
    changes = []
    for item in fields(CreateOptions):
        before, after = getattr(old, item.name), getattr(new, item.name)
        if before != after:
            changes.append(Change(item.name, _LABELS.get(item.name, item.name), before, after))
    return changes


@dataclass(frozen=True, slots=True)
class RecreatePlan:
    """What saving does. ``rename_only``: no new container. Else see the module docstring."""

    changes: tuple[Change, ...]
    rename_only: bool
    old_name: str
    new_options: CreateOptions
    keep_old_as: str | None  # the old container's name after the swap, or None when it is removed
    saved_image: str | None = None  # the image holding the old container's files (None: start from the image)
    aside_name: str = ""  # the old container's name while the new one is created

    def summary(self) -> list[str]:
        lines = [c.describe() for c in self.changes]
        if self.rename_only or not self.changes:
            return lines
        lines.append("⚠ The container is recreated: it is stopped, a new container is created with these "
                     "settings, and it gets a new ID.")
        if self.saved_image:
            lines.append(f"Files written in the container are kept: they are saved as the image "
                         f"{self.saved_image} and the new container starts from it.")
        else:
            lines.append("The new container starts from the original image: files written outside volumes are "
                         "not carried over.")
        lines.append("Volumes are re-attached by name: their data is kept.")
        if self.keep_old_as:
            lines.append(f"The old container is also kept, stopped, as {self.keep_old_as}.")
        else:
            lines.append("The old container is removed once the new one exists.")
        return lines


def plan_recreate(record: ContainerRecord, new: CreateOptions, *, keep_old: bool, taken: set[str],
                  keep_data: bool = True) -> RecreatePlan:
    old = options_from_record(record)
    changes = tuple(diff_options(old, new))
    rename_only = bool(changes) and all(c.field == "name" for c in changes)
    keep_as = None
    if keep_old and not rename_only:
        keep_as = f"{record.name}-previous"
        n = 2
        while keep_as in taken:
            keep_as = f"{record.name}-previous-{n}"
            n += 1
    if new.name is None:
        new = replace(new, name=record.name)
    aside = f"{record.name}-recreating-{record.id[:8]}"
    saved = saved_image_reference(record) if keep_data and not rename_only else None
    return RecreatePlan(changes, rename_only, record.name, new, keep_as, saved, aside)
