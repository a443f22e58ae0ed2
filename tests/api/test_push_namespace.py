"""Pushed names and the names of downloads never meet (issue 18, item 8).

A push (``--allow-push``) to a name a download is served under, or to a name
of the form downloads of http(s) URLs get (first component a host), is
refused with 403 DENIED and changes nothing; a download whose name is already
a pushed repository does not take it from the push (and is served under it
again once the push is removed). All through real HTTP against the server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.fetch.ociref import Platform
from proxy.naming import reference_for_url
from proxy.types import MEDIA_TYPE_IMAGE_MANIFEST
from tests.support.images import Blobs, digest_of, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source


def b64(url: str) -> str:
    return base64.urlsafe_b64encode(url.encode()).decode()


def oci_error(r: httpx.Response) -> tuple[str, str]:
    err = r.json()["errors"][0]
    return err["code"], err["message"]


def push(c: httpx.Client, name: str, tag: str, seed: int) -> httpx.Response:
    """Push a one-layer artifact as ``name:tag``: the manifest PUT's answer
    (the blobs are uploaded under another name, the cache being one store)."""
    layer = random_bytes(2000, seed)
    config = b"{}"
    for data in (layer, config):
        r = c.post(
            "/v2/uploads/here/blobs/uploads/", params={"digest": digest_of(data)}, content=data
        )
        assert r.status_code == 201, r.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": "application/vnd.test.thing",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": digest_of(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": digest_of(layer),
                "size": len(layer),
            }
        ],
    }
    return c.put(
        f"/v2/{name}/manifests/{tag}",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": MEDIA_TYPE_IMAGE_MANIFEST},
    )


def assert_denied(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    code, message = oci_error(r)
    assert code == "DENIED"
    assert "downloaded content" in message


def urls(c: httpx.Client) -> set[str]:
    return {e["url"] for e in c.get("/content/").json()["entries"]}


def manifest_digest(c: httpx.Client, name: str, tag: str) -> str | None:
    r = c.get(f"/v2/{name}/manifests/{tag}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    digest: str = r.headers["Docker-Content-Digest"]
    return digest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "files"
    d.mkdir()
    return d


@pytest.fixture
def srv(tmp_path: Path, root: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "cache", "--allow-push", "--allow-file-import", str(root)) as s:
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def test_a_push_to_the_name_of_an_http_entry_is_refused_and_the_entry_still_served(
    c: httpx.Client, source: Source
) -> None:
    source.add_file("/k", b"downloaded bytes")
    url = source.url("/k")
    r = c.post("/content/", json={"url": url})
    assert r.status_code == 201, r.text
    name, tag = r.json()["reference"].rsplit(":", 1)
    assert tag == "latest" and name.endswith("/k")  # 127.0.0.1-<port>/k
    served = manifest_digest(c, name, tag)
    assert served == r.json()["manifestDigest"]

    assert_denied(push(c, name, "latest", 1))
    assert_denied(push(c, name, "other-tag", 2))
    assert_denied(c.post(f"/v2/{name}/blobs/uploads/"))
    # Unchanged: the download is still served under its name, and nothing was added.
    assert manifest_digest(c, name, tag) == served
    assert urls(c) == {url}


def test_host_names_are_never_pushed_even_without_a_download(
    c: httpx.Client, source: Source
) -> None:
    source.add_file("/later", b"not fetched yet")
    url = source.url("/later")
    name = reference_for_url(url).rsplit(":", 1)[0]
    for pushed in (name, "example.com/models/m", "localhost/x", "localhost-5000/x"):
        assert_denied(push(c, pushed, "latest", 3))
        assert manifest_digest(c, pushed, "latest") is None
    assert urls(c) == set()
    # The download, when it comes, has its name.
    r = c.post("/content/", json={"url": url})
    assert r.status_code == 201, r.text
    assert manifest_digest(c, name, "latest") == r.json()["manifestDigest"]
    # Names with a dot or a port-like suffix further on are ordinary push names.
    r = push(c, "team-2/models.v1", "v1", 4)
    assert r.status_code == 201, r.text


def file_name(root: Path) -> tuple[str, str]:
    """A file under ``root`` and the /v2 name its file:// download gets."""
    path = root / "m.bin"
    path.write_bytes(b"a local file")
    url = path.as_uri()
    name = reference_for_url(url).rsplit(":", 1)[0]
    first = name.split("/", 1)[0]
    assert "." not in first and not first.startswith("localhost"), name  # a push name
    return url, name


def test_a_push_to_the_name_of_a_file_download_is_refused(c: httpx.Client, root: Path) -> None:
    url, name = file_name(root)
    r = c.post("/content/", json={"url": url})
    assert r.status_code == 201, r.text
    downloaded = r.json()["manifestDigest"]
    assert_denied(push(c, name, "latest", 5))
    assert_denied(push(c, name, "v2", 6))
    assert manifest_digest(c, name, "latest") == downloaded
    assert c.get(f"/v2/{name}/tags/list").json()["tags"] == ["latest"]


def test_a_download_named_like_a_pushed_repository_leaves_the_name_to_the_push(
    c: httpx.Client, root: Path
) -> None:
    url, name = file_name(root)
    r = push(c, name, "latest", 7)
    assert r.status_code == 201, r.text
    pushed = r.headers["Docker-Content-Digest"]
    assert push(c, name, "v2", 8).status_code == 201

    r = c.post("/content/", json={"url": url})
    assert r.status_code == 201, r.text  # the download itself is made
    downloaded = r.json()["manifestDigest"]
    assert downloaded != pushed
    # ... but the push keeps its name: not shadowed (the same tag stays the
    # pushed one, not 404), and the download's tag is not mixed into it.
    assert manifest_digest(c, name, "latest") == pushed
    assert c.get(f"/v2/{name}/tags/list").json()["tags"] == ["latest", "v2"]
    assert url in urls(c)

    # Once the push is removed, the download is served under its name.
    for tag in ("latest", "v2"):
        r = c.delete(f"/content/{b64(f'oci-push://{name}:{tag}')}")
        assert r.status_code in (200, 204), r.text
    assert manifest_digest(c, name, "latest") == downloaded
    assert_denied(push(c, name, "latest", 9))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("upstream") / "registry") as reg:
        blobs = Blobs()
        image = blobs.image(Platform.running().architecture, layers=[b"one layer"])
        push_image_tree(reg.url, "team/app", blobs, image, "v1")
        yield reg


def test_a_push_to_the_repository_of_an_image_pulled_from_a_registry_is_refused(
    c: httpx.Client, registry: Registry
) -> None:
    r = c.post("/content/", json={"url": f"oci://{registry.host}/team/app:v1"})
    assert r.status_code == 201, r.text
    pulled = r.json()["manifestDigest"]
    assert_denied(push(c, "team/app", "v1", 10))
    assert_denied(push(c, "team/app", "mine", 11))
    assert manifest_digest(c, "team/app", "v1") == pulled


def test_an_imported_push_is_held_to_the_same_rule(
    tmp_path: Path, srv: ServerProcess, c: httpx.Client, root: Path
) -> None:
    url, name = file_name(root)
    r = push(c, name, "latest", 12)
    assert r.status_code == 201, r.text
    pushed_url = f"oci-push://{name}:latest"
    bundle = tmp_path / "bundle.tar"
    r2 = run_cli("export", pushed_url, "-o", str(bundle), "--cache-dir", str(srv.cache_dir))
    assert r2.returncode == 0, r2.stderr
    assert c.delete(f"/content/{b64(pushed_url)}").status_code in (200, 204)
    r = c.post("/content/", json={"url": url})
    assert r.status_code == 201, r.text
    downloaded = r.json()["manifestDigest"]

    address = srv.base_url.removeprefix("http://")  # this server, not the default address
    r2 = run_cli(
        "import", str(bundle), "--cache-dir", str(srv.cache_dir), "--address", address, timeout=60
    )
    assert r2.returncode != 0
    assert "downloaded content" in r2.stdout + r2.stderr
    assert pushed_url not in urls(c)
    assert manifest_digest(c, name, "latest") == downloaded
