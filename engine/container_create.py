"""Planning a container's creation: ``CreateOptions`` (Docker's flags as values) -> data the create verb stores.

Describe, then perform: everything here turns options and the image's config into values (the network mode,
port bindings, volume binds and Docker's ``Mounts`` document, tmpfs mounts, the ``RunOptions`` for the runtime
planner, Docker's ``Config`` / ``HostConfig`` documents). The only side effects are the ones a plan cannot do
without and that the create verb undoes on failure by deleting the container directory / its volumes:
:func:`resolve_volumes` creates (and seeds) the named and anonymous volumes. The verb itself (claim the name,
prepare the snapshot, save, publish) is ``ContainerManager.create``.

Bad input raises :class:`~engine.errors.InvalidArgument` with a one-line message naming the offending value.
The runtime, network and logs rooms are imported lazily so ``import engine`` stays cheap.
"""

from __future__ import annotations

import os
import signal as _signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from engine import errors
from engine.volumes import VolumeStore, read_from_layers, seed_from_layers

if TYPE_CHECKING:
    from engine.runtime.plan import RunOptions
    from engine.runtime.users import UserFiles
    from engine.snapshots import Snapshotter

__all__ = [
    "CreateOptions",
    "VolumePlan",
    "config_document",
    "host_config_document",
    "layers_bottom_up",
    "network_mode",
    "parse_restart_policy",
    "parse_signal",
    "parse_tmpfs",
    "port_bindings",
    "read_user_files",
    "resolve_volumes",
    "run_options",
]


@dataclass(frozen=True, slots=True)
class CreateOptions:
    """What ``create``/``run`` accept (Docker's flags, already parsed into values)."""

    name: str | None = None
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()  # -v specs: /host:/ctr[:ro], name:/ctr[:ro], /ctr
    tmpfs: tuple[str, ...] = ()  # --tmpfs /path[:options]
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    read_only: bool = False
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    restart: str = "no"
    auto_remove: bool = False
    log_opts: Mapping[str, str] = field(default_factory=dict)
    network: str = "bridge"  # "bridge" (the default network), "none", "host" or a user network's name
    publish: tuple[str, ...] = ()  # -p specs: [hostip:][hostport:]port[/proto]
    publish_all: bool = False  # -P: every EXPOSEd port to a random host port
    network_aliases: tuple[str, ...] = ()
    add_hosts: tuple[str, ...] = ()  # --add-host host:ip
    dns: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()  # "seccomp=unconfined", "no-new-privileges[=true|false]"
    tty: bool = False
    stdin_open: bool = False
    stop_signal: str | None = None
    stop_timeout: int | None = None


class VolumePlan(NamedTuple):
    """``-v`` specs and the image's VOLUMEs, resolved (see :func:`resolve_volumes`)."""

    binds: tuple[tuple[str, str, bool], ...]  # (host source, container destination, read-only)
    mounts: list[dict[str, Any]]  # Docker's inspect ``Mounts`` document
    anonymous: list[str]  # volumes created for this container alone (``rm -v`` removes them)


# -- options ---------------------------------------------------------------------------------------------------


def parse_restart_policy(text: str) -> tuple[str, int]:
    """``no``, ``always``, ``unless-stopped``, ``on-failure[:N]`` -> (name, max retries)."""
    name, _, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise errors.InvalidArgument(f"invalid restart policy {text!r}: expected no, always, unless-stopped or "
                                     "on-failure[:max-retries]")
    if count and name != "on-failure":
        raise errors.InvalidArgument(f"invalid restart policy {text!r}: maximum retry count only for on-failure")
    if count:
        if not count.isdigit():
            raise errors.InvalidArgument(f"invalid restart policy {text!r}: maximum retry count must be a number")
        return name, int(count)
    return name, 0


def parse_signal(text: str | int | None, default: int = _signal.SIGTERM) -> int:
    """``SIGTERM``, ``TERM``, ``15`` -> 15."""
    if text is None or text == "":
        return int(default)
    if isinstance(text, int) or text.isdigit():
        number = int(text)
        if not 0 < number < 65:
            raise errors.InvalidArgument(f"invalid signal: {text}")
        return number
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise errors.InvalidArgument(f"invalid signal: {text}") from None


def parse_tmpfs(spec: str) -> tuple[str, str]:
    """``--tmpfs /path[:options]`` -> (destination, mount options)."""
    dest, _, opts = spec.partition(":")
    if not dest.startswith("/"):
        raise errors.InvalidArgument(f"invalid tmpfs specification {spec!r}: the path must be absolute")
    return dest, opts


def network_mode(options: CreateOptions) -> str:
    """The network the container joins (``default`` is ``bridge``); ports and aliases need a bridge network.

    A user network's existence is the caller's check (it needs the network room)."""
    network = "bridge" if options.network == "default" else options.network
    if network in ("none", "host") and (options.publish or options.publish_all or options.network_aliases):
        raise errors.InvalidArgument(f"published ports and aliases need a bridge network, not {network}")
    return network


def port_bindings(options: CreateOptions) -> list[dict[str, Any]]:
    """The ``-p`` specs as ``PortBinding`` JSON documents (the record's ``HostConfig.PortBindings``)."""
    from engine.network import parse_publish

    return [b.to_json() for spec in options.publish for b in parse_publish(spec)]


# -- the image's files -------------------------------------------------------------------------------------------


def layers_bottom_up(snapshotter: Snapshotter, key: str) -> list[Path]:
    """The directories holding the image's files for ``key``, lowest first (one full tree for copy)."""
    if snapshotter.whiteout_mode == "delete":
        return [snapshotter.upper_dir(key)]
    return list(reversed(snapshotter.parent_dirs(key)))


def read_user_files(layer_dirs: list[Path]) -> UserFiles:
    """The image's /etc/passwd and /etc/group, for ``--user`` resolution as data: read from its layers (whiteouts
    and opaque directories honoured), regular files only (never a link out of the image). Nothing of the image is
    ever executed or looked up through NSS. StoreError when a layer cannot be read; InvalidArgument for a file
    over the size limit."""
    from engine.runtime.users import MAX_FILE_BYTES, UserFiles

    texts = []
    for path in ("/etc/passwd", "/etc/group"):
        try:
            data = read_from_layers(layer_dirs, path, MAX_FILE_BYTES)
        except OSError as err:
            raise errors.from_oserror(err, f"{path} in the image") from err
        texts.append(None if data is None else data.decode("utf-8", errors="replace"))
    return UserFiles(*texts)


def resolve_volumes(
    volumes: VolumeStore, options: CreateOptions, image_config: Mapping[str, Any], layer_dirs: list[Path]
) -> VolumePlan:
    """-v specs and the image's VOLUMEs -> binds, Docker's Mounts document and the anonymous volume names.

    Named volumes are created when missing and anonymous ones always; each new volume is seeded from the
    image's files at its destination (Docker's copy-up). A bind source must exist on the host.
    """
    binds: list[tuple[str, str, bool]] = []
    mounts: list[dict[str, Any]] = []
    anonymous: list[str] = []
    destinations: set[str] = set()
    for spec in options.volumes:
        parts = spec.split(":")
        if len(parts) == 1:
            source, dest, mode = "", parts[0], "rw"
        elif len(parts) == 2:
            source, dest, mode = parts[0], parts[1], "rw"
        elif len(parts) == 3:
            source, dest, mode = parts
        else:
            raise errors.InvalidArgument(f"invalid volume specification: '{spec}'")
        if mode not in ("rw", "ro") or not dest.startswith("/"):
            raise errors.InvalidArgument(f"invalid volume specification: '{spec}'")
        if dest in destinations:
            raise errors.InvalidArgument(f"Duplicate mount point: {dest}")
        destinations.add(dest)
        readonly = mode == "ro"
        if source.startswith("/"):
            if not os.path.exists(source):
                raise errors.InvalidArgument(
                    f"invalid mount config for type \"bind\": bind source path does not exist: {source}")
            binds.append((os.path.realpath(source), dest, readonly))
            mounts.append({"Type": "bind", "Source": source, "Destination": dest, "Mode": mode,
                           "RW": not readonly, "Propagation": "rprivate"})
            continue
        volume = volumes.create(source or None)
        if not source:
            anonymous.append(volume.name)
        seed_from_layers(layer_dirs, dest, volume.mountpoint)
        binds.append((str(volume.mountpoint), dest, readonly))
        mounts.append({"Type": "volume", "Name": volume.name, "Source": str(volume.mountpoint),
                       "Destination": dest, "Driver": "local", "Mode": mode, "RW": not readonly,
                       "Propagation": ""})
    for dest in sorted((image_config.get("Volumes") or {}).keys()):
        if dest in destinations:
            continue
        volume = volumes.create(None)
        anonymous.append(volume.name)
        seed_from_layers(layer_dirs, dest, volume.mountpoint)
        binds.append((str(volume.mountpoint), dest, False))
        mounts.append({"Type": "volume", "Name": volume.name, "Source": str(volume.mountpoint),
                       "Destination": dest, "Driver": "local", "Mode": "", "RW": True, "Propagation": ""})
    return VolumePlan(tuple(binds), mounts, anonymous)


# -- documents -----------------------------------------------------------------------------------------------------


def run_options(
    options: CreateOptions, *, network: str, netns_path: str | None,
    binds: Sequence[tuple[str, str, bool]], tmpfs: tuple[tuple[str, str], ...],
) -> RunOptions:
    """What the runtime planner (``plan_container``) is asked for, from the create options."""
    from engine.runtime.plan import Bind, RunOptions

    return RunOptions(
        cmd=options.cmd, entrypoint=options.entrypoint, env=options.env, workdir=options.workdir,
        user=options.user, hostname=options.hostname, labels=dict(options.labels),
        binds=tuple(Bind(s, d, ro) for s, d, ro in binds), tmpfs=tmpfs, memory=options.memory,
        cpus=options.cpus, pids_limit=options.pids_limit, read_only=options.read_only,
        privileged=options.privileged, cap_add=options.cap_add, cap_drop=options.cap_drop,
        tty=options.tty, stdin_open=options.stdin_open, network=network, netns_path=netns_path,
        stop_signal=options.stop_signal,
        seccomp="seccomp=unconfined" not in options.security_opt,
        no_new_privileges=any(o in ("no-new-privileges", "no-new-privileges=true")
                              for o in options.security_opt),
    )


def config_document(
    options: CreateOptions, image_config: Mapping[str, Any], *, image_ref: str, hostname: str,
    env: Sequence[str],
) -> dict[str, Any]:
    """Docker's ``Config`` of the container: the options over the image's config (``hostname`` and ``env`` as
    the runtime spec settled them). InvalidArgument for a bad stop signal (option or image)."""
    stop_signal = options.stop_signal or image_config.get("StopSignal") or "SIGTERM"
    parse_signal(stop_signal)
    return {
        "Hostname": hostname, "User": options.user or image_config.get("User", ""),
        "Tty": options.tty, "OpenStdin": options.stdin_open, "AttachStdin": options.stdin_open,
        "Env": list(env), "Cmd": list(options.cmd) if options.cmd is not None else image_config.get("Cmd"),
        "Image": image_ref, "Volumes": image_config.get("Volumes") or None,
        "WorkingDir": options.workdir or image_config.get("WorkingDir", ""),
        "Entrypoint": list(options.entrypoint) if options.entrypoint is not None
        else image_config.get("Entrypoint"),
        "Labels": {**(image_config.get("Labels") or {}), **options.labels},
        "ExposedPorts": image_config.get("ExposedPorts") or None,
        "StopSignal": stop_signal, "StopTimeout": options.stop_timeout,
    }


def host_config_document(
    options: CreateOptions, *, network: str, restart: tuple[str, int], tmpfs: tuple[tuple[str, str], ...],
    port_bindings: list[dict[str, Any]], anonymous: list[str],
) -> dict[str, Any]:
    """Docker's ``HostConfig`` of the container, plus ``AnonymousVolumes`` (the engine's own; inspect hides it)."""
    restart_name, max_retries = restart
    return {
        "Binds": [v for v in options.volumes if ":" in v] or None,
        "NetworkMode": network, "RestartPolicy": {"Name": restart_name, "MaximumRetryCount": max_retries},
        "AutoRemove": options.auto_remove, "Memory": options.memory or 0,
        "NanoCpus": int((options.cpus or 0) * 1e9), "PidsLimit": options.pids_limit,
        "ReadonlyRootfs": options.read_only, "Privileged": options.privileged,
        "CapAdd": list(options.cap_add) or None, "CapDrop": list(options.cap_drop) or None,
        "Tmpfs": {d: o for d, o in tmpfs} or None,
        "LogConfig": {"Type": "json-file", "Config": dict(options.log_opts)},
        "PortBindings": port_bindings, "PublishAllPorts": options.publish_all,
        "Dns": list(options.dns), "ExtraHosts": list(options.add_hosts) or None,
        "NetworkAliases": list(options.network_aliases),
        "SecurityOpt": list(options.security_opt) or None,
        "AnonymousVolumes": anonymous,
    }
