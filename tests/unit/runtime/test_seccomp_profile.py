"""Docker's default seccomp profile as data, and the BPF program compiled from it.

The program is never loaded here (that is irreversible for the test process): a small classic-BPF interpreter
runs it on synthetic ``struct seccomp_data`` instead, so what the kernel would decide for a syscall, its
arguments and its ABI is checked directly (the real kernel is exercised in tests/integration/runtime).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import struct
from pathlib import Path

import pytest

from engine.errors import InvalidArgument, KernelError
from engine.runtime.caps import DEFAULT_CAPS
from engine.runtime.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    ArgCondition,
    SeccompProfile,
    SyscallRule,
    compile_filter,
    default_profile,
    keep_program,
    load_filter,
    program_file,
    program_for,
    read_program,
)
from engine.runtime.spec import CapabilitySet, CgroupSpec, ProcessSpec, RootSpec, RuntimeSpec

ALLOW = 0x7FFF0000
KILL_PROCESS = 0x80000000
X86_64, I386 = 0xC000003E, 0x40000003
X32_BIT = 0x40000000
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17


def errno_ret(number: int) -> int:
    return 0x00050000 | number


EPERM, ENOSYS = errno_ret(errno.EPERM), errno_ret(errno.ENOSYS)


def run_bpf(program: bytes, nr: int, *args: int, arch: int = X86_64) -> int:
    """Run a seccomp classic-BPF program on one syscall; returns the action. Unknown opcodes fail the test."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", program, off) for off in range(0, len(program), 8)]
    acc = index = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = (int(v) for v in insns[pc])
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x00:  # ld #k
            acc = k
        elif code == 0x60:  # ld M[k]
            acc = mem[k]
        elif code == 0x02:  # st M[k]
            mem[k] = acc
        elif code == 0x61:  # ldx M[k]
            index = mem[k]
        elif code == 0x54:  # and #k
            acc &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq / jgt / jge / jset #k
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not understood by the test interpreter (index {index})")


@pytest.fixture(scope="module")
def default_program() -> bytes:
    return compile_filter(default_profile(DEFAULT_CAPS, "x86_64"))


@pytest.fixture(scope="module")
def admin_program() -> bytes:
    return compile_filter(default_profile((*DEFAULT_CAPS, "CAP_SYS_ADMIN"), "x86_64"))


def allowed_names(profile: SeccompProfile) -> set[str]:
    return {n for r in profile.rules if r.action == "allow" and not r.args for n in r.names}


def test_default_profile_content() -> None:
    profile = default_profile(DEFAULT_CAPS, "x86_64")
    assert (profile.default_action, profile.default_errno) == ("errno", errno.EPERM)
    assert profile.architectures == ("x86_64", "x86", "x32")
    allowed = allowed_names(profile)
    assert len(allowed) > 350
    assert {"read", "write", "execve", "openat", "ptrace", "arch_prctl", "fchmodat2", "chroot"} <= allowed
    never = {"keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load", "userfaultfd", "io_uring_setup",
             "io_uring_enter", "mount", "umount2", "unshare", "setns", "sethostname", "bpf", "reboot", "swapon",
             "init_module", "settimeofday", "kcmp", "open_by_handle_at", "pivot_root", "clone3"}
    assert not never & {n for r in profile.rules if r.action == "allow" for n in r.names}
    clone = [r for r in profile.rules if "clone" in r.names]
    assert clone == [SyscallRule(("clone",), "allow", None, (ArgCondition(0, "masked_eq", 0x7E020000, 0),))]
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    assert SyscallRule(("clone3",), "errno", errno.ENOSYS) in profile.rules
    personas = {r.args[0].value for r in profile.rules if r.names == ("personality",)}
    assert personas == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}


@pytest.mark.parametrize(("cap", "names"), [
    ("CAP_SYS_ADMIN", {"mount", "umount2", "unshare", "setns", "sethostname", "bpf", "fsopen", "move_mount",
                       "open_tree", "clone", "clone3", "syslog"}),
    ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
    ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
    ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
    ("CAP_SYS_BOOT", {"reboot"}),
    ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
    ("CAP_SYSLOG", {"syslog"}),
    ("CAP_BPF", {"bpf"}),
    ("CAP_PERFMON", {"perf_event_open"}),
    ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
])
def test_capability_rules_appear_only_with_the_capability(cap: str, names: set[str]) -> None:
    assert not names & allowed_names(default_profile(DEFAULT_CAPS, "x86_64"))
    assert names <= allowed_names(default_profile((*DEFAULT_CAPS, cap), "x86_64"))


def test_sys_admin_lifts_the_clone_restrictions() -> None:
    profile = default_profile((*DEFAULT_CAPS, "CAP_SYS_ADMIN"), "x86_64")
    assert not [r for r in profile.rules if r.args and r.names == ("clone",)]
    assert not [r for r in profile.rules if r.action == "errno"]


def test_dropping_chroot_drops_its_rule() -> None:
    caps = tuple(c for c in DEFAULT_CAPS if c != "CAP_SYS_CHROOT")
    assert "chroot" not in allowed_names(default_profile(caps, "x86_64"))


def test_architecture_specific_rules() -> None:
    arm = default_profile(DEFAULT_CAPS, "aarch64")
    assert arm.architectures == ("aarch64", "arm")
    assert "set_tls" in allowed_names(arm) and "arch_prctl" not in allowed_names(arm)
    s390 = [r for r in default_profile(DEFAULT_CAPS, "s390x").rules if r.names == ("clone",)]
    assert [r.args[0].index for r in s390] == [1]
    with pytest.raises(InvalidArgument, match="architecture 'mips'"):
        default_profile(DEFAULT_CAPS, "mips")


def test_round_trip_exact_and_in_the_runtime_spec() -> None:
    profile = default_profile((*DEFAULT_CAPS, "CAP_SYS_PTRACE"), "x86_64")
    assert SeccompProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    process = ProcessSpec(("sh",), (), "/", 0, 0, (), False, CapabilitySet(DEFAULT_CAPS), False, (), None)
    spec = RuntimeSpec("c1", process, RootSpec("/r", False), "h", (), ("mount",), (), (),
                       cgroup=CgroupSpec("kitebox/c1"), seccomp=profile, seccomp_cache_dir="/var/c1")
    assert RuntimeSpec.from_json(spec.to_json()) == spec
    unconfined = dataclasses.replace(spec, seccomp=None, seccomp_cache_dir=None)
    assert RuntimeSpec.from_json(unconfined.to_json()) == unconfined


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(default_action="kill"), r"seccomp.default_action must be one of"),
    (lambda d: d.update(default_errno=None), r"seccomp.default_errno must be an errno number"),
    (lambda d: d.update(architectures=["vax"]), r"architectures must be a non-empty list"),
    (lambda d: d["rules"][0].update(names=[]), r"rules\[0\].names must be a non-empty list"),
    (lambda d: d["rules"][0].update(errno=5), r"rules\[0\].errno must be null for action allow"),
    (lambda d: d["rules"][1]["args"][0].update(op="like"), r"rules\[1\].args\[0\].op must be one of"),
    (lambda d: d["rules"][1]["args"][0].update(index=6), r"rules\[1\].args\[0\].index must be 0-5"),
    (lambda d: d["rules"][1]["args"][0].update(value=-1), r"value and value_two must be 64-bit unsigned"),
    (lambda d: d.update(rules={}), r"rules must be a list"),
])
def test_malformed_profiles_are_refused(mutate: object, message: str) -> None:
    raw = default_profile(DEFAULT_CAPS, "x86_64").to_dict()
    assert callable(mutate)
    mutate(raw)
    with pytest.raises(InvalidArgument, match=message):
        SeccompProfile.from_dict(raw)


def test_filter_allows_the_ordinary_and_refuses_the_dangerous(default_program: bytes) -> None:
    p = default_program
    assert run_bpf(p, 0) == ALLOW  # read
    assert run_bpf(p, 59) == ALLOW  # execve
    assert run_bpf(p, 101) == ALLOW  # ptrace (kernel >= 4.8)
    for nr in (250, 248, 249, 246, 320, 323, 425, 165, 272, 308, 170, 167, 169, 155):
        # keyctl add_key request_key kexec_load kexec_file_load userfaultfd io_uring_setup mount unshare setns
        # sethostname swapon reboot pivot_root
        assert run_bpf(p, nr) == EPERM, nr


def test_filter_argument_rules(default_program: bytes, admin_program: bytes) -> None:
    p = default_program
    assert run_bpf(p, 56, SIGCHLD) == ALLOW  # clone for fork/threads
    assert run_bpf(p, 56, SIGCHLD | CLONE_NEWUSER) == EPERM
    assert run_bpf(p, 435) == ENOSYS  # clone3: libc falls back to clone
    assert run_bpf(admin_program, 56, SIGCHLD | CLONE_NEWUSER) == ALLOW
    assert run_bpf(admin_program, 435) == ALLOW
    assert run_bpf(admin_program, 165) == ALLOW  # mount
    assert run_bpf(p, 135, 0) == ALLOW and run_bpf(p, 135, 8) == ALLOW  # personality LINUX, LINUX32
    assert run_bpf(p, 135, 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert run_bpf(p, 41, 2) == ALLOW and run_bpf(p, 41, 1) == ALLOW and run_bpf(p, 41, 16) == ALLOW
    assert run_bpf(p, 41, 38) == EPERM and run_bpf(p, 41, 40) == EPERM  # AF_ALG, AF_VSOCK


def test_filter_new_and_unknown_syscalls(default_program: bytes) -> None:
    p = default_program
    for nr in (451, 452, 454, 457, 462, 464):  # cachestat fchmodat2 futex_wake statmount mseal getxattrat
        assert run_bpf(p, nr) == ALLOW, nr
        assert run_bpf(p, nr, arch=I386) == ALLOW, nr
    assert run_bpf(p, 459) == EPERM  # lsm_get_self_attr needs CAP_SYS_ADMIN
    assert run_bpf(p, 470) == ENOSYS and run_bpf(p, 1000) == ENOSYS  # newer than the profile: "not here"
    assert run_bpf(p, 470, arch=I386) == ENOSYS


def test_filter_other_abis(default_program: bytes) -> None:
    p = default_program
    assert run_bpf(p, 3, arch=I386) == ALLOW  # read
    assert run_bpf(p, 102, arch=I386) == ALLOW  # socketcall
    assert run_bpf(p, 288, arch=I386) == EPERM  # keyctl
    assert run_bpf(p, 21, arch=I386) == EPERM  # mount
    assert run_bpf(p, 0 | X32_BIT) == ALLOW  # x32 read
    assert run_bpf(p, 250 | X32_BIT) == EPERM  # x32 keyctl
    assert run_bpf(p, 63, arch=0xC00000B7) == KILL_PROCESS  # an aarch64 syscall on x86_64


def test_program_is_cached_in_the_container_dir(tmp_path: Path) -> None:
    profile = default_profile(DEFAULT_CAPS, "x86_64")
    program = program_for(profile, str(tmp_path))
    [cached] = tmp_path.glob("seccomp-*.bpf")
    assert cached.read_bytes() == program == compile_filter(profile)
    cached.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # ret ALLOW: proves the cache is what is read
    assert program_for(profile, str(tmp_path)) == cached.read_bytes()
    other = default_profile((*DEFAULT_CAPS, "CAP_SYS_ADMIN"), "x86_64")
    program_for(other, str(tmp_path))
    assert len(list(tmp_path.glob("seccomp-*.bpf"))) == 2


def test_program_file_names_the_cached_program_and_recompiles_a_lost_one(tmp_path: Path) -> None:
    profile = default_profile(DEFAULT_CAPS, "x86_64")
    path = program_file(profile, str(tmp_path))
    assert Path(path).parent == tmp_path and read_program(path) == compile_filter(profile)
    assert program_file(profile, str(tmp_path)) == path  # found, not compiled again
    Path(path).unlink()
    assert program_file(profile, str(tmp_path)) == path and Path(path).is_file()
    Path(path).write_bytes(b"\x06\x00\x00")  # not whole instructions: compiled again
    assert read_program(program_file(profile, str(tmp_path))) == compile_filter(profile)
    with pytest.raises(KernelError, match="caching the compiled filter"):
        program_file(profile, str(tmp_path / "missing"))


def test_read_program_refuses_what_is_not_a_program_and_prefers_the_kept_one(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="reading the compiled filter"):
        read_program(str(tmp_path / "none.bpf"))
    empty = tmp_path / "empty.bpf"
    empty.write_bytes(b"")
    with pytest.raises(KernelError, match="not a compiled filter"):
        read_program(str(empty))
    kept = tmp_path / "kept.bpf"
    kept.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")
    keep_program(str(kept))
    kept.unlink()  # a monitor's children use the bytes it kept
    assert read_program(str(kept)) == b"\x06\x00\x00\x00\x00\x00\xff\x7f"


def test_foreign_profile_and_bad_programs_are_refused() -> None:
    with pytest.raises(KernelError, match="aarch64 cannot be loaded on this machine"):
        compile_filter(default_profile(DEFAULT_CAPS, "aarch64"))
    with pytest.raises(KernelError, match="not a valid BPF program"):
        load_filter(b"\x00" * 12)
    with pytest.raises(KernelError, match="not a valid BPF program"):
        load_filter(b"")
