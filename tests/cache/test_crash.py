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

from tests.conftest import b64
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


def wait_for_line(srv: ServerProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in srv.lines):
        assert srv.proc is not None and srv.proc.poll() is None, srv.log()
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{srv.log()}"
        time.sleep(0.02)


def file_gets(source: Source, path: str) -> list[dict[str, str]]:
    return [dict(q.headers) for q in source.requests if q.path == path and q.method == "GET"]


@pytest.mark.parametrize(
    ("point", "refetch"),
    [
        # Killed while the data streams in: the next POST continues with Range.
        ("ingest-write", "range"),
        # Killed with the data verified, before its rename into blobs/:
        # the next POST re-hashes the bytes in ingest/ and commits them.
        ("blob-verified", "none"),
        # Killed while the temporary index.json is half written, and after it is
        # fsync'd but before its rename: the blob is in blobs/, the entry is not
        # in index.json but in index.journal (written before index.json is), so
        # the restart has it complete, and the next POST fetches nothing.
        ("index-writing", "kept"),
        ("index-fsynced", "kept"),
    ],
)
def test_kill_9_at_named_points(tmp_path: Path, source: Source, point: str, refetch: str) -> None:
    data = os.urandom(6 * 1024 * 1024 + 7)
    source.add_file("/model.bin", data)
    source.set_delay("/model.bin", 0.01, chunk=256 * 1024)
    url = source.url("/model.bin")
    cache = tmp_path / "cache"
    with ServerProcess(cache):  # the layout exists before the fault is armed
        pass
    before = json.loads((cache / "index.json").read_text())
    srv = ServerProcess(cache, "--retries", "0", env={"NEKKO_FAULT_PAUSE": point}).start()

    def post() -> None:
        try:
            with srv.client() as c:
                c.post("/content/", json={"url": url})
        except Exception:  # noqa: S110 - killed under it on purpose
            pass

    threading.Thread(target=post, daemon=True).start()
    wait_for_line(srv, f"fault point {point} reached")
    srv.kill()
    check_cache(cache)
    if point.startswith("index"):
        # The rename never happened: index.json is the old one, whole.
        assert json.loads((cache / "index.json").read_text()) == before
        assert list(cache.glob("index.json.tmp-*")), "the temporary index should be left"
    gets = len(file_gets(source, "/model.bin"))
    # What a kill inside IngestFile.write_state would leave beside state.json.
    (cache / "ingest" / hashlib.sha256(url.encode()).hexdigest() / "state.json.tmp").write_text(
        '{"url": "half'
    )

    with ServerProcess(cache) as again, again.client() as c:
        # The startup check removed the temporaries a crash leaves.
        assert not list(cache.glob("index.json.tmp-*"))
        assert not list((cache / "ingest").glob("**/*.tmp"))
        check_cache(cache)
        state = c.get(f"/content/{b64(url)}")
        if refetch == "kept":
            assert state.status_code == 200, state.text
            assert state.json()["state"] == "complete"
        else:
            assert state.status_code == 206, state.text
            assert state.json()["state"] == "interrupted"
        r = c.post("/content/", json={"url": url})
        assert r.status_code == (200 if refetch == "kept" else 201), r.text
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert r.json()["digest"] == digest
        assert c.get(f"/v2/x/blobs/{digest}").content == data
        assert c.get(f"/content/{b64(url)}").status_code == 200
    new = file_gets(source, "/model.bin")[gets:]
    if refetch == "range":
        assert len(new) == 1 and new[0].get("range", "").startswith("bytes="), new
        assert int(new[0]["range"][6:].rstrip("-")) > 0
    else:
        assert new == [], "a verified download was fetched again"
    check_cache(cache)
    assert not [p for p in (cache / "ingest").iterdir() if p.name not in ("small", "unsynced")]
