"""``oci://...?platform=os/arch``: an image without that platform is an error
(404 ``PLATFORM_UNAVAILABLE``) naming the platforms it has, as
``docker pull --platform`` refuses it; never a silent success with another
platform. Images pushed to a real docker-registry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import (
    DOCKER_MANIFEST,
    OCI_EMPTY_JSON,
    Blobs,
    push_image_tree,
    random_bytes,
)
from tests.support.registry import Registry
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def registry_gets(reg: Registry, fragment: str) -> int:
    """GET requests the registry logged whose URI contains ``fragment``."""
    return len(
        re.findall(
            rf"http\.request\.method=GET http\.request\.remoteaddr=\S+ "
            rf'http\.request\.uri="[^"]*{re.escape(fragment)}',
            reg.log(),
        )
    )


def assert_unavailable(answer: dict[str, object], wanted: str, has: list[str]) -> None:
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["code"] == "PLATFORM_UNAVAILABLE"
    message = error["message"]
    assert f"does not match the specified platform {wanted}" in message
    for platform in has:
        assert platform in message


def test_an_index_without_the_platform(
    registry: Registry, server: ServerProcess, cache_dir: Path
) -> None:
    blobs = Blobs()
    amd64 = blobs.image("amd64", layers=[random_bytes(5000, 1)])
    armv7 = blobs.image("arm", variant="v7", layers=[random_bytes(5000, 2)])
    push_image_tree(registry.url, "plat/multi", blobs, blobs.index([amd64, armv7]), "v1")
    url = f"oci://{registry.host}/plat/multi:v1?platform=linux/s390x"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 404, r.text
        assert_unavailable(r.json(), "linux/s390x", ["linux/amd64", "linux/arm/v7"])
        ok = c.post("/content/", json={"url": url.replace("s390x", "arm/v7")})
        assert ok.status_code == 201, ok.text
        assert ok.json()["blobs"][1]["digest"] == armv7["digest"]


def test_a_single_image_of_another_architecture(
    registry: Registry, server: ServerProcess, cache_dir: Path
) -> None:
    blobs = Blobs()
    layer = random_bytes(40_000, 3)
    image = blobs.image("amd64", layers=[layer], docker=True)
    assert image["mediaType"] == DOCKER_MANIFEST
    push_image_tree(registry.url, "plat/single", blobs, image, "v1")
    (layer_digest,) = [d for d, v in blobs.items() if v == layer]
    url = f"oci://{registry.host}/plat/single:v1"
    with server.client() as c:
        r = c.post("/content/", json={"url": url + "?platform=linux/arm64"})
        assert r.status_code == 404, r.text
        assert_unavailable(r.json(), "linux/arm64", ["linux/amd64"])
        assert registry_gets(registry, layer_digest) == 0  # refused before any layer
        listed = {e["url"]: e for e in c.get("/content/").json()["entries"]}
        assert listed.get(url + "?platform=linux/arm64", {}).get("state") != "complete"
        # Its own platform is fine; the config read for the check is not fetched twice.
        before = registry_gets(registry, "/blobs/")
        ok = c.post("/content/", json={"url": url + "?platform=linux/amd64"})
        assert ok.status_code == 201, ok.text
        assert ok.json()["digest"] == image["digest"]
        assert registry_gets(registry, "/blobs/") - before == 2  # the config, the layer


def test_an_artifact_without_a_platform_is_not_refused(
    registry: Registry, server: ServerProcess
) -> None:
    blobs = Blobs()
    empty = blobs.add_blob(b"{}", OCI_EMPTY_JSON)
    layer = blobs.add_blob(b"weights", "application/octet-stream")
    top = blobs.image_manifest(empty, [layer], artifact_type="application/vnd.example.model")
    push_image_tree(registry.url, "plat/artifact", blobs, top, "v1")
    url = f"oci://{registry.host}/plat/artifact:v1?platform=linux/arm64"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
