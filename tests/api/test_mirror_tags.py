"""A --mirror lists upstream's tags (GET /v2/<name>/tags/list), with the
cached ones, against a real docker-registry upstream."""

from __future__ import annotations

from pathlib import Path

from tests.support.images import Blobs, push_image_tree
from tests.support.registry import Registry
from tests.support.server import ServerProcess


def test_a_mirror_lists_upstream_tags(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        blobs = Blobs()
        top = blobs.image("amd64", layers=[b"mirror tags layer\n"])
        for tag in ("v1", "v2"):
            push_image_tree(registry.url, "team/tags", blobs, top, tag)
        args = ("--mirror", "--upstream", registry.host)
        with ServerProcess(tmp_path / "cache", *args) as srv, srv.client() as c:
            # Nothing pulled yet: upstream's list.
            r = c.get("/v2/team/tags/tags/list")
            assert r.status_code == 200, r.text
            assert r.json() == {"name": "team/tags", "tags": ["v1", "v2"]}
            r = c.get("/v2/team/tags/tags/list", params={"n": "1"})
            assert r.json()["tags"] == ["v1"] and "last=v1" in r.headers["link"]
            r = c.get("/v2/team/none/tags/list")
            assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
            assert c.get("/v2/team/tags/manifests/v1").status_code == 200
            registry.stop()
            # Upstream gone: the cached tags.
            r = c.get("/v2/team/tags/tags/list")
            assert r.status_code == 200, r.text
            assert r.json()["tags"] == ["v1"]
    finally:
        registry.stop()
