"""Live resource figures of a container, computed as Docker computes them, and its process table.

:func:`read_counters` reads one snapshot of raw counters from the container's cgroup (v1 / hybrid: the v1
hierarchies, where the limits live; v2: the unified directory) plus ``/proc/stat`` and the container's
``/proc/<pid>/net/dev``; :func:`compute` turns two snapshots into a :class:`StatsSample`:

* CPU % = Δcontainer usage / Δsystem usage x online CPUs x 100 (Docker CLI ``calculateCPUPercentUnix``), the
  system usage being the sum of the first seven ``/proc/stat`` ``cpu`` fields in nanoseconds;
* memory usage = usage - inactive file cache (v1 ``total_inactive_file``, v2 ``inactive_file``); the limit is
  the cgroup's, or the host's memory when the cgroup has none (the daemon caps it the same way);
* network = the container's interfaces except ``lo``; block I/O = bytes read / written (v1
  ``blkio.throttle.io_service_bytes_recursive``, v2 ``io.stat``); pids = ``pids.current``.

Every path is a parameter (``cgroup_root``, ``proc``), so unit tests run against a fake tree. Blocking file
reads: call from a thread.
"""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Counters", "ProcessRow", "StatsSample", "compute", "process_table", "read_counters", "zero_sample"]

CgroupMode = Literal["v2", "v1", "hybrid"]


@dataclass(frozen=True, slots=True)
class Counters:
    """Raw counters at one instant (``read`` is ``time.time()``)."""

    read: float
    cpu_ns: int
    system_ns: int
    online_cpus: int
    memory_usage: int
    memory_inactive_file: int
    memory_limit: int
    pids: int
    block_read: int
    block_write: int
    net_rx: int
    net_tx: int


@dataclass(frozen=True, slots=True)
class StatsSample:
    """One line of ``kitebox stats``: what Docker's CLI shows, as numbers."""

    id: str
    name: str
    read: float
    cpu_percent: float
    memory_usage: int
    memory_limit: int
    memory_percent: float
    net_rx: int
    net_tx: int
    block_read: int
    block_write: int
    pids: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def _int(path: Path) -> int:
    text = _read(path)
    if text is None:
        return 0
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _keyed(text: str | None, key: str) -> int:
    """The value of ``key value`` lines (memory.stat, cpu.stat)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _system_ns(proc: Path) -> int:
    for line in (_read(proc / "stat") or "").splitlines():
        if line.startswith("cpu "):
            jiffies = sum(int(v) for v in line.split()[1:8])
            return jiffies * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return 0


def _host_memory(proc: Path) -> int:
    for line in (_read(proc / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _net(proc: Path, pid: int | None) -> tuple[int, int]:
    if pid is None:
        return 0, 0
    rx = tx = 0
    for line in (_read(proc / str(pid) / "net" / "dev") or "").splitlines()[2:]:
        name, _, fields = line.partition(":")
        values = fields.split()
        if name.strip() != "lo" and len(values) >= 9:
            rx += int(values[0])
            tx += int(values[8])
    return rx, tx


def _v1_dir(cgroup_root: Path, hierarchies: dict[str, str], controller: str, rel: str) -> Path | None:
    for name, data in hierarchies.items():
        if controller in data.split(","):
            return cgroup_root / name / rel
    return None


def read_counters(cgroup_path: str, pid: int | None, *, mode: CgroupMode, hierarchies: dict[str, str],
                  cgroup_root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> Counters:
    """Read the counters of the cgroup ``cgroup_path`` (relative, ``kitebox/<id>``) whose init is ``pid``.

    ``hierarchies`` is :func:`engine.runtime.cgroups.v1_hierarchies` (ignored on v2). Missing files read as 0
    (a controller not mounted, a container that just exited)."""
    rel = cgroup_path.strip("/")
    host_memory = _host_memory(proc)
    rx, tx = _net(proc, pid)
    if mode == "v2":
        directory = cgroup_root / rel
        memory_stat = _read(directory / "memory.stat")
        limit_text = (_read(directory / "memory.max") or "max").strip()
        limit = int(limit_text) if limit_text.isdigit() else host_memory
        block_read = block_write = 0
        for line in (_read(directory / "io.stat") or "").splitlines():
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if key == "rbytes":
                    block_read += int(value)
                elif key == "wbytes":
                    block_write += int(value)
        return Counters(
            read=time.time(), cpu_ns=_keyed(_read(directory / "cpu.stat"), "usage_usec") * 1000,
            system_ns=_system_ns(proc), online_cpus=os.sysconf("SC_NPROCESSORS_ONLN"),
            memory_usage=_int(directory / "memory.current"), memory_inactive_file=_keyed(memory_stat, "inactive_file"),
            memory_limit=min(limit, host_memory) if host_memory else limit, pids=_int(directory / "pids.current"),
            block_read=block_read, block_write=block_write, net_rx=rx, net_tx=tx)
    cpuacct = _v1_dir(cgroup_root, hierarchies, "cpuacct", rel)
    memory = _v1_dir(cgroup_root, hierarchies, "memory", rel)
    pids = _v1_dir(cgroup_root, hierarchies, "pids", rel)
    blkio = _v1_dir(cgroup_root, hierarchies, "blkio", rel)
    limit = _int(memory / "memory.limit_in_bytes") if memory else 0
    block_read = block_write = 0
    if blkio is not None:
        for line in (_read(blkio / "blkio.throttle.io_service_bytes_recursive") or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                if parts[1] == "Read":
                    block_read += int(parts[2])
                elif parts[1] == "Write":
                    block_write += int(parts[2])
    return Counters(
        read=time.time(), cpu_ns=_int(cpuacct / "cpuacct.usage") if cpuacct else 0, system_ns=_system_ns(proc),
        online_cpus=os.sysconf("SC_NPROCESSORS_ONLN"),
        memory_usage=_int(memory / "memory.usage_in_bytes") if memory else 0,
        memory_inactive_file=_keyed(_read(memory / "memory.stat"), "total_inactive_file") if memory else 0,
        memory_limit=min(limit, host_memory) if host_memory and limit else (limit or host_memory),
        pids=_int(pids / "pids.current") if pids else 0, block_read=block_read, block_write=block_write,
        net_rx=rx, net_tx=tx)


def compute(container_id: str, name: str, previous: Counters | None, current: Counters) -> StatsSample:
    """The sample Docker's CLI would show for ``current`` after ``previous`` (no previous: CPU 0 %)."""
    cpu_percent = 0.0
    if previous is not None:
        cpu_delta = current.cpu_ns - previous.cpu_ns
        system_delta = current.system_ns - previous.system_ns
        if cpu_delta > 0 and system_delta > 0:
            cpu_percent = cpu_delta / system_delta * current.online_cpus * 100.0
    used = current.memory_usage - current.memory_inactive_file
    if used < 0:
        used = current.memory_usage
    memory_percent = used / current.memory_limit * 100.0 if current.memory_limit else 0.0
    return StatsSample(container_id, name, current.read, cpu_percent, used, current.memory_limit, memory_percent,
                       current.net_rx, current.net_tx, current.block_read, current.block_write, current.pids)


def zero_sample(container_id: str, name: str) -> StatsSample:
    """What Docker shows for a container that is not running: all zeros."""
    return StatsSample(container_id, name, time.time(), 0.0, 0, 0, 0.0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One line of ``top``, in ``ps -ef`` columns: UID PID PPID C STIME TTY TIME CMD (host pids)."""

    uid: str
    pid: int
    ppid: int
    c: int
    stime: str
    tty: str
    time: str
    cmd: str


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _tty_name(nr: int) -> str:
    if nr == 0:
        return "?"
    major, minor = (nr >> 8) & 0xFFF, (nr & 0xFF) | ((nr >> 12) & 0xFFF00)
    return f"pts/{minor}" if 136 <= major <= 143 else f"tty{minor}"


def process_table(pids: list[int], proc: Path = Path("/proc")) -> list[ProcessRow]:
    """``ps -ef`` rows for ``pids`` (processes that vanish meanwhile are left out), sorted by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime_text = _read(proc / "uptime")
    uptime = float(uptime_text.split()[0]) if uptime_text else 0.0
    boot = time.time() - uptime
    rows = []
    for pid in sorted(pids):
        stat = _read(proc / str(pid) / "stat")
        status = _read(proc / str(pid) / "status")
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat is None or status is None:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, tty_nr = int(fields[1]), int(fields[4])
        cpu_ticks = int(fields[11]) + int(fields[12])
        started = boot + int(fields[19]) / ticks
        uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), 0)
        elapsed = max(time.time() - started, 1e-9)
        seconds = cpu_ticks // ticks
        args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
        rows.append(ProcessRow(
            uid=_user(uid), pid=pid, ppid=ppid, c=int(cpu_ticks / ticks / elapsed * 100),
            stime=time.strftime("%H:%M", time.localtime(started)), tty=_tty_name(tty_nr),
            time=f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
            cmd=" ".join(args) if args else f"[{comm}]"))
    return rows
