"""Metadata and entry kinds: owners, modes, times, xattrs (case 23), devices (case 24), sparse files, long
names, hardlinks into lower layers and implied parents."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import tarfile

import pytest

from engine.errors import LayerRejected
from tests.unit.unpack.tarbuild import T0, D, F, H, S, Sandbox, layer, node

CAP_NET_RAW_SETUID = struct.pack("<IIIII", 0x02000001, (1 << 13) | (1 << 7), 0, 0, 0)  # has a 0x80 byte


def xattr_pax(name: str, value: bytes) -> dict[str, str]:
    return {f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")}


# -- 23: xattrs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.anything"])
def test_case23_trusted_xattrs_are_refused(sandbox: Sandbox, name: str) -> None:
    with pytest.raises(LayerRejected, match=r"entry 'd': xattr 'trusted\..*': admin attributes from archive"):
        sandbox.apply(D("d", pax=xattr_pax(name, b"y")))


def test_user_xattrs_are_kept_and_others_ignored(sandbox: Sandbox) -> None:
    pax = {**xattr_pax("user.note", b"\xffbinary"), **xattr_pax("security.selinux", b"system_u:object_r:x")}
    sandbox.apply(F("f", b"x", pax=pax), D("d", pax=xattr_pax("user.dir", b"1")))
    assert os.getxattr(sandbox.root / "f", "user.note") == b"\xffbinary"
    assert os.getxattr(sandbox.root / "d", "user.dir") == b"1"
    assert "security.selinux" not in os.listxattr(sandbox.root / "f")


@pytest.mark.root
def test_security_capability_kept_after_chown(sandbox: Sandbox) -> None:
    sandbox.apply(F("ping", b"\x7fELF", 0o755, uid=1000, gid=1000,
                    pax=xattr_pax("security.capability", CAP_NET_RAW_SETUID)))
    assert os.getxattr(sandbox.root / "ping", "security.capability") == CAP_NET_RAW_SETUID
    assert os.stat(sandbox.root / "ping").st_uid == 1000


# -- 24: devices -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("major", "minor"), [(2**32, 0), (0, 2**32), (-1, 0), (0, -5)])
def test_case24_device_numbers_out_of_range(sandbox: Sandbox, major: int, minor: int) -> None:
    data = layer(node("dev/bad", tarfile.CHRTYPE, major, minor), fmt=tarfile.GNU_FORMAT)
    with pytest.raises(LayerRejected, match=r"entry 'dev/bad': device number .* out of range"):
        sandbox.apply(data=data)


@pytest.mark.root
def test_devices_and_fifos_are_created_when_privileged(sandbox: Sandbox) -> None:
    sandbox.apply(D("dev"), node("dev/null", tarfile.CHRTYPE, 1, 3, 0o666), node("dev/loop0", tarfile.BLKTYPE, 7, 0),
                  node("fifo", tarfile.FIFOTYPE, mode=0o640))
    null, loop, fifo = (os.lstat(sandbox.root / p) for p in ("dev/null", "dev/loop0", "fifo"))
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0)
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640


def test_devices_are_skipped_without_privileges(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.unpack.apply._in_user_namespace", lambda: True)
    result = sandbox.apply(node("null", tarfile.CHRTYPE, 1, 3), node("fifo", tarfile.FIFOTYPE))
    assert result.entries == 2
    assert not os.path.lexists(sandbox.root / "null")
    assert stat.S_ISFIFO(os.lstat(sandbox.root / "fifo").st_mode)


# -- owners, modes, times ------------------------------------------------------------------------------------

@pytest.mark.root
def test_setuid_survives_chown(sandbox: Sandbox) -> None:
    sandbox.apply(F("su", b"x", 0o4755, uid=1000, gid=2000), D("shared", 0o3775, uid=5, gid=6),
                  F("sgid", b"x", 0o2711, uid=7, gid=8))
    su, shared, sgid = (os.stat(sandbox.root / p) for p in ("su", "shared", "sgid"))
    assert (stat.S_IMODE(su.st_mode), su.st_uid, su.st_gid) == (0o4755, 1000, 2000)
    assert (stat.S_IMODE(shared.st_mode), shared.st_uid, shared.st_gid) == (0o3775, 5, 6)
    assert (stat.S_IMODE(sgid.st_mode), sgid.st_uid, sgid.st_gid) == (0o2711, 7, 8)


def test_modes_are_exact_despite_umask(sandbox: Sandbox) -> None:
    old = os.umask(0o077)
    try:
        sandbox.apply(D("d", 0o777), F("d/f", b"x", 0o666), D("sticky", 0o1777))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(sandbox.root / "d").st_mode) == 0o777
    assert stat.S_IMODE(os.stat(sandbox.root / "d/f").st_mode) == 0o666
    assert stat.S_IMODE(os.stat(sandbox.root / "sticky").st_mode) == 0o1777


def test_directory_times_are_set_after_children(sandbox: Sandbox) -> None:
    sandbox.apply(D("a", mtime=1_000), D("a/b", mtime=2_000), F("a/b/f", b"x", mtime=3_000), F("a/g", mtime=4_000),
                  S("a/b/l", "f", mtime=5_000))
    assert os.stat(sandbox.root / "a").st_mtime_ns == 1_000 * 10**9
    assert os.stat(sandbox.root / "a/b").st_mtime_ns == 2_000 * 10**9
    assert os.stat(sandbox.root / "a/b/f").st_mtime_ns == 3_000 * 10**9
    assert os.lstat(sandbox.root / "a/b/l").st_mtime_ns == 5_000 * 10**9


def test_pax_times_have_nanosecond_precision(sandbox: Sandbox) -> None:
    pax = {"mtime": "1700000000.123456789", "atime": "1600000000.5"}
    sandbox.apply(F("f", b"x", pax=pax), D("d", pax=pax))
    for rel in ("f", "d"):
        st = os.stat(sandbox.root / rel)
        assert (st.st_mtime_ns, st.st_atime_ns) == (1_700_000_000_123_456_789, 1_600_000_000_500_000_000)


def test_directory_replaced_later_keeps_no_stale_time(sandbox: Sandbox) -> None:
    sandbox.apply(D("x", mtime=1_000), F("x", b"now a file", mtime=2_000))
    assert os.stat(sandbox.root / "x").st_mtime_ns == 2_000 * 10**9


@pytest.mark.root
def test_numeric_ids_only(sandbox: Sandbox) -> None:
    info, data = F("f", b"x", uid=4242, gid=4343)
    info.uname, info.gname = "root", "root"  # names are ignored: never looked up
    sandbox.apply((info, data))
    st = os.stat(sandbox.root / "f")
    assert (st.st_uid, st.st_gid) == (4242, 4343)


# -- names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_names_and_link_names(sandbox: Sandbox, fmt: int) -> None:
    deep = "/".join(["d" * 60] * 5)
    name = f"{deep}/{'f' * 200}"
    data = layer(F(name, b"long"), S(f"{deep}/sym", "t" * 300), H(f"{deep}/{'h' * 150}", name), fmt=fmt)
    sandbox.apply(data=data)
    assert (sandbox.root / name).read_bytes() == b"long"
    assert os.readlink(sandbox.root / deep / "sym") == "t" * 300
    assert sandbox.same_inode(name, f"{deep}/{'h' * 150}")


def test_non_utf8_names_round_trip(sandbox: Sandbox) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    sandbox.apply(data=layer(F(name, b"x"), fmt=tarfile.GNU_FORMAT))
    assert os.listdir(os.fsencode(sandbox.root)) == [b"caf\xe9"]


# -- sparse files ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_files_keep_their_holes(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, fmt: str) -> None:
    src = tmp_path_factory.mktemp("src")  # not in tmp_path: the sandbox watches it
    with open(src / "sparse", "wb") as f:
        f.seek(8 << 20)
        f.write(b"middle")
        f.seek(32 << 20)
        f.write(b"end")
    blob = subprocess.run(["tar", f"--format={fmt}", "--sparse", "-C", str(src), "-cf", "-", "sparse"],
                          check=True, capture_output=True).stdout
    sandbox.apply(data=blob)
    out = sandbox.root / "sparse"
    st = os.stat(out)
    assert st.st_size == (32 << 20) + 3
    assert st.st_blocks * 512 < 1 << 20  # the 32 MiB of holes were not written
    with open(out, "rb") as f:
        f.seek(8 << 20)
        assert f.read(6) == b"middle"
        f.seek(0)
        assert f.read(4096) == bytes(4096)
        f.seek(32 << 20)
        assert f.read() == b"end"


# -- hardlinks to lower layers, implied parents -------------------------------------------------------------

def test_hardlink_to_lower_file_is_copied_up(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    lower = tmp_path_factory.mktemp("lower")
    (lower / "usr/bin").mkdir(parents=True)
    (lower / "usr/bin/x").write_bytes(b"lower binary")
    os.chmod(lower / "usr/bin/x", 0o751)
    os.setxattr(lower / "usr/bin/x", "user.origin", b"lower")
    os.utime(lower / "usr/bin/x", ns=(T0 * 10**9, T0 * 10**9 + 7))
    os.chmod(lower / "usr/bin", 0o750)
    os.utime(lower / "usr/bin", ns=(10**9, 2 * 10**9))
    sandbox.apply(H("usr/bin/y", "/usr/bin/x"), whiteouts="overlay-user", lower=[lower])
    x = os.stat(sandbox.root / "usr/bin/x")
    assert (sandbox.root / "usr/bin/x").read_bytes() == b"lower binary"
    assert (stat.S_IMODE(x.st_mode), x.st_mtime_ns) == (0o751, T0 * 10**9 + 7)
    assert os.getxattr(sandbox.root / "usr/bin/x", "user.origin") == b"lower"
    assert sandbox.same_inode("usr/bin/x", "usr/bin/y")
    parent = os.stat(sandbox.root / "usr/bin")  # implied parent: the lower's metadata
    assert (stat.S_IMODE(parent.st_mode), parent.st_mtime_ns) == (0o750, 2 * 10**9)
    assert os.stat(lower / "usr/bin/x").st_nlink == 1  # the lower layer is untouched


def test_hardlink_prefers_the_topmost_lower(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    top, bottom = tmp_path_factory.mktemp("top"), tmp_path_factory.mktemp("bottom")
    for where, text in ((top, "top"), (bottom, "bottom")):
        (where / "f").write_text(text)
    sandbox.apply(H("g", "f"), whiteouts="overlay-user", lower=[top, bottom])
    assert (sandbox.root / "g").read_text() == "top"


def test_hardlink_to_directory_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(LayerRejected, match=r"entry 'link': hard link to directory 'dir'"):
        sandbox.apply(D("dir"), H("link", "dir"))
