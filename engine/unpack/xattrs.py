"""Which extended attributes a layer may set, and how they are read from PAX headers.

Policy (containerd ``tar_unix.go`` + moby):

* ``user.*`` -- kept (applications store data there);
* ``security.capability`` -- kept: file capabilities are how images ship ``ping`` without setuid. Set only
  when privileged (the kernel refuses it otherwise) and *after* chown, because chown clears it;
* ``trusted.*`` -- refused: "admin attributes from archive not supported". ``trusted.overlay.*`` would let a
  layer forge overlayfs whiteouts/opaque dirs/redirects, so the whole namespace is off limits;
* anything else (``security.selinux``, ``system.posix_acl_*``, ``security.ima``...) -- ignored without
  failing: those are host policy, not image content.

Values arrive as PAX records ``SCHILY.xattr.<name>=<value>``; ``tarfile`` decodes them as UTF-8 with
surrogateescape, so encoding back gives the exact original bytes (capability blobs are binary).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["XattrRefused", "layer_xattrs"]

_PREFIX = "SCHILY.xattr."


class XattrRefused(Exception):
    """The entry carries an xattr no layer may set."""


def layer_xattrs(pax_headers: Mapping[str, str], *, privileged: bool) -> list[tuple[str, bytes]]:
    """The ``(name, value)`` pairs to set on an entry, in header order; raises ``XattrRefused``."""
    result: list[tuple[str, bytes]] = []
    for key, value in pax_headers.items():
        if not key.startswith(_PREFIX):
            continue
        name = key[len(_PREFIX) :]
        if name.startswith("trusted."):
            raise XattrRefused(f"xattr {name!r}: admin attributes from archive not supported")
        if name.startswith("user.") or (name == "security.capability" and privileged):
            result.append((name, value.encode("utf-8", "surrogateescape")))
    return result
