"""A cache directory written by the Go storage-manager is adopted as it is."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def put_blob(cache: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    (cache / "blobs" / "sha256" / hexd).write_bytes(data)
    return "sha256:" + hexd


def make_go_cache(cache: Path, shared_layer: bytes) -> dict[str, str]:
    """What oras-go's oci.Store leaves behind for the Go storage-manager."""
    (cache / "blobs" / "sha256").mkdir(parents=True)
    (cache / "ingest").mkdir()
    (cache / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    model = os.urandom(10_000)
    model_digest = put_blob(cache, model)
    config_digest = put_blob(cache, b'{"architecture":"amd64","os":"linux"}')
    layer_digest = put_blob(cache, shared_layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": 37,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(shared_layer),
                }
            ],
        }
    ).encode()
    manifest_digest = put_blob(cache, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": model_digest,
                "size": 0,
                "annotations": {"org.opencontainers.image.ref.name": "https://example.com/m.gguf"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {
                    "org.opencontainers.image.ref.name": "oci://registry.example/app:1"
                },
            },
        ],
    }
    (cache / "index.json").write_text(json.dumps(index))
    # Leftovers of the Go version's temporary files.
    (cache / "ingest" / "oras_oci_storage_1234").write_bytes(b"partial")
    (cache / "content5678").mkdir()
    (cache / "content5678" / "content").write_bytes(b"temp")
    return {
        "model": model_digest,
        "manifest": manifest_digest,
        "layer": layer_digest,
        "config": config_digest,
    }


def all_files(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}


def test_go_cache_is_adopted_and_nothing_is_deleted(cache_dir: Path, source: Source) -> None:
    layer = os.urandom(5_000)
    d = make_go_cache(cache_dir, layer)
    before = all_files(cache_dir)
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        r = c.get(f"/content/{b64('https://example.com/m.gguf')}")
        assert r.status_code == 200, r.text
        assert r.json()["digest"] == d["model"]
        assert r.json()["size"] == 10_000
        assert r.json()["path"].endswith(d["model"][7:])
        r = c.get(f"/content/{b64('oci://registry.example/app:1')}")
        assert r.status_code == 200 and r.json()["digest"] == d["manifest"]
        urls = {e["url"] for e in c.get("/content/").json()["entries"]}
        assert urls == {"https://example.com/m.gguf", "oci://registry.example/app:1"}
        # New content that shares a blob with a Go entry, then removed: the
        # shared blob stays.
        source.add_file("/layer", layer)
        assert c.post("/content/", json={"url": source.url("/layer")}).status_code == 201
        assert c.delete(f"/content/{b64(source.url('/layer'))}").status_code == 204
    after = all_files(cache_dir)
    assert before - after == set(), before - after
    index = json.loads((cache_dir / "index.json").read_text())
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert refs == ["https://example.com/m.gguf", "oci://registry.example/app:1"]
    assert index["manifests"][0]["size"] == 0  # kept verbatim
    # Restart: still adopted, still intact.
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        assert c.get(f"/content/{b64('https://example.com/m.gguf')}").status_code == 200
        # An explicit DELETE of a Go entry removes it and its unshared blob only.
        assert c.delete(f"/content/{b64('https://example.com/m.gguf')}").status_code == 204
        assert c.get(f"/content/{b64('oci://registry.example/app:1')}").status_code == 200
    assert not (cache_dir / "blobs" / "sha256" / d["model"][7:]).exists()
    for key in ("manifest", "layer", "config"):
        assert (cache_dir / "blobs" / "sha256" / d[key][7:]).exists()
    assert (cache_dir / "ingest" / "oras_oci_storage_1234").exists()
    assert (cache_dir / "content5678" / "content").exists()
