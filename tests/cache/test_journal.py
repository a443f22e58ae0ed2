"""index.journal (proxy.cache.journal): an answered change survives kill -9
while index.json is compacted lazily, a compaction killed at any point loses
nothing, a torn tail is cut off at startup, and readers of --workers follow the
journal. ``NEKKO_INDEX_EAGER_BYTES=0`` makes a small test cache behave as a
large one does (index.json is not rewritten before the answer)."""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path

import pytest

from proxy.cache.layout import Layout
from tests.cache.test_crash import wait_for_line
from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_workers import _connection_to, _pid, _reader_pids

LAZY = {"NEKKO_INDEX_EAGER_BYTES": "0", "NEKKO_JOURNAL_MIN_BYTES": str(1 << 30)}
COMPACT_EVERY_CHANGE = {"NEKKO_INDEX_EAGER_BYTES": "0", "NEKKO_JOURNAL_MIN_BYTES": "0"}


def check_cache(cache: Path) -> None:
    """index.json with the journal replayed names only present blobs (index.json
    alone may name a removed entry until its next compaction)."""
    blobs = cache / "blobs" / "sha256"
    for desc in Layout(cache).read_index()["manifests"]:
        manifest = blobs / desc["digest"].split(":", 1)[1]
        assert manifest.exists(), desc
        doc = json.loads(manifest.read_text())
        for layer in [doc["config"], *doc["layers"]]:
            assert (blobs / layer["digest"].split(":", 1)[1]).exists(), layer


def urls_in_index_json(cache: Path) -> set[str]:
    index = json.loads((cache / "index.json").read_text())
    return {d["annotations"].get("io.nekko.storage-manager.url") for d in index["manifests"]}


def post_files(srv: ServerProcess, source: Source, count: int, prefix: str = "f") -> list[str]:
    urls = []
    with srv.client() as c:
        for i in range(count):
            source.add_file(f"/{prefix}{i}", f"{prefix} {i}\n".encode())
            url = source.url(f"/{prefix}{i}")
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            urls.append(url)
    return urls


def assert_complete(srv: ServerProcess, urls: list[str]) -> None:
    with srv.client() as c:
        for url in urls:
            r = c.get(f"/content/{b64(url)}")
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "complete"


def test_answered_posts_survive_kill_9_before_index_json_has_them(
    tmp_path: Path, source: Source
) -> None:
    cache = tmp_path / "cache"
    srv = ServerProcess(cache, env=LAZY).start()
    urls = post_files(srv, source, 5)
    srv.kill()
    # Answered from the journal alone: index.json was not rewritten for them.
    assert not set(urls) & urls_in_index_json(cache)
    with ServerProcess(cache) as again:  # replayed at startup
        assert_complete(again, urls)
        check_cache(cache)
    # A clean stop leaves index.json complete for OCI tools.
    assert set(urls) <= urls_in_index_json(cache)


def test_a_removal_survives_kill_9(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    with ServerProcess(cache) as srv:
        urls = post_files(srv, source, 2)
    srv = ServerProcess(cache, env=LAZY).start()
    with srv.client() as c:
        assert c.delete(f"/content/{b64(urls[0])}").status_code == 204
    srv.kill()
    with ServerProcess(cache) as again, again.client() as c:
        assert c.get(f"/content/{b64(urls[0])}").status_code == 404
        assert_complete(again, urls[1:])


@pytest.mark.parametrize("point", ["index-writing", "index-fsynced", "journal-rotating"])
def test_kill_9_mid_compaction_loses_no_answered_change(
    tmp_path: Path, source: Source, point: str
) -> None:
    cache = tmp_path / "cache"
    with ServerProcess(cache) as srv:
        before = post_files(srv, source, 3, "old")
    env = {**COMPACT_EVERY_CHANGE, "NEKKO_FAULT_PAUSE": point}
    srv = ServerProcess(cache, env=env).start()
    urls = post_files(srv, source, 1)  # answered; its compaction then pauses in a thread
    wait_for_line(srv, f"fault point {point} reached")
    more: list[str] = []
    if point != "journal-rotating":  # (a rotation holds appends until it is done)
        with srv.client() as c:  # answered while the compaction is stuck
            more = post_files(srv, source, 2, "more")
            assert c.delete(f"/content/{b64(before[0])}").status_code == 204
    srv.kill()
    with ServerProcess(cache) as again, again.client() as c:
        assert_complete(again, urls + more + before[1:])
        removed = point != "journal-rotating"
        assert c.get(f"/content/{b64(before[0])}").status_code == (404 if removed else 200)
        assert not list(cache.glob("index.journal.tmp-*"))
        check_cache(cache)


def test_a_torn_journal_tail_is_cut_off_at_startup(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    srv = ServerProcess(cache, env=LAZY).start()
    urls = post_files(srv, source, 2)
    srv.kill()
    with open(cache / "index.journal", "ab") as f:
        f.write(b'0badc0de {"put": {"mediaType": "appl')  # a write the kill cut short
    with ServerProcess(cache, env=LAZY) as again:
        assert_complete(again, urls)
        later = post_files(again, source, 1, "later")  # appended after the cut, readable
        again.kill()
    with ServerProcess(cache) as third:
        assert_complete(third, urls + later)


def test_readers_follow_the_journal(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    with ServerProcess(cache, "--workers", "2", "--verbose", "1", env=COMPACT_EVERY_CHANGE) as srv:
        (reader,) = _reader_pids(srv)
        answers: dict[str, dict[str, str]] = {}
        for i in range(6):  # across journal generations: every change compacts
            source.add_file(f"/w{i}", f"w {i}\n".encode())
            url = source.url(f"/w{i}")
            with srv.client() as c:
                posted = c.post("/content/", json={"url": url})
                assert posted.status_code == 201
                answers[url] = posted.json()
            with closing(_connection_to(srv, reader)) as c:  # at once, wherever answered
                assert c.get(f"/content/{b64(url)}").status_code == 200
            with srv.client() as c:
                if i % 2:
                    assert c.delete(f"/content/{b64(url)}").status_code == 204
            with closing(_connection_to(srv, reader)) as c:
                assert c.get(f"/content/{b64(url)}").status_code == (404 if i % 2 else 200)
        # And the reader serves their blobs itself once it has caught up (/content
        # is the writer's: it knows downloads and model directories).
        w4 = answers[source.url("/w4")]
        name = w4["reference"].rsplit(":", 1)[0]
        deadline = time.monotonic() + 30
        while True:
            with closing(_connection_to(srv, reader)) as c:
                r = c.get(f"/v2/{name}/blobs/{w4['digest']}")
                assert r.status_code == 200 and r.content == b"w 4\n"
                if _pid(c) == reader:  # answered there, not handed to the writer
                    break
            assert time.monotonic() < deadline, "the reader never caught up"
            time.sleep(0.05)
