"""Image store: records, tags, repo digests, lookup rules, migrations, several openers."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.digest import chain_id
from engine.errors import Conflict, InvalidArgument, NotFound, StoreError
from engine.images import SCHEMA_VERSION, ImageRecord, ImageStore, LayerRecord
from engine.manifest import DOCKER_LAYER_GZIP, DOCKER_MANIFEST
from engine.reference import parse_reference


def digest(char: str) -> str:
    return "sha256:" + char * 64


def record(image_id: str, **changes: object) -> ImageRecord:
    base = ImageRecord(
        id=image_id,
        manifest_digest=digest("a"),
        manifest_media_type=DOCKER_MANIFEST,
        index_digest=None,
        config_digest=image_id,
        layers=(
            LayerRecord(digest("b"), DOCKER_LAYER_GZIP, 100, digest("c")),
            LayerRecord(digest("d"), DOCKER_LAYER_GZIP, 200, digest("e")),
        ),
        created="2024-01-01T00:00:00Z",
        architecture="amd64",
        os="linux",
        variant=None,
        size=350,
        repo_tags=(),
        repo_digests=(),
        added=0.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    db = ImageStore(tmp_path / "images.db")
    yield db
    db.close()


ID1 = "sha256:abcd1" + "1" * 59
ID2 = "sha256:abcd2" + "2" * 59
ID3 = "sha256:9999" + "3" * 60


def test_put_get_list_delete(store: ImageStore) -> None:
    store.put(record(ID1, repo_tags=("busybox",), repo_digests=(f"busybox@{digest('a')}",)))
    got = store.get(ID1)
    assert got.layers == record(ID1).layers and got.size == 350 and got.added > 0
    assert got.repo_tags == ("docker.io/library/busybox:latest",)
    assert got.repo_digests == (f"docker.io/library/busybox@{digest('a')}",)
    added = got.added
    store.put(record(ID1, size=999, layers=got.layers[:1]))  # update: names kept, first added time kept
    again = store.get(ID1)
    assert again.size == 999 and len(again.layers) == 1 and again.repo_tags == got.repo_tags
    assert again.added == added
    store.put(record(ID2, added=added + 10))
    assert [r.id for r in store.list()] == [ID2, ID1]
    store.delete(ID1)
    with pytest.raises(NotFound, match=f"No such image: {ID1}"):
        store.get(ID1)
    with pytest.raises(NotFound):
        store.delete(ID1)


def test_tag_moves_and_untag(store: ImageStore) -> None:
    store.put(record(ID1))
    store.put(record(ID2))
    ref = parse_reference("example.com/app:1")
    assert store.tag(ID1, ref) is None
    assert store.tag(ID1, ref) is None  # same image: nobody lost it
    assert store.tag(ID2, ref) == ID1
    assert store.get(ID1).repo_tags == () and store.get(ID2).repo_tags == ("example.com/app:1",)
    assert store.untag(ref) == ID2
    with pytest.raises(NotFound, match=r"No such image: example\.com/app:1"):
        store.untag(ref)
    with pytest.raises(NotFound):
        store.tag(ID3, ref)
    with pytest.raises(InvalidArgument, match="digest reference cannot be used as a tag"):
        store.tag(ID1, parse_reference(f"app@{digest('f')}"))


def test_repo_digests_add_lookup_untag(store: ImageStore) -> None:
    store.put(record(ID1))
    store.add_repo_digest(ID1, f"busybox@{digest('a')}")
    assert store.lookup(f"busybox@{digest('a')}").id == ID1
    assert store.lookup(f"docker.io/library/busybox@{digest('a')}").id == ID1
    with pytest.raises(InvalidArgument, match="repo digest"):
        store.add_repo_digest(ID1, "busybox:latest")
    assert store.untag(parse_reference(f"busybox@{digest('a')}")) == ID1
    assert store.get(ID1).repo_digests == ()


def test_lookup_by_reference_id_and_prefix(store: ImageStore) -> None:
    store.put(record(ID1, repo_tags=("busybox:latest", "localhost:5000/x/y:v1")))
    store.put(record(ID2))
    store.put(record(ID3))
    assert store.lookup("busybox").id == ID1
    assert store.lookup("docker.io/library/busybox:latest").id == ID1
    assert store.lookup("localhost:5000/x/y:v1").id == ID1
    assert store.lookup(ID2).id == ID2
    assert store.lookup(ID2[7:]).id == ID2  # bare 64 hex
    assert store.lookup("9999").id == ID3
    assert store.lookup("sha256:99993").id == ID3
    assert store.lookup("abcd1").id == ID1
    with pytest.raises(Conflict, match="abcd: ambiguous image id prefix"):
        store.lookup("abcd")
    with pytest.raises(Conflict, match="ambiguous"):
        store.lookup("sha256:abcd")
    with pytest.raises(NotFound, match="No such image: 999"):
        store.lookup("999")  # fewer than 4 hex digits is no id prefix
    with pytest.raises(NotFound, match="No such image: busybox:1"):
        store.lookup("busybox:1")
    with pytest.raises(NotFound, match="No such image: fedc"):
        store.lookup("fedc")
    with pytest.raises(NotFound, match="No such image: Not/A/Ref"):
        store.lookup("Not/A/Ref")


def test_a_tag_that_looks_like_an_id_prefix_wins(store: ImageStore) -> None:
    store.put(record(ID1))
    store.put(record(ID3, repo_tags=("abcd1:latest",)))
    assert store.lookup("abcd1").id == ID3  # docker tries the reference first


def test_set_unpacked_size_blob_and_chain_roots(store: ImageStore) -> None:
    store.put(record(ID1, index_digest=digest("9")))
    store.set_unpacked_size(ID1, 12345)
    assert store.get(ID1).size == 12345
    store.put(record(ID1, index_digest=digest("9")))  # a re-put keeps the unpacked size
    assert store.get(ID1).size == 12345
    with pytest.raises(NotFound):
        store.set_unpacked_size(ID2, 1)
    assert store.blob_roots() == {ID1, digest("a"), digest("9"), digest("b"), digest("d")}
    assert store.chain_roots() == {digest("c"), chain_id(digest("c"), digest("e"))}


def test_two_stores_on_the_same_file_see_each_other(tmp_path: Path) -> None:
    first, second = ImageStore(tmp_path / "images.db"), ImageStore(tmp_path / "images.db")
    try:
        first.put(record(ID1, repo_tags=("busybox",)))
        assert second.lookup("busybox").id == ID1
        assert second.tag(ID1, parse_reference("alias")) is None
        assert first.get(ID1).repo_tags == ("docker.io/library/alias:latest", "docker.io/library/busybox:latest")
    finally:
        first.close()
        second.close()


def test_threads_share_one_store(store: ImageStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                image_id = f"sha256:{n:02x}{i:02x}" + "0" * 60
                store.put(record(image_id, repo_tags=(f"app{n}:{i}",)))
                assert store.lookup(f"app{n}:{i}").id == image_id
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store.list()) == 80


V1_SCHEMA = """
CREATE TABLE images (id TEXT PRIMARY KEY, manifest_digest TEXT NOT NULL, manifest_media_type TEXT NOT NULL,
    index_digest TEXT, config_digest TEXT NOT NULL, created TEXT, architecture TEXT NOT NULL, os TEXT NOT NULL,
    variant TEXT, size INTEGER NOT NULL, added REAL NOT NULL);
CREATE TABLE layers (image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE, position INTEGER NOT NULL,
    digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, diff_id TEXT NOT NULL,
    PRIMARY KEY (image_id, position));
CREATE TABLE tags (name TEXT PRIMARY KEY, image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE);
CREATE INDEX tags_image ON tags(image_id);
CREATE TABLE repo_digests (name TEXT NOT NULL, image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (name, image_id));
CREATE INDEX repo_digests_image ON repo_digests(image_id);
PRAGMA user_version = 1;
"""


def test_opens_a_v1_database_and_migrates_it(tmp_path: Path) -> None:
    path = tmp_path / "images.db"
    raw = sqlite3.connect(path)
    raw.executescript(V1_SCHEMA)
    raw.execute(
        "INSERT INTO images VALUES (?, ?, ?, NULL, ?, NULL, 'amd64', 'linux', NULL, 42, 1000.0)",
        (ID1, digest("a"), DOCKER_MANIFEST, ID1),
    )
    raw.execute("INSERT INTO tags VALUES ('docker.io/library/old:latest', ?)", (ID1,))
    raw.commit()
    raw.close()
    store = ImageStore(path)
    try:
        image = store.lookup("old")
        assert (image.id, image.size, image.added, image.layers) == (ID1, 42, 1000.0, ())
        store.set_unpacked_size(ID1, 84)  # the v2 column exists now
        assert store.get(ID1).size == 84
    finally:
        store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match=f"images.db schema v{SCHEMA_VERSION + 1} is newer than this Kitebox"):
        ImageStore(path)


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "images.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        ImageStore(path)


def test_put_refuses_bad_digests(store: ImageStore) -> None:
    with pytest.raises(InvalidArgument, match="invalid digest"):
        store.put(record("sha256:short"))
