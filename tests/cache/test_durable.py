"""Blobs committed before their fsync: markers, what a stop and a restart do with them.

Only buffered writes commit before the fsync (a download written with O_DIRECT is fsync'd
first, at no cost: tests/cache/test_direct.py), so these servers run with --buffered-writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from proxy.cache.durable import Syncer, boot_id, recover
from proxy.types import Digest
from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source

EARLIER_BOOT = "00000000-0000-4000-8000-000000000000"  # never this kernel's boot id
BUFFERED = "--buffered-writes"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def markers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "ingest" / "unsynced").iterdir())


def wait_until(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def post_and_leave(srv: ServerProcess, url: str) -> None:
    """POST without waiting for the answer (the server pauses at a fault point for good)."""

    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{srv.base_url}/content/", json={"url": url}, timeout=30)

    threading.Thread(target=post, daemon=True).start()


@contextlib.contextmanager
def paused_before_the_rename(cache: Path, url: str, *args: str) -> Iterator[ServerProcess]:
    """A server POSTed ``url`` and stopped for good at the ``blob-verified`` fault point
    (killed on exit)."""
    env = {"NEKKO_FAULT_PAUSE": "blob-verified"}
    srv = ServerProcess(cache, "--retries", "0", *args, env=env).start()
    try:
        post_and_leave(srv, url)
        wait_until(lambda: any("fault point blob-verified reached" in x for x in srv.lines))
        yield srv
    finally:
        srv.kill()


def download(srv: ServerProcess, url: str) -> dict[str, object]:
    with srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        return dict(r.json())


def test_a_marker_is_written_before_the_rename_and_gone_after_the_fsync(
    tmp_path: Path, source: Source
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    source.add_file("/m.bin", data)
    cache = tmp_path / "cache"
    # Paused just before the rename into blobs/: the marker is already on disk.
    with paused_before_the_rename(cache, source.url("/m.bin"), BUFFERED):
        assert markers(cache) == [sha(data)]
        assert (cache / "ingest" / "unsynced" / sha(data)).read_text().strip() == boot_id()
        assert not (cache / "blobs" / "sha256" / sha(data)).exists()
    # A normal run: served at once, the marker goes within a few seconds (QUIET + fsync).
    with ServerProcess(cache, BUFFERED) as srv:
        entry = download(srv, source.url("/m.bin"))
        assert entry["digest"] == "sha256:" + sha(data)
        wait_until(lambda: markers(cache) == [])
        with srv.client() as c:
            assert "storage_manager_unsynced_blobs 0.0" in c.get("/metrics").text


def test_a_clean_stop_fsyncs_at_once(tmp_path: Path, source: Source) -> None:
    data = os.urandom(2 * 1024 * 1024)
    source.add_file("/s.bin", data)
    cache = tmp_path / "cache"
    srv = ServerProcess(cache, BUFFERED).start()
    download(srv, source.url("/s.bin"))
    t0 = time.monotonic()
    assert srv.stop() == 0
    assert markers(cache) == []
    assert time.monotonic() - t0 < 8  # no waiting out the pause between commits


def test_sync_commits_writes_no_marker(tmp_path: Path, source: Source) -> None:
    data = os.urandom(1024 * 1024)
    source.add_file("/x.bin", data)
    cache = tmp_path / "cache"
    with paused_before_the_rename(cache, source.url("/x.bin"), BUFFERED, "--sync-commits"):
        assert markers(cache) == []  # the data was fsync'd before the rename instead


def test_killed_before_the_fsync_the_next_start_of_the_same_boot_fsyncs(
    tmp_path: Path, source: Source
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    source.add_file("/k.bin", data)
    cache = tmp_path / "cache"
    srv = ServerProcess(cache, BUFFERED).start()
    download(srv, source.url("/k.bin"))
    srv.kill()  # within the pause before the fsync
    assert markers(cache) == [sha(data)]
    with ServerProcess(cache, BUFFERED) as srv, srv.client() as c:
        # The kernel still had the bytes: kept, served, fsync'd, no fetch again.
        n = len(source.requests)
        assert c.get(f"/content/{b64(source.url('/k.bin'))}").status_code == 200
        wait_until(lambda: markers(cache) == [])
        assert len(source.requests) == n


def test_after_a_reboot_an_intact_blob_is_hashed_and_kept(tmp_path: Path, source: Source) -> None:
    data = os.urandom(2 * 1024 * 1024)
    source.add_file("/r.bin", data)
    cache = tmp_path / "cache"
    with ServerProcess(cache, BUFFERED) as srv:
        download(srv, source.url("/r.bin"))
    (cache / "ingest" / "unsynced" / sha(data)).write_text(EARLIER_BOOT + "\n")
    with ServerProcess(cache, BUFFERED) as srv, srv.client() as c:
        assert markers(cache) == []  # settled before listening
        assert any("hashed again: intact" in line for line in srv.lines), srv.log()
        r = c.get(f"/content/{b64(source.url('/r.bin'))}")
        assert r.status_code == 200
    assert (cache / "blobs" / "sha256" / sha(data)).read_bytes() == data


def test_after_a_reboot_a_lost_blob_is_quarantined_and_fetched_again(
    tmp_path: Path, source: Source
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    source.add_file("/lost.bin", data)
    url = source.url("/lost.bin")
    cache = tmp_path / "cache"
    with ServerProcess(cache, BUFFERED) as srv:
        download(srv, url)
    # What a power cut before the writeback can leave: the rename survived, the data not.
    blob = cache / "blobs" / "sha256" / sha(data)
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * len(data))
    (cache / "ingest" / "unsynced" / sha(data)).write_text(EARLIER_BOOT + "\n")
    with ServerProcess(cache, BUFFERED) as srv, srv.client() as c:
        assert any("lost by a reboot" in line for line in srv.lines), srv.log()
        assert markers(cache) == []
        assert (cache / "quarantine" / sha(data)).exists()
        assert c.get(f"/content/{b64(url)}").status_code == 404  # never the zeros
        assert c.get(f"/v2/x/blobs/sha256:{sha(data)}").status_code == 404
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
    assert blob.read_bytes() == data


def test_syncer_keeps_the_marker_of_a_blob_committed_again_meanwhile(tmp_path: Path) -> None:
    blobs, marks = tmp_path / "blobs", tmp_path / "marks"
    blobs.mkdir()
    marks.mkdir()
    syncer = Syncer(blobs, marks)
    digest = Digest(sha(b"x"))
    (blobs / digest.hex).write_bytes(b"x")
    syncer.mark(digest)
    syncer.sync_now(digest)
    assert not (marks / digest.hex).exists()
    # A marker for a blob that is gone is dropped; one whose blob is present is kept
    # until that very file was fsync'd.
    syncer.mark(digest)
    (blobs / digest.hex).unlink()
    syncer.sync_now(digest)
    assert not (marks / digest.hex).exists()
    # recover(): same boot -> scheduled and fsync'd; no marker, no blob -> dropped.
    (blobs / digest.hex).write_bytes(b"x")
    syncer.mark(digest)
    found = recover(syncer)
    assert found.resynced == (digest,)
    assert syncer.flush(10)
    assert not (marks / digest.hex).exists()
