"""A minimal root filesystem built from Debian's ``busybox-static`` (tests only).

Tests that need a runnable image build it from this: one static binary plus applet symlinks, an /etc/passwd
and /etc/group with a non-root user, so ``--user`` resolution has data to read.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n" \
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n"


def busybox_applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted(name for name in out.split() if name and name != "busybox")


def make_busybox_rootfs(root: Path) -> Path:
    """Write a busybox root filesystem into ``root`` (created if missing) and return it."""
    for sub in ("bin", "etc", "tmp", "root", "home/app", "proc", "sys", "dev", "var"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in busybox_applets():
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def busybox_layer_tar() -> bytes:
    """An uncompressed tar layer holding the busybox root filesystem (deterministic: fixed mtimes, root owner)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            info.mtime = 1_700_000_000
            tar.addfile(info)

        for sub in ("bin", "etc", "tmp", "root", "home", "home/app", "proc", "sys", "dev", "var"):
            add_dir(sub, 0o1777 if sub == "tmp" else 0o755)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
        for applet in busybox_applets():
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mtime = 1_700_000_000
            tar.addfile(link)
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()
