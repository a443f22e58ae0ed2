"""Blobs and manifests pushed and served by their sha512 digest (OCI
distribution-spec 1.1), stored under blobs/sha512/, against the real server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.support.server import ServerProcess

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def oci_code(r: httpx.Response) -> str:
    return str(r.json()["errors"][0]["code"])


def test_blobs_and_manifests_by_sha512(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    layer = bytes(range(256)) * 400
    config = b'{"architecture":"amd64","os":"linux"}'
    with ServerProcess(cache, "--allow-push") as srv, srv.client() as c:
        # Monolithic.
        r = c.post("/v2/s5/app/blobs/uploads/", params={"digest": sha512(config)}, content=config)
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == sha512(config)
        # Chunked, finished with a PUT.
        r = c.post("/v2/s5/app/blobs/uploads/")
        assert r.status_code == 202
        location = r.headers["location"]
        r = c.patch(location, content=layer[:1000], headers={"Content-Range": "0-999"})
        assert r.status_code == 202, r.text
        r = c.put(r.headers["location"], params={"digest": sha512(layer)}, content=layer[1000:])
        assert r.status_code == 201, r.text
        # A wrong sha512 is refused.
        r = c.post("/v2/s5/app/blobs/uploads/", params={"digest": sha512(b"no")}, content=b"x")
        assert r.status_code == 400 and oci_code(r) == "DIGEST_INVALID"

        r = c.get(f"/v2/s5/app/blobs/{sha512(layer)}", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == layer[10:20]
        r = c.head(f"/v2/other/blobs/{sha512(config)}")
        assert r.status_code == 200
        assert r.headers["docker-content-digest"] == sha512(config)
        assert r.headers["content-length"] == str(len(config))
        assert c.get(f"/v2/s5/app/blobs/{sha512(config)}").content == config
        r = c.post("/v2/s5/mounted/blobs/uploads/", params={"mount": sha512(layer)})
        assert r.status_code == 201, r.text

        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha512(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha512(layer),
                    "size": len(layer),
                }
            ],
        }
        data = json.dumps(doc).encode()
        r = c.put(
            f"/v2/s5/app/manifests/{sha512(data)}",
            content=data,
            headers={"Content-Type": MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == sha512(data)
        r = c.get(f"/v2/s5/app/manifests/{sha512(data)}")
        assert r.status_code == 200, r.text
        assert r.content == data
        assert r.headers["content-type"] == MANIFEST
        assert r.headers["docker-content-digest"] == sha512(data)
        # Pushed by a sha512 its bytes do not have: refused.
        r = c.put(
            f"/v2/s5/app/manifests/{sha512(b'other')}",
            content=data,
            headers={"Content-Type": MANIFEST},
        )
        assert r.status_code == 400 and oci_code(r) == "DIGEST_INVALID"
        # Malformed: a sha512 of a sha256's length.
        r = c.get(f"/v2/s5/app/blobs/sha512:{'a' * 64}")
        assert r.status_code == 400 and oci_code(r) == "DIGEST_INVALID"

    stored = cache / "blobs" / "sha512"
    for d in (sha512(config), sha512(layer), sha512(data)):
        assert (stored / d.split(":")[1]).is_file()

    # After a restart, the entry (with its sha512 blobs) is still served.
    with ServerProcess(cache, "--allow-push") as srv, srv.client() as c:
        assert c.get(f"/v2/s5/app/manifests/{sha512(data)}").content == data
        assert c.get(f"/v2/s5/app/blobs/{sha512(layer)}").content == layer
        r = c.get("/content/")
        assert any(e["url"] == f"oci-push://s5/app@{sha512(data)}" for e in r.json()["entries"])
        # Deleted by its sha512: its blobs go.
        assert c.delete(f"/v2/s5/app/manifests/{sha512(data)}").status_code == 202
        assert c.head(f"/v2/s5/app/blobs/{sha512(layer)}").status_code == 404
