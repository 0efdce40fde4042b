"""Reference grammar and normalisation, ported from distribution/reference's own tables.

Cases come from ``reference_test.go`` (TestReferenceParse, TestDomainAndPath, TestWithTag/Digest) and
``normalize_test.go`` (TestValidateReferenceName, TestValidateRemoteName, TestParseRepositoryInfo,
TestNormalizedSplitHostname, TestParseAnyReference), adapted to normalised parsing and to our sha256-only rule.
"""

from __future__ import annotations

import pytest

from engine.errors import InvalidArgument, InvalidReference
from engine.reference import (
    Reference,
    is_loopback_domain,
    parse_reference,
    parse_repository,
    registry_host,
)

F64 = "f" * 64
D = "sha256:" + F64
SONG = "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev"  # 64 characters, not hex: a valid name
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"
REDIS = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"

# input -> (domain, path, tag, digest) after parse_reference
VALID: list[tuple[str, tuple[str, str, str | None, str | None]]] = [
    ("test_com", ("docker.io", "library/test_com", "latest", None)),
    ("test.com:tag", ("docker.io", "library/test.com", "tag", None)),
    ("test.com:5000", ("docker.io", "library/test.com", "5000", None)),
    ("test.com/repo:tag", ("test.com", "repo", "tag", None)),
    ("test:5000/repo", ("test:5000", "repo", "latest", None)),
    ("test:5000/repo:tag", ("test:5000", "repo", "tag", None)),
    (f"test:5000/repo@{D}", ("test:5000", "repo", None, D)),
    (f"test:5000/repo:tag@{D}", ("test:5000", "repo", None, D)),
    ("lowercase:Uppercase", ("docker.io", "library/lowercase", "Uppercase", None)),
    ("sub-dom1.foo.com/bar/baz/quux", ("sub-dom1.foo.com", "bar/baz/quux", "latest", None)),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", ("sub-dom1.foo.com", "bar/baz/quux", "some-long-tag", None)),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        ("b.gcr.io", "test.example.com/my-app", "test.example.com", None),
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", ("xn--n3h.com", "myimage", "xn--n3h.com", None)),
    ("foo_bar.com:8080", ("docker.io", "library/foo_bar.com", "8080", None)),
    ("foo/foo_bar.com:8080", ("docker.io", "foo/foo_bar.com", "8080", None)),
    ("192.168.1.1", ("docker.io", "library/192.168.1.1", "latest", None)),
    ("192.168.1.1:tag", ("docker.io", "library/192.168.1.1", "tag", None)),
    ("192.168.1.1:5000", ("docker.io", "library/192.168.1.1", "5000", None)),
    ("192.168.1.1/repo", ("192.168.1.1", "repo", "latest", None)),
    ("192.168.1.1:5000/repo", ("192.168.1.1:5000", "repo", "latest", None)),
    ("192.168.1.1:5000/repo:5050", ("192.168.1.1:5000", "repo", "5050", None)),
    ("[2001:db8::1]/repo", ("[2001:db8::1]", "repo", "latest", None)),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", ("[2001:db8:1:2:3:4:5:6]", "repo", "tag", None)),
    ("[2001:db8::1]:5000/repo", ("[2001:db8::1]:5000", "repo", "latest", None)),
    ("[2001:db8::1]:5000/a:tag", ("[2001:db8::1]:5000", "a", "tag", None)),
    (f"[2001:db8::1]:5000/repo@{D}", ("[2001:db8::1]:5000", "repo", None, D)),
    (f"[2001:db8::1]:5000/repo:tag@{D}", ("[2001:db8::1]:5000", "repo", None, D)),
    ("[2001:db8::]:5000/repo", ("[2001:db8::]:5000", "repo", "latest", None)),
    ("[::1]:5000/repo", ("[::1]:5000", "repo", "latest", None)),
    ("[fc00::1]:5000/docker/docker", ("[fc00::1]:5000", "docker/docker", "latest", None)),
    ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", ("[fc00:1:2:3:4:5:6:7]:5000", "library/debian", "latest", None)),
    (f"localhost:5000/foo/bar@{D}", ("localhost:5000", "foo/bar", None, D)),
    ("localhost/foo", ("localhost", "foo", "latest", None)),
    ("a/a/a/a", ("docker.io", "a/a/a/a", "latest", None)),
    ("foo_bar", ("docker.io", "library/foo_bar", "latest", None)),
    ("foo__bar", ("docker.io", "library/foo__bar", "latest", None)),
    ("foo--bar", ("docker.io", "library/foo--bar", "latest", None)),
    ("foo.bar", ("docker.io", "library/foo.bar", "latest", None)),
    ("docker/docker", ("docker.io", "docker/docker", "latest", None)),
    ("library/debian", ("docker.io", "library/debian", "latest", None)),
    ("debian", ("docker.io", "library/debian", "latest", None)),
    ("docker.io/docker/docker", ("docker.io", "docker/docker", "latest", None)),
    ("docker.io/library/debian", ("docker.io", "library/debian", "latest", None)),
    ("docker.io/debian", ("docker.io", "library/debian", "latest", None)),
    ("index.docker.io/docker/docker", ("docker.io", "docker/docker", "latest", None)),
    ("index.docker.io/library/debian", ("docker.io", "library/debian", "latest", None)),
    ("index.docker.io/debian", ("docker.io", "library/debian", "latest", None)),
    ("127.0.0.1:5000/docker/docker", ("127.0.0.1:5000", "docker/docker", "latest", None)),
    ("127.0.0.1:5000/debian", ("127.0.0.1:5000", "debian", "latest", None)),
    ("192.168.0.1:80", ("docker.io", "library/192.168.0.1", "80", None)),
    ("192.168.0.1:8/debian", ("192.168.0.1:8", "debian", "latest", None)),
    (SONG, ("docker.io", f"library/{SONG}", "latest", None)),
    (f"docker.io/{HEX64}", ("docker.io", f"library/{HEX64}", "latest", None)),
    ("Docker/docker", ("Docker", "docker", "latest", None)),
    ("DOCKER/docker", ("DOCKER", "docker", "latest", None)),
    ("docker-rules/docker", ("docker.io", "docker-rules/docker", "latest", None)),
    ("docker---rules/docker", ("docker.io", "docker---rules/docker", "latest", None)),
    ("d/docker", ("docker.io", "d/docker", "latest", None)),
    ("jess/t", ("docker.io", "jess/t", "latest", None)),
    ("dock__er/docker", ("docker.io", "dock__er/docker", "latest", None)),
    ("test-com:8080/foo", ("test-com:8080", "foo", "latest", None)),
    ("xn--n3h.com:18080/foo", ("xn--n3h.com:18080", "foo", "latest", None)),
    ("docker.io/library/foo/bar", ("docker.io", "library/foo/bar", "latest", None)),
    (f"redis@{REDIS}", ("docker.io", "library/redis", None, REDIS)),
    (f"busybox:latest@{REDIS}", ("docker.io", "library/busybox", None, REDIS)),
    (REDIS[7:-1], ("docker.io", "library/" + REDIS[7:-1], "latest", None)),  # 63 hex: a name
    ("dbcc1", ("docker.io", "library/dbcc1", "latest", None)),
    ("ghcr.io/owner/app:v1.2.3", ("ghcr.io", "owner/app", "v1.2.3", None)),
    ("busybox:" + "t" * 128, ("docker.io", "library/busybox", "t" * 128, None)),
    ("busybox:_under", ("docker.io", "library/busybox", "_under", None)),
]  # fmt: skip

# input -> a fragment the one-line message must contain
INVALID: list[tuple[str, str]] = [
    ("", "empty reference"),
    (":justtag", "missing repository name"),
    (f"@{D}", "missing repository name"),
    ("repo@sha256:" + "f" * 34, "invalid digest"),
    ("validname@invaliddigest:" + F64, "unsupported digest algorithm 'invaliddigest'"),
    ("xn--7o8h.com/myimage:xn--7o8h.com@sha512:" + "f" * 128, "unsupported digest algorithm 'sha512'"),
    ("repo@sha256:" + "F" * 64, "invalid digest"),
    ("repo@", "invalid digest"),
    (f"repo@{D}@{D}", "invalid digest"),
    ("Uppercase:tag", "repository name must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "repository name must be lowercase"),
    ("docker/Docker", "repository name must be lowercase"),
    ("docker.io/docker/Docker", "repository name must be lowercase"),
    ("a/" * 128 + "a:tag", "name too long"),
    ("aa/asdf$$^/aa", "invalid repository name component 'asdf$$^'"),
    ("[2001:db8::1]", "invalid"),
    ("[2001:db8::1]:5000", "invalid"),
    ("[2001:db8::1]:tag", "invalid"),
    ("[fe80::1%eth0]:5000/repo", "invalid registry domain"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid"),
    ("[fc00::1]", "invalid"),
    ("[fc00::1]:5000", "invalid"),
    ("fc00::1:5000/debian", "invalid registry domain 'fc00::1:5000'"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid registry domain"),
    ("https://github.com/docker/docker", "invalid registry domain 'https:'"),
    ("-docker", "invalid repository name component '-docker'"),
    ("-foo", "invalid repository name component '-foo'"),
    ("-docker/docker", "invalid repository name component '-docker'"),
    ("-docker.io/docker/docker", "invalid registry domain '-docker.io'"),
    ("docker///docker", "empty repository name component"),
    ("docker.io/docker///docker", "empty repository name component"),
    ("docker-/docker", "invalid repository name component 'docker-'"),
    ("-docker-/docker", "invalid repository name component"),
    ("____/____", "invalid repository name component '____'"),
    ("_docker/_docker", "invalid repository name component '_docker'"),
    ("dock..er/docker", "invalid registry domain 'dock..er'"),  # the "." makes it a domain
    ("dock_.er/docker", "invalid registry domain"),
    ("dock-.er/docker", "invalid registry domain"),
    ("docker/dock..er", "invalid repository name component 'dock..er'"),
    ("docker/dock_.er", "invalid repository name component"),
    ("docker/dock-.er", "invalid repository name component"),
    ("foo___bar", "invalid repository name component"),
    ("docker/", "empty repository name component"),
    (HEX64, "image ID"),
    ("busybox:-foo", "invalid tag '-foo'"),
    ("busybox:", "invalid tag ''"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busybox:t\u00e9", "invalid tag"),
    ("busybox:a b", "invalid tag"),
    ("foo bar", "invalid repository name component"),
    ("b\u00fcsybox", "invalid repository name component"),
    ("foo\nbar", "invalid repository name component"),
    (
        "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_"
        "because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_"
        "255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker",
        "name too long",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t[:60] for t, _ in VALID])
def test_valid_references(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = parse_reference(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == expected
    # The normalised string parses back to the same reference.
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


@pytest.mark.parametrize(("text", "fragment"), INVALID, ids=[t[:60] or "empty" for t, _ in INVALID])
def test_invalid_references(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert message.startswith("invalid reference format: ")
    assert fragment in message
    assert "\n" not in message
    assert isinstance(info.value, InvalidArgument)


def test_error_message_format_names_the_input() -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference("Uppercase:tag")
    assert str(info.value) == "invalid reference format: repository name must be lowercase: 'Uppercase:tag'"


def test_error_message_truncates_huge_input() -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference("a" * 5000 + "!")
    assert len(str(info.value)) < 600


def test_name_length_limit_counts_the_normalised_name() -> None:
    # 255 characters exactly with its own domain: allowed (reference_test.go "tag-puts-this-over-max").
    name = "a.b/" + "a/" * 125 + "a"
    assert len(name) == 255
    ref = parse_reference(name + ":tag-puts-this-over-max")
    assert ref.repository == name
    with pytest.raises(InvalidReference, match="name too long"):
        parse_reference("a." + name)
    # Without a domain, docker.io/ is part of the name and pushes it over.
    with pytest.raises(InvalidReference, match="name too long"):
        parse_reference("a/" * 127 + "a")


# (familiar, full, domain, path) from TestParseRepositoryInfo; each spelling must normalise the same way.
REPOSITORY_INFO = [
    (["fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar"], "fooo/bar", "docker.io/fooo/bar"),
    (["ubuntu", "docker.io/library/ubuntu", "library/ubuntu"], "ubuntu", "docker.io/library/ubuntu"),
    (["nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu"], "nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu"),
    (["other/library", "docker.io/other/library"], "other/library", "docker.io/other/library"),
    (["127.0.0.1:8000/private/moonbase"], "127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase"),
    (["127.0.0.1:8000/privatebase"], "127.0.0.1:8000/privatebase", "127.0.0.1:8000/privatebase"),
    (["example.com/private/moonbase"], "example.com/private/moonbase", "example.com/private/moonbase"),
    (["example.com:8000/privatebasee"], "example.com:8000/privatebasee", "example.com:8000/privatebasee"),
    (
        ["ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base", "index.docker.io/library/ubuntu-12.04-base"],
        "ubuntu-12.04-base",
        "docker.io/library/ubuntu-12.04-base",
    ),
    (["foo", "docker.io/library/foo", "docker.io/foo"], "foo", "docker.io/library/foo"),
    (["library/foo/bar", "docker.io/library/foo/bar"], "library/foo/bar", "docker.io/library/foo/bar"),
    (["store/foo/bar", "docker.io/store/foo/bar"], "store/foo/bar", "docker.io/store/foo/bar"),
    (["Foo/bar"], "Foo/bar", "Foo/bar"),
    (["FOO/bar"], "FOO/bar", "FOO/bar"),
]


@pytest.mark.parametrize(("spellings", "familiar", "full"), REPOSITORY_INFO, ids=[r[1] for r in REPOSITORY_INFO])
def test_repository_info(spellings: list[str], familiar: str, full: str) -> None:
    for text in spellings:
        repo = parse_repository(text)
        assert repo.repository == full
        assert repo.familiar_repository == familiar
        assert repo.familiar == familiar
        assert str(repo) == full
        assert (repo.tag, repo.digest) == (None, None)
        tagged = parse_reference(text)
        assert str(tagged) == full + ":latest"
        assert tagged.familiar == familiar + ":latest"


def test_familiar_forms() -> None:
    assert parse_reference("busybox").familiar == "busybox:latest"
    assert parse_reference("user/app:1").familiar == "user/app:1"
    assert parse_reference("localhost:5000/a/b:tag").familiar == "localhost:5000/a/b:tag"
    assert parse_reference(f"busybox@{D}").familiar == f"busybox@{D}"
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"
    assert str(parse_reference(f"busybox:1@{D}")) == f"docker.io/library/busybox@{D}"
    assert parse_reference("busybox").repository == "docker.io/library/busybox"


def test_with_tag_and_with_digest() -> None:
    ref = parse_reference("test.com:8000/foo")
    assert str(ref.with_tag("TAG5")) == "test.com:8000/foo:TAG5"
    pinned = ref.with_digest(D)
    assert str(pinned) == f"test.com:8000/foo@{D}"
    assert pinned.tag is None
    assert pinned.with_tag("v2").digest is None
    assert str(parse_repository("foo").with_tag("tag2")) == "docker.io/library/foo:tag2"
    with pytest.raises(InvalidReference, match="invalid tag '-foo'"):
        ref.with_tag("-foo")
    with pytest.raises(InvalidReference, match="invalid digest 'foo'"):
        ref.with_digest("foo")
    with pytest.raises(InvalidReference, match="unsupported digest algorithm 'sha512'"):
        ref.with_digest("sha512:" + "f" * 128)


def test_reference_is_a_hashable_value() -> None:
    a, b = parse_reference("busybox"), parse_reference("docker.io/library/busybox:latest")
    assert a == b
    assert len({a, b}) == 1
    assert a == Reference("docker.io", "library/busybox", "latest", None)


@pytest.mark.parametrize("text", ["busybox:1", f"busybox@{D}", f"busybox:1@{D}"])
def test_parse_repository_refuses_tag_or_digest(text: str) -> None:
    with pytest.raises(InvalidReference, match="may not have a tag or digest"):
        parse_repository(text)


def test_parse_repository_validates_like_parse_reference() -> None:
    with pytest.raises(InvalidReference, match="must be lowercase"):
        parse_repository("docker/Docker")
    with pytest.raises(InvalidReference, match="empty reference"):
        parse_repository("")


def test_registry_host() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("ghcr.io") == "ghcr.io"
    assert registry_host("localhost:5000") == "localhost:5000"
    assert registry_host(parse_reference("index.docker.io/debian").domain) == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("LOCALHOST:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10:1", True),
        ("[::1]", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("docker.io", False),
        ("localhost.example.com", False),
        ("128.0.0.1:5000", False),
        ("10.0.0.1", False),
        ("[2001:db8::1]:5000", False),
        ("localhost:", False),
        ("localhost:abc", False),
        ("127.0.0.1:5000x", False),
        ("[::1]5000", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_is_loopback_domain(domain: str, expected: bool) -> None:
    assert is_loopback_domain(domain) is expected
