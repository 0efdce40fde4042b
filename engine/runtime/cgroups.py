"""Container cgroups: create with limits, join, inspect, freeze, kill, destroy -- on v2, v1 and hybrid hosts.

The cgroup path in :class:`~engine.runtime.spec.CgroupSpec` is relative to each hierarchy's root
(``kitebox/<id>`` -> ``/sys/fs/cgroup/memory/kitebox/<id>``), like Docker's ``/docker/<id>``: not below the
engine's own cgroup, because v2 forbids processes in a cgroup whose children have controllers enabled.

* v2: one directory; controllers are enabled in every ancestor's ``cgroup.subtree_control``.
* v1: one directory per mounted hierarchy (memory, cpu, cpuacct, pids, freezer, devices, cpuset, blkio,
  name=systemd...), so the container's cgroup namespace shows its own cgroup everywhere. The devices
  controller denies everything but Docker's allow-list (CAP_MKNOD is in the default set: without this a
  container could mknod the host's disks).
* hybrid: the v1 layout plus a directory in the unified (v2) hierarchy, as runc does; limits live in v1.

Creating is idempotent. A monitor creates the cgroup, forks the container's init (or an exec'd process) with
:meth:`~CgroupManager.fork` and the child joins first thing with :meth:`~CgroupManager.join_self`. Both are built
to avoid the kernel's global ``cgroup_threadgroup_rwsem`` write lock, whose every first taking waits for an RCU
grace period (5-30 ms here, the largest single cost of a container start when it was a ``cgroup.procs`` write):
the child is born in the v2 cgroup (clone3 ``CLONE_INTO_CGROUP``), and joins each v1 hierarchy by writing ``0``
to ``tasks``, which moves the calling thread -- the whole process, as the child is single-threaded -- without
that lock. Each manager carries the host's :class:`CgroupLayout`, detected once when it is made, so a forked
child mounting the container's cgroups does not parse mountinfo again.
Kernel errors become :class:`~engine.errors.KernelError` naming the cgroup file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from engine.errors import InvalidArgument, KernelError, from_oserror
from engine.runtime import syscalls
from engine.runtime.spec import CgroupSpec

__all__ = [
    "CgroupEntry",
    "CgroupLayout",
    "CgroupManager",
    "FakeCgroupManager",
    "V1Manager",
    "V2Manager",
    "cgroup_manager",
    "detect_cgroup_mode",
    "host_layout",
    "v1_hierarchies",
]

CgroupMode = Literal["v2", "v1", "hybrid"]
WAIT_SECONDS = 5.0
_POLL = 0.005

# runc's default allow-list (libcontainer/specconv AllowedDevices): mknod anything, use only these.
DEVICE_ALLOW = (
    "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm",
)


def detect_cgroup_mode(root: Path = Path("/sys/fs/cgroup")) -> CgroupMode:
    """v2 if ``root`` is a cgroup2 mount; hybrid if it is a tmpfs with cgroup2 at ``root/unified``; else v1."""
    try:
        if syscalls.statfs_magic(str(root)) == syscalls.CGROUP2_SUPER_MAGIC:
            return "v2"
        unified = root / "unified"
        if unified.is_dir() and syscalls.statfs_magic(str(unified)) == syscalls.CGROUP2_SUPER_MAGIC:
            return "hybrid"
    except OSError as err:
        raise from_oserror(err, f"cgroup root {root}", KernelError) from err
    return "v1"


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def v1_hierarchies(root: Path = Path("/sys/fs/cgroup"),
                   mountinfo: Path = Path("/proc/self/mountinfo")) -> dict[str, str]:
    """Mounted v1 hierarchies directly under ``root``: directory name -> mount data (``"memory"``,
    ``"cpu,cpuacct"``, ``"name=systemd"``), as needed to mount the same hierarchy again."""
    found: dict[str, str] = {}
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) < 5 or len(rparts) < 3 or rparts[0] != "cgroup":
            continue
        mountpoint = Path(_unescape(parts[4]))
        if mountpoint.parent != root:
            continue
        words = [w for w in rparts[2].split(",") if (w not in ("rw", "ro") and "=" not in w) or w.startswith("name=")]
        found[mountpoint.name] = ",".join(words)
    return found


@dataclass(frozen=True)
class CgroupLayout:
    """How this host mounts cgroups: the mode and, for v1/hybrid, :func:`v1_hierarchies`."""

    mode: CgroupMode
    hierarchies: dict[str, str] = field(default_factory=dict)


def host_layout(root: Path = Path("/sys/fs/cgroup")) -> CgroupLayout:
    """The layout under ``root`` (one statfs or two, plus one mountinfo read outside v2)."""
    mode = detect_cgroup_mode(root)
    return CgroupLayout(mode, v1_hierarchies(root) if mode != "v2" else {})


class CgroupManager(Protocol):
    """One container's cgroup(s). See the module docstring for the layout."""

    @property
    def layout(self) -> CgroupLayout: ...
    def create(self, spec: CgroupSpec) -> None: ...
    def fork(self) -> int: ...
    def join_self(self) -> None: ...
    def pids(self) -> list[int]: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def kill_all(self, sig: int = signal.SIGKILL) -> None: ...
    def oom_killed(self) -> bool: ...
    def destroy(self) -> None: ...


def _check_path(spec: CgroupSpec) -> str:
    rel = spec.path.strip("/")
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise InvalidArgument(f"cgroup path {spec.path!r} must be a relative name like kitebox/<id>")
    return rel


def _write(path: Path, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise from_oserror(err, f"cgroup file {path} (writing {value!r})", KernelError) from err


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise from_oserror(err, f"cgroup file {path}", KernelError) from err


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise KernelError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(_POLL)


def _procs(directory: Path) -> list[int]:
    try:
        return [int(x) for x in (directory / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise from_oserror(err, f"cgroup {directory}", KernelError) from err


def _remove(directory: Path) -> None:
    """rmdir ``directory`` once its processes have gone (EBUSY while they are still exiting)."""

    def gone() -> bool:
        try:
            directory.rmdir()
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno == errno.EBUSY:
                return False
            raise from_oserror(err, f"cgroup {directory}", KernelError) from err
        return True

    _wait_for(gone, f"cgroup {directory} to empty")


def _device_rules(directory: Path) -> list[str]:
    try:
        return _read(directory / "devices.list").splitlines()
    except KernelError:
        return []


def _restrict_devices(directory: Path) -> None:
    """Docker's device allow-list on a v1 devices cgroup: deny everything, then allow each rule."""
    _write(directory / "devices.deny", "a")
    for rule in DEVICE_ALLOW:
        _write(directory / "devices.allow", rule)


def _fork_into(directory: Path | None) -> tuple[int, bool]:
    """``os.fork()``, the child born in the v2 cgroup ``directory`` when the kernel can do it: (pid, born)."""
    if directory is not None:
        try:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = -1  # the child's join_self reports what is wrong with it
        if fd >= 0:
            try:
                return syscalls.fork_into_cgroup(fd), True
            except OSError:
                pass  # no clone3 / CLONE_INTO_CGROUP here, or refused: the child joins by writing cgroup.procs
            finally:
                os.close(fd)
    return os.fork(), False


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise from_oserror(err, f"cgroup {directory}", KernelError) from err


class V2Manager:
    """A unified-hierarchy cgroup at ``root/<path>``."""

    def __init__(self, spec: CgroupSpec, root: Path = Path("/sys/fs/cgroup")) -> None:
        self.root = root
        self.dir = root / _check_path(spec)
        self.born = False  # in a child of fork(): it was born in the cgroup

    def create(self, spec: CgroupSpec) -> None:
        wanted = {"memory", "cpu", "pids"}
        parent = self.root
        for part in self.dir.relative_to(self.root).parts:
            available = set(_read(parent / "cgroup.controllers").split())
            enabled = set(_read(parent / "cgroup.subtree_control").split())
            missing = (wanted & available) - enabled
            if missing:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
            parent = parent / part
            _mkdir(parent)
        if spec.memory is not None:
            _write(self.dir / "memory.max", str(spec.memory))
            if spec.memory_swap is not None and (self.dir / "memory.swap.max").exists():
                swap = "max" if spec.memory_swap < 0 else str(max(spec.memory_swap - spec.memory, 0))
                _write(self.dir / "memory.swap.max", swap)
        if spec.cpu_quota is not None or spec.cpu_period is not None:
            quota = "max" if spec.cpu_quota is None or spec.cpu_quota < 0 else str(spec.cpu_quota)
            _write(self.dir / "cpu.max", f"{quota} {spec.cpu_period or 100000}")
        if spec.cpu_shares is not None:
            _write(self.dir / "cpu.weight", str(1 + ((spec.cpu_shares - 2) * 9999) // 262142))
        if spec.pids_limit is not None:
            _write(self.dir / "pids.max", "max" if spec.pids_limit <= 0 else str(spec.pids_limit))

    @property
    def layout(self) -> CgroupLayout:
        return CgroupLayout("v2")

    def fork(self) -> int:
        """``os.fork()`` for a child that then calls :meth:`join_self`; born in the cgroup when possible."""
        pid, born = _fork_into(self.dir)
        if pid == 0:
            self.born = born
        return pid

    def join_self(self) -> None:
        if not self.born:
            _write(self.dir / "cgroup.procs", "0")

    def pids(self) -> list[int]:
        return _procs(self.dir)

    def freeze(self) -> None:
        _write(self.dir / "cgroup.freeze", "1")
        _wait_for(lambda: "frozen 1" in _read(self.dir / "cgroup.events"), f"cgroup {self.dir} to freeze")

    def thaw(self) -> None:
        _write(self.dir / "cgroup.freeze", "0")

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL and (self.dir / "cgroup.kill").exists():
            _write(self.dir / "cgroup.kill", "1")
            return
        _signal_all(self.pids(), sig)

    def oom_killed(self) -> bool:
        return _counter(self.dir / "memory.events", "oom_kill") > 0

    def destroy(self) -> None:
        _remove(self.dir)


class V1Manager:
    """One directory per mounted v1 hierarchy; with ``unified`` (hybrid) also one in the v2 hierarchy."""

    def __init__(self, spec: CgroupSpec, root: Path = Path("/sys/fs/cgroup"), *, hybrid: bool = False,
                 hierarchies: dict[str, str] | None = None) -> None:
        rel = _check_path(spec)
        self.root = root
        self.hierarchies = v1_hierarchies(root) if hierarchies is None else hierarchies
        self.dirs = {name: root / name / rel for name in sorted(self.hierarchies)}
        self.unified = root / "unified" / rel if hybrid else None
        self.born = False  # in a child of fork(): it was born in the unified cgroup

    def _dir(self, controller: str) -> Path | None:
        for name, data in self.hierarchies.items():
            if controller in data.split(","):
                return self.dirs[name]
        return None

    def _all_dirs(self) -> list[Path]:
        return [*self.dirs.values(), *([self.unified] if self.unified else [])]

    def create(self, spec: CgroupSpec) -> None:
        if not self._make_leaves():  # the first container under this parent: set the parent up first
            devices = self._dir("devices")
            if devices is not None:
                self._restrict_parent_devices(devices.parent)
            for directory in self._all_dirs():
                _mkdir(directory)
        cpuset = self._dir("cpuset")
        if cpuset is not None:
            self._init_cpuset(cpuset)
        memory = self._dir("memory")
        if memory is not None and spec.memory is not None:
            _write(memory / "memory.limit_in_bytes", str(spec.memory))
            if spec.memory_swap is not None and (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", str(spec.memory_swap))
        cpu = self._dir("cpu")
        if cpu is not None:
            if spec.cpu_shares is not None:
                _write(cpu / "cpu.shares", str(spec.cpu_shares))
            if spec.cpu_period is not None:
                _write(cpu / "cpu.cfs_period_us", str(spec.cpu_period))
            if spec.cpu_quota is not None:
                _write(cpu / "cpu.cfs_quota_us", str(spec.cpu_quota))
        pids = self._dir("pids")
        if pids is not None and spec.pids_limit is not None:
            _write(pids / "pids.max", "max" if spec.pids_limit <= 0 else str(spec.pids_limit))
        devices = self._dir("devices")
        if devices is not None and not _procs(devices) and _device_rules(devices) != list(DEVICE_ALLOW):
            _restrict_devices(devices)

    def _make_leaves(self) -> bool:
        """Make the container's directories where their parents exist already (every container after the first
        under a parent): the parents were set up (device list, cpuset) when they were made, so that work and its
        reads are skipped. False, with nothing or some made, when a parent is missing."""
        for directory in self._all_dirs():
            try:
                os.mkdir(directory)
            except FileExistsError:
                continue
            except FileNotFoundError:
                return False
            except OSError as err:
                raise from_oserror(err, f"cgroup {directory}", KernelError) from err
        return True

    def _restrict_parent_devices(self, parent: Path) -> None:
        """A new cgroup inherits its parent's device list: give the containers' parent Docker's list while it has
        no children yet (the kernel refuses to deny more once it has), so each container's cgroup is born with
        it and :meth:`create` only reads it (instead of 13 writes). Never a hierarchy's root, nor a cgroup with
        processes of its own; a parent that cannot be restricted leaves the writes to each container."""
        if parent == self.root / parent.relative_to(self.root).parts[0]:
            return
        _mkdir(parent)
        if _device_rules(parent) == list(DEVICE_ALLOW) or _procs(parent):
            return
        with contextlib.suppress(KernelError, OSError):
            if not any(entry.is_dir() for entry in parent.iterdir()):
                _restrict_devices(parent)

    def _init_cpuset(self, leaf: Path) -> None:
        """A new v1 cpuset has empty cpus/mems and refuses tasks: copy them down from the parent. The parents get
        ``cgroup.clone_children``, so the next container's cpuset is born with them (two reads, no writes)."""
        names = ("cpuset.cpus", "cpuset.mems")
        if all(_read(leaf / name).strip() for name in names):
            return
        top = self.root / leaf.relative_to(self.root).parts[0]
        current = top
        for part in leaf.relative_to(top).parts:
            child = current / part
            for name in names:
                if not _read(child / name).strip():
                    _write(child / name, _read(current / name).strip())
            if child != leaf:
                with contextlib.suppress(KernelError):
                    _write(child / "cgroup.clone_children", "1")
            current = child

    @property
    def layout(self) -> CgroupLayout:
        return CgroupLayout("hybrid" if self.unified else "v1", dict(self.hierarchies))

    def fork(self) -> int:
        """``os.fork()`` for a child that then calls :meth:`join_self`; born in the unified cgroup when possible."""
        pid, born = _fork_into(self.unified)
        if pid == 0:
            self.born = born
        return pid

    def join_self(self) -> None:
        """Move the calling process in; it must be single-threaded (a freshly forked child): see the module
        docstring for why v1 hierarchies are joined through ``tasks``."""
        for directory in self.dirs.values():
            _write(directory / "tasks", "0")
        if self.unified is not None and not self.born:
            _write(self.unified / "cgroup.procs", "0")

    def pids(self) -> list[int]:
        directory = self._dir("pids") or self._dir("memory") or next(iter(self.dirs.values()), None)
        return _procs(directory) if directory is not None else []

    def freeze(self) -> None:
        freezer = self._dir("freezer")
        if freezer is None:
            raise KernelError("cgroup freezer controller is not mounted")
        _write(freezer / "freezer.state", "FROZEN")
        _wait_for(lambda: _read(freezer / "freezer.state").strip() == "FROZEN", f"cgroup {freezer} to freeze")

    def thaw(self) -> None:
        freezer = self._dir("freezer")
        if freezer is None:
            raise KernelError("cgroup freezer controller is not mounted")
        _write(freezer / "freezer.state", "THAWED")

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        # Freeze first so a forking process cannot outrun the signals; killed tasks die on thaw.
        frozen = self._dir("freezer") is not None and bool(self.pids())
        if frozen:
            self.freeze()
        try:
            _signal_all(self.pids(), sig)
        finally:
            if frozen:
                self.thaw()

    def oom_killed(self) -> bool:
        memory = self._dir("memory")
        return memory is not None and _counter(memory / "memory.oom_control", "oom_kill") > 0

    def destroy(self) -> None:
        for directory in self._all_dirs():
            _remove(directory)


class CgroupEntry:
    """How a container's init enters its cgroups -- first thing, so all it does is counted against and limited by
    them -- and later its cgroup namespace (whose root is the cgroup the process is in when it unshares it, so
    the move must come first).

    With ``manager`` the parent (the monitor) has created the cgroups and forked this process with
    :meth:`~CgroupManager.fork`; without (the standalone runner) the init creates them here. Either way the init
    joins them itself with :meth:`~CgroupManager.join_self`, which takes no global lock (see the module
    docstring).
    """

    def __init__(self, spec: CgroupSpec, manager: CgroupManager | None = None, *, namespace: bool = True) -> None:
        self.namespace = namespace
        self.entered = False
        if manager is None:
            self.layout = host_layout()
            if spec.path:
                manager = cgroup_manager(spec, layout=self.layout)
                manager.create(spec)
        else:
            self.layout = manager.layout
        if manager is not None:
            manager.join_self()

    def enter(self) -> None:
        """Unshare the cgroup namespace (once; later calls do nothing)."""
        if self.entered:
            return
        self.entered = True
        if self.namespace:
            syscalls.unshare(syscalls.CLONE_NEWCGROUP)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _counter(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise from_oserror(err, f"cgroup file {path}", KernelError) from err
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def cgroup_manager(spec: CgroupSpec, *, mode: CgroupMode | None = None, layout: CgroupLayout | None = None,
                   root: Path = Path("/sys/fs/cgroup")) -> CgroupManager:
    """The manager for this host's cgroup layout (detected unless ``layout`` or ``mode`` is given)."""
    if layout is None and mode is not None:
        layout = CgroupLayout(mode, v1_hierarchies(root) if mode != "v2" else {})
    layout = layout or host_layout(root)
    if layout.mode == "v2":
        return V2Manager(spec, root)
    return V1Manager(spec, root, hybrid=layout.mode == "hybrid", hierarchies=layout.hierarchies)


@dataclass
class FakeCgroupManager:
    """A recording stand-in for unit tests: ``calls`` lists ("create", spec), ("join_self",), ... in order;
    ``members`` plays the cgroup's process list and ``oom`` its OOM counter."""

    calls: list[tuple[object, ...]] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    oom: bool = False
    frozen: bool = False
    exists: bool = False
    layout: CgroupLayout = field(default_factory=lambda: CgroupLayout("v2"))

    def create(self, spec: CgroupSpec) -> None:
        self.calls.append(("create", spec))
        self.exists = True

    def fork(self) -> int:
        return os.fork()

    def join_self(self) -> None:
        self.calls.append(("join_self",))
        self.members.append(os.getpid())

    def pids(self) -> list[int]:
        return list(self.members)

    def freeze(self) -> None:
        self.calls.append(("freeze",))
        self.frozen = True

    def thaw(self) -> None:
        self.calls.append(("thaw",))
        self.frozen = False

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        self.calls.append(("kill_all", sig))
        if sig == signal.SIGKILL:
            self.members.clear()

    def oom_killed(self) -> bool:
        return self.oom

    def destroy(self) -> None:
        self.calls.append(("destroy",))
        if self.members:
            raise KernelError("timed out waiting for the fake cgroup to empty")
        self.exists = False
