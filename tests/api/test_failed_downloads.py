"""What a failed or stopped download leaves behind to be seen: its last error
(``GET /content/<url>``: ``"state": "failed"`` and ``error``; ``ls``) until
it is retried or removed; the log of a resume that had to start over and of
downloads a stop interrupted; how many attempts a stalled source was given."""

from __future__ import annotations

import time
from pathlib import Path

from proxy.service.failures import Failures
from tests.conftest import b64
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source


def ls(srv: ServerProcess) -> str:
    address = srv.base_url.removeprefix("http://")
    r = run_cli("ls", "--address", address, "--cache-dir", str(srv.cache_dir))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_failed_download_keeps_its_error_until_retried(
    server: ServerProcess, source: Source
) -> None:
    source.add_file("/gone.bin", b"here now")
    source.fail_status("/gone.bin", 404, times=1)
    url = source.url("/gone.bin")
    with server.client() as c:
        assert c.post("/content/", json={"url": url}).status_code == 404
        r = c.get(f"/content/{b64(url)}")
        assert r.status_code == 404, r.text  # nothing kept: not here, and why
        body = r.json()
        assert body["state"] == "failed"
        assert body["error"]["code"] == "UPSTREAM_NOT_FOUND"
        assert "404" in body["error"]["message"]
        listed = {e["url"]: e for e in c.get("/content/").json()["entries"]}
        assert listed[url]["state"] == "failed" and listed[url]["error"] == body["error"]
        table = ls(server)
        assert "failed" in table and "UPSTREAM_NOT_FOUND" in table
        # Retried: the error is history.
        assert c.post("/content/", json={"url": url}).status_code == 201
        body = c.get(f"/content/{b64(url)}").json()
        assert body["state"] == "complete" and "error" not in body
        assert "UPSTREAM_NOT_FOUND" not in ls(server)


def test_removing_a_failed_download_forgets_it(server: ServerProcess, source: Source) -> None:
    source.fail_status("/broken", 403)
    url = source.url("/broken")
    with server.client() as c:
        assert c.post("/content/", json={"url": url}).status_code == 403
        assert c.get(f"/content/{b64(url)}").json()["error"]["code"] == "UPSTREAM_DENIED"
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        r = c.get(f"/content/{b64(url)}")
        assert r.status_code == 404 and r.json() == {
            "error": {"code": "NOT_FOUND", "message": f"{url} is not in the cache"}
        }
        assert url not in {e["url"] for e in c.get("/content/").json()["entries"]}


def test_failures_are_bounded_oldest_first() -> None:
    failures = Failures(limit=3)
    for i in range(5):
        failures.record(f"http://h/{i}", "UPSTREAM_ERROR", f"failed {i}")
    assert failures.urls() == ["http://h/2", "http://h/3", "http://h/4"]
    failures.record("http://h/2", "UPSTREAM_TIMEOUT", "again")  # the newest now
    failures.record("http://h/5", "UPSTREAM_ERROR", "new")
    assert failures.urls() == ["http://h/4", "http://h/2", "http://h/5"]
    assert failures.forget("http://h/4") and not failures.forget("http://h/4")


def test_a_stalled_source_error_counts_the_attempts(cache_dir: Path, source: Source) -> None:
    data = bytes(range(256)) * 1024
    source.add_file("/slow.bin", data)
    source.stall_after("/slow.bin", 1000, 20, times=3)
    url = source.url("/slow.bin")
    args = ("--idle-timeout", "1", "--retries", "2", "--retry-backoff", "0")
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 504, r.text
        assert "gave up after 3 attempts" in r.json()["error"]["message"]
        assert (
            "gave up after 3 attempts" in c.get(f"/content/{b64(url)}").json()["error"]["message"]
        )


def test_a_resume_that_starts_over_is_logged(server: ServerProcess, source: Source) -> None:
    data = bytes(range(256)) * 2048
    source.add_file("/whole.bin", data)
    source.cut_after("/whole.bin", 200_000)
    source.no_range("/whole.bin")
    url = source.url("/whole.bin")
    with server.client() as c:
        assert c.post("/content/", json={"url": url}).status_code == 201
    assert len(source.requests_for("/whole.bin")) == 2
    assert "instead of resuming at byte 200000; starting over from byte 0" in server.log()


def test_a_stop_logs_the_downloads_it_interrupts(cache_dir: Path, source: Source) -> None:
    data = bytes(range(256)) * 4096
    source.add_file("/big.bin", data)
    source.stall_after("/big.bin", 300_000, 30)
    url = source.url("/big.bin")
    srv = ServerProcess(cache_dir, "--idle-timeout", "60")
    with srv, srv.client() as c:
        r = c.post("/content/", json={"url": url}, headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 20
        while c.get(f"/content/{b64(url)}").json().get("bytesDone", 0) < 300_000:
            assert time.monotonic() < deadline, "the download never reached the stall"
            time.sleep(0.1)
    log = srv.log()
    assert f"the download of {url} is interrupted (downloading, 300000 of {len(data)}" in log


def test_a_failure_that_kept_bytes_is_interrupted_with_its_error(
    cache_dir: Path, source: Source
) -> None:
    data = bytes(range(256)) * 1024
    source.add_file("/cut.bin", data)
    source.cut_after("/cut.bin", 100_000)
    url = source.url("/cut.bin")
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": url}).status_code == 502
        r = c.get(f"/content/{b64(url)}")
        assert r.status_code == 206, r.text
        body = r.json()
        assert (body["state"], body["bytesDone"]) == ("interrupted", 100_000)
        assert body["error"]["code"] == "UPSTREAM_UNREACHABLE"
        assert "ERROR" in ls(srv) and "UPSTREAM_UNREACHABLE" in ls(srv)
        assert c.post("/content/", json={"url": url}).status_code == 201  # resumed
        assert "error" not in c.get(f"/content/{b64(url)}").json()
