"""The registry test fixtures work: a real docker-registry 2.8, its token server, and the image
builders / pushers in ``tests.support.images`` (skopeo, oras-py, raw distribution API).

These also pin down how registry 2.8 behaves, which the ``oci://`` downloader relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Blobs,
    PushError,
    build_layout,
    digest_of,
    download_blob,
    fetch_blob,
    fetch_manifest,
    head_manifest,
    oras_push_artifact,
    push_image_tree,
    push_raw,
    random_bytes,
    random_file,
    skopeo_copy,
)
from tests.support.registry import (
    TOKEN_SERVICE,
    Registry,
    TokenServer,
    write_htpasswd,
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    with TokenServer(
        tmp_path / "token",
        users={"alice": "wonderland"},
        bearer_secrets={"ci-secret"},
        anonymous_pull=True,
    ) as ts:
        yield ts


@pytest.fixture
def token_registry(tmp_path: Path, token_server: TokenServer) -> Iterator[Registry]:
    with Registry.for_token_server(tmp_path / "registry", token_server) as reg:
        yield reg


def _client() -> httpx.Client:
    return httpx.Client(timeout=30, trust_env=False)


def _two_platform_index(blobs: Blobs) -> dict[str, Any]:
    amd64 = blobs.image("amd64", layers=[random_bytes(4096, 1), random_bytes(100, 2)])
    arm64 = blobs.image("arm64", variant="v8", gzip_layers=True, layers=[b"arm64 payload"])
    return blobs.index([amd64, arm64])


def test_plain_registry(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    with _client() as c:
        r = c.get(f"{registry.url}/v2/")
        assert r.status_code == 200
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        # A missing tag (even in a repository that doesn't exist) is MANIFEST_UNKNOWN.
        r = c.get(f"{registry.url}/v2/no/such/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 404
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        r = c.get(f"{registry.url}/v2/no/such/blobs/{digest_of(b'x')}")
        assert r.status_code == 404
        assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert "listening on" in registry.log()


def test_skopeo_pushes_oci_index_byte_for_byte(registry: Registry, tmp_path: Path) -> None:
    blobs = Blobs()
    top = _two_platform_index(blobs)
    layout = build_layout(tmp_path / "layout", blobs, {"v1": top})
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    digest = skopeo_copy(layout, "v1", registry.host, "skopeo/multi:v1")
    assert digest == top["digest"]

    body, media_type, got = fetch_manifest(registry.url, "skopeo/multi", "v1")
    assert (body, media_type, got) == (blobs.bytes_of(digest), OCI_INDEX, digest)
    platforms = []
    for child in json.loads(body)["manifests"]:
        platforms.append(child["platform"])
        cbody, ctype, cdigest = fetch_manifest(registry.url, "skopeo/multi", child["digest"])
        assert (cbody, ctype, cdigest) == (blobs.bytes_of(child["digest"]), OCI_MANIFEST, cdigest)
        manifest = json.loads(cbody)
        for desc in [manifest["config"], *manifest["layers"]]:
            data = fetch_blob(registry.url, "skopeo/multi", desc["digest"])
            assert data == blobs.bytes_of(desc["digest"])
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]


def test_registry_manifest_and_blob_headers(registry: Registry) -> None:
    """Registry 2.8 quirks the downloader must cope with."""
    blobs = Blobs()
    top = _two_platform_index(blobs)
    push_image_tree(registry.url, "quirks/img", blobs, top, "v1")
    child = json.loads(blobs.bytes_of(top["digest"]))["manifests"][0]
    layer = json.loads(blobs.bytes_of(child["digest"]))["layers"][0]
    with _client() as c:
        # Without the right media type in Accept, an OCI index / manifest is a 404
        # MANIFEST_UNKNOWN (not 406), even with */* or no Accept at all.
        for accept in (None, "*/*", OCI_MANIFEST, DOCKER_MANIFEST):
            headers = {"Accept": accept} if accept else {}
            r = c.get(f"{registry.url}/v2/quirks/img/manifests/v1", headers=headers)
            assert r.status_code == 404, accept
            assert "accept header does not support OCI indexes" in r.text
        r = c.get(f"{registry.url}/v2/quirks/img/manifests/{child['digest']}")
        assert r.status_code == 404
        assert "accept header does not support OCI manifests" in r.text
        # With it: the exact bytes, Content-Type, Docker-Content-Digest and a quoted ETag.
        r = c.get(
            f"{registry.url}/v2/quirks/img/manifests/v1",
            headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"},
        )
        assert r.status_code == 200
        assert r.headers["content-type"] == OCI_INDEX
        assert r.headers["docker-content-digest"] == top["digest"]
        assert r.headers["etag"] == f'"{top["digest"]}"'
        assert r.content == blobs.bytes_of(top["digest"])
        h = head_manifest(registry.url, "quirks/img", "v1")
        assert h.status_code == 200
        assert h.headers["content-length"] == str(top["size"])
        # Blobs are served directly (filesystem storage: no redirect), with ranges.
        r = c.get(f"{registry.url}/v2/quirks/img/blobs/{layer['digest']}")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["docker-content-digest"] == layer["digest"]
        assert r.headers["accept-ranges"] == "bytes"
        r = c.get(
            f"{registry.url}/v2/quirks/img/blobs/{layer['digest']}",
            headers={"Range": "bytes=10-19"},
        )
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 10-19/{layer['size']}"
        assert r.content == blobs.bytes_of(layer["digest"])[10:20]
        # A manifest is not readable through the blobs endpoint of registry 2.8.
        r = c.get(f"{registry.url}/v2/quirks/img/blobs/{child['digest']}")
        assert r.status_code == 404


def test_push_raw_docker_manifest_list(registry: Registry) -> None:
    blobs = Blobs()
    amd64 = blobs.image("amd64", docker=True, gzip_layers=True, layers=[b"a" * 300])
    arm64 = blobs.image("arm64", docker=True, gzip_layers=True, layers=[b"b" * 300])
    top = blobs.index([amd64, arm64], DOCKER_MANIFEST_LIST)

    # push_raw directly: the blobs, then each child by digest, then the list by tag.
    plain = {d: v for d, v in blobs.items() if d not in (amd64["digest"], arm64["digest"])}
    plain.pop(top["digest"])
    for child in (amd64, arm64):
        got = push_raw(
            registry.url,
            "raw/list",
            plain,
            blobs.bytes_of(child["digest"]),
            DOCKER_MANIFEST,
            child["digest"],
        )
        assert got == child["digest"]
    got = push_raw(
        registry.url, "raw/list", {}, blobs.bytes_of(top["digest"]), DOCKER_MANIFEST_LIST, "v1"
    )
    assert got == top["digest"]

    body, media_type, digest = fetch_manifest(registry.url, "raw/list", "v1")
    assert (body, media_type, digest) == (blobs.bytes_of(top["digest"]), DOCKER_MANIFEST_LIST, got)
    body, media_type, _ = fetch_manifest(registry.url, "raw/list", amd64["digest"])
    assert (body, media_type) == (blobs.bytes_of(amd64["digest"]), DOCKER_MANIFEST)
    # Without the list type in Accept, 2.8 answers the linux/amd64 child instead (and
    # converts it to schema 1 if schema 2 isn't accepted either).
    body, media_type, digest = fetch_manifest(
        registry.url, "raw/list", "v1", accept=(DOCKER_MANIFEST,)
    )
    assert (media_type, digest) == (DOCKER_MANIFEST, amd64["digest"])

    # A manifest whose blobs are missing is refused.
    lone = Blobs()
    desc = lone.image("amd64")
    with pytest.raises(PushError, match="MANIFEST_BLOB_UNKNOWN"):
        push_raw(registry.url, "raw/lone", {}, lone.bytes_of(desc["digest"]), OCI_MANIFEST, "x")


def test_oras_push_artifact(registry: Registry) -> None:
    files = {"model.safetensors": random_bytes(2000, 7), "README.md": b"# model\n"}
    digest = oras_push_artifact(
        registry.host, "oras/model:v1", files, "application/vnd.example.model.v1+json"
    )
    body, media_type, got = fetch_manifest(registry.url, "oras/model", "v1")
    assert got == digest == digest_of(body)
    # oras-py 0.2.x: an OCI image manifest, no artifactType; the artifact type is the media
    # type of the 2-byte "{}" config; one layer per file, named by the title annotation.
    assert media_type == OCI_MANIFEST
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert "artifactType" not in manifest
    assert manifest["config"] == {
        "mediaType": "application/vnd.example.model.v1+json",
        "size": 2,
        "digest": digest_of(b"{}"),
    }
    titles = {
        layer["annotations"]["org.opencontainers.image.title"]: layer
        for layer in manifest["layers"]
    }
    assert set(titles) == set(files)
    for name, layer in titles.items():
        assert layer["mediaType"] == OCI_LAYER_TAR
        assert fetch_blob(registry.url, "oras/model", layer["digest"]) == files[name]


def test_token_anonymous_pull(
    token_registry: Registry, token_server: TokenServer, tmp_path: Path
) -> None:
    blobs = Blobs()
    top = blobs.image("amd64")
    push_image_tree(
        token_registry.url,
        "tok/img",
        blobs,
        top,
        "v1",
        token_server.bearer("repository:tok/img:pull,push"),
    )
    realm = token_server.realm
    with _client() as c:
        r = c.get(f"{token_registry.url}/v2/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            f'Bearer realm="{realm}",service="{TOKEN_SERVICE}"'
        )
        r = c.get(f"{token_registry.url}/v2/tok/img/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            f'Bearer realm="{realm}",service="{TOKEN_SERVICE}",scope="repository:tok/img:pull"'
        )
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"

        token_server.clear()
        r = c.get(realm, params={"service": TOKEN_SERVICE, "scope": "repository:tok/img:pull"})
        assert r.status_code == 200
        answer = r.json()
        assert answer["token"] == answer["access_token"]
        assert answer["expires_in"] == 300
        assert [req.authorization for req in token_server.requests] == [None]
        assert token_server.requests[0].query["scope"] == ["repository:tok/img:pull"]
        bearer = f"Bearer {answer['token']}"

    body, media_type, digest = fetch_manifest(token_registry.url, "tok/img", "v1", bearer)
    assert (body, media_type, digest) == (blobs.bytes_of(top["digest"]), OCI_MANIFEST, digest)
    config = json.loads(body)["config"]["digest"]
    assert fetch_blob(token_registry.url, "tok/img", config, bearer) == blobs.bytes_of(config)

    # Anonymous tokens are pull-only, whatever is asked for.
    with _client() as c:
        r = c.get(
            token_server.realm,
            params={"service": TOKEN_SERVICE, "scope": "repository:tok/img:pull,push"},
        )
        push_bearer = f"Bearer {r.json()['token']}"
    with pytest.raises(PushError, match='error="insufficient_scope"'):
        push_raw(token_registry.url, "tok/img", {}, body, OCI_MANIFEST, "v2", push_bearer)


def test_token_authenticated_push(
    token_registry: Registry, token_server: TokenServer, tmp_path: Path
) -> None:
    scope = "repository:tok/pushed:pull,push"
    with _client() as c:
        params = {"service": TOKEN_SERVICE, "scope": scope}
        assert c.get(token_server.realm, params=params, auth=("alice", "wrong")).status_code == 401
        assert (
            c.get(
                token_server.realm, params=params, headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        r = c.get(token_server.realm, params=params, auth=("alice", "wonderland"))
        assert r.status_code == 200
        alice = f"Bearer {r.json()['token']}"
        r = c.get(token_server.realm, params=params, headers={"Authorization": "Bearer ci-secret"})
        assert r.status_code == 200
        ci = f"Bearer {r.json()['token']}"
        # OAuth2 password grant, as containerd / oras-go post it.
        r = c.post(
            token_server.realm,
            data={
                "grant_type": "password",
                "username": "alice",
                "password": "wonderland",
                "service": TOKEN_SERVICE,
                "scope": scope,
                "client_id": "test",
            },
        )
        assert r.status_code == 200
        assert "access_token" in r.json()
    assert [req.status for req in token_server.requests] == [401, 401, 200, 200, 200]
    assert token_server.requests[2].authorization == "Basic YWxpY2U6d29uZGVybGFuZA=="

    blobs = Blobs()
    top = blobs.index([blobs.image("amd64"), blobs.image("arm64")])
    digest = push_image_tree(token_registry.url, "tok/pushed", blobs, top, "v1", alice)
    assert digest == top["digest"]
    other = blobs.image("s390x")
    assert (
        push_image_tree(token_registry.url, "tok/pushed", blobs, other, "v2", ci)
        == (other["digest"])
    )
    body, media_type, _ = fetch_manifest(token_registry.url, "tok/pushed", "v1", ci)
    assert (body, media_type) == (blobs.bytes_of(top["digest"]), OCI_INDEX)

    # skopeo and oras-py run the token flow themselves with user:password.
    layout = build_layout(tmp_path / "layout", blobs, {"v1": top})
    token_server.clear()
    assert skopeo_copy(layout, "v1", token_registry.host, "tok/skopeo:v1", creds="alice:wonderland")
    assert token_server.requests_with_auth()
    token_server.clear()
    digest = oras_push_artifact(
        token_registry.host, "tok/oras:v1", {"f": b"x"}, username="alice", password="wonderland"
    )
    assert token_server.requests_with_auth()
    reader = token_server.bearer("repository:tok/oras:pull")
    assert fetch_manifest(token_registry.url, "tok/oras", "v1", reader)[2] == digest
    digest = oras_push_artifact(
        token_registry.host,
        "tok/oras:v2",
        {"g": b"z"},
        token=token_server.issue_token("repository:tok/oras:pull,push"),
    )
    assert fetch_manifest(token_registry.url, "tok/oras", "v2", reader)[2] == digest


def test_htpasswd_registry(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"bob": "builder"})
    with Registry(tmp_path / "registry", auth="htpasswd", htpasswd=htpasswd) as reg, _client() as c:
        r = c.get(f"{reg.url}/v2/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="storage-manager-test-registry"'
        assert c.get(f"{reg.url}/v2/", auth=("bob", "wrong")).status_code == 401
        assert c.get(f"{reg.url}/v2/", auth=("bob", "builder")).status_code == 200
        blobs = Blobs()
        top = blobs.image("amd64")
        basic = "Basic Ym9iOmJ1aWxkZXI="
        assert push_image_tree(reg.url, "basic/img", blobs, top, "v1", basic) == top["digest"]
        assert fetch_manifest(reg.url, "basic/img", "v1", basic)[0] == blobs.bytes_of(top["digest"])
        # oras-py with user:password against a Basic registry.
        digest = oras_push_artifact(
            reg.host, "basic/oras:v1", {"f": b"y"}, username="bob", password="builder"
        )
        assert fetch_manifest(reg.url, "basic/oras", "v1", basic)[2] == digest


@pytest.mark.slow
def test_large_layer_push(registry: Registry, tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    layer_path = tmp_path / "layer.bin"
    layer_digest, _ = random_file(layer_path, size, seed=64)
    blobs = Blobs()
    layer = blobs.add_blob(layer_path, OCI_LAYER_TAR)  # streamed from the file
    assert layer["digest"] == layer_digest
    config = blobs.config("amd64", "linux", [layer_digest])
    manifest = blobs.image_manifest(config, [layer])
    plain = {d: v for d, v in blobs.items() if d != manifest["digest"]}
    got = push_raw(
        registry.url, "big/img", plain, blobs.bytes_of(manifest["digest"]), OCI_MANIFEST, "v1"
    )
    assert got == manifest["digest"]
    assert head_manifest(registry.url, "big/img", "v1").status_code == 200
    with _client() as c:
        r = c.head(f"{registry.url}/v2/big/img/blobs/{layer_digest}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
    assert download_blob(registry.url, "big/img", layer_digest, tmp_path / "out.bin") == (
        layer_digest,
        size,
    )
