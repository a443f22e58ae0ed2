"""The OCI 1.1 referrers API (GET /v2/<name>/referrers/<digest>) and
OCI-Subject on manifest PUTs, against the real server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    cache = tmp_path_factory.mktemp("referrers") / "cache"
    with ServerProcess(cache, "--allow-push") as srv, srv.client() as client:
        yield client


def push_blob(c: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    r = c.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    assert r.status_code == 201, r.text
    return {"mediaType": EMPTY, "digest": sha256(data), "size": len(data)}


def push_manifest(
    c: httpx.Client, name: str, ref: str | None, doc: dict[str, Any]
) -> httpx.Response:
    data = json.dumps(doc).encode()
    r = c.put(
        f"/v2/{name}/manifests/{ref or sha256(data)}",
        content=data,
        headers={"Content-Type": doc.get("mediaType", MANIFEST)},
    )
    assert r.status_code == 201, r.text
    return r


def image(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [], **extra}


def test_referrers_lists_the_manifests_whose_subject_it_is(c: httpx.Client) -> None:
    name = "team/app"
    config = push_blob(c, name, b"{}")
    subject_doc = image(config, annotations={"n": "subject"})
    subject = push_manifest(c, name, "v1", subject_doc).headers["docker-content-digest"]
    subject_desc = {
        "mediaType": MANIFEST,
        "digest": subject,
        "size": len(json.dumps(subject_doc).encode()),
    }

    r = c.get(f"/v2/{name}/referrers/{subject}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == INDEX
    assert r.json() == {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}

    sbom = image(config, artifactType="application/x.sbom", subject=subject_desc)
    sbom["annotations"] = {"org.example": "sbom"}
    put = push_manifest(c, name, None, sbom)
    assert put.headers["oci-subject"] == subject
    sig = image({**config, "mediaType": "application/x.sig.config"}, subject=subject_desc)
    push_manifest(c, name, None, sig)
    unrelated = push_manifest(c, name, None, image(config, artifactType="application/x.other"))
    assert "oci-subject" not in unrelated.headers

    r = c.get(f"/v2/{name}/referrers/{subject}")
    assert r.status_code == 200
    listed = {m["digest"]: m for m in r.json()["manifests"]}
    sbom_data = json.dumps(sbom).encode()
    assert listed[sha256(sbom_data)] == {
        "mediaType": MANIFEST,
        "digest": sha256(sbom_data),
        "size": len(sbom_data),
        "artifactType": "application/x.sbom",
        "annotations": {"org.example": "sbom"},
    }
    # Without an artifactType, the config's media type is the referrer's type.
    assert listed[sha256(json.dumps(sig).encode())]["artifactType"] == "application/x.sig.config"
    assert len(listed) == 2
    assert "oci-filters-applied" not in r.headers

    r = c.get(f"/v2/{name}/referrers/{subject}", params={"artifactType": "application/x.sbom"})
    assert r.status_code == 200
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(sbom_data)]

    # Another repository holds none of them; a HEAD answers the same headers.
    r = c.get(f"/v2/other/app/referrers/{subject}")
    assert r.status_code == 200 and r.json()["manifests"] == []
    r = c.head(f"/v2/{name}/referrers/{subject}")
    assert r.status_code == 200 and r.headers["content-type"] == INDEX


def test_a_subject_that_is_not_here_is_accepted_and_listed(c: httpx.Client) -> None:
    name = "team/missing"
    config = push_blob(c, name, b"{}")
    absent = sha256(b"never pushed")
    doc = image(config, subject={"mediaType": MANIFEST, "digest": absent, "size": 12})
    assert push_manifest(c, name, "t", doc).headers["oci-subject"] == absent
    r = c.get(f"/v2/{name}/referrers/{absent}")
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(json.dumps(doc).encode())]


def test_referrers_of_a_malformed_digest_is_400(c: httpx.Client) -> None:
    r = c.get("/v2/team/app/referrers/sha256:nothex")
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"


def test_referrers_without_push(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "cache") as srv, srv.client() as c:
        r = c.get(f"/v2/any/name/referrers/{sha256(b'x')}")
        assert r.status_code == 200
        assert r.headers["content-type"] == INDEX
        assert r.json()["manifests"] == []
