"""kill -9 at random points of ingest: the cache stays valid and downloads resume."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.source import Source

KILLS = 100


def check_cache(cache: Path) -> None:
    """Every blob hashes to its name; index.json parses and names only present blobs."""
    blobs = cache / "blobs" / "sha256"
    for p in blobs.iterdir():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == p.name, f"{p} does not hash to its name"
    index = json.loads((cache / "index.json").read_text())
    for desc in index["manifests"]:
        manifest = blobs / desc["digest"].split(":", 1)[1]
        assert manifest.exists(), desc
        doc = json.loads(manifest.read_text())
        for layer in [doc["config"], *doc["layers"]]:
            assert (blobs / layer["digest"].split(":", 1)[1]).exists(), layer


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume(tmp_path: Path, source: Source) -> None:
    rng = random.Random(1234)
    files = {f"/f{i}": os.urandom(16 * 1024 * 1024 + i) for i in range(3)}
    for path, data in files.items():
        source.add_file(path, data)
        source.set_delay(path, 0.02, chunk=65536)  # ~5 s each: many kills land mid-body
    cache = tmp_path / "cache"
    for _ in range(KILLS):
        srv = ServerProcess(cache, "--retries", "0").start()

        def post(path: str, srv: ServerProcess = srv) -> None:
            try:
                with srv.client() as c:
                    c.post("/content/", json={"url": source.url(path)})
            except Exception:  # noqa: S110 - the server dies under it on purpose
                pass

        for path in files:
            threading.Thread(target=post, args=(path,), daemon=True).start()
        time.sleep(rng.uniform(0.02, 0.4))
        srv.kill()
        check_cache(cache)
    resumed = [q for q in source.requests if q.headers.get("range")]
    assert resumed, "no download ever resumed from the bytes on disk"
    with ServerProcess(cache) as srv, srv.client() as c:
        for path, data in files.items():
            r = c.post("/content/", json={"url": source.url(path)})
            assert r.status_code in (200, 201), r.text
            assert r.json()["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    check_cache(cache)
