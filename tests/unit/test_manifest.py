"""Manifest, index and image-config parsing, media types and platform selection, on constructed JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.errors import InvalidArgument, LimitExceeded, ManifestInvalid
from engine.manifest import (
    ACCEPT_MANIFESTS,
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_LAYER_ZSTD,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    OCI_NONDISTRIBUTABLE_LAYER_GZIP,
    OCI_NONDISTRIBUTABLE_LAYER_TAR,
    OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    SCHEMA1_TYPES,
    Descriptor,
    Index,
    Manifest,
    Platform,
    host_platform,
    is_foreign_layer,
    is_index_media_type,
    is_manifest_media_type,
    layer_compression,
    normalize_platform,
    parse_image_config,
    parse_manifest,
    parse_platform,
    platform_matches,
    select_manifest,
)


def dg(n: int) -> str:
    return f"sha256:{n:064x}"


def desc(media_type: str, n: int, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": dg(n), "size": size, **extra}


def manifest_json(
    media_type: str | None = DOCKER_MANIFEST,
    layers: list[dict[str, Any]] | None = None,
    config_type: str = DOCKER_CONFIG,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc["config"] = desc(config_type, 1, 1469)
    doc["layers"] = layers if layers is not None else [desc(DOCKER_LAYER_GZIP, 2, 2000)]
    doc.update(extra)
    return doc


def entry(n: int, arch: str, os: str = "linux", variant: str | None = None, mt: str = OCI_MANIFEST) -> dict[str, Any]:
    platform: dict[str, Any] = {"architecture": arch, "os": os}
    if variant:
        platform["variant"] = variant
    return desc(mt, n, platform=platform)


def index_json(entries: list[dict[str, Any]], media_type: str | None = OCI_INDEX, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, "manifests": entries, **extra}
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


def index_of(*entries: dict[str, Any]) -> Index:
    parsed = parse_manifest(enc(index_json(list(entries))), OCI_INDEX)
    assert isinstance(parsed, Index)
    return parsed


# --- parsing each kind ------------------------------------------------------------------------------------


def test_docker_schema2_manifest() -> None:
    doc = manifest_json(layers=[desc(DOCKER_LAYER_GZIP, 2, 100), desc(DOCKER_LAYER_GZIP, 3, 200)])
    m = parse_manifest(enc(doc), DOCKER_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.media_type == DOCKER_MANIFEST
    assert m.config == Descriptor(DOCKER_CONFIG, dg(1), 1469)
    assert [(layer.digest, layer.size) for layer in m.layers] == [(dg(2), 100), (dg(3), 200)]
    assert m.annotations == {}


def test_oci_manifest_with_annotations_and_every_oci_layer_type() -> None:
    layers = [desc(OCI_LAYER_TAR, 2), desc(OCI_LAYER_GZIP, 3), desc(OCI_LAYER_ZSTD, 4)]
    doc = manifest_json(OCI_MANIFEST, layers, OCI_CONFIG, annotations={"org.opencontainers.image.ref.name": "1"})
    m = parse_manifest(enc(doc), OCI_MANIFEST + "; charset=utf-8")
    assert isinstance(m, Manifest)
    assert m.media_type == OCI_MANIFEST
    assert [layer.media_type for layer in m.layers] == [OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD]
    assert m.annotations == {"org.opencontainers.image.ref.name": "1"}


def test_foreign_layer_keeps_urls() -> None:
    foreign = desc(DOCKER_FOREIGN_LAYER_GZIP, 2, urls=["https://example.com/layer"])
    m = parse_manifest(enc(manifest_json(layers=[foreign, desc(DOCKER_LAYER_ZSTD, 3)])), DOCKER_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.layers[0].urls == ("https://example.com/layer",)
    assert is_foreign_layer(m.layers[0].media_type)
    assert not is_foreign_layer(m.layers[1].media_type)


def test_docker_manifest_list() -> None:
    doc = index_json(
        [entry(10, "amd64", mt=DOCKER_MANIFEST), entry(11, "arm", variant="v7", mt=DOCKER_MANIFEST)],
        DOCKER_MANIFEST_LIST,
    )
    idx = parse_manifest(enc(doc), DOCKER_MANIFEST_LIST)
    assert isinstance(idx, Index)
    assert idx.media_type == DOCKER_MANIFEST_LIST
    assert [d.platform for d in idx.manifests] == [Platform("linux", "amd64"), Platform("linux", "arm", "v7")]


def test_oci_index_keeps_nested_index_and_platform_details() -> None:
    e = desc(OCI_MANIFEST, 10, platform={"architecture": "amd64", "os": "windows", "os.version": "10.0.17763",
                                         "os.features": ["win32k"]})  # fmt: skip
    idx = parse_manifest(enc(index_json([e, desc(OCI_INDEX, 11)], annotations={"a": "b"})), OCI_INDEX)
    assert isinstance(idx, Index)
    assert idx.manifests[0].platform == Platform("windows", "amd64", None, "10.0.17763", ("win32k",))
    assert idx.manifests[1].media_type == OCI_INDEX
    assert idx.annotations == {"a": "b"}


def test_unknown_index_entries_are_skipped() -> None:
    doc = index_json(
        [
            desc("application/vnd.example.sbom+json", 9),
            {"mediaType": "application/vnd.example.weird", "digest": "not-a-digest"},
            {"digest": dg(8), "size": 1},
            entry(10, "amd64"),
        ]
    )
    idx = parse_manifest(enc(doc), OCI_INDEX)
    assert isinstance(idx, Index)
    assert [d.digest for d in idx.manifests] == [dg(10)]


def test_known_index_entries_are_validated() -> None:
    with pytest.raises(ManifestInvalid, match=r"index entry 0 has invalid digest 'sha256:abc'"):
        parse_manifest(enc(index_json([{"mediaType": OCI_MANIFEST, "digest": "sha256:abc", "size": 1}])), OCI_INDEX)
    with pytest.raises(ManifestInvalid, match="index entry 1 is not a descriptor object"):
        parse_manifest(enc({"schemaVersion": 2, "manifests": [entry(10, "amd64"), "junk"]}), OCI_INDEX)
    with pytest.raises(ManifestInvalid, match=r"index entry 0\.platform must have string os and architecture"):
        parse_manifest(enc(index_json([desc(OCI_MANIFEST, 1, platform={"os": "linux"})])), OCI_INDEX)


# --- content type and schema rules ------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", sorted(SCHEMA1_TYPES))
def test_schema1_refused_by_content_type(content_type: str) -> None:
    body = enc({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": [], "signatures": []})
    with pytest.raises(ManifestInvalid, match=r"schema1 manifests are not supported.*re-push the image"):
        parse_manifest(body, content_type)


@pytest.mark.parametrize(
    "doc",
    [{"schemaVersion": 1, "name": "x"}, {"schemaVersion": 2, "signatures": [], "fsLayers": []}],
)
def test_schema1_refused_by_body(doc: dict[str, Any]) -> None:
    with pytest.raises(ManifestInvalid, match="schema1 manifests are not supported"):
        parse_manifest(enc(doc), "application/json")


def test_media_type_must_match_content_type() -> None:
    # CVE-2021-41190: a body claiming to be an index served as a manifest (or the reverse) is refused.
    with pytest.raises(ManifestInvalid, match="does not match Content-Type"):
        parse_manifest(enc(index_json([entry(1, "amd64")])), OCI_MANIFEST)
    with pytest.raises(ManifestInvalid, match="does not match Content-Type"):
        parse_manifest(enc(manifest_json(OCI_MANIFEST, config_type=OCI_CONFIG)), DOCKER_MANIFEST)


def test_ambiguous_documents_refused() -> None:
    doc = manifest_json(OCI_MANIFEST, config_type=OCI_CONFIG, manifests=[entry(3, "amd64")])
    with pytest.raises(ManifestInvalid, match="must not have a manifests list"):
        parse_manifest(enc(doc), OCI_MANIFEST)
    with pytest.raises(ManifestInvalid, match="must not have config or layers"):
        parse_manifest(enc(index_json([], layers=[])), OCI_INDEX)


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/octet-stream; x=y"])
def test_generic_content_type_uses_body_media_type_then_shape(content_type: str | None) -> None:
    m = parse_manifest(enc(manifest_json(DOCKER_MANIFEST)), content_type)
    assert isinstance(m, Manifest)
    assert m.media_type == DOCKER_MANIFEST
    sniffed = parse_manifest(enc(manifest_json(None, config_type=OCI_CONFIG)), content_type)
    assert isinstance(sniffed, Manifest)
    assert sniffed.media_type == OCI_MANIFEST
    idx = parse_manifest(enc(index_json([entry(1, "amd64")], media_type=None)), content_type)
    assert isinstance(idx, Index)
    assert idx.media_type == OCI_INDEX


def test_content_type_without_body_media_type_is_trusted() -> None:
    m = parse_manifest(enc(manifest_json(None)), DOCKER_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.media_type == DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"{not json", OCI_MANIFEST, "manifest is not valid JSON"),
        (b"\xff\xfe", OCI_MANIFEST, "manifest is not valid UTF-8"),
        (b"[]", OCI_MANIFEST, "manifest is not a JSON object"),
        (b"null", None, "manifest is not a JSON object"),
        (b'{"schemaVersion": 2, "schemaVersion": 2}', OCI_MANIFEST, "duplicate key 'schemaVersion'"),
        (b"[" * 100000 + b"]" * 100000, OCI_MANIFEST, "manifest is nested too deeply"),
        (enc({"mediaType": OCI_MANIFEST}), OCI_MANIFEST, "schemaVersion must be 2, not None"),
        (enc({"schemaVersion": "2"}), OCI_MANIFEST, "schemaVersion must be 2, not '2'"),
        (enc({"schemaVersion": True}), OCI_MANIFEST, "schemaVersion must be 2"),
        (enc({"schemaVersion": 2, "mediaType": 5}), OCI_MANIFEST, "mediaType must be a string"),
        (enc({"schemaVersion": 2}), "application/json", "neither a manifest nor an index"),
        (enc({"schemaVersion": 2}), "application/vnd.oci.artifact.manifest.v1+json", "unsupported manifest media"),
        (enc({"schemaVersion": 2, "mediaType": "text/html"}), None, "unsupported manifest media type 'text/html'"),
        (enc(manifest_json(OCI_MANIFEST, config_type=OCI_CONFIG, config=None)), OCI_MANIFEST, "config is not a"),
        (enc(manifest_json(OCI_MANIFEST, config_type=OCI_CONFIG, layers=None) | {"layers": 1}), None, "no layers"),
        (enc(index_json([]) | {"manifests": {}}), OCI_INDEX, "index has no manifests list"),
        (enc(manifest_json(annotations={"a": 1})), DOCKER_MANIFEST, "manifest annotations must be an object of str"),
    ],
)
def test_malformed_manifests(body: bytes, content_type: str | None, fragment: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(body, content_type)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        (desc(DOCKER_LAYER_GZIP, 2) | {"digest": "sha256:" + "A" * 64}, "manifest layer 0 has invalid digest"),
        (desc(DOCKER_LAYER_GZIP, 2) | {"digest": "sha512:" + "a" * 128}, "invalid digest 'sha512:"),
        (desc(DOCKER_LAYER_GZIP, 2) | {"digest": 5}, "invalid digest 5"),
        (desc(DOCKER_LAYER_GZIP, 2, size=-1), "has invalid size -1"),
        (desc(DOCKER_LAYER_GZIP, 2) | {"size": 1.5}, "has invalid size 1.5"),
        (desc(DOCKER_LAYER_GZIP, 2) | {"size": True}, "has invalid size True"),
        (desc(DOCKER_LAYER_GZIP, 2) | {"size": "10"}, "has invalid size '10'"),
        ({"digest": dg(2), "size": 1}, "manifest layer 0 has no mediaType"),
        (desc(DOCKER_LAYER_GZIP, 2, urls="http://x"), "manifest layer 0.urls must be a list of strings"),
        (desc("application/vnd.in-toto+json", 2), "unsupported media type 'application/vnd.in-toto+json'"),
        (desc("application/tar+gzip", 2), "unsupported media type 'application/tar+gzip'"),
    ],
)
def test_bad_layer_descriptors(layer: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(enc(manifest_json(layers=[layer])), DOCKER_MANIFEST)
    assert fragment in str(info.value)


def test_config_must_be_an_image_config() -> None:
    doc = manifest_json(OCI_MANIFEST, config_type="application/vnd.cncf.helm.config.v1+json")
    with pytest.raises(ManifestInvalid, match=r"helm\.config\.v1.*not a container image"):
        parse_manifest(enc(doc), OCI_MANIFEST)


def test_max_layers() -> None:
    layers = [desc(OCI_LAYER_GZIP, n) for n in range(2, 7)]
    doc = enc(manifest_json(OCI_MANIFEST, layers, OCI_CONFIG))
    m = parse_manifest(doc, OCI_MANIFEST, max_layers=5)
    assert isinstance(m, Manifest)
    assert len(m.layers) == 5
    with pytest.raises(LimitExceeded, match=r"^manifest has 5 layers; the limit is 4$"):
        parse_manifest(doc, OCI_MANIFEST, max_layers=4)


def test_empty_layer_list_is_allowed() -> None:
    m = parse_manifest(enc(manifest_json(layers=[])), DOCKER_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.layers == ()


def test_descriptor_to_json_round_trip() -> None:
    d = Descriptor(
        OCI_MANIFEST, dg(5), 42, ("https://a",), Platform("windows", "amd64", None, "10.0", ("win32k",)), {"k": "v"}
    )
    assert d.to_json() == {
        "mediaType": OCI_MANIFEST,
        "digest": dg(5),
        "size": 42,
        "urls": ["https://a"],
        "platform": {"architecture": "amd64", "os": "windows", "os.version": "10.0", "os.features": ["win32k"]},
        "annotations": {"k": "v"},
    }
    assert Descriptor(OCI_CONFIG, dg(1), 0).to_json() == {"mediaType": OCI_CONFIG, "digest": dg(1), "size": 0}
    idx = parse_manifest(enc(index_json([d.to_json()])), OCI_INDEX)
    assert isinstance(idx, Index)
    assert idx.manifests == (d,)
    assert len({d, idx.manifests[0]}) == 1  # descriptors are hashable despite their annotations mapping


# --- media type helpers -----------------------------------------------------------------------------------


def test_layer_compression() -> None:
    assert layer_compression(DOCKER_LAYER_GZIP) == "gzip"
    assert layer_compression(DOCKER_FOREIGN_LAYER_GZIP) == "gzip"
    assert layer_compression(OCI_LAYER_GZIP) == "gzip"
    assert layer_compression(OCI_NONDISTRIBUTABLE_LAYER_GZIP) == "gzip"
    assert layer_compression(OCI_LAYER_ZSTD) == "zstd"
    assert layer_compression(DOCKER_LAYER_ZSTD) == "zstd"
    assert layer_compression(OCI_NONDISTRIBUTABLE_LAYER_ZSTD) == "zstd"
    assert layer_compression(OCI_LAYER_TAR) is None
    assert layer_compression(DOCKER_LAYER_TAR) is None
    assert layer_compression(OCI_NONDISTRIBUTABLE_LAYER_TAR) is None
    with pytest.raises(ManifestInvalid, match="unsupported layer media type 'application/x-rar'"):
        layer_compression("application/x-rar")


def test_media_type_predicates_and_accept_header() -> None:
    assert is_manifest_media_type(DOCKER_MANIFEST) and is_manifest_media_type(OCI_MANIFEST)
    assert not is_manifest_media_type(OCI_INDEX)
    assert is_index_media_type(DOCKER_MANIFEST_LIST) and is_index_media_type(OCI_INDEX)
    assert not is_index_media_type(DOCKER_MANIFEST)
    accepted = [part.strip() for part in ACCEPT_MANIFESTS.split(",")]
    assert accepted[:4] == [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]
    assert accepted[-1].startswith("*/*")
    assert not SCHEMA1_TYPES & set(accepted)


# --- platforms --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("LINUX/AMD64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/aarch64", "linux/arm64/v8"),
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/arm64/8", "linux/arm64/v8"),
        ("linux/arm64/v9.0", "linux/arm64/v9"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/arm/v5", "linux/arm/v5"),
        ("linux/i386", "linux/386"),
        ("linux/386", "linux/386"),
        ("linux/ppc64le", "linux/ppc64le"),
        ("macos/arm64", "darwin/arm64/v8"),
        ("arm64", "linux/arm64/v8"),
        ("riscv64", "linux/riscv64"),
    ],
)
def test_parse_platform(text: str, expected: str) -> None:
    assert str(parse_platform(text)) == expected


def test_parse_platform_single_os_uses_host_architecture() -> None:
    assert parse_platform("linux") == host_platform()


@pytest.mark.parametrize("text", ["", "/", "linux/", "linux/amd64/v8/x", "lin ux/amd64", "linux/amd64!", "plan9"])
def test_parse_platform_refuses_bad_text(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid platform"):
        parse_platform(text)


def test_host_platform_is_normalised_linux() -> None:
    host = host_platform()
    assert host.os == "linux"
    assert host == normalize_platform(host)
    assert host.architecture not in ("x86_64", "aarch64")


def test_normalize_platform_uname_spellings() -> None:
    assert normalize_platform(Platform("linux", "armv7l")) == Platform("linux", "arm", "v7")
    assert normalize_platform(Platform("linux", "armv6l")) == Platform("linux", "arm", "v6")
    assert normalize_platform(Platform("linux", "i686")) == Platform("linux", "386")
    assert normalize_platform(Platform("Linux", "X86_64")) == Platform("linux", "amd64")
    assert normalize_platform(Platform("linux", "amd64", os_features=("b", "a", "a"))).os_features == ("a", "b")


@pytest.mark.parametrize(
    ("want", "have", "ok"),
    [
        ("linux/amd64", "linux/amd64", True),
        ("linux/amd64", "linux/x86_64", True),
        ("linux/amd64", "linux/386", True),
        ("linux/amd64", "linux/arm64", False),
        ("linux/amd64", "linux/amd64/v2", False),
        ("linux/amd64/v3", "linux/amd64/v2", True),
        ("linux/amd64/v3", "linux/amd64", True),
        ("linux/amd64/v2", "linux/amd64/v3", False),
        ("linux/386", "linux/amd64", False),
        ("linux/arm64", "linux/aarch64", True),
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64", "linux/arm/v7", True),
        ("linux/arm64/v9", "linux/arm64/v8", True),
        ("linux/arm/v7", "linux/arm/v7", True),
        ("linux/arm/v7", "linux/armhf", True),
        ("linux/arm/v7", "linux/arm/v6", True),
        ("linux/arm/v7", "linux/armel", True),
        ("linux/arm/v7", "linux/arm/v5", True),
        ("linux/arm/v7", "linux/arm", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/arm/v7", "linux/arm64", False),
        ("linux/amd64", "windows/amd64", False),
    ],
)
def test_platform_matches(want: str, have: str, ok: bool) -> None:
    assert platform_matches(parse_platform(want), parse_platform(have)) is ok


def test_platform_matches_normalises_raw_platforms() -> None:
    assert platform_matches(Platform("linux", "x86_64"), Platform("linux", "amd64"))
    assert platform_matches(Platform("linux", "aarch64"), Platform("linux", "arm64", "v8"))


def test_os_features_and_version() -> None:
    want = Platform("windows", "amd64", None, "10.0.17763", ("win32k",))
    assert platform_matches(want, Platform("windows", "amd64", None, "10.0.17763", ("win32k",)))
    assert platform_matches(want, Platform("windows", "amd64"))
    assert not platform_matches(want, Platform("windows", "amd64", None, "10.0.14393"))
    assert not platform_matches(Platform("windows", "amd64"), Platform("windows", "amd64", None, None, ("win32k",)))


# --- select_manifest --------------------------------------------------------------------------------------


def test_select_exact_match_first() -> None:
    idx = index_of(entry(1, "arm64", variant="v8"), entry(2, "amd64"), entry(3, "amd64"))
    assert select_manifest(idx, parse_platform("linux/amd64")).digest == dg(2)
    assert select_manifest(idx, parse_platform("linux/aarch64")).digest == dg(1)


def test_select_normalises_entry_platforms() -> None:
    idx = index_of(entry(1, "x86_64"), entry(2, "aarch64"), entry(3, "armhf"))
    assert select_manifest(idx, Platform("linux", "amd64")).digest == dg(1)
    assert select_manifest(idx, Platform("linux", "arm64")).digest == dg(2)
    assert select_manifest(idx, Platform("linux", "arm", "v7")).digest == dg(3)


def test_select_prefers_exact_over_earlier_fallback() -> None:
    idx = index_of(entry(1, "386"), entry(2, "arm", variant="v6"), entry(3, "arm", variant="v7"), entry(4, "amd64"))
    assert select_manifest(idx, parse_platform("linux/amd64")).digest == dg(4)
    assert select_manifest(idx, parse_platform("linux/arm/v7")).digest == dg(3)


def test_select_fallbacks_ranked() -> None:
    idx = index_of(entry(1, "arm", variant="v5"), entry(2, "arm", variant="v6"), entry(3, "386"))
    assert select_manifest(idx, parse_platform("linux/arm/v7")).digest == dg(2)
    assert select_manifest(idx, parse_platform("linux/arm64")).digest == dg(2)
    assert select_manifest(idx, parse_platform("linux/amd64")).digest == dg(3)


def test_select_skips_entries_without_platform_and_nested_indexes() -> None:
    idx = index_of(desc(OCI_MANIFEST, 1), entry(2, "amd64", mt=OCI_INDEX), entry(3, "amd64"))
    assert select_manifest(idx, parse_platform("linux/amd64")).digest == dg(3)


def test_select_no_match_lists_available_platforms() -> None:
    idx = index_of(
        entry(1, "arm64", variant="v8"),
        entry(2, "arm", variant="v7"),
        entry(3, "unknown", os="unknown"),
        entry(4, "aarch64"),
    )
    with pytest.raises(ManifestInvalid) as info:
        select_manifest(idx, parse_platform("linux/amd64"))
    assert str(info.value) == (
        "no matching manifest for linux/amd64 in the manifest list entries (available: linux/arm64/v8, linux/arm/v7)"
    )
    with pytest.raises(ManifestInvalid, match=r"\(available: none\)"):
        select_manifest(index_of(), parse_platform("linux/amd64"))


# --- image config -----------------------------------------------------------------------------------------


def config_json(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "created": "2024-01-02T03:04:05Z",
        "config": {
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": ["sh"],
            "Entrypoint": None,
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "Labels": {"a": "b"},
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": [dg(7), dg(8)]},
        "history": [{"created_by": "ADD rootfs"}, {"created_by": "CMD sh", "empty_layer": True}],
    }
    doc.update(overrides)
    return doc


def test_parse_image_config() -> None:
    cfg = parse_image_config(enc(config_json()))
    assert (cfg.architecture, cfg.os, cfg.variant, cfg.created) == ("arm64", "linux", "v8", "2024-01-02T03:04:05Z")
    assert cfg.config["Cmd"] == ["sh"]
    assert cfg.config["WorkingDir"] == "/srv"
    assert cfg.diff_ids == (dg(7), dg(8))
    assert cfg.history[1]["empty_layer"] is True
    assert cfg.raw["rootfs"]["type"] == "layers"
    assert cfg.platform == Platform("linux", "arm64", "v8")


def test_parse_minimal_image_config() -> None:
    body = enc({"architecture": "amd64", "os": "linux", "config": None, "rootfs": {"type": "layers", "diff_ids": []}})
    cfg = parse_image_config(body)
    assert cfg.config == {}
    assert (cfg.variant, cfg.created, cfg.diff_ids, cfg.history) == (None, None, (), ())


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"nope", "image config is not valid JSON"),
        (b"[1]", "image config is not a JSON object"),
        (b'{"os": "linux", "os": "windows"}', "image config has duplicate key 'os'"),
        (enc(config_json(architecture=None)), "image config has no architecture"),
        (enc(config_json(os="")), "image config has no os"),
        (enc(config_json(variant=7)), "image config variant must be a string"),
        (enc(config_json(created=1)), "image config created must be a string"),
        (enc(config_json(config=[])), "image config config must be an object"),
        (enc(config_json(config={"Env": "PATH=/bin"})), "config.Env must be a list of strings"),
        (enc(config_json(config={"Cmd": ["sh", 1]})), "config.Cmd must be a list of strings"),
        (enc(config_json(config={"WorkingDir": 5})), "config.WorkingDir must be a string"),
        (enc(config_json(config={"Labels": {"a": 1}})), "config.Labels must be an object of strings"),
        (enc(config_json(config={"ExposedPorts": ["80/tcp"]})), "config.ExposedPorts must be an object"),
        (enc(config_json(rootfs=None)), "image config has no rootfs object"),
        (enc(config_json(rootfs={"type": "layers+base", "diff_ids": []})), "rootfs.type must be 'layers'"),
        (enc(config_json(rootfs={"type": "layers"})), "rootfs.diff_ids must be a list"),
        (enc(config_json(rootfs={"type": "layers", "diff_ids": [dg(1), "sha256:xyz"]})), "diff_ids[1] is not a sha256"),
        (enc(config_json(history={"a": 1})), "image config history must be a list of objects"),
        (enc(config_json(history=["x"])), "image config history must be a list of objects"),
    ],
)
def test_malformed_image_configs(body: bytes, fragment: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_image_config(body)
    assert fragment in str(info.value)
