"""Plan a container: image config + run options -> :class:`~engine.runtime.spec.RuntimeSpec` (pure data).

Docker's rules, so images behave as they do under Docker (references: moby ``daemon/oci_linux.go``,
``oci/defaults.go``, ``daemon/container.go``, runc ``libcontainer/user``; summary in engine-anchors.md §2):

* command: ``--entrypoint`` replaces the image's and resets the image's Cmd unless a cmd is given; an empty
  result is "no command specified";
* environment: image Env, overridden per key by the options (``KEY`` without ``=`` unsets), with PATH
  defaulted, HOSTNAME set and TERM=xterm for a tty;
* working directory: options, else the image's, else ``/``; must be absolute; created at start if missing;
* user: resolved against the container's /etc/passwd and /etc/group as data (:mod:`engine.runtime.users`);
* network: ``none`` gives the container a namespace of its own (``lo`` only), ``host`` none at all (and no net
  sysctls), a bridge network the namespace ``netns_path`` prepared by :mod:`engine.network`;
* hostname defaults to the first 12 characters of the id; /etc/hostname, /etc/hosts and /etc/resolv.conf are
  generated in ``bundle_dir`` and bind-mounted (a user mount at the same path wins);
* Docker's default mounts, masked and read-only paths, 14 capabilities, Docker's default seccomp profile for
  those capabilities (:mod:`engine.runtime.seccomp`); ``--privileged`` gives every capability, a writable /sys
  and cgroup mount, no masking and no seccomp filter;
* cgroup limits: ``--memory`` (swap defaults to twice the memory), ``--cpus`` (quota over a 100ms period),
  ``--pids-limit``.

Only the image's /etc/passwd and /etc/group are read, from ``user_files`` or else from ``rootfs`` (never executed,
never via NSS).
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.errors import InvalidArgument, StoreError
from engine.runtime.caps import ALL_CAPS, DEFAULT_CAPS, tweak_caps
from engine.runtime.seccomp import default_profile, program_file
from engine.runtime.spec import CapabilitySet, CgroupSpec, MountSpec, ProcessSpec, RootMount, RootSpec, RuntimeSpec
from engine.runtime.users import UserFiles, read_in_root, resolve_user
from engine.tmpnames import temporary_sibling

__all__ = [
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_NAMESPACES",
    "DEFAULT_PATH",
    "DEFAULT_READONLY_PATHS",
    "Bind",
    "RunOptions",
    "default_mounts",
    "hosts_file",
    "plan_container",
    "resolv_conf",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_NAMESPACES = ("mount", "pid", "uts", "ipc", "net", "cgroup")
DEFAULT_MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MIN_MEMORY = 6 * 1024 * 1024
CPU_PERIOD = 100_000
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HOSTS_DEFAULTS = (
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::\tip6-localnet\n"
    "ff00::\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
)


@dataclass(frozen=True)
class Bind:
    """A host directory or file (``source``, absolute) at ``destination`` in the container."""

    source: str
    destination: str
    readonly: bool = False


@dataclass(frozen=True)
class RunOptions:
    """What ``run``/``create`` was asked for. ``None`` means "the image's / Docker's default"."""

    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[tuple[str, str], ...] = ()
    volumes: tuple[Bind, ...] = ()
    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    read_only: bool = False
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    tty: bool = False
    stdin_open: bool = False
    network: str = "none"  # "none" (own namespace, lo only), "host", or a bridge network (joined via netns_path)
    netns_path: str | None = None  # NetworkManager.prepare()'s namespace; set for bridge networks
    shm_size: int = 64 * 1024 * 1024
    stop_signal: str | None = None
    group_add: tuple[str, ...] = ()
    ulimits: tuple[tuple[str, int, int], ...] = ()  # ("nofile", soft, hard)
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    cpu_shares: int | None = None
    seccomp: bool = True  # Docker's default seccomp profile; False is --security-opt seccomp=unconfined


class _MountLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def options(self) -> Sequence[str]: ...
    @property
    def cwd(self) -> str | None: ...


def default_mounts(shm_size: int, *, privileged: bool) -> list[MountSpec]:
    """Docker's default mount table (oci/defaults.go) with the given /dev/shm size."""
    sys_mode = "rw" if privileged else "ro"
    return [
        MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        MountSpec("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        MountSpec("/dev/pts", "devpts", "devpts",
                  ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
        MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", sys_mode)),
        MountSpec("/sys/fs/cgroup", "cgroup", "cgroup", (sys_mode, "nosuid", "noexec", "nodev")),
        MountSpec("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        MountSpec("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}")),
    ]


def hosts_file(hostname: str, ip: str | None = None) -> str:
    """Docker's /etc/hosts: the standard entries, then ``ip hostname`` when the container has an address."""
    return _HOSTS_DEFAULTS + (f"{ip}\t{hostname}\n" if ip else "")


def resolv_conf(host_text: str) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the container's network
    namespace); with none left, Google's public resolvers, as Docker does."""
    lines: list[str] = []
    servers = 0
    for line in host_text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            try:
                if ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
            servers += 1
        lines.append(line)
    if servers == 0:
        lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(lines) + "\n"


def _merge_env(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """moby ReplaceOrAppendEnvValues: override by key, ``KEY`` alone removes it."""
    result = list(base)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable {item!r}: empty name")
        index = next((i for i, old in enumerate(result) if old.partition("=")[0] == key), None)
        if not sep:
            if index is not None:
                del result[index]
        elif index is None:
            result.append(item)
        else:
            result[index] = item
    return result


def _strings(config: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config {key} must be a list of strings")
    return tuple(value)


def _command(image: Mapping[str, Any], options: RunOptions) -> tuple[str, ...]:
    entrypoint = options.entrypoint if options.entrypoint is not None else (_strings(image, "Entrypoint") or ())
    if options.cmd:
        cmd: tuple[str, ...] = options.cmd
    elif options.entrypoint is not None:
        cmd = ()
    else:
        cmd = _strings(image, "Cmd") or ()
    args = (*entrypoint, *cmd)
    if not args:
        raise InvalidArgument("no command specified")
    return args


def _abs_dest(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} {path!r} must be an absolute path")
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = clean[1:]
    if clean == "/":
        raise InvalidArgument(f"{what} {path!r}: cannot mount over the container's root")
    return clean


def _user_mounts(options: RunOptions) -> list[MountSpec]:
    mounts: list[MountSpec] = []
    for bind in (*options.binds, *options.volumes):
        if not bind.source.startswith("/"):
            raise InvalidArgument(f"bind source {bind.source!r} must be an absolute host path")
        dest = _abs_dest(bind.destination, "mount destination")
        rw = "ro" if bind.readonly else "rw"
        mounts.append(MountSpec(dest, "bind", bind.source, ("rbind", "rprivate", rw)))
    for destination, opts in options.tmpfs:
        dest = _abs_dest(destination, "tmpfs destination")
        extra = tuple(o for o in opts.split(",") if o)
        mounts.append(MountSpec(dest, "tmpfs", "tmpfs", ("nosuid", "nodev", "noexec", *extra)))
    seen: set[str] = set()
    for mount in mounts:
        if mount.destination in seen:
            raise InvalidArgument(f"duplicate mount point: {mount.destination}")
        seen.add(mount.destination)
    return mounts


def _cgroup(container_id: str, options: RunOptions, parent: str) -> CgroupSpec:
    memory, swap = options.memory, options.memory_swap
    if memory is not None and memory <= 0:
        memory = None
    if memory is not None and memory < MIN_MEMORY:
        raise InvalidArgument("minimum memory limit allowed is 6MB")
    if swap is not None and swap != -1:
        if swap <= 0:
            swap = None
        elif memory is None:
            raise InvalidArgument("you should always set the memory limit when using the memory-swap limit")
        elif swap < memory:
            raise InvalidArgument("minimum memory-swap limit should be larger than memory limit")
    if memory is not None and swap is None:
        swap = 2 * memory
    if memory is None and swap == -1:
        swap = None
    quota = period = None
    if options.cpus is not None:
        available = os.cpu_count() or 1
        if not 0.01 <= options.cpus <= available:
            raise InvalidArgument(f"range of CPUs is from 0.01 to {available}.00, as there are only "
                                  f"{available} CPUs available")
        quota, period = round(options.cpus * CPU_PERIOD), CPU_PERIOD
    pids = options.pids_limit if options.pids_limit is not None and options.pids_limit > 0 else None
    if options.cpu_shares is not None and options.cpu_shares < 2:
        raise InvalidArgument(f"cpu shares {options.cpu_shares} is below the minimum of 2")
    return CgroupSpec(f"{parent.strip('/')}/{container_id}", memory, swap, quota, period, options.cpu_shares, pids)


def _write_file(path: Path, text: str) -> None:
    """Write one of the container's generated files. The first time (a create: nobody reads the new container's
    directory before its record is saved) straight into place; again (a re-plan) atomically, through a temporary
    file, as a running container may be reading it."""
    data = text.encode()
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            tmp = temporary_sibling(path)
            tmp.write_bytes(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            return
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as err:
        raise StoreError(f"container file {path}: {err.strerror}") from err


def _rlimits(ulimits: Sequence[tuple[str, int, int]]) -> tuple[tuple[str, int, int], ...]:
    import resource

    result = []
    for name, soft, hard in ulimits:
        full = f"RLIMIT_{name.upper().removeprefix('RLIMIT_')}"
        if not hasattr(resource, full):
            raise InvalidArgument(f"invalid ulimit type: {name}")
        if soft > hard:
            raise InvalidArgument(f"ulimit {name}: soft limit {soft} is larger than hard limit {hard}")
        result.append((full, soft, hard))
    return tuple(result)


def plan_container(
    *,
    container_id: str,
    image_config: Mapping[str, Any],
    options: RunOptions,
    rootfs: Path,
    root_mounts: Sequence[_MountLike],
    bundle_dir: Path,
    cgroup_parent: str = "kitebox",
    host_resolv_conf: Path = Path("/etc/resolv.conf"),
    seccomp_cache_dir: Path | None = None,
    user_files: UserFiles | None = None,
) -> RuntimeSpec:
    """Build the runtime spec for one container and write its hostname/hosts/resolv.conf into ``bundle_dir``.

    ``user_files``: the image's /etc/passwd and /etc/group (for --user), when the caller has read them; else they
    are read in ``rootfs``. The container's root is ``rootfs`` itself when ``root_mounts`` is empty, else those
    mounts performed at ``bundle_dir/rootfs``. The compiled seccomp
    program is cached in ``seccomp_cache_dir`` (default ``bundle_dir``): a directory shared by the containers of
    a state root compiles Docker's profile once per capability set instead of once per container (~17 ms).
    Raises InvalidArgument for every bad option, naming it.
    """
    if not _CONTAINER_ID.match(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r}")
    if not options.network or "/" in options.network:
        raise InvalidArgument(f"invalid network {options.network!r}")
    if options.netns_path is not None and options.network in ("none", "host"):
        raise InvalidArgument(f"network mode {options.network} cannot join the namespace {options.netns_path}")
    args = _command(image_config, options)

    hostname = options.hostname or container_id[:12]
    if len(hostname) > 64 or not _HOSTNAME.match(hostname):
        raise InvalidArgument(f"invalid hostname {hostname!r}")

    workdir = options.workdir or image_config.get("WorkingDir") or "/"
    if not isinstance(workdir, str):
        raise InvalidArgument("image config WorkingDir must be a string")
    if not workdir.startswith("/"):
        if options.workdir:
            raise InvalidArgument(f"the working directory {workdir!r} is invalid, it needs to be an absolute path")
        workdir = "/" + workdir
    workdir = posixpath.normpath(workdir).replace("//", "/")

    user_spec = options.user if options.user is not None else image_config.get("User")
    if user_spec is not None and not isinstance(user_spec, str):
        raise InvalidArgument("image config User must be a string")
    if user_files is None:
        user_files = UserFiles(read_in_root(rootfs, "/etc/passwd"), read_in_root(rootfs, "/etc/group"))
    passwd, group = user_files
    user = resolve_user(user_spec, passwd, group)
    extra_gids = list(user.additional_gids)
    for item in options.group_add:  # --group-add name|gid, resolved like the group half of --user
        found = resolve_user(f"0:{item}", passwd, group).gid
        if found not in extra_gids:
            extra_gids.append(found)

    image_env = _strings(image_config, "Env") or ()
    container_env = _merge_env(image_env, options.env)
    base = [] if any(e.startswith("PATH=") for e in container_env) else [f"PATH={DEFAULT_PATH}"]
    base.append(f"HOSTNAME={hostname}")
    if options.tty:
        base.append("TERM=xterm")
    env = _merge_env(base, container_env)

    caps = ALL_CAPS if options.privileged else tweak_caps(DEFAULT_CAPS, options.cap_add, options.cap_drop)
    capabilities = CapabilitySet(bounding=caps, effective=caps, permitted=caps)

    process = ProcessSpec(
        args=args, env=tuple(env), cwd=workdir, uid=user.uid, gid=user.gid, additional_gids=tuple(extra_gids),
        terminal=options.tty, capabilities=capabilities, no_new_privileges=options.no_new_privileges,
        rlimits=_rlimits(options.ulimits), oom_score_adj=options.oom_score_adj,
    )

    user_mounts = _user_mounts(options)
    user_dests = {m.destination for m in user_mounts}
    if options.shm_size <= 0:
        raise InvalidArgument(f"shm size {options.shm_size} must be positive")
    mounts = [m for m in default_mounts(options.shm_size, privileged=options.privileged)
              if m.destination not in user_dests]

    try:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        host_resolv = host_resolv_conf.read_text() if host_resolv_conf.exists() else ""
    except OSError as err:
        raise StoreError(f"container directory {bundle_dir}: {err.strerror}") from err
    net_files = {"/etc/hostname": hostname + "\n", "/etc/hosts": hosts_file(hostname),
                 "/etc/resolv.conf": resolv_conf(host_resolv)}
    network_mounts = []
    for dest, text in net_files.items():
        if dest in user_dests:
            continue
        source = bundle_dir / posixpath.basename(dest)
        _write_file(source, text)
        mode = "ro" if options.read_only else "rw"
        network_mounts.append(MountSpec(dest, "bind", str(source), ("rbind", "rprivate", mode)))
    extra = sorted([*user_mounts, *network_mounts], key=lambda m: len(m.destination.strip("/").split("/")))
    mounts += extra

    if root_mounts:
        root_path = str(bundle_dir / "rootfs")
        root = RootSpec(root_path, options.read_only,
                        tuple(RootMount(m.type, m.source, tuple(m.options), m.cwd) for m in root_mounts))
    else:
        root = RootSpec(str(rootfs), options.read_only, ())

    # The net sysctls are per network namespace: never set them in the host's (--network host).
    # Seccomp: Docker's default profile for the bounding set (moby setupSeccomp), none when privileged; the
    # program is compiled now into the container's directory, so starting the container only loads it.
    seccomp = program = None
    if options.seccomp and not options.privileged:
        seccomp = default_profile(caps, os.uname().machine)
        cache_dir = seccomp_cache_dir or bundle_dir
        try:
            cache_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            raise StoreError(f"seccomp cache directory {cache_dir}: {err.strerror}") from err
        program = program_file(seccomp, str(cache_dir))
    host_network = options.network == "host"
    sysctl = {} if host_network else {"net.ipv4.ping_group_range": "0 2147483647",
                                      "net.ipv4.ip_unprivileged_port_start": "0"}
    return RuntimeSpec(
        id=container_id, process=process, root=root, hostname=hostname, mounts=tuple(mounts),
        namespaces=tuple(n for n in DEFAULT_NAMESPACES if not (host_network and n == "net")),
        masked_paths=() if options.privileged else DEFAULT_MASKED_PATHS,
        readonly_paths=() if options.privileged else DEFAULT_READONLY_PATHS,
        sysctl=sysctl, cgroup=_cgroup(container_id, options, cgroup_parent), privileged=options.privileged,
        netns_path=options.netns_path, seccomp=seccomp,
        seccomp_cache_dir=str(seccomp_cache_dir or bundle_dir) if seccomp else None, seccomp_program=program,
    )
