"""The /v2 push API (--allow-push): real clients against the real server process."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.fetch.ociref import Platform
from tests.support.containerd import Containerd, containerd_available
from tests.support.images import (
    OCI_MANIFEST,
    SKOPEO_BINARY,
    Blobs,
    PushError,
    build_layout,
    digest_of,
    oras_push_artifact,
    random_bytes,
    skopeo_copy,
)
from tests.support.server import ServerProcess

NODE = Platform.running()
TOKEN = "push-secret-token"


def b64(url: str) -> str:
    return base64.urlsafe_b64encode(url.encode()).decode()


def host_of(srv: ServerProcess) -> str:
    return srv.base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("push") / "cache", "--allow-push") as s:
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def entries(c: httpx.Client) -> dict[str, dict[str, Any]]:
    r = c.get("/content/")
    assert r.status_code == 200, r.text
    return {e["url"]: e for e in r.json()["entries"]}


def upload_dirs(srv: ServerProcess) -> list[str]:
    return [p.name for p in (srv.cache_dir / "ingest").glob("upload-*")]


def push_blob(c: httpx.Client, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def oci_error(r: httpx.Response) -> str:
    code: str = r.json()["errors"][0]["code"]
    return code


def skopeo_pull(host: str, repo_tag: str, dest: Path, *extra: str) -> None:
    cmd = [
        SKOPEO_BINARY,
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        *extra,
        f"docker://{host}/{repo_tag}",
        f"oci:{dest}:pulled",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def layout_blobs(layout: Path) -> dict[str, bytes]:
    return {f"sha256:{p.name}": p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


# -- oras ---------------------------------------------------------------------------------------


def test_oras_push_of_a_file_artifact_is_an_entry_served_by_v2(
    srv: ServerProcess, c: httpx.Client
) -> None:
    data = random_bytes(300_000, 5)
    digest = oras_push_artifact(
        host_of(srv), "models/tiny:v1", {"tiny.gguf": data}, "application/vnd.test.model"
    )
    entry = entries(c)["oci-push://models/tiny:v1"]
    assert entry["kind"] == "push"
    assert entry["reference"] == "models/tiny:v1"
    assert entry["digest"] == entry["manifestDigest"] == digest
    titles = {b["title"]: b for b in entry["blobs"]}
    assert titles["tiny.gguf"]["digest"] == digest_of(data)
    assert Path(titles["tiny.gguf"]["path"]).read_bytes() == data
    r = c.get(f"/content/{b64('oci-push://models/tiny:v1')}")
    assert r.status_code == 200, r.text

    # /v2 serves it back under its name and tag, without ?ns=.
    r = c.get("/v2/models/tiny/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == digest
    assert digest_of(r.content) == digest
    layer = json.loads(r.content)["layers"][0]
    assert c.get(f"/v2/models/tiny/blobs/{layer['digest']}").content == data
    assert c.get("/v2/models/tiny/tags/list").json()["tags"] == ["v1"]

    # oras-py pulls it back byte-identical.
    import oras.client

    out = srv.cache_dir.parent / "oras-out"
    client = oras.client.OrasClient(hostname=host_of(srv), insecure=True)
    client.pull(target=f"{host_of(srv)}/models/tiny:v1", outdir=str(out))
    assert (out / "tiny.gguf").read_bytes() == data

    # An ordinary entry: DELETE removes it and the blobs only it used.
    r = c.delete(f"/content/{b64('oci-push://models/tiny:v1')}")
    assert r.status_code == 204, r.text
    assert c.get("/v2/models/tiny/manifests/v1").status_code == 404
    assert c.head(f"/v2/models/tiny/blobs/{layer['digest']}").status_code == 404


def test_pushing_a_tag_again_replaces_its_entry_and_keeps_shared_blobs(
    srv: ServerProcess, c: httpx.Client
) -> None:
    host = host_of(srv)
    first = random_bytes(50_000, 7)
    second = random_bytes(60_000, 8)
    shared = random_bytes(10_000, 9)
    d1 = oras_push_artifact(host, "re/push:t", {"a.bin": first, "s.bin": shared})
    d2 = oras_push_artifact(host, "re/push:t", {"b.bin": second, "s.bin": shared})
    assert d1 != d2
    entry = entries(c)["oci-push://re/push:t"]
    assert entry["digest"] == d2
    assert c.head(f"/v2/re/push/blobs/{digest_of(first)}").status_code == 404
    assert c.head(f"/v2/re/push/blobs/{digest_of(second)}").status_code == 200
    assert c.head(f"/v2/re/push/blobs/{digest_of(shared)}").status_code == 200
    assert c.head(f"/v2/re/push/blobs/{d1}").status_code == 404
    assert c.get("/v2/re/push/manifests/t").headers["docker-content-digest"] == d2


# -- skopeo (and containerd) --------------------------------------------------------------------


def _image_layout(tmp_path: Path) -> tuple[Path, Blobs, dict[str, Any], dict[str, Any]]:
    blobs = Blobs()
    here = blobs.image(NODE.architecture, layers=[random_bytes(1_200_000, 31), b"small layer"])
    there = blobs.image("s390x" if NODE.architecture != "s390x" else "amd64", layers=[b"x"])
    top = blobs.index([here, there])
    src = build_layout(tmp_path / "src", blobs, {"v1": top})
    return src, blobs, top, here


def test_skopeo_copies_an_image_index_into_the_proxy_and_back(
    srv: ServerProcess, c: httpx.Client, tmp_path: Path
) -> None:
    src, blobs, top, _here = _image_layout(tmp_path)
    pushed = skopeo_copy(src, "v1", host_of(srv), "team/app:v1")
    assert pushed == top["digest"]
    listed = entries(c)
    assert listed["oci-push://team/app:v1"]["digest"] == top["digest"]
    # The children were pushed by digest first: entries of their own.
    for child in json.loads(blobs.bytes_of(top["digest"]))["manifests"]:
        assert f"oci-push://team/app@{child['digest']}" in listed

    dest = tmp_path / "back"
    skopeo_pull(host_of(srv), "team/app:v1", dest)
    back = layout_blobs(dest)
    for digest, data in blobs.items():
        assert back[digest] == data, digest
    assert not upload_dirs(srv)


@pytest.mark.slow
@pytest.mark.skipif(not containerd_available(), reason="containerd is not installed")
def test_containerd_pulls_back_what_skopeo_pushed(srv: ServerProcess, tmp_path: Path) -> None:
    src, blobs, top, here = _image_layout(tmp_path)
    skopeo_copy(src, "v1", host_of(srv), "ctr/app:v1")
    with Containerd(tmp_path / "containerd") as ctrd:
        ref = f"{host_of(srv)}/ctr/app:v1"
        ctrd.pull(ref, plain_http=True)
        manifest = json.loads(blobs.bytes_of(here["digest"]))
        wanted = {
            top["digest"],
            here["digest"],
            manifest["config"]["digest"],
            *(layer["digest"] for layer in manifest["layers"]),
        }
        for d in wanted:
            assert ctrd.read_content(d) == blobs.bytes_of(d), d
        assert ctrd.list_images()[ref] == top["digest"]


# -- the protocol, step by step -----------------------------------------------------------------


def test_chunked_upload_in_order_with_wrong_offsets_refused(
    srv: ServerProcess, c: httpx.Client
) -> None:
    data = random_bytes(250_000, 41)
    digest = digest_of(data)
    r = c.post("/v2/chunks/blob/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    assert location.startswith("/v2/chunks/blob/blobs/uploads/")
    assert r.headers["docker-upload-uuid"] == location.rsplit("/", 1)[1]
    assert r.headers["range"] == "0-0"

    r = c.patch(location, content=data[:100_000], headers={"Content-Range": "0-99999"})
    assert r.status_code == 202, r.text
    assert r.headers["range"] == "0-99999"
    location = r.headers["location"]

    # Out of order: 416, with where the upload stands; nothing written.
    for bad in ("50000-149999", "100001-200000"):
        wrong = data[50_000:150_000]
        r = c.patch(location, content=wrong, headers={"Content-Range": bad})
        assert r.status_code == 416, r.text
        assert r.headers["range"] == "0-99999"
        assert oci_error(r) == "BLOB_UPLOAD_INVALID"
    # A Content-Range that is not the body's length.
    r = c.patch(location, content=data[100_000:150_000], headers={"Content-Range": "100000-100009"})
    assert r.status_code == 400, r.text

    r = c.get(location)
    assert r.status_code == 204
    assert r.headers["range"] == "0-99999"

    # A chunk without Content-Range is appended (streamed PATCH).
    r = c.patch(location, content=data[100_000:200_000])
    assert r.status_code == 202, r.text
    assert r.headers["range"] == "0-199999"
    # The final chunk comes with the PUT.
    r = c.put(
        location,
        params={"digest": digest},
        content=data[200_000:],
        headers={"Content-Range": "200000-249999"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/chunks/blob/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    assert c.get(f"/v2/chunks/blob/blobs/{digest}").content == data
    assert c.get(location).status_code == 404  # finished: the upload is gone
    assert not upload_dirs(srv)


def test_monolithic_post_then_put(c: httpx.Client) -> None:
    data = b"posted then put" * 100
    r = c.post("/v2/mono/blobs/uploads/")
    assert r.status_code == 202
    r = c.put(r.headers["location"], params={"digest": digest_of(data)}, content=data)
    assert r.status_code == 201, r.text
    assert c.get(f"/v2/mono/blobs/{digest_of(data)}").content == data


def test_digest_mismatch_keeps_nothing(srv: ServerProcess, c: httpx.Client) -> None:
    data = random_bytes(120_000, 51)
    claimed = digest_of(b"something else")
    r = c.post("/v2/bad/blobs/uploads/", params={"digest": claimed}, content=data)
    assert r.status_code == 400, r.text
    assert oci_error(r) == "DIGEST_INVALID"
    r = c.post("/v2/bad/blobs/uploads/")
    location = r.headers["location"]
    assert c.patch(location, content=data).status_code == 202
    r = c.put(location, params={"digest": claimed})
    assert r.status_code == 400
    assert oci_error(r) == "DIGEST_INVALID"
    for d in (claimed, digest_of(data)):
        assert c.head(f"/v2/bad/blobs/{d}").status_code == 404
        assert not (srv.cache_dir / "blobs" / "sha256" / d.split(":")[1]).exists()
    assert c.get(location).status_code == 404
    assert not upload_dirs(srv)
    # Malformed digests and upload ids are refused before anything is touched.
    r = c.post("/v2/bad/blobs/uploads/", params={"digest": "sha256:xyz"}, content=b"x")
    assert r.status_code == 400 and oci_error(r) == "DIGEST_INVALID"
    r = c.patch("/v2/bad/blobs/uploads/..%2f..%2fetc", content=b"x")
    assert r.status_code == 400
    r = c.patch("/v2/bad/blobs/uploads/not-an-upload", content=b"x")
    assert r.status_code == 404 and oci_error(r) == "BLOB_UPLOAD_UNKNOWN"
    r = c.post("/v2/Bad/blobs/uploads/")
    assert r.status_code == 400 and oci_error(r) == "NAME_INVALID"


def test_cancelled_upload_is_gone(srv: ServerProcess, c: httpx.Client) -> None:
    r = c.post("/v2/cancel/me/blobs/uploads/")
    location = r.headers["location"]
    assert c.patch(location, content=b"partial").status_code == 202
    assert upload_dirs(srv)
    assert c.delete(location).status_code == 204
    assert c.get(location).status_code == 404
    assert not upload_dirs(srv)
    # Another repository's name does not reach someone else's upload.
    r = c.post("/v2/owner/blobs/uploads/")
    other = r.headers["location"].replace("/owner/", "/intruder/")
    assert c.get(other).status_code == 404
    assert c.delete(r.headers["location"]).status_code == 204


def _manifest(config: str, layers: list[tuple[str, int]], config_size: int = 2) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": config,
            "size": config_size,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
            for d, s in layers
        ],
    }
    return json.dumps(doc).encode()


def test_manifests_that_reference_missing_blobs_or_are_invalid_are_refused(
    c: httpx.Client,
) -> None:
    config = push_blob(c, "val/app", b"{}")
    layer = push_blob(c, "val/app", b"a layer")
    missing = digest_of(b"never pushed")
    before = set(entries(c))
    ctype = {"Content-Type": OCI_MANIFEST}

    r = c.put("/v2/val/app/manifests/v1", content=_manifest(config, [(missing, 12)]), headers=ctype)
    assert r.status_code == 400, r.text
    assert oci_error(r) == "MANIFEST_BLOB_UNKNOWN"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 100}],
    }
    r = c.put(
        "/v2/val/app/manifests/v1",
        content=json.dumps(index).encode(),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert r.status_code == 400 and oci_error(r) == "MANIFEST_BLOB_UNKNOWN"
    # An index with one child here and one absent (another platform): accepted,
    # as a node's own partial pulls are stored.
    child = _manifest(config, [(layer, 7)])
    r = c.put(f"/v2/val/app/manifests/{digest_of(child)}", content=child, headers=ctype)
    assert r.status_code == 201, r.text
    index["manifests"].insert(
        0, {"mediaType": OCI_MANIFEST, "digest": digest_of(child), "size": len(child)}
    )
    partial = json.dumps(index).encode()
    r = c.put(
        "/v2/val/app/manifests/partial",
        content=partial,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert r.status_code == 201, r.text
    assert c.get("/v2/val/app/manifests/partial").content == partial
    before |= {f"oci-push://val/app@{digest_of(child)}", "oci-push://val/app:partial"}
    # Wrong size of a present blob, not JSON, schema 1, bad descriptors.
    for body in (
        _manifest(config, [(layer, 999)]),
        b"not json",
        json.dumps({"schemaVersion": 1, "name": "x"}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}}).encode(),
    ):
        r = c.put("/v2/val/app/manifests/v1", content=body, headers=ctype)
        assert r.status_code == 400, (body, r.text)
        assert oci_error(r) == "MANIFEST_INVALID"
    # By digest: the body must hash to it.
    good = _manifest(config, [(layer, 7)])
    r = c.put(f"/v2/val/app/manifests/{digest_of(b'other')}", content=good, headers=ctype)
    assert r.status_code == 400 and oci_error(r) == "DIGEST_INVALID"
    r = c.put("/v2/val/app/manifests/bad:tag", content=good, headers=ctype)
    assert r.status_code == 400
    assert set(entries(c)) == before
    assert c.get("/v2/val/app/manifests/v1").status_code == 404

    r = c.put("/v2/val/app/manifests/v1", content=good, headers=ctype)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest_of(good)
    assert r.headers["location"] == f"/v2/val/app/manifests/{digest_of(good)}"
    r = c.put(f"/v2/val/app/manifests/{digest_of(good)}", content=good, headers=ctype)
    assert r.status_code == 201
    assert c.get(f"/v2/val/app/manifests/{digest_of(good)}").content == good


def test_cross_repository_mount(c: httpx.Client) -> None:
    data = random_bytes(40_000, 61)
    digest = push_blob(c, "mount/source", data)
    r = c.post("/v2/mount/target/blobs/uploads/", params={"mount": digest, "from": "mount/source"})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/mount/target/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    # Any blob in the cache can be mounted, whatever repository it came with.
    r = c.post("/v2/mount/other/blobs/uploads/", params={"mount": digest, "from": "nowhere"})
    assert r.status_code == 201
    # Not here: an ordinary upload starts.
    absent = digest_of(b"absent blob")
    r = c.post("/v2/mount/target/blobs/uploads/", params={"mount": absent, "from": "mount/source"})
    assert r.status_code == 202, r.text
    assert "/blobs/uploads/" in r.headers["location"]
    assert c.delete(r.headers["location"]).status_code == 204


def test_deletes_through_v2_of_what_is_not_there_are_404(c: httpx.Client) -> None:
    # Deletes are served with --allow-push (issue 25; tests/api/test_push_deletes.py).
    r = c.delete(f"/v2/nodelete/blobs/{digest_of(b'never pushed')}")
    assert r.status_code == 404 and oci_error(r) == "BLOB_UNKNOWN"
    r = c.delete("/v2/nodelete/manifests/v1")
    assert r.status_code == 404 and oci_error(r) == "MANIFEST_UNKNOWN"


# -- configuration ------------------------------------------------------------------------------


def test_without_allow_push_the_registry_stays_read_only(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "cache") as s, s.client() as c:
        r = c.post("/v2/ro/blobs/uploads/")
        assert r.status_code == 405 and oci_error(r) == "UNSUPPORTED"
        r = c.put("/v2/ro/manifests/v1", content=b"{}")
        assert r.status_code == 405
        r = c.post("/v2/ro/blobs/uploads/", params={"digest": digest_of(b"x")}, content=b"x")
        assert r.status_code == 405
        assert not list((tmp_path / "cache" / "blobs" / "sha256").iterdir())


def test_with_an_api_token_pushes_need_it(tmp_path: Path) -> None:
    src, blobs, top, _here = _image_layout(tmp_path)
    env = {"NEKKO_API_TOKEN": TOKEN, "NEKKO_ALLOW_PUSH": "1"}
    with ServerProcess(tmp_path / "cache", env=env) as s, s.client() as c:
        host = host_of(s)
        r = c.post("/v2/auth/app/blobs/uploads/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="storage-manager"'
        assert oci_error(r) == "UNAUTHORIZED"
        r = c.put("/v2/auth/app/manifests/v1", content=b"{}")
        assert r.status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert c.post("/v2/auth/app/blobs/uploads/", headers=wrong).status_code == 401
        r = c.post("/v2/auth/app/blobs/uploads/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202
        location = r.headers["location"]
        assert c.get(location).status_code == 401  # upload status is part of a push
        with pytest.raises(PushError, match=r"401|nauthorized"):
            skopeo_copy(src, "v1", host, "auth/app:v1")
        assert skopeo_copy(src, "v1", host, "auth/app:v1", creds=f"node:{TOKEN}") == top["digest"]
        # Reads stay open.
        r = c.get("/v2/auth/app/manifests/v1")
        assert r.status_code == 200
        assert r.headers["docker-content-digest"] == top["digest"]
        dest = tmp_path / "back"
        skopeo_pull(host, "auth/app:v1", dest, "--src-no-creds")
        back = layout_blobs(dest)
        for digest, data in blobs.items():
            assert back[digest] == data
        assert hashlib.sha256(back[top["digest"]]).hexdigest() == top["digest"].split(":")[1]
        assert os.path.exists(tmp_path / "cache" / "index.json")


@pytest.mark.slow
@pytest.mark.skipif(not containerd_available(), reason="containerd is not installed")
def test_ctr_push_with_the_token_of_the_node(srv: ServerProcess, tmp_path: Path) -> None:
    """``ctr push`` of an image this node pulled for its own platform, with the
    token given as ``--user`` after the Basic challenge."""
    token = "ctr-push-token"
    src, blobs, _top, here = _image_layout(tmp_path)
    skopeo_copy(src, "v1", host_of(srv), "ctr/source:v1")
    target = ServerProcess(tmp_path / "target", "--allow-push", env={"NEKKO_API_TOKEN": token})
    with target, Containerd(tmp_path / "containerd") as ctrd:
        local = f"{host_of(srv)}/ctr/source:v1"
        ctrd.pull(local, plain_http=True)
        remote = f"{host_of(target)}/ctr/pushed:v2"
        refused = ctrd.ctr("images", "push", "--plain-http", remote, local)
        assert refused.returncode != 0  # no credentials: 401
        ctrd.ctr(
            *("images", "push", "--plain-http", "--platform", NODE.os + "/" + NODE.architecture),
            *("--user", f"node:{token}", remote, local),
            check=True,
        )
        basic = base64.b64encode(f"node:{token}".encode()).decode()
        with target.client(headers={"Authorization": f"Basic {basic}"}) as c:
            # With --platform, ctr pushes that platform's manifest as the tag.
            child = c.get("/v2/ctr/pushed/manifests/v2")
            assert child.status_code == 200 and child.content == blobs.bytes_of(here["digest"])
            for layer in json.loads(child.content)["layers"]:
                got = c.get(f"/v2/ctr/pushed/blobs/{layer['digest']}").content
                assert got == blobs.bytes_of(layer["digest"])
            assert any(
                e["url"] == "oci-push://ctr/pushed:v2" for e in c.get("/content/").json()["entries"]
            )


def test_pushes_are_kept_under_the_size_limit(tmp_path: Path) -> None:
    """With --max-cache-size, pushed entries are evicted like downloaded ones
    (least recently used first) once a push takes the cache over the limit."""
    srv = ServerProcess(tmp_path / "c", "--allow-push", "--max-cache-size", "2500K")
    with srv as s, s.client() as c:
        config = push_blob(c, "lim/app", b"{}")
        for i in range(3):
            layer = push_blob(c, "lim/app", random_bytes(1024 * 1024, 100 + i))
            body = _manifest(config, [(layer, 1024 * 1024)])
            r = c.put(
                f"/v2/lim/app/manifests/v{i}",
                content=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert r.status_code == 201, r.text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tags = c.get("/v2/lim/app/tags/list").json()["tags"]
            if "v0" not in tags:
                break
            time.sleep(0.1)
        assert tags == ["v1", "v2"], tags
        assert "evicted oci-push://lim/app:v0" in s.log()
