"""Following a download over the API: POST with ``Prefer: respond-async``
(202 + Location), and ``GET /content/<b64>?watch=1`` as NDJSON or SSE."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_respond_async_then_watch_ndjson(server: ServerProcess, source: Source) -> None:
    data = os.urandom(3 * 1024 * 1024)
    source.add_file("/w.bin", data)
    source.set_delay("/w.bin", 0.05, chunk=128 * 1024)  # about 1.2 s
    url = source.url("/w.bin")
    with server.client() as c:
        r = c.post("/content/", json={"url": url}, headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        assert r.headers["preference-applied"] == "respond-async"
        location = r.headers["location"]
        assert c.get(location).json()["url"] == url
        docs = []
        with c.stream("GET", location + "?watch=1") as w:
            assert w.status_code == 200
            assert w.headers["content-type"] == "application/x-ndjson"
            for line in w.iter_lines():
                docs.append(json.loads(line))
        assert len(docs) >= 3, docs  # several progress documents while it ran
        done = [d["bytesDone"] for d in docs[:-1]]
        assert done == sorted(done) and done[-1] < len(data)
        assert docs[-1]["state"] == "complete" and docs[-1]["digest"] == sha(data)
        assert docs[-2]["size"] == len(data)
        # Watching what is already complete: one document, then the end.
        with c.stream("GET", f"/content/{b64(url)}?watch=1") as w:
            assert [json.loads(x)["state"] for x in w.iter_lines()] == ["complete"]
        # Without the preference a POST waits, as the seed's API did.
        assert c.post("/content/", json={"url": url}).status_code == 200


def test_watch_as_server_sent_events_reports_a_failure(cache_dir: Path, source: Source) -> None:
    source.add_file("/cut.bin", os.urandom(2 * 1024 * 1024))
    source.set_delay("/cut.bin", 0.05, chunk=128 * 1024)
    source.cut_after("/cut.bin", 1024 * 1024)
    url = source.url("/cut.bin")
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        r = c.post("/content/", json={"url": url}, headers={"Prefer": "respond-async, wait=1"})
        assert r.status_code == 202
        events = []
        with c.stream(
            "GET", f"/content/{b64(url)}?watch=1", headers={"Accept": "text/event-stream"}
        ) as w:
            assert w.headers["content-type"] == "text/event-stream"
            for line in w.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                else:
                    assert line == ""
        last = events[-1]
        assert last["state"] == "failed", events
        assert last["error"]["code"] == "UPSTREAM_UNREACHABLE"
        assert last["bytesDone"] > 0  # kept for the next POST to resume
        assert c.get(f"/content/{b64(url)}").json()["state"] == "interrupted"
        # An unknown URL is a plain 404.
        assert c.get(f"/content/{b64(url + 'x')}?watch=1").status_code == 404
