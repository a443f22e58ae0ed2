"""oci:// pulls against a minimal registry made of the local HTTP source.

These cover what a real registry cannot be made to do on demand: blob
redirects to another host, cut and wrong blob bodies, a lying manifest.
The full protocol against a real distribution registry is in
test_oci_registry.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def serve_image(
    src: Source, repo: str, tag: str, layers: list[bytes]
) -> tuple[bytes, dict[str, bytes]]:
    """Publish a one-platform image on ``src`` as a registry would lay it out."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
    ).encode()
    blobs = {digest_of(b): b for b in [config, *layers]}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(b),
                    "size": len(b),
                }
                for b in layers
            ],
        }
    ).encode()
    src.add_file("/v2/", b"{}", content_type="application/json")
    src.add_file(f"/v2/{repo}/manifests/{tag}", manifest, content_type=OCI_MANIFEST)
    src.add_file(f"/v2/{repo}/manifests/{digest_of(manifest)}", manifest, content_type=OCI_MANIFEST)
    for d, data in blobs.items():
        src.add_file(f"/v2/{repo}/blobs/{d}", data)
    return manifest, blobs


def host_of(src: Source) -> str:
    return src.base_url.split("://", 1)[1]


def test_blob_redirect_to_object_storage_drops_credentials(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    layer = os.urandom(300_000)
    manifest, blobs = serve_image(source, "team/app", "v1", [layer])
    with Source(host="127.0.0.2") as storage:
        storage.add_file("/bucket/layer", layer)
        source.redirect(f"/v2/team/app/blobs/{digest_of(layer)}", storage.url("/bucket/layer"), 307)
        for path in ("/v2/team/app/manifests/v1", *(f"/v2/team/app/blobs/{d}" for d in blobs)):
            source.require_auth(path, "Bearer reg-token")
        url = f"oci://{host_of(source)}/team/app:v1"
        with server.client() as c:
            r = c.post("/content/", json={"url": url, "credentials": "reg-token"})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == digest_of(manifest)
        (fetched,) = [q for q in storage.requests if q.path == "/bucket/layer"]
        assert "authorization" not in fetched.headers
        assert all(
            q.headers.get("authorization") == "Bearer reg-token"
            for q in source.requests
            if q.path.startswith("/v2/team")
        )
    assert (cache_dir / "blobs/sha256" / digest_of(layer)[7:]).read_bytes() == layer
    assert "reg-token" not in server.log()


def test_blob_with_wrong_bytes_is_rejected(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    layer = os.urandom(100_000)
    serve_image(source, "r", "t", [layer])
    evil = bytearray(layer)
    evil[5000] ^= 0xFF
    source.add_file(f"/v2/r/blobs/{digest_of(layer)}", bytes(evil))
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{host_of(source)}/r:t"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
    assert not (cache_dir / "blobs/sha256" / digest_of(layer)[7:]).exists()
    assert not (cache_dir / "blobs/sha256" / digest_of(bytes(evil))[7:]).exists()


def test_manifest_that_does_not_match_its_digest_is_rejected(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    manifest, _ = serve_image(source, "r", "t", [b"layer"])
    other = manifest.replace(b'"schemaVersion": 2', b'"schemaVersion":2')
    source.add_file(f"/v2/r/manifests/{digest_of(manifest)}", other, content_type=OCI_MANIFEST)
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{host_of(source)}/r@{digest_of(manifest)}"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["manifests"] == []


def test_interrupted_pull_resumes_without_refetching(cache_dir: Path, source: Source) -> None:
    small, big = os.urandom(200_000), os.urandom(3_000_000)
    manifest, blobs = serve_image(source, "r", "t", [small, big])
    source.cut_after(f"/v2/r/blobs/{digest_of(big)}", 1_000_000)
    url = f"oci://{host_of(source)}/r:t"
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 502, r.text
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 206 and g.json()["state"] == "interrupted"
    assert (cache_dir / "blobs/sha256" / digest_of(small)[7:]).exists()
    n = len(source.requests)
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == digest_of(manifest)
        assert c.get(f"/content/{b64(url)}").status_code == 200
    again = [q for q in source.requests[n:] if "/blobs/" in q.path]
    assert [q.path for q in again] == [f"/v2/r/blobs/{digest_of(big)}"]
    assert again[0].headers["range"] == "bytes=1000000-"
    for d, data in blobs.items():
        assert (cache_dir / "blobs/sha256" / d[7:]).read_bytes() == data
    assert [p.name for p in (cache_dir / "ingest").iterdir() if p.name != "small"] in (
        [],
        ["unsynced"],
    )
