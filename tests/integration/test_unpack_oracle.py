"""Correctness oracle: Kitebox's root filesystem for an image equals what Debian's ``umoci unpack`` makes of it.

The image has deletions (whiteouts), an opaque directory, hard links (within a layer and to a lower layer's
file), symlinks, setuid/setgid/sticky modes, owners other than root, a file capability and a large file.
Both trees are compared entry by entry: path, type, mode, owner, size, content hash, link target and the
``security.capability`` xattr. Inode identity is not compared: umoci builds one flat tree, while an overlay
keeps each layer in its own directory, so a hard link made in a later layer to a lower layer's file is a
copy-up there (as with Docker's overlay2); contents stay identical, which is what is checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from engine import Engine, load_config
from tests.support.images import (
    build_image,
    directory,
    file,
    hardlink,
    make_layer,
    opaque_whiteout,
    push_image,
    symlink,
    whiteout,
)
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.root, pytest.mark.registry, pytest.mark.slow]

# A file capability (cap_net_bind_service+ep), as `setcap` writes it: VFS_CAP_REVISION_2.
CAPABILITY = bytes.fromhex("01000002" "00040000" "00000000" "00000000" "00000000")


def layers() -> list[bytes]:
    big = os.urandom(8 * 1024 * 1024)
    base = make_layer([
        directory("etc"), file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        directory("usr", mode=0o755), directory("usr/bin"), file("usr/bin/tool", b"\x7fELF tool", mode=0o4755),
        file("usr/bin/sgid", b"g", mode=0o2711, uid=0, gid=50),
        file("usr/bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAPABILITY}),
        directory("tmp", mode=0o1777), directory("home"), directory("home/app", mode=0o750, uid=1000, gid=1000),
        file("home/app/notes", "mine\n", mode=0o600, uid=1000, gid=1000),
        directory("opaque"), file("opaque/old1", "1"), file("opaque/old2", "2"), directory("opaque/sub"),
        file("opaque/sub/deep", "d"),
        file("gone", "bye"), directory("gonedir"), file("gonedir/x", "x"),
        file("lib-original", "shared content\n"), hardlink("lib-link-same-layer", "lib-original"),
        symlink("lib", "usr/lib"), symlink("absolute", "/etc/passwd"), symlink("dangling", "nowhere"),
        file("big.bin", big),
    ])
    middle = make_layer([
        whiteout("gone"), whiteout("gonedir"), opaque_whiteout("opaque"), directory("opaque"),
        file("opaque/new", "new"),
        hardlink("lower-link", "lib-original"),
        file("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
        file("replaced-by-dir", "file first"),
        file("usr/bin/tool", b"\x7fELF tool v2", mode=0o4750, uid=0, gid=0),
    ])
    top = make_layer([
        whiteout("replaced-by-dir"), directory("replaced-by-dir", mode=0o700, uid=7, gid=8),
        file("replaced-by-dir/inside", "now a dir"), symlink("opaque/link", "../etc"),
        file("home/app/.profile", "export X=1\n", uid=1000, gid=1000),
    ])
    return [base, middle, top]


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    tree: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            digest = ""
            target = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
            try:
                cap = os.getxattr(path, "security.capability", follow_symlinks=False).hex()
            except OSError:
                cap = ""
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            tree[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, digest, target, cap)
    return tree


@pytest.mark.parametrize("snapshotter", ["overlay", "copy"])
async def test_rootfs_matches_umoci(tmp_path: Path, registry: RegistryServer, repo_name: str, snapshotter: str) -> None:
    image = build_image(layers(), compression="gzip", oci=True)
    push_image(registry.url, repo_name, "oracle", image)
    ref = f"{registry.host}/{repo_name}:oracle"

    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:oracle"],
                   check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:oracle", str(bundle)], check=True,
                   capture_output=True)
    expected = describe(bundle / "rootfs")

    mount_dir = tmp_path / "mnt"
    mount_dir.mkdir()
    config = dataclasses.replace(load_config(), snapshotter=snapshotter)
    async with await Engine.open(tmp_path / "state", config=config) as engine:
        assert engine.snapshotter().name == snapshotter
        await engine.pull(ref)
        await engine.mount_image(ref, mount_dir)
        try:
            actual = describe(mount_dir)
        finally:
            await engine.unmount_image(mount_dir)

    assert "gone" not in actual and "gonedir" not in actual
    assert sorted(p for p in actual if p.startswith("opaque/")) == ["opaque/link", "opaque/new"]
    only_ours, only_theirs = sorted(actual.keys() - expected.keys()), sorted(expected.keys() - actual.keys())
    assert (only_ours, only_theirs) == ([], [])
    differences = {path: (actual[path], expected[path]) for path in actual if actual[path] != expected[path]}
    assert differences == {}
