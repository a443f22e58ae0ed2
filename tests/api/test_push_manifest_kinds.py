"""Manifests the OCI conformance suite pushes that were once refused or
served wrong: an empty index, a manifest without a mediaType field, a tag
pushed again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import ServerProcess

INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    cache = tmp_path_factory.mktemp("kinds") / "cache"
    with ServerProcess(cache, "--allow-push") as srv, srv.client() as client:
        yield client


def put(c: httpx.Client, name: str, ref: str, data: bytes, ctype: str) -> httpx.Response:
    return c.put(f"/v2/{name}/manifests/{ref}", content=data, headers={"Content-Type": ctype})


def assert_served(c: httpx.Client, name: str, ref: str, data: bytes, ctype: str) -> None:
    for method in ("GET", "HEAD"):
        r = c.request(method, f"/v2/{name}/manifests/{ref}")
        assert r.status_code == 200, (method, ref, r.text)
        assert r.headers["content-type"] == ctype
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["docker-content-digest"] == sha256(data)
        if method == "GET":
            assert r.content == data


def test_an_empty_index_is_accepted_and_served(c: httpx.Client) -> None:
    data = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}).encode()
    r = put(c, "kinds/empty", "v1", data, INDEX)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == sha256(data)
    assert_served(c, "kinds/empty", "v1", data, INDEX)
    assert_served(c, "kinds/empty", sha256(data), data, INDEX)
    r = put(c, "kinds/empty", sha256(data), data, INDEX)
    assert r.status_code == 201, r.text


def test_a_manifest_without_a_media_type_is_served_as_pushed(c: httpx.Client) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    r = c.post("/v2/kinds/plain/blobs/uploads/", params={"digest": sha256(config)}, content=config)
    assert r.status_code == 201, r.text
    doc = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [],
    }
    data = json.dumps(doc).encode()
    assert put(c, "kinds/plain", "v1", data, DOCKER_MANIFEST).status_code == 201
    assert_served(c, "kinds/plain", "v1", data, DOCKER_MANIFEST)
    assert_served(c, "kinds/plain", sha256(data), data, DOCKER_MANIFEST)


def test_a_tag_pushed_again_serves_the_new_manifest(c: httpx.Client) -> None:
    first = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}).encode()
    second = json.dumps(
        {"schemaVersion": 2, "mediaType": INDEX, "manifests": [], "annotations": {"n": "2"}}
    ).encode()
    assert put(c, "kinds/again", "t", first, INDEX).status_code == 201
    assert_served(c, "kinds/again", "t", first, INDEX)
    assert put(c, "kinds/again", "t", second, INDEX).status_code == 201
    assert_served(c, "kinds/again", "t", second, INDEX)
    assert_served(c, "kinds/again", sha256(second), second, INDEX)
