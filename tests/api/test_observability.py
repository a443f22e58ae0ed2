"""Metrics scraped with the Prometheus text parser, health checks, and the
access-log line of real requests (text and JSON)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def scrape(c: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = c.get("/metrics")  # type: ignore[attr-defined]
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happened(cache_dir: Path, source: Source) -> None:
    data = os.urandom(700_000)
    source.add_file("/m.bin", data)
    url = source.url("/m.bin")
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        before = scrape(c)
        assert value(before, "storage_manager_cache_entries") == 0
        assert value(before, "storage_manager_active_downloads") == 0
        assert "process_resident_memory_bytes" in {k[0] for k in before}
        digest = c.post("/content/", json={"url": url}).json()["digest"]  # a miss
        assert c.post("/content/", json={"url": url}).status_code == 200  # a hit
        assert c.get(f"/v2/x/blobs/{digest}").content == data
        assert c.head(f"/v2/x/blobs/{digest}").status_code == 200
        assert c.get(f"/v2/x/blobs/sha256:{'0' * 64}").status_code == 404
        assert c.post("/content/", json={"url": source.url("/nope")}).status_code == 404
        m = scrape(c)
    req = "storage_manager_http_requests_total"
    assert value(m, req, route="content", method="POST", status="201") == 1
    assert value(m, req, route="content", method="POST", status="200") == 1
    assert value(m, req, route="v2_blob", method="GET", status="200") == 1
    assert value(m, req, route="v2_blob", method="HEAD", status="200") == 1
    assert value(m, req, route="v2_blob", method="GET", status="404") == 1
    assert value(m, "storage_manager_served_bytes_total", route="v2_blob") >= len(data)
    cache = "storage_manager_cache_requests_total"
    assert value(m, cache, kind="blob", result="hit") == 2
    assert value(m, cache, kind="blob", result="miss") == 1
    assert value(m, cache, kind="content", result="miss") == 1
    assert value(m, cache, kind="content", result="hit") == 1
    assert value(m, "storage_manager_ingested_bytes_total") == len(data)
    assert value(m, "storage_manager_cache_entries") == 1
    assert value(m, "storage_manager_cache_size_bytes") >= len(data)
    hist = "storage_manager_download_duration_seconds_count"
    assert value(m, hist, scheme="http", result="stored") == 1
    assert value(m, hist, scheme="http", result="failed") == 1
    errors = "storage_manager_upstream_errors_total"
    assert value(m, errors, scheme="http", code="UPSTREAM_NOT_FOUND") == 1


def test_health_and_readiness(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"ready": True, "checks": {"indexLoaded": True, "cacheWritable": True}}


def test_access_log_lines(cache_dir: Path, source: Source) -> None:
    source.add_file("/x.bin", b"x" * 1234)
    url = source.url("/x.bin")
    secret_url = url.replace("http://", "http://user:pa55word@")
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        c.post("/content/", json={"url": secret_url})
        c.get(f"/content/{b64(secret_url)}")
        time.sleep(0.2)
        lines = [x for x in srv.lines if "proxy.access" in x]
    get = next(x for x in lines if '"GET /content/' in x)
    # method, the URL with its base64 decoded and its password gone, status, bytes, time
    assert f'"GET /content/{url} HTTP/1.1" 200 ' in get.replace("user:***@", ""), get
    assert "pa55word" not in "\n".join(srv.lines)
    assert get.split()[-1].endswith("s") and float(get.split()[-1][:-1]) >= 0

    with ServerProcess(cache_dir, "--log-format", "json") as srv, srv.client() as c:
        c.get(f"/content/{b64(url)}")
        c.get("/v2/")
        time.sleep(0.2)
    lines = [x for x in srv.lines if x.strip()]
    docs = [json.loads(x) for x in lines]  # every line is JSON
    assert docs[-1]["message"] == "stopped"
    access = [d for d in docs if d["logger"] == "proxy.access"]
    assert {(d["method"], d["path"], d["status"]) for d in access} >= {
        ("GET", f"/content/{url}", 200),
        ("GET", "/v2/", 200),
    }
    assert all(isinstance(d["seconds"], float) and d["level"] == "INFO" for d in access)
