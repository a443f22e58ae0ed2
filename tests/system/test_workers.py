"""``--workers``: one writer and reader processes sharing the port
(proxy.workers), against the real server."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source

WAIT = 30.0  # seconds a bounded wait may take before the test fails


def _pid(c: httpx.Client) -> int:
    r = c.get("/healthz")
    assert r.status_code == 200
    return int(r.headers["x-worker-pid"])


def _workers(srv: ServerProcess) -> dict[str, object]:
    with srv.client() as c:
        info = c.get("/admin/info").json()
    workers: dict[str, object] = info["workers"]
    return workers


def _reader_pids(srv: ServerProcess) -> set[int]:
    readers = _workers(srv)["readers"]
    assert isinstance(readers, list)
    return {int(r["pid"]) for r in readers}


def _connection_to(srv: ServerProcess, pid: int) -> httpx.Client:
    """A keep-alive connection that process ``pid`` accepted (new ones until one is)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        c = srv.client()
        if _pid(c) == pid:
            return c
        c.close()
    raise AssertionError(f"no connection was accepted by {pid}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_until(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        time.sleep(0.02)


@pytest.fixture
def workers(cache_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(cache_dir, "--workers", "2", "--verbose", "1", "--retries", "0") as srv:
        yield srv


def test_both_processes_accept_from_the_port(workers: ServerProcess) -> None:
    info = _workers(workers)
    readers = _reader_pids(workers)
    assert len(readers) == 1
    assert info["writer"] == workers.proc.pid if workers.proc else False
    seen: set[int] = set()
    deadline = time.monotonic() + WAIT
    while seen != readers | {workers.proc.pid if workers.proc else 0}:
        assert time.monotonic() < deadline, f"only {seen} answered"
        with workers.client() as c:
            seen.add(_pid(c))


def test_a_post_through_a_reader_is_the_writers_then_readers_serve_it(
    workers: ServerProcess, source: Source
) -> None:
    assert workers.proc is not None
    writer = workers.proc.pid
    (reader,) = _reader_pids(workers)
    source.add_file("/model.bin", b"weights" * 1000)
    url = source.url("/model.bin")
    with closing(_connection_to(workers, reader)) as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        # The reader handed the connection to the writer, which answered it and keeps it.
        assert _pid(c) == writer
    digest = r.json()["digest"]
    with closing(_connection_to(workers, reader)) as c:
        assert c.get(f"/content/{b64(url)}").status_code == 200  # at once, wherever answered

    def served_by_the_reader() -> bool:
        with closing(_connection_to(workers, reader)) as c:
            got = c.get(f"/content/{b64(url)}")  # the writer's (it keeps the connection)
            assert got.status_code == 200
            assert got.json()["digest"] == digest
        with closing(_connection_to(workers, reader)) as c:
            blob = c.get(f"/v2/127.0.0.1/model.bin/blobs/{digest}", headers={"Range": "bytes=0-6"})
            assert blob.status_code in (200, 206)
            return _pid(c) == reader  # answered here, not handed to the writer

    _wait_until(served_by_the_reader, "the reader serves the new entry itself")

    # A change the writer answered is never behind in a reader: removed, gone at once.
    with closing(_connection_to(workers, writer)) as c:
        assert c.delete(f"/content/{b64(url)}").status_code == 204
    with closing(_connection_to(workers, reader)) as c:
        assert c.get(f"/content/{b64(url)}").status_code == 404


def test_a_push_body_streams_through_a_handed_off_connection(
    cache_dir: Path,
) -> None:
    with ServerProcess(cache_dir, "--workers", "2", "--verbose", "1", "--allow-push") as srv:
        (reader,) = _reader_pids(srv)
        body = os.urandom(3 * 1024 * 1024)
        import hashlib

        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with closing(_connection_to(srv, reader)) as c:
            r = c.post(f"/v2/pushed/blobs/uploads/?digest={digest}", content=body)
            assert r.status_code == 201, r.text
        with srv.client() as c:
            got = c.get(f"/v2/pushed/blobs/{digest}")
            assert got.status_code == 200
            assert got.content == body


def test_a_killed_reader_is_replaced(workers: ServerProcess) -> None:
    (old,) = _reader_pids(workers)
    os.kill(old, signal.SIGKILL)

    def replaced() -> bool:
        pids = _reader_pids(workers)
        return bool(pids) and old not in pids

    _wait_until(replaced, "a new reader")
    (new,) = _reader_pids(workers)
    readers = _workers(workers)["readers"]
    assert isinstance(readers, list) and readers[0]["restarts"] == 1
    with closing(_connection_to(workers, new)) as c:
        assert c.get("/content/").status_code == 200


def test_metrics_sum_every_process(workers: ServerProcess) -> None:
    assert workers.proc is not None
    (reader,) = _reader_pids(workers)
    answered: dict[int, int] = {}
    deadline = time.monotonic() + WAIT
    while len(answered) < 2:
        assert time.monotonic() < deadline
        with workers.client() as c:
            pid = _pid(c)
            answered[pid] = answered.get(pid, 0) + 1
    assert set(answered) == {reader, workers.proc.pid}
    total = sum(answered.values())
    for pid in (reader, workers.proc.pid):
        with closing(_connection_to(workers, pid)) as c:
            text = c.get("/metrics").text
        m = re.search(
            r'storage_manager_http_requests_total\{method="GET",route="healthz",status="200"\} '
            r"([0-9.]+)",
            text,
        )
        assert m is not None, text
        # Every /healthz so far, whichever process answered it (the ones that
        # found these connections counted too).
        assert float(m.group(1)) >= total
        assert "storage_manager_cache_entries" in text


def test_metrics_count_exactly_across_processes(cache_dir: Path) -> None:
    with ServerProcess(cache_dir, "--workers", "2", "--verbose", "1") as srv:
        assert srv.proc is not None
        (reader,) = _reader_pids(srv)
        made = 0
        for pid in (reader, srv.proc.pid, reader):
            c = _connection_to(srv, pid)
            for _ in range(5):
                assert _pid(c) == pid
            c.close()
        with srv.client() as c:
            text = c.get("/metrics").text
        m = re.search(
            r'storage_manager_http_requests_total\{method="GET",route="healthz",status="200"\} '
            r"([0-9.]+)",
            text,
        )
        assert m is not None, text
        made = int(float(m.group(1)))
        # Each process counted its own: 15 asked here, plus the probes that found them.
        assert made >= 15 + 3


def test_a_clean_stop_stops_every_process(cache_dir: Path) -> None:
    srv = ServerProcess(cache_dir, "--workers", "3", "--verbose", "1").start()
    readers = _reader_pids(srv)
    assert len(readers) == 2
    assert srv.stop() == 0
    assert all(_gone(pid) for pid in readers)


def test_readers_stop_when_the_writer_is_killed(cache_dir: Path) -> None:
    srv = ServerProcess(cache_dir, "--workers", "2", "--verbose", "1").start()
    readers = _reader_pids(srv)
    srv.kill()
    _wait_until(lambda: all(_gone(pid) for pid in readers), "the readers stop")
    # The cache is free again: a new server takes it.
    with ServerProcess(cache_dir, "--workers", "2") as again, again.client() as c:
        assert c.get("/content/").status_code == 200


def test_one_worker_is_a_single_process(cache_dir: Path) -> None:
    with ServerProcess(cache_dir, "--workers", "1", "--verbose", "1") as srv, srv.client() as c:
        info = c.get("/admin/info").json()
        assert "workers" not in info
        assert srv.proc is not None
        assert int(c.get("/healthz").headers["x-worker-pid"]) == srv.proc.pid
