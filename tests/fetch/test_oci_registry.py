"""oci:// pulls from a real CNCF distribution registry (Debian docker-registry).

Fixtures are pushed with skopeo (from an OCI layout built here), oras-py and
the registry's own push API, then pulled through POST /content and compared
blob by blob with the registry's copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.fetch.ociref import Platform
from tests.conftest import b64
from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Blobs,
    build_layout,
    fetch_blob,
    fetch_manifest,
    oras_push_artifact,
    push_image_tree,
    random_bytes,
    random_file,
    skopeo_copy,
)
from tests.support.registry import Registry, TokenServer, write_htpasswd
from tests.support.server import ServerProcess

NODE = Platform.running()
OTHER_ARCH = "arm64" if NODE.architecture != "arm64" else "amd64"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def blob_path(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":", 1)[1]


def registry_gets(reg: Registry, fragment: str) -> int:
    """GET requests the registry logged whose URI contains ``fragment``."""
    return len(
        re.findall(
            rf"http\.request\.method=GET http\.request\.remoteaddr=\S+ "
            rf'http\.request\.uri="[^"]*{re.escape(fragment)}',
            reg.log(),
        )
    )


def assert_same_as_registry(
    cache: Path, reg: Registry, repo: str, manifest_digest: str
) -> list[str]:
    """Every blob the manifest names is in the cache with the registry's bytes."""
    body, _, _ = fetch_manifest(reg.url, repo, manifest_digest)
    assert blob_path(cache, manifest_digest).read_bytes() == body
    doc = json.loads(body)
    digests = [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]
    for d in digests:
        assert blob_path(cache, d).read_bytes() == fetch_blob(reg.url, repo, d), d
    return digests


def two_platform_index(
    blobs: Blobs, docker: bool = False, big: Path | None = None
) -> dict[str, Any]:
    node_layers: list[Any] = [random_bytes(200_000, 1), random_bytes(1000, 2)]
    if big is not None:
        node_layers.append(big)
    here = blobs.image(NODE.architecture, layers=node_layers, docker=docker)
    there = blobs.image(
        OTHER_ARCH,
        layers=[random_bytes(5000, 3)],
        docker=docker,
        variant="v8" if OTHER_ARCH == "arm64" else None,
    )
    return blobs.index([here, there], DOCKER_MANIFEST_LIST if docker else OCI_INDEX)


@pytest.mark.slow
def test_multi_platform_oci_index_via_skopeo(
    registry: Registry, server: ServerProcess, cache_dir: Path, tmp_path: Path
) -> None:
    blobs = Blobs()
    big = tmp_path / "big-layer"
    random_file(big, 64 * 1024 * 1024 + 123, seed=7)
    top = two_platform_index(blobs, big=big)
    layout = build_layout(tmp_path / "layout", blobs, {"v1": top})
    pushed = skopeo_copy(layout, "v1", registry.host, "ai/model-server:v1")
    assert pushed == top["digest"]
    index = json.loads(blobs.bytes_of(top["digest"]))
    here, there = index["manifests"]
    url = f"oci://{registry.host}/ai/model-server:v1"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == top["digest"] == body["manifestDigest"]
        assert body["reference"] == f"{registry.host}/ai/model-server:v1"
        assert body["mediaType"] == OCI_INDEX
        assert c.get(f"/content/{b64(url)}").status_code == 200
        # Index byte for byte, the node's platform complete, the other absent.
        assert blob_path(cache_dir, top["digest"]).read_bytes() == blobs.bytes_of(top["digest"])
        got = assert_same_as_registry(cache_dir, registry, "ai/model-server", here["digest"])
        assert len(got) == 4
        assert not blob_path(cache_dir, there["digest"]).exists()
        # Another platform is its own entry; blobs already cached are not fetched again.
        before = registry_gets(registry, "/blobs/")
        url2 = f"oci://{registry.host}/ai/model-server:v1?platform=linux/{OTHER_ARCH}"
        r = c.post("/content/", json={"url": url2})
        assert r.status_code == 201, r.text
        other = json.loads(blobs.bytes_of(there["digest"]))
        assert registry_gets(registry, "/blobs/") - before == 1 + len(other["layers"])
        assert_same_as_registry(cache_dir, registry, "ai/model-server", there["digest"])
        # Pulling the first again (new URL form, same content) fetches no blob.
        before = registry_gets(registry, "/blobs/")
        r = c.post(
            "/content/", json={"url": f"oci://{registry.host}/ai/model-server@{top['digest']}"}
        )
        assert r.status_code == 201
        assert registry_gets(registry, "/blobs/") == before
        entries = {e["url"]: e for e in c.get("/content/").json()["entries"]}
        assert set(entries) == {url, url2, f"oci://{registry.host}/ai/model-server@{top['digest']}"}
    index_json = json.loads((cache_dir / "index.json").read_text())
    refs = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index_json["manifests"]}
    assert f"{registry.host}/ai/model-server:v1" in refs
    for p in (cache_dir / "blobs" / "sha256").iterdir():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == p.name


def test_docker_schema2_manifest_list_and_manifest(
    registry: Registry, server: ServerProcess, cache_dir: Path
) -> None:
    blobs = Blobs()
    top = two_platform_index(blobs, docker=True)
    push_image_tree(registry.url, "docker/list", blobs, top, "v2")
    here = json.loads(blobs.bytes_of(top["digest"]))["manifests"][0]
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/docker/list:v2"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == top["digest"]
        assert r.json()["mediaType"] == DOCKER_MANIFEST_LIST
        assert_same_as_registry(cache_dir, registry, "docker/list", here["digest"])
        # A single Docker schema 2 manifest by digest.
        r = c.post("/content/", json={"url": f"oci://{registry.host}/docker/list@{here['digest']}"})
        assert r.status_code == 201, r.text
        assert r.json()["mediaType"] == DOCKER_MANIFEST
        assert r.json()["digest"] == here["digest"]


def test_single_oci_manifest_by_tag(
    registry: Registry, server: ServerProcess, cache_dir: Path
) -> None:
    blobs = Blobs()
    image = blobs.image(NODE.architecture, layers=[random_bytes(10_000, 9)])
    push_image_tree(registry.url, "single/img", blobs, image, "latest")
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/single/img"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == image["digest"]
        assert r.json()["mediaType"] == OCI_MANIFEST
        assert r.json()["reference"] == f"{registry.host}/single/img:latest"
    assert_same_as_registry(cache_dir, registry, "single/img", image["digest"])


def test_oras_artifact(registry: Registry, server: ServerProcess, cache_dir: Path) -> None:
    files = {"model.gguf": random_bytes(50_000, 4), "README.md": b"# model\n"}
    digest = oras_push_artifact(
        registry.host, "models/tiny:q4", files, artifact_type="application/vnd.example.model"
    )
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/models/tiny:q4"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == digest
        titles = {b["title"]: b for b in r.json()["blobs"] if b["title"]}
        assert set(titles) == set(files)
        for name, data in files.items():
            assert Path(titles[name]["path"]).read_bytes() == data
    assert_same_as_registry(cache_dir, registry, "models/tiny", digest)


def test_missing_tag_is_404_with_the_registry_error(
    registry: Registry, server: ServerProcess, cache_dir: Path
) -> None:
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/nothing/here:v9"})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_NOT_FOUND"
        assert "MANIFEST_UNKNOWN" in r.json()["error"]["message"]
        assert c.get(f"/content/{b64(f'oci://{registry.host}/nothing/here:v9')}").status_code == 404
    assert json.loads((cache_dir / "index.json").read_text())["manifests"] == []


def test_invalid_references_are_400_before_any_request(
    registry: Registry, server: ServerProcess
) -> None:
    before = registry.log().count("http.request.uri")
    with server.client() as c:
        for url in (
            f"oci://{registry.host}/Bad/Name:1",
            f"oci://{registry.host}/a@sha256:12",
            f"oci://{registry.host}/a:b:c",
            "oci://bad_host/a:1",
        ):
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 400, (url, r.text)
    assert registry.log().count("http.request.uri") == before


@pytest.fixture
def token_setup(tmp_path: Path) -> Iterator[tuple[TokenServer, Registry]]:
    with (
        TokenServer(
            tmp_path / "token",
            users={"alice": "wonderland"},
            bearer_secrets={"ci-secret"},
            anonymous_pull=False,
        ) as ts,
        Registry.for_token_server(tmp_path / "registry", ts) as reg,
    ):
        yield ts, reg


def test_token_flow_with_credentials(
    token_setup: tuple[TokenServer, Registry], server: ServerProcess, cache_dir: Path
) -> None:
    ts, reg = token_setup
    blobs = Blobs()
    image = blobs.image(NODE.architecture, layers=[random_bytes(30_000, 5)])
    push_image_tree(
        reg.url, "private/img", blobs, image, "v1", ts.bearer("repository:private/img:pull,push")
    )
    url = f"oci://{reg.host}/private/img:v1"
    with server.client() as c:
        # Anonymous: the token server refuses, so does the registry.
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 401, r.text
        # Basic user:pass sent to the realm for a token.
        basic = base64.b64encode(b"alice:wonderland").decode()
        r = c.post("/content/", json={"url": url, "credentials": basic, "credentialsType": "Basic"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == image["digest"]
        assert any(q.authorization == f"Basic {basic}" for q in ts.requests)
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        # A Bearer secret the realm accepts is exchanged for a registry token.
        r = c.post("/content/", json={"url": url, "credentials": "ci-secret"})
        assert r.status_code == 201, r.text
        assert any(q.authorization == "Bearer ci-secret" for q in ts.requests)
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        # A registry token used directly: no trip to the realm.
        n = len(ts.requests)
        direct = ts.issue_token("repository:private/img:pull")
        r = c.post("/content/", json={"url": url, "credentials": direct})
        assert r.status_code == 201, r.text
        assert len(ts.requests) == n
    log = server.log()
    for secret in ("wonderland", basic, "ci-secret", direct):
        assert secret not in log
        for p in cache_dir.rglob("*"):
            if p.is_file() and p.stat().st_size < 10_000_000:
                assert secret.encode() not in p.read_bytes(), p


def test_anonymous_token_flow(tmp_path: Path, server: ServerProcess, cache_dir: Path) -> None:
    with (
        TokenServer(tmp_path / "token", anonymous_pull=True) as ts,
        Registry.for_token_server(tmp_path / "registry", ts) as reg,
    ):
        blobs = Blobs()
        image = blobs.image(NODE.architecture, layers=[random_bytes(20_000, 6)])
        push_image_tree(
            reg.url, "public/img", blobs, image, "v1", ts.bearer("repository:public/img:pull,push")
        )
        with server.client() as c:
            r = c.post("/content/", json={"url": f"oci://{reg.host}/public/img:v1"})
            assert r.status_code == 201, r.text
        scopes = [q.query.get("scope") for q in ts.requests]
        assert ["repository:public/img:pull"] in scopes
        assert all(q.authorization is None for q in ts.requests)


def test_basic_challenge_registry(tmp_path: Path, server: ServerProcess) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"bob": "builder"})
    with Registry(tmp_path / "registry", auth="htpasswd", htpasswd=htpasswd) as reg:
        blobs = Blobs()
        image = blobs.image(NODE.architecture, layers=[b"basic layer"])
        basic = base64.b64encode(b"bob:builder").decode()
        push_image_tree(reg.url, "b/img", blobs, image, "v1", f"Basic {basic}")
        with server.client() as c:
            url = f"oci://{reg.host}/b/img:v1"
            assert c.post("/content/", json={"url": url}).status_code == 401
            r = c.post(
                "/content/", json={"url": url, "credentials": basic, "credentialsType": "Basic"}
            )
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == image["digest"]
