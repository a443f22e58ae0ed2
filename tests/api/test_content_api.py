"""The /content API against a real server process and a real HTTP source."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":", 1)[1]


def snapshot(cache: Path) -> tuple[bytes, list[str], list[str]]:
    """index.json bytes and the names under blobs/ and ingest/."""
    return (
        (cache / "index.json").read_bytes(),
        sorted(p.name for p in (cache / "blobs" / "sha256").iterdir()),
        sorted(
            str(p.relative_to(cache))
            for p in (cache / "ingest").rglob("*")
            if p.is_file() and p.parent.name != "unsynced"  # fsync markers come and go
        ),
    )


def test_post_get_delete_roundtrip(server: ServerProcess, source: Source, cache_dir: Path) -> None:
    data = os.urandom(300_000)
    source.add_file("/models/a.gguf", data)
    url = source.url("/models/a.gguf")
    with server.client() as c:
        assert c.get(f"/content/{b64(url)}").status_code == 404
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["url"] == url
        assert body["digest"] == sha(data)
        assert body["state"] == "complete"
        assert body["size"] == body["bytesDone"] == len(data)
        assert body["path"] == str(blob_file(cache_dir, sha(data)))
        assert Path(body["path"]).read_bytes() == data
        assert body["reference"].endswith("/models/a.gguf:latest")
        # posting again is 200 and downloads nothing
        n = len(source.requests)
        r2 = c.post("/content/", json={"url": url, "credentials": ""})
        assert r2.status_code == 200
        assert r2.json()["digest"] == sha(data)
        assert len(source.requests) == n
        r3 = c.get(f"/content/{b64(url)}")
        assert r3.status_code == 200 and r3.json()["digest"] == sha(data)
        listing = c.get("/content/").json()["entries"]
        assert [e["url"] for e in listing] == [url]
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        assert c.get(f"/content/{b64(url)}").status_code == 404
        assert c.delete(f"/content/{b64(url)}").status_code == 404
    assert not blob_file(cache_dir, sha(data)).exists()
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["manifests"] == []


def test_cache_is_an_oci_layout(server: ServerProcess, source: Source, cache_dir: Path) -> None:
    data = b"hello layout\n" * 1000
    source.add_file("/f.txt", data)
    with server.client() as c:
        r = c.post("/content/", json={"url": source.url("/f.txt")})
        assert r.status_code == 201
    assert json.loads((cache_dir / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["schemaVersion"] == 2
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.nekko.storage-manager.url"] == source.url("/f.txt")
    ref = desc["annotations"]["org.opencontainers.image.ref.name"]
    assert ref == r.json()["reference"]
    manifest_bytes = blob_file(cache_dir, desc["digest"]).read_bytes()
    assert sha(manifest_bytes) == desc["digest"] and len(manifest_bytes) == desc["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert blob_file(cache_dir, manifest["config"]["digest"]).read_bytes() == b"{}"
    (layer,) = manifest["layers"]
    assert layer["annotations"]["org.opencontainers.image.title"] == "f.txt"
    assert layer["digest"] == sha(data)
    # every blob hashes to its name and is read-only
    for p in (cache_dir / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
        assert p.stat().st_mode & 0o222 == 0


def test_base64_with_slash_and_plus_routes(server: ServerProcess, source: Source) -> None:
    # Find a file name whose URL encodes with '/' and '+' (standard alphabet).
    # '~', '?' and '>' encode to '+' and '/' (the query part is fine: the
    # source serves the path without it).
    name = next(
        n
        for n in (f"/{'a' * k}~~~???>>>" for k in range(30))
        if "/" in b64(source.url(n)) and "+" in b64(source.url(n))
    )
    source.add_file(name.split("?", 1)[0], b"payload")
    url = source.url(name)
    with server.client() as c:
        assert c.post("/content/", json={"url": url}).status_code == 201
        percent = b64(url).replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")
        forms = (
            b64(url),
            b64(url, pad=False),
            b64(url, urlsafe=True),
            b64(url, True, False),
            percent,
        )
        for enc in forms:
            r = c.get(f"/content/{enc}")
            assert r.status_code == 200, (enc, r.text)
            assert r.json()["url"] == url
        assert c.delete(f"/content/{b64(url, urlsafe=True, pad=False)}").status_code == 204


def test_bad_input_is_400_and_changes_nothing(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    source.add_file("/ok", b"ok")
    with server.client() as c:
        assert c.post("/content/", json={"url": source.url("/ok")}).status_code == 201
        before = snapshot(cache_dir)
        cases: list[tuple[str, object]] = [
            ("not json", b"{nope"),
            ("array", b"[1,2]"),
            ("missing url", b'{"credentials": "x"}'),
            ("url not a string", b'{"url": 5}'),
            ("empty url", b'{"url": ""}'),
            ("unknown scheme", b'{"url": "gopher://127.0.0.1/x"}'),
            ("no scheme", b'{"url": "127.0.0.1/x"}'),
            (
                "credentials not a string",
                json.dumps({"url": source.url("/ok2"), "credentials": 5}).encode(),
            ),
            (
                "unknown credentialsType",
                json.dumps(
                    {"url": source.url("/ok2"), "credentials": "t", "credentialsType": "Digest"}
                ).encode(),
            ),
            ("bad digest", json.dumps({"url": source.url("/ok2"), "digest": "md5:abc"}).encode()),
            ("bad port", b'{"url": "http://127.0.0.1:99999/x"}'),
        ]
        for what, raw in cases:
            assert isinstance(raw, bytes)
            r = c.post("/content/", content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (what, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] and err["message"], what
        # A body over the 64 KiB JSON limit: 413, refused from its Content-Length.
        raw = json.dumps({"url": source.url("/ok2"), "pad": "x" * 70_000}).encode()
        r = c.post("/content/", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "TOO_LARGE", r.text
        for bad in ("!!!notbase64", "a", "aGVsbG8", "%FF%FE"):
            r = c.get(f"/content/{bad}")
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["code"] == "BAD_REQUEST"
            assert c.delete(f"/content/{bad}").status_code == 400
        assert not any(r.path.startswith("/ok2") for r in source.requests)
    assert snapshot(cache_dir) == before


def test_identical_content_is_stored_once(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(100_000)
    source.add_file("/a", data)
    source.add_file("/b", data)
    with server.client() as c:
        ra = c.post("/content/", json={"url": source.url("/a")})
        rb = c.post("/content/", json={"url": source.url("/b")})
        assert ra.status_code == rb.status_code == 201
        assert ra.json()["digest"] == rb.json()["digest"] == sha(data)
        assert ra.json()["path"] == rb.json()["path"]
        files = [
            p for p in (cache_dir / "blobs" / "sha256").iterdir() if p.stat().st_size == len(data)
        ]
        assert len(files) == 1
        # Deleting one keeps the shared blob for the other.
        assert c.delete(f"/content/{b64(source.url('/a'))}").status_code == 204
        assert blob_file(cache_dir, sha(data)).read_bytes() == data
        assert c.get(f"/content/{b64(source.url('/b'))}").status_code == 200
        assert c.delete(f"/content/{b64(source.url('/b'))}").status_code == 204
        assert not blob_file(cache_dir, sha(data)).exists()


def test_concurrent_posts_download_once(server: ServerProcess, source: Source) -> None:
    data = os.urandom(2_000_000)
    source.add_file("/big", data)
    source.set_delay("/big", 0.02, chunk=65536)  # about 0.6 s in all
    url = source.url("/big")
    results: list[httpx.Response] = []

    def post() -> None:
        with server.client() as c:
            results.append(c.post("/content/", json={"url": url}))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    # While it runs, GET answers 206 with progress.
    with server.client() as c:
        seen_progress = None
        for _ in range(200):
            r = c.get(f"/content/{b64(url)}")
            if r.status_code == 206:
                seen_progress = r.json()
                break
            threading.Event().wait(0.01)
    for t in threads:
        t.join(30)
    assert sorted(r.status_code for r in results) == [201] * 4
    assert {r.json()["digest"] for r in results} == {sha(data)}
    assert len([r for r in source.requests_for("/big") if r.method == "GET"]) == 1
    assert seen_progress is not None
    assert seen_progress["state"] in ("downloading", "queued")
    assert seen_progress["url"] == url
    assert "bytesDone" in seen_progress and seen_progress["blobs"][0]["title"] == "big"


def test_expected_digest_is_enforced(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(50_000)
    source.add_file("/d", data)
    with server.client() as c:
        wrong = "sha256:" + "0" * 64
        r = c.post("/content/", json={"url": source.url("/d"), "digest": wrong})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
        assert not blob_file(cache_dir, sha(data)).exists()
        assert c.get(f"/content/{b64(source.url('/d'))}").status_code == 404
        assert not any((cache_dir / "ingest").glob("*/data"))
        r = c.post("/content/", json={"url": source.url("/d"), "digest": sha(data)})
        assert r.status_code == 201 and r.json()["digest"] == sha(data)
        # Another URL with a digest already cached needs no download at all.
        n = len(source.requests)
        r = c.post("/content/", json={"url": source.url("/elsewhere"), "digest": sha(data)})
        assert r.status_code == 201 and r.json()["path"] == str(blob_file(cache_dir, sha(data)))
        assert len(source.requests) == n
        # A cached URL asked for with another digest is a conflict.
        r = c.post("/content/", json={"url": source.url("/d"), "digest": wrong})
        assert r.status_code == 409


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        (401, 401, "UPSTREAM_UNAUTHORIZED"),
        (403, 403, "UPSTREAM_DENIED"),
        (404, 404, "UPSTREAM_NOT_FOUND"),
        (500, 502, "UPSTREAM_ERROR"),
        (503, 502, "UPSTREAM_ERROR"),
    ],
)
def test_upstream_errors_map_to_statuses(
    server: ServerProcess, source: Source, cache_dir: Path, status: int, expected: int, code: str
) -> None:
    source.fail_status("/e", status)
    with server.client() as c:
        r = c.post("/content/", json={"url": source.url("/e")})
        assert r.status_code == expected, r.text
        assert r.json()["error"]["code"] == code
        assert c.get(f"/content/{b64(source.url('/e'))}").status_code == 404
    assert [p.name for p in (cache_dir / "blobs" / "sha256").iterdir()] == []


def test_5xx_then_success_is_retried(server: ServerProcess, source: Source) -> None:
    source.add_file("/flaky", b"eventually")
    source.fail_status("/flaky", 503, times=1)
    with server.client() as c:
        r = c.post("/content/", json={"url": source.url("/flaky")})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(b"eventually")


def test_unreachable_upstream_is_502(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/content/", json={"url": "http://127.0.0.1:9/nothing"})
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE"
