"""Seccomp: Docker's default syscall filter as data (a planner), and the one call that loads it (an executor).

The planner, :func:`default_profile`, is Docker's default profile (moby ``profiles/seccomp/default_linux.go``,
summarised in engine-anchors.md §2) resolved for one container the way moby's ``setupSeccomp`` does: a rule
conditioned on capabilities is kept when *all* its ``includes`` capabilities are in the container's bounding set
and *none* of its ``excludes`` are; a rule conditioned on architectures is kept on those machines. The result,
a :class:`SeccompProfile`, is plain data stored in the runtime spec (``to_dict``/``from_dict`` round-trip exactly).
Docker's facts, briefly: anything not allowed fails with EPERM; ~370 syscalls are allowed outright; mount,
unshare, setns, sethostname, bpf, the new mount API... need CAP_SYS_ADMIN; clone with any CLONE_NEW* flag
(mask 0x7E020000) is refused without it and clone3 answers ENOSYS (so libc falls back to clone, whose flags a
filter can see); module, time, nice, boot, pacct, rawio, syslog, ptrace-family, BPF/perfmon calls need their
capability; socket() is refused for AF_ALG, AF_VSOCK and removed families; personality is limited to a few
personas; keyctl/add_key/request_key, kexec_*, userfaultfd and io_uring_* are never allowed.

The executor half: :func:`compile_filter` turns a profile into a classic-BPF program with libseccomp (talked to
through ctypes; the library's ``.so`` must be reachable, so compile *before* pivot_root or setns into a mount
namespace), and :func:`load_filter` loads such a program into the calling thread with
``prctl(PR_SET_SECCOMP)`` -- a bare syscall that works anywhere, after the container's root is in place.
:func:`install` does both. Loading needs no_new_privs or CAP_SYS_ADMIN; libseccomp's own ``seccomp_load`` would
also set no_new_privs, which is why the program is exported and loaded here instead (runc clears that bit too).

Two patches, as runc does (``libcontainer/seccomp/patchbpf``), go in a short stub before libseccomp's program:

* syscalls the profile allows but this libseccomp is too old to name (Debian 12's 2.5.4 knows Linux 6.7's
  calls: statmount, listmount, mseal, the ``*xattrat`` family... are unknown to it) are allowed by their number,
  which is the same on every architecture since number 424 (``_UNIFIED_NUMBERS``);
* syscalls numbered above everything the profile knows answer ENOSYS, not EPERM, so programs built for a newer
  kernel fall back to older calls instead of failing.

Architectures: x86_64 filters its native ABI plus the i386 and x32 ABIs (Docker's archMap); a syscall made
through any other ABI kills the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import functools
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from engine.errors import InvalidArgument, KernelError
from engine.runtime import syscalls
from engine.tmpnames import temporary_sibling

__all__ = [
    "ARCHITECTURES",
    "ArgCondition",
    "SeccompProfile",
    "SyscallRule",
    "compile_filter",
    "default_profile",
    "install",
    "keep_program",
    "load_filter",
    "preload",
    "program_file",
    "program_for",
    "read_program",
]

# machine (os.uname().machine) -> libseccomp architecture names: the native ABI first, then the ABIs the same
# kernel also runs (moby's archMap). Only these machines have a profile.
ARCHITECTURES: Final[Mapping[str, tuple[str, ...]]] = {
    "x86_64": ("x86_64", "x86", "x32"),
    "aarch64": ("aarch64", "arm"),
    "s390x": ("s390x", "s390"),
    "ppc64le": ("ppc64le",),
    "riscv64": ("riscv64",),
}
ACTIONS: Final = ("allow", "errno")
OPERATORS: Final = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}
CLONE_NAMESPACE_FLAGS: Final = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}

# --- Docker's profile ------------------------------------------------------------------------------------------

def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ALLOWED: Final = _words(
    "accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32 clock_adjtime "
    "clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep "
    "clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create "
    "epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 "
    "execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir "
    "fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork "
    "fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex "
    "futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 "
    "getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid "
    "getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit "
    "get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 "
    "getxattr getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy "
    "io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill "
    "landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen "
    "listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise "
    "map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 "
    "mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 "
    "mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall "
    "munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open "
    "pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 "
    "preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead "
    "readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr "
    "removexattrat rename renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending "
    "rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 "
    "rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max "
    "sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 "
    "sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget "
    "semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 "
    "setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 "
    "setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt "
    "set_thread_area set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown "
    "sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs "
    "statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create "
    "timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create "
    "timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 "
    "ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice "
    "wait4 waitid waitpid write writev "
    # Docker allows these on kernels >= 4.8 (where ptrace can no longer bypass seccomp); Kitebox needs >= 5.6
    # (openat2), so the condition always holds.
    "process_vm_readv process_vm_writev ptrace"
)

# socket(2) domains Docker allows (AF_* numbers); AF_DECnet 12, AF_ECONET 19, AF_ATMSVC 20, AF_IRDA 23,
# AF_WANPIPE 25, AF_ISDN 34, AF_CAIF 37 are gone from the kernel; AF_ALG 38 (kernel crypto API) and AF_VSOCK 40
# (host/guest sockets, not namespaced) are blocked on purpose.
_SOCKET_DOMAINS: Final = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 21, 22, 24, 26, 27, 28, 29,
                          30, 31, 32, 33, 35, 36, 39, 41, 42, 43, 44, 45)
_PERSONALITIES: Final = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)  # LINUX, UNAME26, PER_LINUX32 (+UNAME26), query


@dataclass(frozen=True)
class _Conditional:
    """A rule of the profile with its moby ``includes``/``excludes`` conditions."""

    names: tuple[str, ...]
    caps: tuple[str, ...] = ()  # every one must be in the bounding set
    unless_caps: tuple[str, ...] = ()  # dropped when any of these is in the bounding set
    machines: tuple[str, ...] = ()  # only on these machines
    args: tuple[ArgCondition, ...] = ()
    action: str = "allow"
    errno: int | None = None


def _rules() -> tuple[_Conditional, ...]:
    masked = (ArgCondition(0, "masked_eq", CLONE_NAMESPACE_FLAGS, 0),)
    return (
        *(_Conditional(("personality",), args=(ArgCondition(0, "eq", value),)) for value in _PERSONALITIES),
        _Conditional(("sync_file_range2", "swapcontext"), machines=("ppc64le",)),
        _Conditional(("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
                      "set_tls"), machines=("aarch64",)),
        _Conditional(("arch_prctl", "modify_ldt"), machines=("x86_64",)),
        _Conditional(("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"), machines=("s390x",)),
        _Conditional(("riscv_flush_icache",), machines=("riscv64",)),
        _Conditional(("open_by_handle_at",), caps=("CAP_DAC_READ_SEARCH",)),
        _Conditional(("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                      "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
                      "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
                      "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare"),
                     caps=("CAP_SYS_ADMIN",)),
        # Without CAP_SYS_ADMIN: clone without namespace flags (s390 passes the flags second), clone3 ENOSYS.
        _Conditional(("clone",), unless_caps=("CAP_SYS_ADMIN",), args=masked,
                     machines=tuple(m for m in ARCHITECTURES if m != "s390x")),
        _Conditional(("clone",), unless_caps=("CAP_SYS_ADMIN",), machines=("s390x",),
                     args=(ArgCondition(1, "masked_eq", CLONE_NAMESPACE_FLAGS, 0),)),
        _Conditional(("clone3",), unless_caps=("CAP_SYS_ADMIN",), action="errno", errno=_errno.ENOSYS),
        _Conditional(("reboot",), caps=("CAP_SYS_BOOT",)),
        _Conditional(("chroot",), caps=("CAP_SYS_CHROOT",)),
        _Conditional(("delete_module", "init_module", "finit_module"), caps=("CAP_SYS_MODULE",)),
        _Conditional(("acct",), caps=("CAP_SYS_PACCT",)),
        _Conditional(("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"),
                     caps=("CAP_SYS_PTRACE",)),
        _Conditional(("iopl", "ioperm"), caps=("CAP_SYS_RAWIO",)),
        _Conditional(("settimeofday", "stime", "clock_settime", "clock_settime64"), caps=("CAP_SYS_TIME",)),
        _Conditional(("vhangup",), caps=("CAP_SYS_TTY_CONFIG",)),
        _Conditional(("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"), caps=("CAP_SYS_NICE",)),
        _Conditional(("syslog",), caps=("CAP_SYSLOG",)),
        _Conditional(("bpf",), caps=("CAP_BPF",)),
        _Conditional(("perf_event_open",), caps=("CAP_PERFMON",)),
    )


def _socket_rules() -> list[SyscallRule]:
    """moby's socket rules: one ``domain < N`` for the unbroken run from AF_UNIX, one ``==`` per other domain."""
    run_end = 0
    while run_end + 1 < len(_SOCKET_DOMAINS) and _SOCKET_DOMAINS[run_end + 1] == _SOCKET_DOMAINS[run_end] + 1:
        run_end += 1
    rules = [SyscallRule(("socket",), "allow", None, (ArgCondition(0, "lt", _SOCKET_DOMAINS[run_end] + 1),))]
    rules += [SyscallRule(("socket",), "allow", None, (ArgCondition(0, "eq", domain),))
              for domain in _SOCKET_DOMAINS[run_end + 1:]]
    return rules


# --- the data ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArgCondition:
    """Syscall argument ``index`` (0-5) compared with ``value`` by ``op`` (see OPERATORS); for ``masked_eq``,
    ``(arg & value) == value_two``."""

    index: int
    op: str
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class SyscallRule:
    """``action`` (``allow`` or ``errno`` with ``errno``) for the syscalls ``names`` when every arg condition
    holds. Several rules for one syscall are alternatives (any match applies)."""

    names: tuple[str, ...]
    action: str
    errno: int | None = None
    args: tuple[ArgCondition, ...] = ()


@dataclass(frozen=True)
class SeccompProfile:
    """A resolved filter: ``rules``, else ``default_action`` (``errno`` with ``default_errno``), for the ABIs in
    ``architectures`` (libseccomp names, native first); any other ABI kills the process."""

    default_action: str
    default_errno: int | None
    architectures: tuple[str, ...]
    rules: tuple[SyscallRule, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "default_action": self.default_action, "default_errno": self.default_errno,
            "architectures": list(self.architectures),
            "rules": [{"names": list(r.names), "action": r.action, "errno": r.errno,
                       "args": [{"index": a.index, "op": a.op, "value": a.value, "value_two": a.value_two}
                                for a in r.args]} for r in self.rules],
        }

    @classmethod
    def from_dict(cls, raw: object) -> SeccompProfile:
        """Parse what :meth:`to_dict` wrote; InvalidArgument naming the bad field otherwise."""
        top = _obj(raw, "seccomp")
        default_action, default_errno = _action(top, "default_action", "default_errno", "seccomp")
        arches = top.get("architectures")
        known = {name for names in ARCHITECTURES.values() for name in names}
        if not isinstance(arches, list) or not arches or not all(a in known for a in arches):
            raise InvalidArgument(f"seccomp profile: architectures must be a non-empty list of {sorted(known)}")
        rules_raw = top.get("rules")
        if not isinstance(rules_raw, list):
            raise InvalidArgument("seccomp profile: rules must be a list")
        rules = []
        for i, item in enumerate(rules_raw):
            where = f"seccomp.rules[{i}]"
            rule = _obj(item, where)
            names = rule.get("names")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise InvalidArgument(f"seccomp profile: {where}.names must be a non-empty list of syscall names")
            action, err = _action(rule, "action", "errno", where)
            args_raw = rule.get("args")
            if not isinstance(args_raw, list) or len(args_raw) > 6:
                raise InvalidArgument(f"seccomp profile: {where}.args must be a list of at most 6 conditions")
            rules.append(SyscallRule(tuple(names), action, err, tuple(_arg(a, f"{where}.args[{j}]")
                                                                      for j, a in enumerate(args_raw))))
        return cls(default_action, default_errno, tuple(arches), tuple(rules))


def _obj(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"seccomp profile: {where} must be an object")
    return raw


def _uint(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _action(raw: dict[str, Any], key: str, errno_key: str, where: str) -> tuple[str, int | None]:
    action, err = raw.get(key), raw.get(errno_key)
    if action not in ACTIONS:
        raise InvalidArgument(f"seccomp profile: {where}.{key} must be one of {list(ACTIONS)}")
    if action == "errno" and not (_uint(err, 4096) and err):
        raise InvalidArgument(f"seccomp profile: {where}.{errno_key} must be an errno number (1-4095)")
    if action == "allow" and err is not None:
        raise InvalidArgument(f"seccomp profile: {where}.{errno_key} must be null for action allow")
    return str(action), err


def _arg(raw: object, where: str) -> ArgCondition:
    arg = _obj(raw, where)
    if not _uint(arg.get("index"), 6):
        raise InvalidArgument(f"seccomp profile: {where}.index must be 0-5")
    if arg.get("op") not in OPERATORS:
        raise InvalidArgument(f"seccomp profile: {where}.op must be one of {sorted(OPERATORS)}")
    if not (_uint(arg.get("value"), 2**64) and _uint(arg.get("value_two"), 2**64)):
        raise InvalidArgument(f"seccomp profile: {where}.value and value_two must be 64-bit unsigned integers")
    return ArgCondition(arg["index"], arg["op"], arg["value"], arg["value_two"])


def default_profile(capabilities: Iterable[str], arch: str) -> SeccompProfile:
    """Docker's default profile for a container whose bounding set is ``capabilities`` (``CAP_*`` names), on the
    machine ``arch`` (``os.uname().machine``). InvalidArgument for a machine without a profile.

    Built once per capability set and machine in a process (the profile is immutable): ~0.2 ms of every create."""
    return _default_profile(frozenset(capabilities), arch)


@functools.lru_cache(maxsize=32)
def _default_profile(caps: frozenset[str], arch: str) -> SeccompProfile:
    if arch not in ARCHITECTURES:
        raise InvalidArgument(f"seccomp: no default profile for architecture {arch!r}")
    rules = [SyscallRule(_ALLOWED, "allow"), *_socket_rules()]
    for rule in _rules():
        if rule.machines and arch not in rule.machines:
            continue
        if not all(c in caps for c in rule.caps) or any(c in caps for c in rule.unless_caps):
            continue
        rules.append(SyscallRule(rule.names, rule.action, rule.errno, rule.args))
    return SeccompProfile("errno", _errno.EPERM, ARCHITECTURES[arch], tuple(rules))


# --- compiling with libseccomp -----------------------------------------------------------------------------------

_ACT_ALLOW: Final = 0x7FFF0000
_ACT_ERRNO: Final = 0x00050000
_ACT_KILL_PROCESS: Final = 0x80000000
_ATTR_ACT_BADARCH: Final = 2
# libseccomp 2.5+: lay the syscall checks out as a binary tree instead of a list. The same filter, but a
# container's syscalls go through ~log2(n) comparisons instead of up to n, and the kernel loads (checks, JITs) the
# program in about half the time: 0.76 against 1.4 ms here for Docker's profile, on every container start and exec.
_ATTR_CTL_OPTIMIZE: Final = 8
_OPTIMIZE_BINARY_TREE: Final = 2
_NR_SCMP_ERROR: Final = -1
_X32_SYSCALL_BIT: Final = 0x40000000
_BPF_MAXINSNS: Final = 4096
# The syscalls numbered 424 and up carry the same number on every architecture (x32: plus _X32_SYSCALL_BIT);
# those libseccomp 2.5.4 cannot name, by number. (Kernel tables, syscall_64.tbl / asm-generic unistd.h.)
_UNIFIED_NUMBERS: Final = {
    "cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454, "futex_wait": 455,
    "futex_requeue": 456, "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
    "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
    "removexattrat": 466,
}
_ARCH_NUMBERS: Final = {"x86_64": {"uretprobe": 335}, "riscv64": {"riscv_hwprobe": 258}}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    """libseccomp, loaded once (KernelError when it is not installed)."""
    global _lib
    if _lib is None:
        # By soname first: the dynamic loader's cache finds it without find_library's ``ldconfig -p`` (a fork
        # and exec, ~5 ms on every container start and exec).
        path = "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            path = ctypes.util.find_library("seccomp") or path
            try:
                lib = ctypes.CDLL(path)
            except OSError as err:
                raise KernelError(f"seccomp: cannot load libseccomp ({path}): {err}") from err
        lib.seccomp_init.argtypes, lib.seccomp_init.restype = [ctypes.c_uint32], ctypes.c_void_p
        lib.seccomp_release.argtypes, lib.seccomp_release.restype = [ctypes.c_void_p], None
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.argtypes, lib.seccomp_arch_resolve_name.restype = [ctypes.c_char_p], \
            ctypes.c_uint32
        lib.seccomp_arch_native.argtypes, lib.seccomp_arch_native.restype = [], ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        for fn in ("seccomp_attr_set", "seccomp_arch_add", "seccomp_syscall_resolve_name",
                   "seccomp_syscall_resolve_name_arch", "seccomp_rule_add_array", "seccomp_export_bpf"):
            getattr(lib, fn).restype = ctypes.c_int
        _lib = lib
    return _lib


def _act(action: str, err: int | None) -> int:
    return _ACT_ALLOW if action == "allow" else _ACT_ERRNO | ((err or 0) & 0xFFFF)


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise KernelError(f"seccomp: {what}: {os.strerror(-rc)}")


def compile_filter(profile: SeccompProfile) -> bytes:
    """The profile as a classic-BPF program (``struct sock_filter`` array, native byte order) for this machine.

    Rules naming syscalls unknown to this libseccomp are skipped, except those in the by-number stub (see the
    module docstring). KernelError if libseccomp is missing, the profile's native ABI is not this machine's, or
    libseccomp refuses a rule.
    """
    lib = _libseccomp()
    tokens = [lib.seccomp_arch_resolve_name(name.encode()) for name in profile.architectures]
    if not all(tokens):
        raise KernelError(f"seccomp: libseccomp does not know the architectures {list(profile.architectures)}")
    if tokens[0] != lib.seccomp_arch_native():
        raise KernelError(f"seccomp: a profile for {profile.architectures[0]} cannot be loaded on this machine")
    ctx = lib.seccomp_init(_act(profile.default_action, profile.default_errno))
    if not ctx:
        raise KernelError("seccomp: seccomp_init failed")
    unknown: dict[str, int] = {}  # name -> action, for the stub
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS), "setting the bad-arch action")
        lib.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)  # older libseccomp: the plain list
        for token, name in zip(tokens[1:], profile.architectures[1:], strict=True):
            _check(lib.seccomp_arch_add(ctx, token), f"adding architecture {name}")
        default = _act(profile.default_action, profile.default_errno)
        for rule in profile.rules:
            action = _act(rule.action, rule.errno)
            if action == default:
                continue  # libseccomp refuses a rule that repeats the default; it changes nothing anyway
            args = (_ArgCmp * max(1, len(rule.args)))(*(_ArgCmp(a.index, OPERATORS[a.op], a.value, a.value_two)
                                                        for a in rule.args))
            for name in rule.names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_SCMP_ERROR:
                    if not rule.args:
                        unknown.setdefault(name, action)
                    continue
                _check(lib.seccomp_rule_add_array(ctx, action, nr, len(rule.args), args), f"rule for {name}")
        program = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    return _stub(lib, profile, tokens, unknown) + program


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("kitebox-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "exporting the filter")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# Classic BPF opcodes (linux/filter.h) and struct seccomp_data offsets.
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGT_K: Final = 0x25
_JSET_K: Final = 0x45
_JA: Final = 0x05
_RET_K: Final = 0x06
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_AUDIT_ARCH_X86_64: Final = 0xC000003E


def _stub(lib: ctypes.CDLL, profile: SeccompProfile, tokens: list[int], unknown: dict[str, int]) -> bytes:
    """Per architecture: allow by number what libseccomp could not name, ENOSYS above every known number, then
    fall through to libseccomp's program. (x32 shares x86_64's audit arch; its numbers carry _X32_SYSCALL_BIT
    and are left to libseccomp.)"""
    names = {name for rule in profile.rules for name in rule.names} | set(_UNIFIED_NUMBERS)
    code: list[tuple[int, str | int, str | int, str | int]] = []  # (op, jt, jf, k); str = label
    labels: dict[str, int] = {}
    returns: dict[int, str] = {_ACT_ERRNO | _errno.ENOSYS: "ret_enosys"}
    sections = [(t, a) for t, a in zip(tokens, profile.architectures, strict=True) if a != "x32"]
    for index, (token, arch) in enumerate(sections):
        numbers = {**_UNIFIED_NUMBERS, **_ARCH_NUMBERS.get(arch, {})}
        known = [lib.seccomp_syscall_resolve_name_arch(token, n.encode()) for n in sorted(names)]
        top = max([*(n for n in known if n >= 0), *numbers.values()])
        nxt = f"arch{index + 1}" if index + 1 < len(sections) else "end"
        labels[f"arch{index}"] = len(code)
        code += [(_LD_W_ABS, 0, 0, _OFF_ARCH), (_JEQ_K, 0, nxt, token), (_LD_W_ABS, 0, 0, _OFF_NR)]
        if token == _AUDIT_ARCH_X86_64:
            code.append((_JSET_K, "end", 0, _X32_SYSCALL_BIT))
        for name, action in sorted(unknown.items()):
            if name in numbers:
                label = returns.setdefault(action, f"ret{len(returns)}")
                code.append((_JEQ_K, label, 0, numbers[name]))
        code += [(_JGT_K, "ret_enosys", 0, top), (_JA, 0, 0, "end")]
    for action, label in returns.items():
        labels[label] = len(code)
        code.append((_RET_K, 0, 0, action))
    labels["end"] = len(code)
    out = bytearray()
    for pc, (op, jt, jf, k) in enumerate(code):
        if isinstance(k, str):  # only JA jumps by k
            k = labels[k] - pc - 1
        jt_off = labels[jt] - pc - 1 if isinstance(jt, str) else jt
        jf_off = labels[jf] - pc - 1 if isinstance(jf, str) else jf
        if not (0 <= jt_off <= 255 and 0 <= jf_off <= 255):
            raise KernelError("seccomp: filter stub too long")
        out += struct.pack("=HBBI", op, jt_off, jf_off, k)
    return bytes(out)


def load_filter(program: bytes) -> None:
    """Load a program from :func:`compile_filter` into the calling thread (irrevocable; inherited by children
    and kept across execve). Needs no_new_privs or CAP_SYS_ADMIN. KernelError on failure."""
    count, rest = divmod(len(program), 8)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise KernelError(f"seccomp: a filter of {len(program)} bytes is not a valid BPF program")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.addressof(buf))
    try:
        syscalls.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    except OSError as err:
        raise KernelError(f"seccomp: loading the filter: {os.strerror(err.errno or 0)}") from err


_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2


def install(profile: SeccompProfile, cache_dir: str | None = None) -> None:
    """Compile ``profile`` (or take it from the cache) and load it into the calling thread (see
    :func:`program_for`, :func:`load_filter`)."""
    load_filter(program_for(profile, cache_dir))


def program_for(profile: SeccompProfile, cache_dir: str | None) -> bytes:
    """:func:`compile_filter`'s program for ``profile``, through the cache in ``cache_dir`` (see
    :func:`program_file`); without ``cache_dir``, or when the cache cannot be written, just compiled."""
    if cache_dir is not None:
        with contextlib.suppress(KernelError):
            return read_program(program_file(profile, cache_dir))
    return compile_filter(profile)


def program_file(profile: SeccompProfile, cache_dir: str) -> str:
    """The file holding ``profile``'s compiled program: ``cache_dir/seccomp-<key>.bpf``, compiled and written
    first when it is not there (KernelError when that fails).

    Compiling Docker's profile for three ABIs takes libseccomp ~17 ms, a fifth of a container start; the
    cache directory (shared by the containers of a state root) keeps the result, and a container's runtime spec
    names the file, so starting it, restarting it and exec'ing in it only read 8 KiB -- the profile itself is
    neither parsed nor hashed on that path. The key hashes the profile, the libseccomp build and the compile
    options, so a changed profile or library never meets a stale program.
    """
    path = os.path.join(cache_dir, _program_name(profile))
    with contextlib.suppress(KernelError):
        read_program(path)
        return path
    program = compile_filter(profile)
    tmp = str(temporary_sibling(Path(path)))
    try:
        with open(tmp, "wb") as out:
            out.write(program)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KernelError(f"seccomp: caching the compiled filter in {cache_dir}: {err.strerror}") from err
    return path


@functools.lru_cache(maxsize=32)
def _program_name(profile: SeccompProfile) -> str:
    """The cache file name of ``profile``'s program; worked out once per profile in a process (dumping and hashing
    Docker's profile takes ~0.15 ms, and the default profile is one shared object, see default_profile)."""
    identity = json.dumps([profile.to_dict(), _libseccomp_identity(), os.uname().machine], sort_keys=True)
    return f"seccomp-{hashlib.sha256(identity.encode()).hexdigest()[:32]}.bpf"


def read_program(path: str) -> bytes:
    """The compiled program in ``path`` (the one :func:`keep_program` kept, if it is that file); KernelError when
    it is missing, unreadable or not a whole number of BPF instructions."""
    if _kept is not None and _kept[0] == path:
        return _kept[1]
    try:
        with open(path, "rb") as cached:
            program = cached.read()
    except OSError as err:
        raise KernelError(f"seccomp: reading the compiled filter {path}: {err.strerror}") from err
    if not program or len(program) % 8:
        raise KernelError(f"seccomp: {path} is not a compiled filter")
    return program


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_kept: tuple[str, bytes] | None = None


def keep_program(path: str) -> None:
    """Read the program file ``path`` now and keep it: a monitor does this once, and the container's init and
    every exec'd process it forks inherit the bytes instead of reading the file (KernelError when unreadable)."""
    global _kept
    _kept = None
    _kept = (path, read_program(path))


def preload() -> None:
    """Load libseccomp now and learn its version (KernelError when it is not installed), so forked children find
    both done: the warm processes that fork monitors and CLI commands call this."""
    _libseccomp_identity()


_identity: str | None = None


def _libseccomp_identity() -> str:
    global _identity
    if _identity is None:
        lib = _libseccomp()
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        version = lib.seccomp_version().contents
        # The compile options are part of what a cached program was made with.
        _identity = f"libseccomp {version.major}.{version.minor}.{version.micro} optimize={_OPTIMIZE_BINARY_TREE}"
    return _identity
