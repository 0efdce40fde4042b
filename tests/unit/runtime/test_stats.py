"""Stats arithmetic (Docker's formulas) and counter reading from fake cgroup v1 / v2 trees and a fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

from engine.runtime.stats import Counters, compute, process_table, read_counters, zero_sample

HIER = {"cpu,cpuacct": "cpu,cpuacct", "memory": "memory", "pids": "pids", "blkio": "blkio"}
TICK = os.sysconf("SC_CLK_TCK")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_proc(root: Path, pid: int, *, jiffies: int) -> Path:
    write(root / "stat", f"cpu  {jiffies} 0 0 0 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    write(root / "meminfo", "MemTotal:        8000000 kB\nMemFree:  1 kB\n")
    write(root / str(pid) / "net" / "dev",
          "Inter-|   Receive\n face |bytes\n    lo: 999 9 0 0 0 0 0 0 999 9 0 0 0 0 0 0\n"
          "  eth0: 1500 10 0 0 0 0 0 0 700 5 0 0 0 0 0 0\n")
    return root


def test_v1_counters_and_docker_cpu_formula(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    rel = "kitebox/abc"
    write(cg / "cpu,cpuacct" / rel / "cpuacct.usage", "2000000000\n")
    write(cg / "memory" / rel / "memory.usage_in_bytes", "52428800\n")
    write(cg / "memory" / rel / "memory.stat", "cache 1\ntotal_inactive_file 10485760\n")
    write(cg / "memory" / rel / "memory.limit_in_bytes", "9223372036854771712\n")
    write(cg / "pids" / rel / "pids.current", "3\n")
    write(cg / "blkio" / rel / "blkio.throttle.io_service_bytes_recursive",
          "8:0 Read 4096\n8:0 Write 8192\n8:16 Read 4096\nTotal 16384\n")
    proc = fake_proc(tmp_path / "proc", 42, jiffies=100 * TICK)
    first = read_counters(rel, 42, mode="hybrid", hierarchies=HIER, cgroup_root=cg, proc=proc)
    assert (first.memory_usage, first.memory_inactive_file, first.pids) == (52428800, 10485760, 3)
    assert first.memory_limit == 8000000 * 1024  # no cgroup limit: the host's memory
    assert (first.block_read, first.block_write, first.net_rx, first.net_tx) == (8192, 8192, 1500, 700)
    assert first.system_ns == 100 * 1_000_000_000
    write(cg / "cpu,cpuacct" / rel / "cpuacct.usage", "3000000000\n")  # +1 s of CPU
    fake_proc(proc, 42, jiffies=102 * TICK)  # +2 s of system time
    second = read_counters(rel, 42, mode="hybrid", hierarchies=HIER, cgroup_root=cg, proc=proc)
    sample = compute("abc", "box", first, second)
    assert sample.cpu_percent == 1.0 / 2.0 * second.online_cpus * 100.0
    assert sample.memory_usage == 52428800 - 10485760
    assert round(sample.memory_percent, 4) == round(41943040 / (8000000 * 1024) * 100, 4)
    assert compute("abc", "box", None, second).cpu_percent == 0.0


def test_v2_counters(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    directory = cg / "kitebox" / "abc"
    write(directory / "cpu.stat", "usage_usec 1500000\nuser_usec 1\n")
    write(directory / "memory.current", "104857600\n")
    write(directory / "memory.stat", "anon 1\ninactive_file 4857600\nactive_file 3\n")
    write(directory / "memory.max", "209715200\n")
    write(directory / "pids.current", "7\n")
    write(directory / "io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n")
    proc = fake_proc(tmp_path / "proc", 7, jiffies=5)
    counters = read_counters("kitebox/abc", 7, mode="v2", hierarchies={}, cgroup_root=cg, proc=proc)
    assert counters.cpu_ns == 1_500_000_000
    assert (counters.memory_usage, counters.memory_inactive_file, counters.memory_limit) == (
        104857600, 4857600, 209715200)
    assert (counters.pids, counters.block_read, counters.block_write) == (7, 101, 202)
    sample = compute("abc", "box", None, counters)
    assert (sample.memory_usage, sample.memory_percent) == (100_000_000, 100_000_000 / 209715200 * 100)


def test_missing_files_read_as_zero_and_stopped_is_zero(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", 1, jiffies=1)
    counters = read_counters("kitebox/gone", None, mode="v1", hierarchies=HIER, cgroup_root=tmp_path / "none",
                             proc=proc)
    assert (counters.cpu_ns, counters.memory_usage, counters.pids, counters.net_rx) == (0, 0, 0, 0)
    zero = zero_sample("abc", "box")
    assert (zero.cpu_percent, zero.memory_usage, zero.pids) == (0.0, 0, 0)


def test_memory_usage_never_negative() -> None:
    counters = Counters(0.0, 0, 0, 1, 100, 500, 1000, 0, 0, 0, 0, 0)
    assert compute("a", "b", None, counters).memory_usage == 100


def test_process_table_reads_this_process(tmp_path: Path) -> None:
    rows = process_table([os.getpid(), 999_999_999])
    assert [row.pid for row in rows] == [os.getpid()]
    assert rows[0].ppid == os.getppid()
    assert "python" in rows[0].cmd or "pytest" in rows[0].cmd
