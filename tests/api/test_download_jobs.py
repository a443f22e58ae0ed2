"""Single flight seen from the API: a DELETE of a queued download, a join with another digest."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


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
