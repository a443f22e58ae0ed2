"""Faults injected by the upstream, against the real server process.

Resets, stalls, cuts, wrong bytes, wrong lengths, trickles, 5xx storms and
redirect chains; retries are counted and their pauses timed. Complements
tests/fetch/test_http_downloader.py (one cut, one stall to 504, one loop) without
repeating it. Small files and short timeouts keep it within seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import RecordedRequest, Source

FAST = ("--idle-timeout", "1", "--retry-backoff", "0.05")

Start = Callable[..., ServerProcess]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_files(cache: Path) -> list[str]:
    root = cache / "blobs" / "sha256"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def ingest_left(cache: Path) -> list[str]:
    """Everything under ingest/ but the (empty) scratch directory for small blobs and the
    markers of committed blobs still being fsync'd (``tests/cache/test_durable.py``)."""
    root = cache / "ingest"
    if not root.exists():
        return []
    return sorted(
        name
        for p in root.rglob("*")
        if (name := str(p.relative_to(root))) != "small"
        and p.relative_to(root).parts[0] != "unsynced"
    )


def blob(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.removeprefix("sha256:")


def gets(source: Source, path: str) -> list[RecordedRequest]:
    return [q for q in source.requests_for(path) if q.method == "GET"]


def ranges(source: Source, path: str) -> list[str | None]:
    return [q.headers.get("range") for q in gets(source, path)]


@pytest.fixture
def start(cache_dir: Path) -> Iterator[Start]:
    """``start(retries, *more)``: a server with short timeouts, stopped after the test."""
    started: list[ServerProcess] = []

    def run(retries: int, *more: str) -> ServerProcess:
        srv = ServerProcess(cache_dir, "--retries", str(retries), *FAST, *more).start()
        started.append(srv)
        return srv

    yield run
    for srv in started:
        srv.stop()


def post(c: httpx.Client, url: str, **extra: str) -> httpx.Response:
    return c.post("/content/", json={"url": url, **extra})


def delete_cancels_at_once(
    srv: ServerProcess, c: httpx.Client, url: str, started: Callable[[], bool]
) -> None:
    """POST ``url`` in the background and, once ``started()`` holds, DELETE it: the POST
    must end within 3 s, as 409 CANCELLED."""
    results: list[httpx.Response] = []

    def poster_body() -> None:
        with srv.client() as pc:
            results.append(post(pc, url))

    poster = threading.Thread(target=poster_body)
    poster.start()
    deadline = time.monotonic() + 20
    while not started():
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.02)
    time.sleep(0.3)  # waiting where the test wants it
    t0 = time.monotonic()
    assert c.delete(f"/content/{b64(url)}").status_code == 204
    poster.join(10)
    assert time.monotonic() - t0 < 3
    assert [r.status_code for r in results] == [409]
    assert results[0].json()["error"]["code"] == "CANCELLED"


# -- connection reset ---------------------------------------------------------------------------


def test_reset_mid_body_is_retried_and_resumed(
    start: Start, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(1_000_000)
    source.add_file("/rst", data)
    source.reset_after("/rst", 400_000)
    srv = start(2)
    with srv.client() as c:
        r = post(c, source.url("/rst"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    first, second = gets(source, "/rst")
    assert "range" not in first.headers
    # An RST may drop bytes still in flight: the resume starts where the disk ends.
    resumed_at = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 400_000
    assert second.headers["if-range"] == first_etag(source)
    assert blob(cache_dir, sha(data)).read_bytes() == data
    assert ingest_left(cache_dir) == []


def first_etag(source: Source) -> str:
    import urllib.request

    req = urllib.request.Request(source.url("/rst"), method="HEAD")
    with urllib.request.urlopen(req) as resp:
        return str(resp.headers["ETag"])


def test_reset_without_retries_keeps_the_bytes_for_the_next_post(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(1_000_000)
    url = source.url("/rst")
    source.add_file("/rst", data)
    source.reset_after("/rst", 400_000)
    srv = start(0)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE"
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 206 and g.json()["state"] == "interrupted"
        kept = g.json()["bytesDone"]
        assert 0 < kept <= 400_000
        assert blob_files(cache_dir) == []
        r = post(c, url)
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert ranges(source, "/rst") == [None, f"bytes={kept}-"]
    assert blob(cache_dir, sha(data)).read_bytes() == data


# -- stalls -------------------------------------------------------------------------------------


def test_stalled_body_is_resumed_on_retry(start: Start, source: Source, cache_dir: Path) -> None:
    data = os.urandom(500_000)
    source.add_file("/stall", data)
    source.stall_after("/stall", 100_000, seconds=10)
    srv = start(1)
    with srv.client() as c:
        t0 = time.monotonic()
        r = post(c, source.url("/stall"))
        elapsed = time.monotonic() - t0
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert 1.0 <= elapsed < 5.0  # the idle timeout fired; the 10 s stall was not waited out
    assert ranges(source, "/stall") == [None, "bytes=100000-"]
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_stall_on_every_attempt_is_504_after_exactly_retries_plus_one(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(1_000_000)
    url = source.url("/stall")
    source.add_file("/stall", data)
    source.stall_after("/stall", 100_000, seconds=10, times=50)
    srv = start(2)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
        g = c.get(f"/content/{b64(url)}").json()
        assert g["state"] == "interrupted" and g["bytesDone"] == 300_000
    # Each attempt resumed where the previous one stalled.
    assert ranges(source, "/stall") == [None, "bytes=100000-", "bytes=200000-"]
    assert blob_files(cache_dir) == []


# -- truncated bodies ---------------------------------------------------------------------------


def test_truncated_on_several_attempts_resumes_each_time_and_verifies(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(1_000_000)
    source.add_file("/t", data)
    source.cut_after("/t", 300_000, times=3)
    srv = start(3)
    with srv.client() as c:
        r = post(c, source.url("/t"), digest=sha(data))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data) and r.json()["size"] == len(data)
    assert ranges(source, "/t") == [None, "bytes=300000-", "bytes=600000-", "bytes=900000-"]
    assert blob(cache_dir, sha(data)).read_bytes() == data
    assert ingest_left(cache_dir) == []


def test_cut_on_every_attempt_makes_exactly_retries_plus_one_attempts(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(1_000_000)
    url = source.url("/cut")
    source.add_file("/cut", data)
    source.cut_after("/cut", 100_000, times=50)
    srv = start(3)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE"
        g = c.get(f"/content/{b64(url)}").json()
        assert g["state"] == "interrupted" and g["bytesDone"] == 400_000
    assert len(gets(source, "/cut")) == 4
    assert blob_files(cache_dir) == []


# -- wrong bytes --------------------------------------------------------------------------------


def test_wrong_bytes_against_the_expected_digest_keep_nothing(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(300_000)
    url = source.url("/w")
    source.add_file("/w", data)
    source.corrupt("/w", 123_456)
    srv = start(0)
    with srv.client() as c:
        r = post(c, url, digest=sha(data))
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
        assert blob_files(cache_dir) == []
        assert ingest_left(cache_dir) == []
        assert c.get(f"/content/{b64(url)}").status_code == 404
        # The source is right again: the next POST starts from zero and stores it.
        r = post(c, url, digest=sha(data))
        assert r.status_code == 201, r.text
    assert ranges(source, "/w") == [None, None]
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_wrong_bytes_before_a_resume_start_the_file_over(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(800_000)
    source.add_file("/wr", data)
    source.corrupt("/wr", 10)  # in the part that is kept on disk
    source.cut_after("/wr", 400_000)
    srv = start(1)
    with srv.client() as c:
        r = post(c, source.url("/wr"), digest=sha(data))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    # Cut, resumed, mismatch: the kept bytes were wrong, so once more from byte 0.
    assert ranges(source, "/wr") == [None, "bytes=400000-", None]
    assert blob(cache_dir, sha(data)).read_bytes() == data
    assert blob_files(cache_dir).count(sha(data)[7:]) == 1
    assert ingest_left(cache_dir) == []


# -- wrong Content-Length -----------------------------------------------------------------------


def test_announced_length_longer_than_the_body_is_a_cut(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(200_000)
    url = source.url("/long")
    source.add_file("/long", data)
    source.misannounce("/long", +5_000)
    srv = start(0)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE"
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 206
        assert g.json()["state"] == "interrupted" and g.json()["bytesDone"] == len(data)
        assert blob_files(cache_dir) == []
        # The resume asks past the end; the 416 names the real size, which is what is kept.
        r = post(c, url, digest=sha(data))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data) and r.json()["size"] == len(data)
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 200 and g.json()["size"] == len(data)
    assert ranges(source, "/long") == [None, f"bytes={len(data)}-"]
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_announced_length_shorter_than_the_body_reads_only_what_was_announced(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(200_000)
    other = os.urandom(50_000)
    url = source.url("/short")
    source.add_file("/short", data)
    source.add_file("/next", other)
    source.misannounce("/short", -1_000)
    srv = start(0)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 201, r.text
        # What the source announced is what was stored and reported: a prefix, no stray byte.
        assert r.json()["digest"] == sha(data[:-1_000])
        g = c.get(f"/content/{b64(url)}").json()
        assert g["size"] == g["bytesDone"] == len(data) - 1_000
        assert blob(cache_dir, g["digest"]).read_bytes() == data[:-1_000]
        # The 1000 left-over bytes on that connection must not become the next answer.
        r = post(c, source.url("/next"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(other)
    assert blob(cache_dir, sha(other)).read_bytes() == other


def test_announced_length_shorter_than_the_body_with_an_expected_digest_is_a_mismatch(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(200_000)
    url = source.url("/short")
    source.add_file("/short", data)
    source.misannounce("/short", -1_000)
    srv = start(0)
    with srv.client() as c:
        r = post(c, url, digest=sha(data))
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
        assert c.get(f"/content/{b64(url)}").status_code == 404
        assert blob_files(cache_dir) == [] and ingest_left(cache_dir) == []
        r = post(c, url, digest=sha(data))
        assert r.status_code == 201, r.text
    assert blob(cache_dir, sha(data)).read_bytes() == data


# -- slow but steady ----------------------------------------------------------------------------


def test_slow_trickle_below_the_idle_timeout_succeeds(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(10 * 16_384)
    source.add_file("/slow", data)
    source.set_delay("/slow", 0.3, chunk=16_384)  # 10 chunks, 2.7 s, never 1 s idle
    srv = start(0)
    with srv.client() as c:
        t0 = time.monotonic()
        r = post(c, source.url("/slow"))
        elapsed = time.monotonic() - t0
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert elapsed >= 2.5  # longer than the idle timeout in total: it is an idle timer
    assert ranges(source, "/slow") == [None]
    assert blob(cache_dir, sha(data)).read_bytes() == data


# -- 5xx and bounded, growing retries -----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_failing_status_makes_exactly_retries_plus_one_attempts_with_growing_pauses(
    cache_dir: Path, source: Source, status: int
) -> None:
    source.add_file("/5xx", b"never served")
    source.fail_status("/5xx", status)
    backoff = 0.1
    with (
        ServerProcess(
            cache_dir, "--retries", "3", "--retry-backoff", str(backoff), "--idle-timeout", "1"
        ) as srv,
        srv.client() as c,
    ):
        r = post(c, source.url("/5xx"))
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_ERROR"
        assert str(status) in r.json()["error"]["message"]
    attempts = gets(source, "/5xx")
    assert len(attempts) == 4
    pauses = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    for i, pause in enumerate(pauses):
        assert backoff * 2**i * 0.9 <= pause < backoff * 2**i + 0.5, pauses
    assert pauses[0] < pauses[1] < pauses[2], pauses


def test_5xx_without_retries_is_one_attempt_and_4xx_is_never_retried(
    start: Start,
    source: Source,
) -> None:
    source.fail_status("/once", 502)
    source.fail_status("/gone", 404)
    srv = start(0)
    with srv.client() as c:
        assert post(c, source.url("/once")).status_code == 502
    srv.stop()
    srv = start(3)
    with srv.client() as c:
        r = post(c, source.url("/gone"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "UPSTREAM_NOT_FOUND"
    assert len(gets(source, "/once")) == 1
    assert len(gets(source, "/gone")) == 1


def test_5xx_then_success_after_the_retries_it_needed(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(100_000)
    source.add_file("/flaky", data)
    source.fail_status("/flaky", 503, times=3)
    srv = start(3)
    with srv.client() as c:
        r = post(c, source.url("/flaky"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert len(gets(source, "/flaky")) == 4
    assert blob(cache_dir, sha(data)).read_bytes() == data


# -- redirects ----------------------------------------------------------------------------------


def test_redirect_chains_self_loops_and_the_hop_limit(start: Start, source: Source) -> None:
    source.add_file("/end", b"at the end of the chain")
    for i in range(11):
        source.redirect(f"/ten{i}", "/end" if i == 9 else f"/ten{i + 1}")
        source.redirect(f"/eleven{i}", "/end" if i == 10 else f"/eleven{i + 1}")
    source.redirect("/self", "/self", status=301)
    srv = start(2)
    with srv.client() as c:
        r = post(c, source.url("/ten0"))  # 10 redirects: the limit
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(b"at the end of the chain")
        r = post(c, source.url("/eleven0"))  # 11: one too many
        assert r.status_code == 502, r.text
        assert "redirects" in r.json()["error"]["message"]
        r = post(c, source.url("/self"))
        assert r.status_code == 502, r.text
        assert "loop" in r.json()["error"]["message"]
    # Refused redirects are not retried.
    assert len(source.requests_for("/eleven0")) == 1
    assert len(source.requests_for("/self")) == 1


def test_digest_download_through_a_cross_host_chain_keeps_no_authorization_there(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(100_000)
    with Source(host="127.0.0.2") as other:
        other.add_file("/d", data)
        other.redirect("/c", "/d", status=307)
        source.redirect("/a", "/b")
        source.redirect("/b", other.url("/c"), status=308)
        srv = start(0)
        with srv.client() as c:
            r = post(c, source.url("/a"), credentials="chain-secret", digest=sha(data))
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
        assert [q.headers.get("authorization") for q in source.requests] == [
            "Bearer chain-secret",
            "Bearer chain-secret",
        ]
        assert [q.path for q in other.requests] == ["/c", "/d"]
        assert all("authorization" not in q.headers for q in other.requests)
    assert blob(cache_dir, sha(data)).read_bytes() == data


# -- delete during a download -------------------------------------------------------------------


def test_delete_during_a_download_cancels_it_and_leaves_no_garbage(
    start: Start,
    source: Source,
    cache_dir: Path,
) -> None:
    data = os.urandom(2_000_000)
    url = source.url("/del")
    source.add_file("/del", data)
    source.set_delay("/del", 0.05, chunk=32_768)  # about 3 s in all
    srv = start(0)
    results: list[httpx.Response] = []

    def poster() -> None:
        with srv.client() as c:
            results.append(post(c, url))

    threads = [threading.Thread(target=poster) for _ in range(2)]  # one runs, one joins it
    with srv.client() as c:
        for t in threads:
            t.start()
            for _ in range(200):
                g = c.get(f"/content/{b64(url)}")
                if g.status_code == 206 and g.json()["bytesDone"] > 0:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("the download never started")
        time.sleep(0.3)  # the second POST has joined by now
        assert len(gets(source, "/del")) == 1
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        for t in threads:
            t.join(10)
        assert sorted(r.status_code for r in results) == [409, 409]
        assert all(r.json()["error"]["code"] == "CANCELLED" for r in results)
        assert c.get(f"/content/{b64(url)}").status_code == 404
        assert c.get("/content/").json()["entries"] == []
        assert blob_files(cache_dir) == []
        assert ingest_left(cache_dir) == []
        # The upstream transfer itself was stopped, not left to run to its end.
        deadline = time.monotonic() + 3
        while source.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.open_connections == 0
        assert len(gets(source, "/del")) == 1
        # And a new POST starts from zero.
        source.set_delay("/del", 0)
        r = post(c, url)
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert ranges(source, "/del") == [None, None]


def test_no_answer_at_all_hits_the_idle_timeout_and_is_retried(
    start: Start, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(100_000)
    url = source.url("/mute")
    source.add_file("/mute", data)
    source.stall_headers("/mute", 10)  # accepts the request, then says nothing
    srv = start(1)
    with srv.client() as c:
        t0 = time.monotonic()
        r = post(c, url)
        assert r.status_code == 201, r.text
        assert time.monotonic() - t0 < 5
        assert r.json()["digest"] == sha(data)
    assert len(gets(source, "/mute")) == 2
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_an_upstream_that_never_answers_is_504_after_retries_plus_one(
    start: Start, source: Source, cache_dir: Path
) -> None:
    url = source.url("/mute")
    source.add_file("/mute", b"never sent")
    source.stall_headers("/mute", 10, times=50)
    srv = start(1)
    with srv.client() as c:
        t0 = time.monotonic()
        r = post(c, url)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
        assert time.monotonic() - t0 < 5
    assert len(gets(source, "/mute")) == 2
    assert blob_files(cache_dir) == []


def test_an_error_answer_whose_body_stalls_is_still_retried(
    start: Start, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(100_000)
    source.add_file("/e", data)
    source.fail_status("/e", 503, times=1, stall_body=10)
    srv = start(1)
    with srv.client() as c:
        t0 = time.monotonic()
        r = post(c, source.url("/e"))
        assert r.status_code == 201, r.text
        assert time.monotonic() - t0 < 5
        assert r.json()["digest"] == sha(data)
    assert len(gets(source, "/e")) == 2


@pytest.mark.parametrize("where", ["waiting for headers", "in a retry pause"])
def test_delete_cancels_a_download_at_once_wherever_it_waits(
    cache_dir: Path, source: Source, where: str
) -> None:
    url = source.url("/wait")
    source.add_file("/wait", b"not yet")
    if where == "waiting for headers":
        source.stall_headers("/wait", 20)
    else:
        source.fail_status("/wait", 503)
    # Long timeouts and pauses: only the cancel can end this quickly.
    args = ("--retries", "3", "--idle-timeout", "30", "--retry-backoff", "20")
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        delete_cancels_at_once(
            srv,
            c,
            url,
            lambda: (
                bool(gets(source, "/wait")) and c.get(f"/content/{b64(url)}").status_code == 206
            ),
        )
        assert c.get(f"/content/{b64(url)}").status_code == 404
    assert len(gets(source, "/wait")) == 1
    assert blob_files(cache_dir) == [] and ingest_left(cache_dir) == []


def test_a_resumed_answer_shorter_than_its_content_range_is_retried(
    start: Start, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(1_000_000)
    url = source.url("/rs")
    source.add_file("/rs", data)
    source.cut_after("/rs", 400_000)
    srv = start(0)
    with srv.client() as c:
        assert post(c, url).status_code == 502
    srv.stop()
    # The resume says "bytes 400000-999999/1000000" but announces and sends 1000 bytes less.
    source.misannounce("/rs", -1_000)
    srv = start(2)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data) and r.json()["size"] == len(data)
    assert ranges(source, "/rs") == [None, "bytes=400000-", "bytes=999000-"]
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_a_5xx_between_a_cut_and_its_resume_keeps_the_bytes(
    start: Start, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(1_000_000)
    url = source.url("/c5")
    source.add_file("/c5", data)
    source.cut_after("/c5", 600_000)
    srv = start(0)
    with srv.client() as c:
        assert post(c, url).status_code == 502
    srv.stop()
    source.fail_status("/c5", 503, times=2)
    srv = start(2)
    with srv.client() as c:
        r = post(c, url)
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    # The failed attempts asked for the rest too; none of them threw the 600000 bytes away.
    assert ranges(source, "/c5") == [None, "bytes=600000-", "bytes=600000-", "bytes=600000-"]
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_reset_right_after_the_headers_is_retried(
    start: Start, source: Source, cache_dir: Path
) -> None:
    data = os.urandom(200_000)
    source.add_file("/r0", data)
    source.reset_after("/r0", 0, times=2)
    srv = start(2)
    with srv.client() as c:
        r = post(c, source.url("/r0"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert ranges(source, "/r0") == [None, None, None]  # nothing was kept to resume from
    assert blob(cache_dir, sha(data)).read_bytes() == data
