"""When each entry was last used: a /content POST of it, or a /v2 read of any
of its blobs (a GET of its answer, as ``inspect`` does, is a look, not a use);
kept across restarts (last-used.json, written in batches and at shutdown)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def test_last_use_follows_reads_and_survives_a_restart(cache_dir: Path, source: Source) -> None:
    source.add_file("/a", b"entry a")
    source.add_file("/b", b"entry b")
    a, b = source.url("/a"), source.url("/b")
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        first = c.post("/content/", json={"url": a}).json()
        digest_b = c.post("/content/", json={"url": b}).json()["digest"]
        assert first["lastUsed"] is not None
        time.sleep(1.1)
        assert c.get(f"/content/{b64(a)}").json()["lastUsed"] == first["lastUsed"]
        used_a = c.post("/content/", json={"url": a}).json()["lastUsed"]
        assert used_a > first["lastUsed"]
        time.sleep(1.1)
        before = {e["url"]: e["lastUsed"] for e in c.get("/content/").json()["entries"]}
        assert c.head(f"/v2/whatever/blobs/{digest_b}").status_code == 200  # a /v2 read
        listing = {e["url"]: e["lastUsed"] for e in c.get("/content/").json()["entries"]}
        assert listing[a] == used_a == before[a]  # listing does not count as a use
        used_b = listing[b]
        assert used_b > before[b] and used_b > used_a
    recorded = json.loads((cache_dir / "last-used.json").read_text())
    assert set(recorded) == {a, b}
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        listing = {e["url"]: e["lastUsed"] for e in c.get("/content/").json()["entries"]}
        assert listing == {a: used_a, b: used_b}
        assert c.delete(f"/content/{b64(a)}").status_code == 204
    assert set(json.loads((cache_dir / "last-used.json").read_text())) == {b}
