"""Tag, manifest and blob DELETE through /v2 with --allow-push (and the
token rules of pushes), against the real server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
TOKEN = "delete-token-0123456789"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    cache = tmp_path_factory.mktemp("deletes") / "cache"
    with ServerProcess(cache, "--allow-push") as srv, srv.client() as client:
        yield client


def push_blob(c: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    r = c.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    assert r.status_code == 201, r.text
    return {"mediaType": LAYER, "digest": sha256(data), "size": len(data)}


def push_image(c: httpx.Client, name: str, ref: str, layer: bytes) -> tuple[bytes, str, str]:
    """(manifest bytes, config digest, layer digest) of an image pushed as ``name:ref``."""
    config = push_blob(c, name, json.dumps({"os": "linux", "name": name}).encode())
    layer_desc = push_blob(c, name, layer)
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {**config, "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [layer_desc],
    }
    data = json.dumps(doc).encode()
    r = c.put(f"/v2/{name}/manifests/{ref}", content=data, headers={"Content-Type": MANIFEST})
    assert r.status_code == 201, r.text
    return data, config["digest"], layer_desc["digest"]


def code(r: httpx.Response) -> str:
    return str(r.json()["errors"][0]["code"])


def test_a_tag_delete_removes_that_tag_only(c: httpx.Client) -> None:
    data, _, layer = push_image(c, "del/tags", "a", b"layer of tags")
    r = c.put("/v2/del/tags/manifests/b", content=data, headers={"Content-Type": MANIFEST})
    assert r.status_code == 201
    r = c.delete("/v2/del/tags/manifests/a")
    assert r.status_code == 202, r.text
    assert c.head("/v2/del/tags/manifests/a").status_code == 404
    assert c.head("/v2/del/tags/manifests/b").status_code == 200
    assert c.get("/v2/del/tags/tags/list").json()["tags"] == ["b"]
    # Still used by tag b: kept.
    assert c.head(f"/v2/del/tags/blobs/{layer}").status_code == 200
    r = c.delete(f"/v2/del/tags/blobs/{layer}")
    assert r.status_code == 405 and code(r) == "UNSUPPORTED", r.text
    assert "oci-push://del/tags:b" in r.json()["errors"][0]["message"]
    assert c.delete("/v2/del/tags/manifests/a").status_code == 404


def test_a_manifest_delete_removes_its_tags_and_then_its_blobs_go(c: httpx.Client) -> None:
    data, config, layer = push_image(c, "del/man", "v1", b"layer of man")
    digest = sha256(data)
    r = c.put(f"/v2/del/man/manifests/{digest}", content=data, headers={"Content-Type": MANIFEST})
    assert r.status_code == 201
    r = c.delete(f"/v2/del/man/manifests/{digest}")
    assert r.status_code == 202, r.text
    for ref in ("v1", digest):
        assert c.head(f"/v2/del/man/manifests/{ref}").status_code == 404
    # Nothing uses its blobs any more: gone from every repository.
    for d in (config, layer):
        assert c.head(f"/v2/any/where/blobs/{d}").status_code == 404
        assert c.delete(f"/v2/del/man/blobs/{d}").status_code == 404
    assert c.delete(f"/v2/del/man/manifests/{digest}").status_code == 404


def test_an_unreferenced_pushed_blob_is_deleted_everywhere(c: httpx.Client) -> None:
    desc = push_blob(c, "del/blob", b"alone")
    r = c.delete(f"/v2/del/blob/blobs/{desc['digest']}")
    assert r.status_code == 202, r.text
    assert c.head(f"/v2/del/blob/blobs/{desc['digest']}").status_code == 404
    assert c.head(f"/v2/other/repo/blobs/{desc['digest']}").status_code == 404
    # Pushed again: there again.
    push_blob(c, "del/blob", b"alone")
    assert c.head(f"/v2/del/blob/blobs/{desc['digest']}").status_code == 200


def test_a_blob_a_manifest_uses_is_refused(c: httpx.Client) -> None:
    data, config, layer = push_image(c, "del/used", "v1", b"layer used")
    for d in (config, layer, sha256(data)):
        r = c.delete(f"/v2/elsewhere/blobs/{d}")
        assert r.status_code == 405 and code(r) == "UNSUPPORTED", r.text
        assert c.head(f"/v2/del/used/blobs/{d}").status_code == 200
    assert c.get("/v2/del/used/manifests/v1").content == data


def test_deletes_need_the_token(tmp_path: Path) -> None:
    env = {"NEKKO_API_TOKEN": TOKEN}
    with ServerProcess(tmp_path / "cache", "--allow-push", env=env) as srv, srv.client() as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        c.headers.update(auth)
        data, _, layer = push_image(c, "del/tok", "v1", b"token layer")
        del c.headers["Authorization"]
        for path in ("/v2/del/tok/manifests/v1", f"/v2/del/tok/blobs/{layer}"):
            r = c.delete(path)
            assert r.status_code == 401, r.text
        assert c.get("/v2/del/tok/manifests/v1").content == data
        assert c.delete("/v2/del/tok/manifests/v1", headers=auth).status_code == 202
        assert c.get("/v2/del/tok/manifests/v1").status_code == 404


def test_without_push_deletes_stay_unsupported(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "cache") as srv, srv.client() as c:
        r = c.delete(f"/v2/ro/blobs/{sha256(b'x')}")
        assert r.status_code == 405 and code(r) == "UNSUPPORTED"
        assert c.delete("/v2/ro/manifests/v1").status_code == 405
