"""Linux capabilities: names, Docker's default set, ``--cap-add``/``--cap-drop`` arithmetic, and applying a
:class:`~engine.runtime.spec.CapabilitySet` to the calling process.

Names are the kernel's (``CAP_CHOWN``); user input may omit the ``CAP_`` prefix and use any case, and ``ALL``
means every capability, as in Docker (``oci/caps/utils.go TweakCapabilities``): with ``--cap-add ALL`` the
drops apply to the full set; with ``--cap-drop ALL`` only the explicit adds remain.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from engine.errors import InvalidArgument
from engine.runtime import syscalls
from engine.runtime.spec import CapabilitySet

__all__ = [
    "ALL_CAPS",
    "DEFAULT_CAPS",
    "apply_capabilities",
    "caps_mask",
    "drop_bounding",
    "last_cap",
    "normalize_cap",
    "tweak_caps",
]

# Index = capability number (include/uapi/linux/capability.h).
ALL_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_NUMBER = {name: index for index, name in enumerate(ALL_CAPS)}

# moby oci/caps/defaults.go, in its order.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def normalize_cap(name: str) -> str:
    """``"net_admin"`` -> ``"CAP_NET_ADMIN"``; ``"all"`` -> ``"ALL"``; unknown -> InvalidArgument."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in _NUMBER:
        raise InvalidArgument(f"unknown capability: {name!r}")
    return full


def tweak_caps(base: Iterable[str], add: Iterable[str], drop: Iterable[str]) -> tuple[str, ...]:
    """Docker's ``TweakCapabilities``: ``base`` plus ``add`` minus ``drop`` (names normalised, ``ALL`` honoured).

    The result is sorted by capability number, so equal sets compare equal.
    """
    adds = [normalize_cap(c) for c in add]
    drops = [normalize_cap(c) for c in drop]
    if "ALL" in adds:
        result = set(ALL_CAPS)
        result -= {c for c in drops if c != "ALL"}
        if "ALL" in drops:
            result = set()
    elif "ALL" in drops:
        result = {c for c in adds if c != "ALL"}
    else:
        result = {normalize_cap(c) for c in base}
        result -= set(drops)
        result |= set(adds)
    return tuple(sorted(result, key=_NUMBER.__getitem__))


def caps_mask(names: Iterable[str]) -> int:
    """The kernel bit mask for ``names``."""
    mask = 0
    for name in names:
        if name not in _NUMBER:
            raise InvalidArgument(f"unknown capability: {name!r}")
        mask |= 1 << _NUMBER[name]
    return mask


def last_cap(proc: Path = Path("/proc/sys/kernel/cap_last_cap")) -> int:
    """The highest capability number this kernel knows (capabilities beyond our table are dropped too)."""
    return int(proc.read_text().strip())


def drop_bounding(keep: CapabilitySet, top: int) -> None:
    """Drop every capability not in ``keep.bounding`` from the bounding set (needs CAP_SETPCAP: do it first)."""
    mask = caps_mask(keep.bounding)
    for number in range(top + 1):
        if not mask & (1 << number):
            syscalls.prctl(PR_CAPBSET_DROP, number)


def apply_capabilities(caps: CapabilitySet) -> None:
    """Set effective/permitted/inheritable and the ambient set of the calling (already setuid'd) process.

    Call :func:`drop_bounding` before changing uid (it needs CAP_SETPCAP) and this after (with
    ``PR_SET_KEEPCAPS`` set, the permitted set survives setuid; this trims it to the spec). The ambient set is
    cleared first, then raised for each name in ``caps.ambient`` (ambient needs the cap in permitted and
    inheritable, as the kernel requires).
    """
    syscalls.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    syscalls.capset(caps_mask(caps.effective), caps_mask(caps.permitted), caps_mask(caps.inheritable))
    for name in caps.ambient:
        syscalls.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, _NUMBER[name])
