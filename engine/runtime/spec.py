"""The runtime spec: everything the executor needs to start one container, as plain data.

Shaped after the OCI runtime spec (process, root, mounts, namespaces, masked/readonly paths, sysctls, cgroup
resources, seccomp) but reduced to what Kitebox uses. The planner (:mod:`engine.runtime.plan`) builds it; the executor
(:mod:`engine.runtime.executor`) applies it in a fresh process; it is stored with the container as
``spec.json``. ``to_json()``/``from_json()`` round-trip exactly (``from_json(x.to_json()) == x``), and
``from_json`` refuses malformed input with :class:`~engine.errors.InvalidArgument` naming the bad field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidArgument
from engine.runtime.seccomp import SeccompProfile

__all__ = [
    "CapabilitySet",
    "CgroupSpec",
    "MountSpec",
    "ProcessSpec",
    "RootMount",
    "RootSpec",
    "RuntimeSpec",
    "decode_document",
]


@dataclass(frozen=True)
class MountSpec:
    """One mount inside the container: ``destination`` is a path in the container; ``options`` mixes flag words
    (``ro``, ``nosuid``, ``rbind``...) and filesystem data (``size=65536k``). ``type`` ``"bind"`` binds the host
    path ``source``; ``"cgroup"`` is the container's view of its own cgroups (built by the executor)."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class RootMount:
    """One mount building the root filesystem (the snapshotter's ``Mount``: type, source, options, cwd)."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    cwd: str | None = None


@dataclass(frozen=True)
class CapabilitySet:
    """Capability names (``"CAP_CHOWN"``) for each of the five sets."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessSpec:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    terminal: bool
    capabilities: CapabilitySet
    no_new_privileges: bool
    rlimits: tuple[tuple[str, int, int], ...]  # ("RLIMIT_NOFILE", soft, hard)
    oom_score_adj: int | None


@dataclass(frozen=True)
class RootSpec:
    """``path`` becomes the container's ``/``; ``mounts`` (performed at ``path`` inside the container's mount
    namespace) build it. With no mounts, ``path`` itself (a directory) is bind-mounted."""

    path: str
    readonly: bool
    mounts: tuple[RootMount, ...] = ()


@dataclass(frozen=True)
class CgroupSpec:
    """``path`` is relative to each hierarchy's root (``kitebox/<id>``). ``memory_swap`` is memory+swap in bytes
    (Docker's ``--memory-swap``), ``-1`` meaning unlimited swap. ``None`` everywhere means "no limit"."""

    path: str
    memory: int | None = None
    memory_swap: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None


@dataclass(frozen=True)
class RuntimeSpec:
    id: str
    process: ProcessSpec
    root: RootSpec
    hostname: str
    mounts: tuple[MountSpec, ...]
    namespaces: tuple[str, ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    sysctl: Mapping[str, str] = field(default_factory=dict)
    cgroup: CgroupSpec = field(default_factory=lambda: CgroupSpec(path=""))
    privileged: bool = False
    netns_path: str | None = None
    # Docker's default seccomp filter resolved for this container (None: unconfined, as --privileged or
    # --security-opt seccomp=unconfined), and the file holding its compiled program (in seccomp_cache_dir, shared
    # by a state root's containers: engine.runtime.seccomp.program_file). The runtime loads the program file;
    # the profile is the record it was made from. The spec a monitor gets names only the file (parsing the
    # profile cost a fresh monitor ~1 ms): seccomp None with seccomp_program set still confines.
    seccomp: SeccompProfile | None = None
    seccomp_cache_dir: str | None = None
    seccomp_program: str | None = None

    def to_json(self) -> str:
        """Serialise (sorted keys, so equal specs give equal text)."""
        return json.dumps(_dump(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RuntimeSpec:
        """Parse what :meth:`to_json` wrote; InvalidArgument on anything else."""
        return cls.from_document(decode_document(text))

    @classmethod
    def from_document(cls, raw: object) -> RuntimeSpec:
        """:meth:`from_json` of text already decoded (:func:`decode_document`)."""
        return _load_runtime(_obj(raw, "spec"))


def decode_document(text: str | bytes) -> object:
    """The JSON document :meth:`RuntimeSpec.to_json` wrote, decoded. A container's ``spec.json`` written by an
    earlier Kitebox holds it encoded twice (a JSON string of the JSON text): that is accepted too."""
    try:
        raw = json.loads(text)
        return json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"runtime spec: not valid JSON ({err})") from err


def _dump(spec: RuntimeSpec) -> dict[str, Any]:
    p = spec.process
    caps = p.capabilities
    return {
        "id": spec.id,
        "process": {
            "args": list(p.args), "env": list(p.env), "cwd": p.cwd, "uid": p.uid, "gid": p.gid,
            "additional_gids": list(p.additional_gids), "terminal": p.terminal,
            "capabilities": {
                "bounding": list(caps.bounding), "effective": list(caps.effective),
                "permitted": list(caps.permitted), "inheritable": list(caps.inheritable),
                "ambient": list(caps.ambient),
            },
            "no_new_privileges": p.no_new_privileges,
            "rlimits": [list(r) for r in p.rlimits],
            "oom_score_adj": p.oom_score_adj,
        },
        "root": {
            "path": spec.root.path, "readonly": spec.root.readonly,
            "mounts": [{"type": m.type, "source": m.source, "options": list(m.options), "cwd": m.cwd}
                       for m in spec.root.mounts],
        },
        "hostname": spec.hostname,
        "mounts": [{"destination": m.destination, "type": m.type, "source": m.source, "options": list(m.options)}
                   for m in spec.mounts],
        "namespaces": list(spec.namespaces),
        "masked_paths": list(spec.masked_paths),
        "readonly_paths": list(spec.readonly_paths),
        "sysctl": dict(spec.sysctl),
        "cgroup": {
            "path": spec.cgroup.path, "memory": spec.cgroup.memory, "memory_swap": spec.cgroup.memory_swap,
            "cpu_quota": spec.cgroup.cpu_quota, "cpu_period": spec.cgroup.cpu_period,
            "cpu_shares": spec.cgroup.cpu_shares, "pids_limit": spec.cgroup.pids_limit,
        },
        "privileged": spec.privileged,
        "netns_path": spec.netns_path,
        "seccomp": None if spec.seccomp is None else spec.seccomp.to_dict(),
        "seccomp_cache_dir": spec.seccomp_cache_dir,
        "seccomp_program": spec.seccomp_program,
    }


def _obj(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"runtime spec: {where} must be an object")
    return raw


def _str(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"runtime spec: {where}.{key} must be a string")
    return value


def _opt_str(raw: dict[str, Any], key: str, where: str) -> str | None:
    return None if raw.get(key) is None else _str(raw, key, where)


def _bool(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise InvalidArgument(f"runtime spec: {where}.{key} must be a boolean")
    return value


def _int(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"runtime spec: {where}.{key} must be an integer")
    return value


def _opt_int(raw: dict[str, Any], key: str, where: str) -> int | None:
    return None if raw.get(key) is None else _int(raw, key, where)


def _strs(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"runtime spec: {where}.{key} must be a list of strings")
    return tuple(value)


def _list(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise InvalidArgument(f"runtime spec: {where}.{key} must be a list")
    return value


def _load_runtime(raw: dict[str, Any]) -> RuntimeSpec:
    proc = _obj(raw.get("process"), "process")
    caps = _obj(proc.get("capabilities"), "process.capabilities")
    gids = _list(proc, "additional_gids", "process")
    if not all(isinstance(g, int) and not isinstance(g, bool) for g in gids):
        raise InvalidArgument("runtime spec: process.additional_gids must be a list of integers")
    rlimits: list[tuple[str, int, int]] = []
    for item in _list(proc, "rlimits", "process"):
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item[1:])):
            raise InvalidArgument("runtime spec: process.rlimits entries must be [name, soft, hard]")
        rlimits.append((item[0], item[1], item[2]))
    process = ProcessSpec(
        args=_strs(proc, "args", "process"), env=_strs(proc, "env", "process"), cwd=_str(proc, "cwd", "process"),
        uid=_int(proc, "uid", "process"), gid=_int(proc, "gid", "process"), additional_gids=tuple(gids),
        terminal=_bool(proc, "terminal", "process"),
        capabilities=CapabilitySet(*(_strs(caps, k, "process.capabilities")
                                     for k in ("bounding", "effective", "permitted", "inheritable", "ambient"))),
        no_new_privileges=_bool(proc, "no_new_privileges", "process"), rlimits=tuple(rlimits),
        oom_score_adj=_opt_int(proc, "oom_score_adj", "process"),
    )
    root_raw = _obj(raw.get("root"), "root")
    root_mounts = []
    for item in _list(root_raw, "mounts", "root"):
        m = _obj(item, "root.mounts[]")
        root_mounts.append(RootMount(_str(m, "type", "root.mounts[]"), _str(m, "source", "root.mounts[]"),
                                     _strs(m, "options", "root.mounts[]"), _opt_str(m, "cwd", "root.mounts[]")))
    root = RootSpec(_str(root_raw, "path", "root"), _bool(root_raw, "readonly", "root"), tuple(root_mounts))
    mounts = []
    for item in _list(raw, "mounts", "spec"):
        m = _obj(item, "mounts[]")
        mounts.append(MountSpec(_str(m, "destination", "mounts[]"), _str(m, "type", "mounts[]"),
                                _str(m, "source", "mounts[]"), _strs(m, "options", "mounts[]")))
    sysctl = _obj(raw.get("sysctl"), "sysctl")
    if not all(isinstance(v, str) for v in sysctl.values()):
        raise InvalidArgument("runtime spec: sysctl values must be strings")
    cg = _obj(raw.get("cgroup"), "cgroup")
    cgroup = CgroupSpec(
        path=_str(cg, "path", "cgroup"),
        **{k: _opt_int(cg, k, "cgroup")
           for k in ("memory", "memory_swap", "cpu_quota", "cpu_period", "cpu_shares", "pids_limit")},
    )
    return RuntimeSpec(
        id=_str(raw, "id", "spec"), process=process, root=root, hostname=_str(raw, "hostname", "spec"),
        mounts=tuple(mounts), namespaces=_strs(raw, "namespaces", "spec"),
        masked_paths=_strs(raw, "masked_paths", "spec"), readonly_paths=_strs(raw, "readonly_paths", "spec"),
        sysctl=dict(sysctl), cgroup=cgroup, privileged=_bool(raw, "privileged", "spec"),
        netns_path=_opt_str(raw, "netns_path", "spec"),
        seccomp=None if raw.get("seccomp") is None else SeccompProfile.from_dict(raw["seccomp"]),
        seccomp_cache_dir=_opt_str(raw, "seccomp_cache_dir", "spec"),
        seccomp_program=_opt_str(raw, "seccomp_program", "spec"),
    )
