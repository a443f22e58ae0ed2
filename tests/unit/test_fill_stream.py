"""A client of a running mirror fill is answered from what the writer put on
disk, woken by the writer (no clock advances: nothing polls), with the last
byte held until the fill is verified; a fill that fails or gives no size cuts
the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import Request

from proxy.cache.layout import Layout, blob_ingest_key
from proxy.errors import UpstreamError
from proxy.fetch.base import FetchRequest
from proxy.service.downloads import Download
from proxy.service.fills import WAIT_FOR_SIZE, MirrorBlobs
from proxy.service.sources import Chain, LocalBlobs
from proxy.types import Digest
from tests.unit.support import Threads, answer, cache, digest_of, registry, render, request

DATA = b"0123456789"


class Upstream:
    """The mirror, as a fill sees it: one registry, one running download."""

    def __init__(self, job: Download) -> None:
        self.job = job

    def registry_for(self, ns: str | None) -> str | None:
        return "registry.test"

    def fill_blob(self, registry: str, name: str, digest: Digest) -> Download:
        return self.job

    async def pass_through(
        self, registry: str, name: str, digest: Digest, first: int, last: int
    ) -> Any:
        raise AssertionError("no range here is far ahead of the fill")


def _start(
    tmp_path: Path, headers: dict[bytes, bytes] | None = None
) -> tuple[Request, Download, Layout, Clock]:
    layout, store, catalog = cache(tmp_path)
    digest = digest_of(DATA)
    job = Download(FetchRequest(f"oci-blob://registry.test/lib/x@{digest}"), store, Threads())  # type: ignore[arg-type]
    clock = Clock()
    chain = Chain([LocalBlobs(layout, catalog), MirrorBlobs(Upstream(job), layout, clock)])
    api = registry(layout, catalog, chain, clock)
    r = render(api, request(b"GET", f"/v2/lib/x/blobs/{digest}".encode(), headers))
    return r, job, layout, clock


def _write(layout: Layout, data: bytes) -> None:
    ingest = layout.ingest_path(blob_ingest_key(digest_of(DATA)))
    ingest.mkdir(parents=True, exist_ok=True)
    (ingest / "data").write_bytes(data)


def test_bytes_follow_the_writer_and_the_last_waits_for_the_verdict(tmp_path: Path) -> None:
    r, job, layout, _ = _start(tmp_path)
    blob = job.progress.add("the blob")  # no size yet: nothing is answered
    assert r.transport.written.getvalue() == b""
    _write(layout, DATA[:4])
    blob.total, blob.written = len(DATA), 4
    blob.changed()
    status, fields, body = answer(r)
    assert (status, fields[b"content-length"], body) == (200, b"10", b"0123")
    _write(layout, DATA)
    blob.written = len(DATA)
    blob.changed()
    assert answer(r)[2] == b"012345678"  # not verified yet
    assert not r.finished
    blob.state = "complete"
    blob.changed()
    assert answer(r)[2] == DATA
    assert r.finished


def test_a_range_is_answered_as_the_fill_reaches_it(tmp_path: Path) -> None:
    r, job, layout, _ = _start(tmp_path, {b"range": b"bytes=2-5"})
    blob = job.progress.add("the blob", len(DATA))
    blob.changed()
    _write(layout, DATA[:6])
    blob.written = 6
    blob.changed()
    status, fields, body = answer(r)
    assert (status, fields[b"content-range"], body) == (206, b"bytes 2-5/10", b"2345")
    assert r.finished


def test_a_failed_fill_cuts_its_clients(tmp_path: Path) -> None:
    r, job, layout, _ = _start(tmp_path)
    blob = job.progress.add("the blob", len(DATA))
    _write(layout, DATA[:3])
    blob.written = 3
    blob.changed()
    assert answer(r)[2] == b"012"
    job.settle(Failure(UpstreamError("digest mismatch")))
    assert r.transport.aborted


def test_no_size_in_time_cuts_the_client(tmp_path: Path) -> None:
    r, job, _, clock = _start(tmp_path)
    job.progress.add("the blob")  # upstream never tells the size
    clock.advance(WAIT_FOR_SIZE - 1)
    assert not r.transport.aborted
    clock.advance(2)
    assert r.transport.aborted
    assert r.transport.written.getvalue() == b""
