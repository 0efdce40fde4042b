"""``apply_layer_detached`` + ``stack`` give exactly the tree ``apply_layer`` with the same lowers gives.

Every case runs twice: in this process, and through ``apply_layer_detached_isolated`` (a worker process does
the application and hands back what ``stack`` needs, the held directories' fds included).

Each case applies lower layers, then the layer under test twice: with ``apply_layer(lower=...)`` (the
reference) and detached, stacked afterwards. The two trees must be identical (types, modes, owners, times,
contents, link targets, device numbers, overlay xattrs), or ``stack`` must say the layer needs its lowers.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.config import Limits
from engine.errors import DigestMismatch, InvalidArgument
from engine.unpack import apply_layer
from engine.unpack.detached import MAX_IMPLIED, DetachedLayer, apply_layer_detached
from engine.unpack.worker import apply_layer_detached_isolated
from tests.unit.unpack.tarbuild import DIGEST, GZIP, PLAIN, T0, D, F, H, S, diff_id, gz, layer, node

pytestmark = pytest.mark.root

Detach = Callable[..., DetachedLayer]


@pytest.fixture(params=[apply_layer_detached, apply_layer_detached_isolated], ids=["thread", "process"])
def detach(request: pytest.FixtureRequest) -> Detach:
    function: Detach = request.param
    return function


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    tree: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:  # not the root itself: the test made it (its times are "now")
            path = Path(dirpath) / name
            st = os.lstat(path)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                extra = tuple(sorted((a, os.getxattr(path, a)) for a in os.listxattr(path) if "overlay" in a))
            times = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None
            tree[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev, times, extra)
    return tree


def apply_lowers(base: Path, *layers: bytes) -> list[Path]:
    """Apply ``layers`` bottom-up into base/l0, base/l1...; return their dirs topmost first."""
    dirs: list[Path] = []
    for index, blob in enumerate(layers):
        target = base / f"l{index}"
        target.mkdir()
        apply_layer(io.BytesIO(blob), PLAIN, target, layer_digest=DIGEST, expected_diff_id=None,
                    whiteouts="overlay", lower=list(reversed(dirs)), limits=Limits())
        dirs.append(target)
    return list(reversed(dirs))


def both_ways(detach: Detach, base: Path, lowers: list[Path], blob: bytes) -> tuple[Path, Path, bool]:
    reference, detached_dir = base / "reference", base / "detached"
    reference.mkdir()
    detached_dir.mkdir()
    apply_layer(io.BytesIO(blob), PLAIN, reference, layer_digest=DIGEST, expected_diff_id=diff_id(blob),
                whiteouts="overlay", lower=lowers, limits=Limits())
    detached = detach(io.BytesIO(blob), PLAIN, detached_dir, layer_digest=DIGEST,
                      expected_diff_id=diff_id(blob), whiteouts="overlay", limits=Limits())
    assert detached.result.diff_id == diff_id(blob)
    return reference, detached_dir, detached.stack(lowers)


LOWER = layer(
    D("etc", 0o750, uid=7, gid=8, mtime=T0 - 100),
    D("etc/deep", 0o700, uid=9, gid=10, mtime=T0 - 200),
    F("etc/passwd", b"root:x:0:0", 0o644),
    D("opt", 0o711, uid=3, gid=4, mtime=T0 - 300),
    F("opt/tool", b"tool", 0o755),
)


def test_implied_directories_get_the_lowers_metadata(tmp_path: Path, detach: Detach) -> None:
    lowers = apply_lowers(tmp_path, LOWER)
    upper = layer(
        F("etc/deep/new", b"new"),  # etc and etc/deep implied: both in the lower
        F("fresh/dir/file", b"x"),  # fresh/dir implied, in no lower: 0755, its own times
        F("opt/x", b"x"),  # opt implied here...
        D("opt", 0o700, uid=5, gid=6, mtime=T0 - 1),  # ...and listed afterwards: the layer's entry wins
        S("etc/link", "passwd"),
        node("etc/.wh.passwd", tarfile.REGTYPE),
        F("etc/deep/.wh..wh..opq"),
    )
    reference, detached, stacked = both_ways(detach, tmp_path, lowers, upper)
    assert stacked
    expected = describe(reference)
    got = describe(detached)
    fresh_times = {"fresh", "fresh/dir", "etc/passwd"}  # "now" in both (whiteouts too): not comparable
    assert {k: v[:4] + v[5:] for k, v in got.items() if k in fresh_times} == \
        {k: v[:4] + v[5:] for k, v in expected.items() if k in fresh_times}
    assert {k: v for k, v in got.items() if k not in fresh_times} == \
        {k: v for k, v in expected.items() if k not in fresh_times}
    assert expected["etc"][:3] == (stat.S_IFDIR | 0o750, 7, 8)  # really the lower's, not a default
    assert expected["opt"][:3] == (stat.S_IFDIR | 0o700, 5, 6)


def test_directory_listed_before_its_children_needs_no_fixing(tmp_path: Path, detach: Detach) -> None:
    lowers = apply_lowers(tmp_path, LOWER)
    upper = layer(D("etc", 0o755, uid=1, gid=1, mtime=T0), F("etc/a", b"a"), D("srv", 0o755), F("srv/b"))
    reference, detached, stacked = both_ways(detach, tmp_path, lowers, upper)
    assert stacked and describe(detached) == describe(reference)


def test_hard_link_into_a_lower_layer_needs_the_lowers(tmp_path: Path, detach: Detach) -> None:
    lowers = apply_lowers(tmp_path, LOWER)
    blob = layer(F("a", b"a"), H("etc/passwd-link", "etc/passwd"), F("z", b"z"))
    target = tmp_path / "t"
    target.mkdir()
    detached = detach(io.BytesIO(gz(blob)), GZIP, target, layer_digest=DIGEST,
                      expected_diff_id=diff_id(blob), whiteouts="overlay", limits=Limits())
    assert detached.needs_lowers
    assert detached.result.diff_id == diff_id(blob)  # the whole stream was read and verified
    assert detached.stack(lowers) is False


def test_hard_link_within_the_layer_is_fine(tmp_path: Path, detach: Detach) -> None:
    lowers = apply_lowers(tmp_path, LOWER)
    reference, detached, stacked = both_ways(detach, tmp_path, lowers, layer(F("etc/f", b"f"), H("etc/g", "etc/f")))
    assert stacked and describe(detached) == describe(reference)
    assert os.lstat(detached / "etc" / "g").st_nlink == 2


def test_setgid_lower_directory_needs_the_lowers(tmp_path: Path, detach: Detach) -> None:
    lowers = apply_lowers(tmp_path, layer(D("var", 0o755), D("var/mail", 0o2775, gid=8)))
    _, _, stacked = both_ways(detach, tmp_path, lowers, layer(F("var/mail/sub/box", b"mail")))
    assert stacked is False


def test_too_many_implied_directories_need_the_lowers(tmp_path: Path, detach: Detach) -> None:
    blob = layer(*(F(f"d{i}/f") for i in range(MAX_IMPLIED + 1)))
    detached = detach(io.BytesIO(blob), PLAIN, tmp_path, layer_digest=DIGEST,
                      expected_diff_id=None, whiteouts="overlay", limits=Limits())
    assert detached.needs_lowers and detached.stack([]) is False


def test_diff_id_is_checked_and_delete_mode_refused(tmp_path: Path, detach: Detach) -> None:
    blob = layer(F("a", b"a"))
    with pytest.raises(DigestMismatch, match="DiffID mismatch"):
        detach(io.BytesIO(blob), PLAIN, tmp_path, layer_digest=DIGEST,
               expected_diff_id="sha256:" + "0" * 64, whiteouts="overlay", limits=Limits())
    with pytest.raises(InvalidArgument, match="need their lowers"):
        detach(io.BytesIO(blob), PLAIN, tmp_path, layer_digest=DIGEST, expected_diff_id=None,
               whiteouts="delete", limits=Limits())


def test_close_without_stack_releases_the_held_directories(tmp_path: Path, detach: Detach) -> None:
    before = len(os.listdir("/proc/self/fd"))
    detached = detach(io.BytesIO(layer(F("a/b/c"), F("d/e"))), PLAIN, tmp_path,
                      layer_digest=DIGEST, expected_diff_id=None, whiteouts="overlay", limits=Limits())
    assert len(os.listdir("/proc/self/fd")) > before  # the implied a, a/b, d are held for stack()
    detached.close()
    assert len(os.listdir("/proc/self/fd")) == before
