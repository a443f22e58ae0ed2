"""The read-only OCI distribution API (/v2) over the cache."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from proxy.fetch.ociref import Platform
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blobs,
    digest_of,
    push_image_tree,
    random_bytes,
)
from tests.support.registry import Registry
from tests.support.server import ServerProcess
from tests.support.source import Source

NODE = Platform.running()


@attrs.define
class Setup:
    server: ServerProcess
    registry: Registry
    source: Source
    cache: Path
    blobs: Blobs
    top: dict[str, Any]
    here: dict[str, Any]
    file_data: bytes
    file_url: str
    file_ref: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("v2")
    with Registry(work / "registry") as reg, Source() as src:
        blobs = Blobs()
        here = blobs.image(NODE.architecture, layers=[random_bytes(1_500_000, 11), b"small"])
        there = blobs.image("s390x" if NODE.architecture != "s390x" else "amd64", layers=[b"x"])
        top = blobs.index([here, there])
        push_image_tree(reg.url, "team/app", blobs, top, "v1")
        push_image_tree(reg.url, "team/app", blobs, here, "single")
        file_data = os.urandom(100_000)
        src.add_file("/models/tiny.gguf", file_data)
        srv = ServerProcess(work / "cache")
        with srv, srv.client() as c:
            for url in (
                f"oci://{reg.host}/team/app:v1",
                f"oci://{reg.host}/team/app:single",
                src.url("/models/tiny.gguf"),
            ):
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 201, r.text
            file_ref = r.json()["reference"]
            yield Setup(
                srv,
                reg,
                src,
                work / "cache",
                blobs,
                top,
                here,
                file_data,
                src.url("/models/tiny.gguf"),
                file_ref,
            )


def layer_of(s: Setup) -> tuple[str, bytes]:
    manifest = json.loads(s.blobs.bytes_of(s.here["digest"]))
    d = manifest["layers"][0]["digest"]
    return d, s.blobs.bytes_of(d)


def test_base_and_same_listener(setup: Setup) -> None:
    with setup.server.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 200 and r.json() == {}
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        assert c.get("/content/").status_code == 200
        assert c.get("/healthz").status_code == 200


def test_blob_get_and_head(setup: Setup) -> None:
    digest, data = layer_of(setup)
    with setup.server.client() as c:
        for name in ("team/app", "any/other/name", "nydus"):  # the name is not checked
            r = c.get(f"/v2/{name}/blobs/{digest}")
            assert r.status_code == 200
            assert r.content == data
            assert r.headers["content-length"] == str(len(data))
            assert r.headers["docker-content-digest"] == digest
            assert r.headers["content-type"] == "application/octet-stream"
            assert r.headers["accept-ranges"] == "bytes"
            assert "content-encoding" not in r.headers
            assert r.headers["location"] == f"{setup.server.base_url}/v2/{name}/blobs/{digest}"
        h = c.head(f"/v2/team/app/blobs/{digest}")
        assert h.status_code == 200 and h.headers["content-length"] == str(len(data))
        assert h.content == b""
        etag = r.headers["etag"]
        assert etag == f'"{digest}"'
        assert c.get(f"/v2/x/blobs/{digest}", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize(
    ("header", "status", "slice_"),
    [
        ("bytes=0-0", 206, (0, 1)),
        ("bytes=10-4095", 206, (10, 4096)),
        ("bytes=1000000-", 206, (1000000, None)),
        ("bytes=-4096", 206, (-4096, None)),
        ("bytes=1499990-9999999", 206, (1499990, None)),  # end past the blob: clipped
        ("bytes=0-1,5-9", 200, (0, None)),  # several ranges: the whole blob
        ("items=0-5", 200, (0, None)),  # unknown unit: ignored
        ("bytes=abc", 200, (0, None)),  # malformed: ignored
        ("bytes=9-3", 416, (0, 0)),  # last before first: no byte (as Go's net/http)
    ],
)
def test_blob_ranges(
    setup: Setup, header: str, status: int, slice_: tuple[int, int | None]
) -> None:
    digest, data = layer_of(setup)
    expected = data[slice_[0] : slice_[1]]
    with setup.server.client() as c:
        r = c.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
        assert r.status_code == status, r.text
        assert r.content == expected
        assert r.headers["content-length"] == str(len(expected))
        if status == 206:
            start = len(data) - len(expected)
            if slice_[0] >= 0:
                start = slice_[0]
            end = start + len(expected) - 1
            assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"


@pytest.mark.parametrize("header", ["bytes=1500000-", "bytes=99999999-", "bytes=-0"])
def test_unsatisfiable_range(setup: Setup, header: str) -> None:
    digest, data = layer_of(setup)
    size = len(data)
    if header == "bytes=1500000-":
        header = f"bytes={size}-"
    with setup.server.client() as c:
        r = c.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{size}"


def test_manifests_by_tag_and_digest(setup: Setup) -> None:
    reg = setup.registry.host
    with setup.server.client() as c:
        for query in (f"?ns={reg}", ""):
            r = c.get(f"/v2/team/app/manifests/v1{query}")
            assert r.status_code == 200, r.text
            assert r.content == setup.blobs.bytes_of(setup.top["digest"])
            assert r.headers["content-type"] == OCI_INDEX
            assert r.headers["docker-content-digest"] == setup.top["digest"]
            assert r.headers["content-length"] == str(len(r.content))
        h = c.head(f"/v2/team/app/manifests/v1?ns={reg}")
        assert h.status_code == 200 and h.headers["content-length"] == str(setup.top["size"])
        r = c.get(f"/v2/team/app/manifests/{setup.here['digest']}")
        assert r.status_code == 200 and r.headers["content-type"] == OCI_MANIFEST
        assert r.content == setup.blobs.bytes_of(setup.here["digest"])
        # Another registry named with ns: not here.
        r = c.get("/v2/team/app/manifests/v1?ns=docker.io")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        # The other platform of the index is legitimately absent.
        other = json.loads(setup.blobs.bytes_of(setup.top["digest"]))["manifests"][1]["digest"]
        assert c.get(f"/v2/team/app/manifests/{other}").status_code == 404
        # An http entry is served under its reference, with oras' layout.
        name, tag = setup.file_ref.rsplit(":", 1)
        r = c.get(f"/v2/{name}/manifests/{tag}")
        assert r.status_code == 200 and r.headers["content-type"] == OCI_MANIFEST
        layer = json.loads(r.content)["layers"][0]
        assert layer["annotations"]["org.opencontainers.image.title"] == "tiny.gguf"
        assert c.get(f"/v2/{name}/blobs/{layer['digest']}").content == setup.file_data


def test_tags_and_catalog(setup: Setup) -> None:
    name = setup.file_ref.rsplit(":", 1)[0]
    with setup.server.client() as c:
        tags = c.get("/v2/team/app/tags/list").json()
        assert tags == {"name": "team/app", "tags": ["single", "v1"]}
        r = c.get("/v2/team/app/tags/list?n=1")
        assert r.json()["tags"] == ["single"]
        assert 'rel="next"' in r.headers["link"]
        assert c.get("/v2/team/app/tags/list?n=1&last=single").json()["tags"] == ["v1"]
        assert c.get("/v2/nothing/tags/list").status_code == 404
        assert c.get("/v2/_catalog").json() == {"repositories": sorted([name, "team/app"])}
        first = c.get("/v2/_catalog?n=1")
        assert len(first.json()["repositories"]) == 1 and "link" in first.headers
        last = first.json()["repositories"][0]
        rest = c.get(f"/v2/_catalog?n=5&last={last}").json()["repositories"]
        assert rest == sorted([name, "team/app"])[1:]


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        ("/v2/team/app/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN", 404),
        ("/v2/team/app/blobs/sha256:abc", "DIGEST_INVALID", 400),
        ("/v2/team/app/blobs/not-a-digest", "DIGEST_INVALID", 400),
        ("/v2/team/app/blobs/sha512:" + "0" * 128, "BLOB_UNKNOWN", 404),
        ("/v2/team/app/manifests/nope", "MANIFEST_UNKNOWN", 404),
        ("/v2/team/app/manifests/-bad", "TAG_INVALID", 400),
        ("/v2/Team/App/manifests/v1", "NAME_INVALID", 400),
        ("/v2/team/../app/manifests/v1", "NAME_INVALID", 400),
        ("/v2/team%2F..%2Fapp/manifests/v1", "NAME_INVALID", 400),
        ("/v2/team/app/blobs/sha256%3A" + "0" * 64, "NAME_INVALID", 400),
        ("/v2//etc/passwd/blobs/sha256:" + "0" * 64, "NAME_INVALID", 400),
    ],
)
def test_errors(setup: Setup, path: str, code: str, status: int) -> None:
    # http.client sends the target exactly as written (no dot-segment removal).
    host, port = setup.server.base_url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == status, (path, body)
        assert json.loads(body)["errors"][0]["code"] == code
    finally:
        conn.close()


def test_writes_are_unsupported(setup: Setup) -> None:
    with setup.server.client() as c:
        for method, path in (
            ("POST", "/v2/team/app/blobs/uploads/"),
            ("PUT", "/v2/team/app/manifests/v9"),
            ("DELETE", f"/v2/team/app/manifests/{setup.top['digest']}"),
            ("PATCH", "/v2/team/app/blobs/uploads/x"),
        ):
            r = c.request(method, path, content=b"{}")
            assert r.status_code == 405, (method, path)
            assert r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_ingest_is_never_served(setup: Setup) -> None:
    partial = os.urandom(1000)
    d = digest_of(partial)
    part = setup.cache / "ingest" / f"sha256-{d[7:]}"
    part.mkdir(parents=True)
    (part / "data").write_bytes(partial)
    try:
        with setup.server.client() as c:
            assert c.head(f"/v2/a/blobs/{d}").status_code == 404
            assert c.get(f"/v2/a/blobs/{d}").status_code == 404
    finally:
        shutil.rmtree(part)


def test_forward_proxy_absolute_form(setup: Setup) -> None:
    digest, data = layer_of(setup)
    host = setup.registry.host
    proxy = setup.server.base_url
    with httpx.Client(proxy=proxy) as c:
        r = c.get(f"http://{host}/v2/team/app/blobs/{digest}", headers={"Range": "bytes=5-9"})
        assert r.status_code == 206 and r.content == data[5:10]
        r = c.get(f"http://{host}/v2/team/app/manifests/v1")
        assert r.status_code == 200 and r.content == setup.blobs.bytes_of(setup.top["digest"])
        r = c.get(f"http://{host}/v2/team/app/blobs/sha256:{'1' * 64}")
        assert r.status_code == 502
        r = c.get(f"http://{host}/somewhere/else")
        assert r.status_code == 502


def test_skopeo_copies_from_the_proxy(setup: Setup, tmp_path: Path) -> None:
    host = setup.server.base_url.split("://", 1)[1]
    dest = tmp_path / "copy"
    r = subprocess.run(
        [
            "skopeo",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{host}/team/app:single",
            f"oci:{dest}:single",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == setup.here["digest"]
    for p in (dest / "blobs" / "sha256").iterdir():
        assert digest_of(p.read_bytes()) == "sha256:" + p.name
    r = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{host}/team/app:single"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Digest"] == setup.here["digest"]


def test_oras_pulls_a_cached_file(setup: Setup, tmp_path: Path) -> None:
    import oras.client

    host = setup.server.base_url.split("://", 1)[1]
    client = oras.client.OrasClient(insecure=True)
    out = tmp_path / "pulled"
    files = client.pull(target=f"{host}/{setup.file_ref}", outdir=str(out))
    assert [Path(f).name for f in files] == ["tiny.gguf"]
    assert (out / "tiny.gguf").read_bytes() == setup.file_data


def test_namespace_selection_and_upstream(tmp_path: Path) -> None:
    """The same name:tag from two registries: ns picks one, --upstream is the
    default, and without either the ambiguous tag is unknown."""
    with Registry(tmp_path / "r1") as r1, Registry(tmp_path / "r2") as r2:
        b1, b2 = Blobs(), Blobs()
        one = b1.image(NODE.architecture, layers=[b"one"])
        two = b2.image(NODE.architecture, layers=[b"two"])
        push_image_tree(r1.url, "lib/app", b1, one, "1")
        push_image_tree(r2.url, "lib/app", b2, two, "1")
        cache = tmp_path / "cache"
        with ServerProcess(cache) as srv, srv.client() as c:
            for reg in (r1, r2):
                r = c.post("/content/", json={"url": f"oci://{reg.host}/lib/app:1"})
                assert r.status_code == 201, r.text
                assert r.json()["reference"] == f"{reg.host}/lib/app:1"
            assert c.get("/v2/lib/app/manifests/1").status_code == 404
            assert (
                c.get(f"/v2/lib/app/manifests/1?ns={r1.host}").headers["docker-content-digest"]
                == one["digest"]
            )
            assert (
                c.get(f"/v2/lib/app/manifests/1?ns={r2.host}").headers["docker-content-digest"]
                == two["digest"]
            )
        with ServerProcess(cache, "--upstream", r2.host) as srv, srv.client() as c:
            r = c.get("/v2/lib/app/manifests/1")
            assert r.status_code == 200 and r.headers["docker-content-digest"] == two["digest"]
            assert c.get("/v2/lib/app/tags/list").json()["tags"] == ["1"]
