"""Regression tests for defects found in review."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
from pathlib import Path

from tests.conftest import b64
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.test_oci_protocol import digest_of, host_of, serve_image


def test_two_pulls_sharing_a_layer_write_it_once_and_correctly(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    shared = os.urandom(4 * 1024 * 1024)
    serve_image(source, "a", "1", [shared, b"only a"])
    serve_image(source, "b", "1", [shared, b"only b"])
    d = digest_of(shared)
    for repo in ("a", "b"):
        source.set_delay(f"/v2/{repo}/blobs/{d}", 0.005, chunk=65536)

    def pull(repo: str) -> int:
        with server.client() as c:
            return c.post(
                "/content/", json={"url": f"oci://{host_of(source)}/{repo}:1"}
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(pull, ["a", "b"])) == [201, 201]
    assert (cache_dir / "blobs" / "sha256" / d[7:]).read_bytes() == shared
    full_gets = [q for q in source.requests if q.path.endswith(d) and q.method == "GET"]
    assert len(full_gets) == 1


def test_delete_of_a_queued_download_answers_at_once(cache_dir: Path, source: Source) -> None:
    source.add_file("/slow", os.urandom(2_000_000))
    source.set_delay("/slow", 0.05, chunk=65536)  # ~1.5 s
    source.add_file("/queued", b"queued bytes")
    with ServerProcess(cache_dir, "--max-downloads", "1") as srv, srv.client() as c:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda u=u: results.append(
                    srv.client().post("/content/", json={"url": source.url(u)}).status_code
                )
            )
            for u in ("/slow", "/queued")
        ]
        threads[0].start()
        for _ in range(200):
            if c.get(f"/content/{b64(source.url('/slow'))}").status_code == 206:
                break
            time.sleep(0.01)
        threads[1].start()
        for _ in range(200):
            if c.get(f"/content/{b64(source.url('/queued'))}").status_code == 206:
                break
            time.sleep(0.01)
        assert c.get(f"/content/{b64(source.url('/queued'))}").json()["state"] == "queued"
        r = c.delete(f"/content/{b64(source.url('/queued'))}")
        assert r.status_code == 204
        assert c.get(f"/content/{b64(source.url('/slow'))}").status_code == 206  # still going
        for t in threads:
            t.join(10)
        assert sorted(results) == [201, 409]
    assert not any(q.path == "/queued" for q in source.requests)


def test_joining_with_another_digest_is_a_conflict(server: ServerProcess, source: Source) -> None:
    source.add_file("/j", os.urandom(1_000_000))
    source.set_delay("/j", 0.02, chunk=65536)
    out: list[int] = []
    with server.client() as c:
        t = threading.Thread(
            target=lambda: out.append(
                server.client().post("/content/", json={"url": source.url("/j")}).status_code
            )
        )
        t.start()
        for _ in range(200):  # wait until the first POST's download is running
            if c.get(f"/content/{b64(source.url('/j'))}").status_code == 206:
                break
            time.sleep(0.01)
        r = c.post("/content/", json={"url": source.url("/j"), "digest": "sha256:" + "0" * 64})
        assert r.status_code == 409, r.text
        t.join(10)
    assert out == [201]


def test_presigned_url_secrets_are_never_stored(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    source.add_file("/bucket/model.bin", b"signed content")
    signed = source.url(
        "/bucket/model.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAXX"
        "&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=s3cr3tsig&v=2"
    )
    with server.client() as c:
        r = c.post("/content/", json={"url": signed})
        assert r.status_code == 201, r.text
        assert r.json()["url"] == source.url("/bucket/model.bin?v=2")
        # Another signature names the same entry.
        again = signed.replace("s3cr3tsig", "othersig")
        assert c.get(f"/content/{b64(again)}").status_code == 200
        assert "s3cr3tsig" not in c.get("/content/").text
    for p in cache_dir.rglob("*"):
        if p.is_file():
            assert b"s3cr3tsig" not in p.read_bytes() and b"AKIAXX" not in p.read_bytes(), p
    assert "s3cr3tsig" not in server.log()


def test_hf_views_of_another_hub_are_kept_apart(server: ServerProcess) -> None:
    with FakeHub() as hub:
        hub.add_repo("org/r")
        hub.add_file("org/r", "a", b"file a")
        hub.add_file("org/r", "a2/b", b"file b")
        hub.commit("org/r")
        host = hub.endpoint.split("://", 1)[1]
        with server.client() as c:
            assert c.post("/content/", json={"url": f"hf://{host}/org/r/a"}).status_code == 201
            assert c.post("/content/", json={"url": f"hf://{host}/org/r"}).status_code == 201
            assert c.post("/content/", json={"url": "http://127.0.0.1:9/x"}).status_code == 502
            body = c.get("/content/").json()
            # The failed download is listed with its error (issue 19); the two stored stay.
            states = sorted(e["state"] for e in body["entries"])
            assert states == ["complete", "complete", "failed"], states
            view = json.dumps(body)
            assert "huggingface@127.0.0.1" in view
