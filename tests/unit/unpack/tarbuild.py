"""Building test layers: tar entries in a few words, and the hostile-layer sandbox.

``Sandbox`` is the anchors' ``testBreakout`` harness: the destination root sits next to a ``victim/``
directory and a ``dest-evil/`` sibling; a snapshot of everything outside the root (contents, modes, owners,
inode numbers, link counts, times) and of a few host paths is taken before the layer is applied and must be
identical afterwards, whatever the outcome.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import Limits
from engine.unpack import ApplyResult, WhiteoutMode, apply_layer

T0 = 1_700_000_000
PLAIN = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DIGEST = "sha256:" + "ab" * 32

Entry = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, *, mode: int, uid: int, gid: int, mtime: float,
          pax: dict[str, str] | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    if pax:
        info.pax_headers = dict(pax)
    return info


def F(name: str, data: bytes = b"", mode: int = 0o644, *, uid: int = 0, gid: int = 0, mtime: float = T0,
      pax: dict[str, str] | None = None) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, pax=pax)
    info.size = len(data)
    return info, data


def D(name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0, mtime: float = T0,
      pax: dict[str, str] | None = None) -> Entry:
    return _info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, pax=pax), None


def S(name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: float = T0) -> Entry:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid, mtime=mtime, pax=None)
    info.linkname = target
    return info, None


def H(name: str, target: str) -> Entry:
    info = _info(name, tarfile.LNKTYPE, mode=0o644, uid=0, gid=0, mtime=T0, pax=None)
    info.linkname = target
    return info, None


def node(name: str, kind: bytes, major: int = 0, minor: int = 0, mode: int = 0o644) -> Entry:
    info = _info(name, kind, mode=mode, uid=0, gid=0, mtime=T0, pax=None)
    info.devmajor, info.devminor = major, minor
    return info, None


def layer(*entries: Entry, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def diff_id(tar: bytes) -> str:
    return "sha256:" + hashlib.sha256(tar).hexdigest()


HOST_PATHS = ("/etc/passwd", "/etc/unbroken", "/etc/whitedout", "/etc/localpasswd", "/etc/emptied", "/tmp/b",
              "/victim", "/target", "/run/existing", "/pwned", "/dummy", "/breakouts")


def _describe(path: Path) -> tuple[object, ...] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    extra: object = None
    if stat.S_ISREG(st.st_mode):
        extra = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        extra = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        extra = tuple(sorted(os.listdir(path)))
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, st.st_nlink, extra)


@dataclass
class Sandbox:
    """``base/{dest (the root), victim/hello, dest-evil/secret}``; everything but ``dest/**`` is watched."""

    base: Path
    use_openat2: bool
    root: Path = field(init=False)
    victim: Path = field(init=False)
    _before: dict[str, object] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.base / "dest"
        self.victim = self.base / "victim"
        self.root.mkdir(parents=True)
        self.victim.mkdir()
        (self.victim / "hello").write_text("hello")
        (self.victim / "sub").mkdir()
        (self.base / "dest-evil").mkdir()
        (self.base / "dest-evil" / "secret").write_text("secret")
        (self.base / "host-file").write_text("host")
        os.chmod(self.base / "host-file", 0o400)
        self.snapshot()

    def outside(self) -> dict[str, object]:
        seen: dict[str, object] = {"<base>": _describe(self.base), "<parent>": _describe(self.base.parent)}
        for dirpath, dirnames, filenames in os.walk(self.base):
            here = Path(dirpath)
            if here == self.base:
                dirnames.remove("dest")
            for name in dirnames + filenames:
                seen[str(here / name)] = _describe(here / name)
        for host in HOST_PATHS:
            seen[host] = _describe(Path(host))
        seen["<dest itself: inode>"] = os.lstat(self.root).st_ino
        return seen

    def snapshot(self) -> None:
        self._before = self.outside()

    def assert_untouched(self) -> None:
        after = self.outside()
        changed = {key for key in set(self._before) | set(after) if self._before.get(key) != after.get(key)}
        assert not changed, f"changed outside the root: {sorted(changed)}"

    def apply(self, *entries: Entry, data: bytes | None = None, media: str = PLAIN,
              whiteouts: WhiteoutMode = "delete", lower: Sequence[Path] = (), limits: Limits | None = None,
              expected_diff_id: str | None = None) -> ApplyResult:
        blob = data if data is not None else layer(*entries)
        return apply_layer(
            io.BytesIO(blob), media, self.root, layer_digest=DIGEST, expected_diff_id=expected_diff_id,
            whiteouts=whiteouts, lower=lower, limits=limits or Limits(), use_openat2=self.use_openat2,
        )

    def same_inode(self, a: str, b: str) -> bool:
        sa, sb = os.lstat(self.root / a), os.lstat(self.root / b)
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
