"""``apply_layer``: stream one layer blob into a snapshot directory, exactly and safely.

Contract: ``apply_layer`` is blocking (run it in a thread). It reads the *compressed* blob from ``source``,
decompresses it by media type in a background thread, hashes the uncompressed bytes into the DiffID,
parses the tar headers (``tarheader.parse_basic`` for plain ustar ones, ``tarfile`` for PAX, GNU long names,
sparse maps and anything unusual) and writes every entry
with fd-relative syscalls below ``target``. On any error the target is left half-written: the caller
(the snapshotter) discards it. Errors are ``LayerRejected`` (hostile or corrupt input), ``LimitExceeded``
(bombs), ``DigestMismatch`` (DiffID), or ``from_oserror`` translations (a full disk).

Safety policy (engine-anchors §1; containerd's "clamp inside the root"):

* entry names are cleaned lexically with ``..`` clamped at the root; parent directories are resolved by
  the kernel inside the root (``safepath``), so symlinks are followed but can never lead outside;
* the final component is never followed: a non-directory replaces whatever is there (decided by lstat,
  removed with unlinkat / an fd-based rmtree), a directory merges only with a directory, regular files
  are always unlink-then-create (``O_CREAT|O_EXCL|O_NOFOLLOW``), never truncated in place;
* hardlink targets are cleaned and resolved inside the root too (or in the lower layers, then copied
  up); links to directories or to missing targets are rejected; a link to a symlink links the symlink;
* metadata goes through fds or ``*at(..., AT_SYMLINK_NOFOLLOW)``: chown before chmod (chown clears
  setuid and file capabilities), never chmod a symlink, directory times last and deepest first;
* entries resolving to the root: a directory sets the root's metadata, a symlink is skipped (as
  containerd does: "resolved to root"), anything else is rejected (CVE-2021-29136);
* a missing parent is created (with the lower layer's metadata when it has the directory); a parent that
  exists and is not a directory is rejected (containerd's ENOTDIR choice for anchors case 25).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Literal, cast

from engine.config import Limits
from engine.errors import DigestMismatch, KiteboxError, LayerRejected, LimitExceeded, from_oserror
from engine.unpack.decompress import ByteSource, LayerStream, compression_for
from engine.unpack.safepath import DirCache, NotADirectoryInLayer, RootDir, clean_parts
from engine.unpack.tarheader import parse_basic, tarfile_next
from engine.unpack.xattrs import XattrRefused, layer_xattrs

__all__ = ["ApplyResult", "WhiteoutMode", "apply_layer"]

WhiteoutMode = Literal["overlay", "overlay-user", "delete"]

_WH = ".wh."
_WH_META = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"
_WH_LINKDIR = ".wh..wh.plnk"
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_SUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    diff_id: str
    entries: int
    uncompressed_bytes: int  # the tar stream's
    file_bytes: int  # the sizes of the regular files written: the layer's size, as Docker's layer store counts it


def apply_layer(
    source: ByteSource,
    media_type: str,
    target: Path,
    *,
    layer_digest: str,
    expected_diff_id: str | None,
    whiteouts: WhiteoutMode,
    lower: Sequence[Path] = (),
    limits: Limits,
    use_openat2: bool | None = None,
) -> ApplyResult:
    """Apply the layer read from ``source`` onto ``target`` and return its DiffID and counts.

    ``whiteouts``: ``"overlay"`` turns ``.wh.NAME`` into a 0:0 char device and opaque markers into
    ``trusted.overlay.opaque=y`` (``"overlay-user"``: ``user.overlay.opaque``, for unprivileged overlayfs);
    ``"delete"`` applies them onto a full copy of the parent tree. ``lower``: the parent snapshots,
    topmost first, used for hardlinks to lower files and for implied parent directories.
    ``use_openat2``: None picks openat2 when the kernel has it; False forces the O_NOFOLLOW walk.
    """
    root = open_root(target, layer_digest, use_openat2)
    applier = _Applier(root, layer_digest, whiteouts, lower, limits)
    try:
        with LayerStream(source, compression_for(media_type), layer_digest=layer_digest, limits=limits) as stream:
            applier.run(stream)
            diff_id, size = stream.result()
        applier.finish()
    finally:
        applier.close()
    return checked_result(applier, layer_digest, expected_diff_id, diff_id, size)


def open_root(target: Path, layer_digest: str, use_openat2: bool | None) -> RootDir:
    try:
        return RootDir(target, use_openat2=use_openat2)
    except OSError as err:
        raise from_oserror(err, f"layer {layer_digest}: target {target}") from err


def checked_result(
    applier: _Applier, layer_digest: str, expected_diff_id: str | None, diff_id: str, size: int
) -> ApplyResult:
    """The result, once the DiffID computed over the whole stream is the one the image config names."""
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DigestMismatch(f"layer {layer_digest}: DiffID mismatch: got {diff_id}, expected {expected_diff_id}")
    return ApplyResult(diff_id=diff_id, entries=applier.entries, uncompressed_bytes=size,
                       file_bytes=applier.file_bytes)


def _in_user_namespace() -> bool:
    try:
        return Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _pax_ns(value: str | None, fallback: float) -> int:
    if value is not None:
        try:
            return int(Decimal(value) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    return int(fallback * 1_000_000_000) if isinstance(fallback, float) else int(fallback) * 1_000_000_000


class _Reject(Exception):
    pass


class _Applier:
    """The state of one layer application (see the module docstring for the policy)."""

    def __init__(
        self, root: RootDir, digest: str, mode: WhiteoutMode, lower: Sequence[Path], limits: Limits
    ) -> None:
        self.root = root
        self.digest = digest
        self.mode = mode
        self.limits = limits
        self.entries = 0
        self.file_bytes = 0
        self.lowers = [RootDir(path, use_openat2=root.uses_openat2) for path in lower]
        self.dirs = DirCache(root, self._implied_dir)
        self.can_chown = os.geteuid() == 0
        self.can_mknod = self.can_chown and not _in_user_namespace()
        self.created: set[tuple[str, ...]] = set()  # every path this layer wrote (lexical)
        self.ancestors: set[tuple[str, ...]] = set()  # every parent of such a path
        self.dir_times: list[tuple[tuple[str, ...], int, int]] = []
        self.opaque: list[tuple[str, ...]] = []
        self.aufs_links = False
        self._stale = False

    def close(self) -> None:
        self.dirs.invalidate()
        for lower in self.lowers:
            lower.close()
        self.root.close()

    # -- the tar loop ----------------------------------------------------------------------------------

    def _at_end(self, stream: LayerStream) -> bool:
        block = stream.peek(tarfile.BLOCKSIZE)
        if not block:
            return True
        if len(block) < tarfile.BLOCKSIZE:
            raise LayerRejected(f"layer {self.digest}: truncated tar stream at offset {stream.tell()}")
        return block == _ZERO_BLOCK

    def run(self, stream: LayerStream) -> None:
        """Apply every entry up to the end-of-archive marker.

        Basic headers are read by ``parse_basic``; anything else (and everything once a PAX global header is in
        effect) by ``tarfile``, created at the first such header and repositioned for each later one.
        """
        tar: tarfile.TarFile | None = None
        while not self._at_end(stream):
            offset = stream.tell()
            basic = parse_basic(stream.peek(tarfile.BLOCKSIZE)) if tar is None or not tar.pax_headers else None
            if basic is not None:
                member, data_size = basic
                stream.skip(tarfile.BLOCKSIZE)
                end = offset + tarfile.BLOCKSIZE + data_size
            else:
                tar, member = tarfile_next(cast(IO[bytes], stream), tar, offset, self.digest)
                end = tar.offset
            self._entry(member, stream)
            stream.seek(end)

    def _entry(self, member: tarfile.TarInfo, stream: LayerStream) -> None:
        name = member.name
        self.entries += 1
        if self.entries > self.limits.max_layer_entries:
            raise LimitExceeded(f"layer {self.digest}: more than {self.limits.max_layer_entries} entries")
        longest = max(len(os.fsencode(name)), len(os.fsencode(member.linkname)))
        if longest > self.limits.max_path_bytes:
            raise LimitExceeded(
                f"layer {self.digest}: entry {name[:200]!r}: path longer than {self.limits.max_path_bytes} bytes"
            )
        try:
            self._dispatch(member, clean_parts(name), stream)
        except _Reject as err:
            raise LayerRejected(f"layer {self.digest}: entry {name!r}: {err}") from None
        except NotADirectoryInLayer as err:
            raise LayerRejected(
                f"layer {self.digest}: entry {name!r}: parent {'/'.join(err.parts)!r} is not a directory"
            ) from None
        except XattrRefused as err:
            raise LayerRejected(f"layer {self.digest}: entry {name!r}: {err}") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise LayerRejected(
                    f"layer {self.digest}: entry {name!r}: too many levels of symbolic links"
                ) from None
            raise from_oserror(err, f"layer {self.digest}: entry {name!r}") from err
        finally:
            if self._stale:
                self.dirs.invalidate()
                self._stale = False

    def _dispatch(self, m: tarfile.TarInfo, parts: tuple[str, ...], stream: LayerStream) -> None:
        xattrs = layer_xattrs(m.pax_headers, privileged=self.can_chown) if m.pax_headers else []
        if parts and parts[0].startswith(_WH_META):
            # AUFS metadata: files in /.wh..wh.plnk are hardlink sources (moby keeps them); skip the rest.
            if parts[0] == _WH_LINKDIR and len(parts) == 2 and m.isreg():
                self.aufs_links = True
                self._file(parts, m, stream, xattrs)
            return
        base = parts[-1] if parts else ""
        if base.startswith(_WH):
            if base == _WH_OPAQUE:
                self._opaque(parts[:-1])
            elif not base.startswith(_WH_META):
                hidden = base[len(_WH) :]
                if hidden in ("", ".", ".."):
                    raise _Reject(f"invalid whiteout {base!r}")
                self._whiteout(parts[:-1], hidden, m)
            return
        if not parts:
            if m.isdir():
                self._set_dir_meta(os.dup(self.root.fd), (), m, xattrs)
            elif not m.issym():  # a symlink resolving to the root is skipped, as containerd does
                raise _Reject("not a directory: the layer root can only be a directory")
            return
        if m.isdir():
            self._directory(parts, m, xattrs)
        elif m.isreg():
            self._file(parts, m, stream, xattrs)
        elif m.issym():
            self._symlink(parts, m)
        elif m.islnk():
            self._hardlink(parts, m)
        elif m.ischr() or m.isblk() or m.isfifo():
            if not self._special(parts, m):
                return
        else:
            raise _Reject(f"unsupported tar entry type {m.type!r}")
        self._record(parts)

    def _record(self, parts: tuple[str, ...]) -> None:
        self.created.add(parts)
        for depth in range(len(parts) - 1, 0, -1):
            parent = parts[:depth]
            if parent in self.ancestors:
                break
            self.ancestors.add(parent)

    # -- entry kinds -----------------------------------------------------------------------------------

    def _parent(self, parts: tuple[str, ...]) -> int:
        fd = self.dirs.get(parts[:-1], create=True)
        assert fd is not None  # create=True never returns None
        return fd

    def _remove(self, dir_fd: int, name: str) -> None:
        """Remove whatever ``name`` is, never following it: unlink, or an fd-based rmtree for a directory."""
        self._stale = True
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)

    def _ids(self, m: tarfile.TarInfo) -> tuple[int, int]:
        if not (0 <= m.uid <= _MAX_ID and 0 <= m.gid <= _MAX_ID):
            raise _Reject(f"uid/gid {m.uid}:{m.gid} out of range")
        return m.uid, m.gid

    def _times(self, m: tarfile.TarInfo) -> tuple[int, int]:
        pax = m.pax_headers
        mtime = _pax_ns(pax.get("mtime"), m.mtime)
        return (_pax_ns(pax["atime"], m.mtime) if "atime" in pax else mtime), mtime

    def _set_xattrs(self, fd: int, xattrs: list[tuple[str, bytes]]) -> None:
        for name, value in xattrs:
            try:
                os.setxattr(fd, name, value)
            except OSError as err:
                if err.errno not in _NOT_SUPPORTED:  # a filesystem without user xattrs: nothing to keep them in
                    raise

    def _file(self, parts: tuple[str, ...], m: tarfile.TarInfo, stream: LayerStream,
              xattrs: list[tuple[str, bytes]]) -> None:
        if m.size > self.limits.max_uncompressed_layer_bytes:
            raise _Reject(f"file size {m.size} exceeds the layer size limit")
        uid, gid = self._ids(m)
        parent, name = self._parent(parts), parts[-1]
        try:
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, name)
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
        try:
            sparse = cast("list[tuple[int, int]] | None", m.sparse)
            if sparse is not None:
                for offset, length in sparse:
                    if offset < 0 or length < 0 or offset + length > m.size:
                        raise _Reject("sparse map outside the file")
                    stream.copy_to(fd, length, offset)  # holes stay holes: nothing is written there
                os.ftruncate(fd, m.size)
            else:
                stream.copy_to(fd, m.size)
            self.file_bytes += m.size
            if self.can_chown:
                os.fchown(fd, uid, gid)
            self._set_xattrs(fd, xattrs)  # after chown, which clears security.capability
            os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid/setgid
            os.utime(fd, ns=self._times(m))
        finally:
            os.close(fd)

    def _directory(self, parts: tuple[str, ...], m: tarfile.TarInfo, xattrs: list[tuple[str, bytes]]) -> None:
        parent, name = self._parent(parts), parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                self._remove(parent, name)  # a directory replaces a non-directory; dirs merge
                os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._set_dir_meta(fd, parts, m, xattrs)

    def _set_dir_meta(self, fd: int, parts: tuple[str, ...], m: tarfile.TarInfo,
                      xattrs: list[tuple[str, bytes]]) -> None:
        """Owner, xattrs and mode now; times at the end (children would change them). Takes ``fd``."""
        try:
            uid, gid = self._ids(m)
            if self.can_chown:
                os.fchown(fd, uid, gid)
            self._set_xattrs(fd, xattrs)
            os.fchmod(fd, m.mode & 0o7777)
        except BaseException:
            os.close(fd)
            raise
        atime, mtime = self._times(m)
        self.dir_times.append((parts, atime, mtime))
        if parts:
            self.dirs.put(parts, fd)  # the next entries are most likely its children
        else:
            os.close(fd)

    def _symlink(self, parts: tuple[str, ...], m: tarfile.TarInfo) -> None:
        uid, gid = self._ids(m)
        parent, name = self._parent(parts), parts[-1]
        try:
            os.symlink(m.linkname, name, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, name)
            os.symlink(m.linkname, name, dir_fd=parent)
        if self.can_chown:
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        # No chmod: Linux has no lchmod and chmod would follow the link (CVE-2021-32760).
        os.utime(name, ns=self._times(m), dir_fd=parent, follow_symlinks=False)

    def _special(self, parts: tuple[str, ...], m: tarfile.TarInfo) -> bool:
        """Devices (privileged, outside user namespaces only) and FIFOs. False when skipped."""
        if m.ischr() or m.isblk():
            if not (0 <= m.devmajor <= 2**32 - 1 and 0 <= m.devminor <= 2**32 - 1):
                raise _Reject(f"device number {m.devmajor}:{m.devminor} out of range")
            if not self.can_mknod:
                return False
            kind, device = (stat.S_IFCHR if m.ischr() else stat.S_IFBLK), os.makedev(m.devmajor, m.devminor)
        else:
            kind, device = stat.S_IFIFO, 0
        uid, gid = self._ids(m)
        parent, name = self._parent(parts), parts[-1]
        try:
            os.mknod(name, kind | 0o600, device, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, name)
            os.mknod(name, kind | 0o600, device, dir_fd=parent)
        if self.can_chown:
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        # fchmodat(AT_SYMLINK_NOFOLLOW) works on the node we just made and refuses a symlink.
        os.chmod(name, m.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=self._times(m), dir_fd=parent, follow_symlinks=False)
        return True

    def _hardlink(self, parts: tuple[str, ...], m: tarfile.TarInfo) -> None:
        target = clean_parts(m.linkname)
        if not target:
            raise _Reject("hard link to the root directory")
        source_dir, source = self._link_source(target, m.linkname)
        try:
            st = os.stat(source, dir_fd=source_dir, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise _Reject(f"hard link to directory {m.linkname!r}")
            parent, name = self._parent(parts), parts[-1]
            try:
                os.link(source, name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                    return
                self._remove(parent, name)
                os.link(source, name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_dir)

    def _link_source(self, target: tuple[str, ...], linkname: str) -> tuple[int, str]:
        """An owned fd of the link target's parent and its name, inside the root (copied up if needed)."""
        found = self.root.lookup(target)
        if found is not None:
            return found
        return self._link_source_below(target, linkname)

    def _link_source_below(self, target: tuple[str, ...], linkname: str) -> tuple[int, str]:
        """``_link_source`` for a target this layer does not have: copy it up from a lower layer."""
        for lower in self.lowers:
            below = lower.lookup(target)
            if below is not None:
                try:
                    self._copy_up(below[0], below[1], target)
                finally:
                    os.close(below[0])
                self._record(target)
                found = self.root.lookup(target)
                assert found is not None
                return found
        raise _Reject(f"hard link target {linkname!r} not found in the layer or below")

    def _copy_up(self, lower_dir: int, name: str, target: tuple[str, ...]) -> None:
        """Copy a lower layer's file to the same path in this layer, preserving its metadata."""
        st = os.stat(name, dir_fd=lower_dir, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise _Reject(f"hard link to directory {'/'.join(target)!r}")
        parent, dest = self._parent(target), target[-1]
        if stat.S_ISREG(st.st_mode):
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lower_dir)
            try:
                dst = os.open(dest, _NEW_FILE, 0o600, dir_fd=parent)
                try:
                    remaining = st.st_size
                    while remaining > 0:
                        copied = os.copy_file_range(src, dst, min(remaining, 1 << 30))
                        if copied == 0:
                            break
                        remaining -= copied
                    if self.can_chown:
                        os.fchown(dst, st.st_uid, st.st_gid)
                    for attr in os.listxattr(src):
                        if attr.startswith("user.") or (attr == "security.capability" and self.can_chown):
                            self._set_xattrs(dst, [(attr, os.getxattr(src, attr))])
                    os.fchmod(dst, stat.S_IMODE(st.st_mode))
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            return
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=lower_dir), dest, dir_fd=parent)
        else:
            if not self.can_mknod and not stat.S_ISFIFO(st.st_mode):
                raise _Reject(f"hard link to device {'/'.join(target)!r} needs privileges")
            os.mknod(dest, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=parent)
            os.chmod(dest, stat.S_IMODE(st.st_mode), dir_fd=parent, follow_symlinks=False)
        if self.can_chown:
            os.chown(dest, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _implied_dir(self, parts: tuple[str, ...], fd: int) -> None:
        """Metadata for a parent directory the layer did not list: the lower layer's, else 0755 now."""
        for lower in self.lowers:
            try:
                below = lower.open_dir(parts)
            except OSError:
                continue
            try:
                st = os.fstat(below)
            finally:
                os.close(below)
            if self.can_chown:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            self.dir_times.append((parts, st.st_atime_ns, st.st_mtime_ns))
            return
        os.fchmod(fd, 0o755)

    # -- whiteouts -------------------------------------------------------------------------------------

    def _whiteout(self, parent_parts: tuple[str, ...], hidden: str, m: tarfile.TarInfo) -> None:
        """Hide ``hidden`` from the lower layers; never touches what this layer itself wrote (any order)."""
        if (*parent_parts, hidden) in self.created:
            return
        parent = self.dirs.get(parent_parts, create=self.mode != "delete")
        if parent is None:
            return  # the directory does not exist below: nothing to hide
        before = os.fstat(parent)
        if self.mode == "delete":
            try:
                self._remove(parent, hidden)
            except FileNotFoundError:
                return
        else:
            uid, gid = self._ids(m)
            try:
                os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
            except FileExistsError:
                self._remove(parent, hidden)
                os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
            if self.can_chown:
                os.chown(hidden, uid, gid, dir_fd=parent, follow_symlinks=False)
        os.utime(parent, ns=(before.st_atime_ns, before.st_mtime_ns))  # a whiteout keeps the parent's times

    def _opaque(self, dir_parts: tuple[str, ...]) -> None:
        if self.mode == "delete":
            self.opaque.append(dir_parts)  # at the end: only then is "what this layer created" known
            return
        fd = self.dirs.get(dir_parts, create=True)
        assert fd is not None
        xattr = "trusted.overlay.opaque" if self.mode == "overlay" else "user.overlay.opaque"
        os.setxattr(fd, xattr, b"y")

    def _clear_lower_children(self, fd: int, dir_parts: tuple[str, ...]) -> None:
        for name in os.listdir(fd):
            child = (*dir_parts, name)
            if child in self.created or child in self.ancestors:
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    try:
                        self._clear_lower_children(sub, child)
                    finally:
                        os.close(sub)
            else:
                self._remove(fd, name)

    # -- the end ---------------------------------------------------------------------------------------

    def finish(self, *, dir_times: bool = True) -> None:
        """Opaque directories (delete mode), AUFS scratch, then (with ``dir_times``) directory times."""
        try:
            self.dirs.invalidate()
            for dir_parts in self.opaque:
                try:
                    fd = self.root.open_dir(dir_parts)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    before = os.fstat(fd)
                    self._clear_lower_children(fd, dir_parts)
                    os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
                finally:
                    os.close(fd)
            if self.aufs_links:
                shutil.rmtree(_WH_LINKDIR, dir_fd=self.root.fd)
            if dir_times:
                self.set_dir_times()
        except KiteboxError:
            raise
        except OSError as err:
            raise from_oserror(err, f"layer {self.digest}") from err

    def set_dir_times(self) -> None:
        """Every recorded directory time, deepest first (equal depths: in recording order, last wins)."""
        self.dir_times.sort(key=lambda item: len(item[0]), reverse=True)
        for parts, atime, mtime in self.dir_times:
            self._set_dir_times(parts, atime, mtime)

    def _set_dir_times(self, parts: tuple[str, ...], atime: int, mtime: int) -> None:
        if not parts:
            os.utime(self.root.fd, ns=(atime, mtime))
            return
        try:
            parent = self.root.open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as err:  # replaced or removed by a later entry: nothing to date
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return
            raise
        finally:
            os.close(parent)
        try:
            os.utime(fd, ns=(atime, mtime))
        finally:
            os.close(fd)
