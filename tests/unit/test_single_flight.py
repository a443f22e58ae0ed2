"""Downloads built in-process (a real temp-dir store, a fake fetcher the test
completes by hand, a Clock): one fetch per URL however many ask, and the
entry stored on disk when it completes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from twisted.internet.defer import Deferred

from proxy.cache.layout import Layout
from proxy.cache.store import Entry, Store
from proxy.fetch.base import FetchResult, Job
from proxy.request import FetchRequest
from proxy.service.downloads import Downloads
from proxy.types import MEDIA_TYPE_OCTET, Descriptor, Digest
from tests.unit.reactor import FakeReactor


class HandFetcher:
    """A fetcher whose fetches the test completes (or fails) by hand."""

    schemes = ("hand",)

    def __init__(self) -> None:
        self.fetches: list[tuple[FetchRequest, Job, Deferred[FetchResult]]] = []

    def validate(self, request: FetchRequest) -> None:
        pass

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        d: Deferred[FetchResult] = Deferred()
        self.fetches.append((request, job, d))
        return d


def make(tmp_path: Path) -> tuple[FakeReactor, Downloads, HandFetcher]:
    layout = Layout(tmp_path)
    layout.create()
    reactor = FakeReactor()
    store = Store(layout, reactor)
    store.load()
    fetcher = HandFetcher()
    return reactor, Downloads(reactor, reactor, store, {"hand": fetcher}), fetcher


def complete(reactor: FakeReactor, job: Job, d: Deferred[FetchResult], data: bytes) -> Digest:
    """Store ``data`` as the download's one file and hand back the result."""
    stored = job.put_blob(data)
    reactor.run_threads()
    digest: Digest = stored.result
    desc = Descriptor(MEDIA_TYPE_OCTET, digest, len(data))
    d.callback(FetchResult(files=(desc,), primary=desc, kind="file"))
    reactor.run_threads()
    return digest


def test_two_requests_for_one_url_start_one_fetch(tmp_path: Path) -> None:
    reactor, downloads, fetcher = make(tmp_path)
    url = "hand://example.org/model.bin"
    first = downloads.ensure(FetchRequest(url))
    second = downloads.ensure(FetchRequest(url))
    assert len(fetcher.fetches) == 1
    assert downloads.running(url) is fetcher.fetches[0][1]
    assert downloads.active() == 1
    assert not first.called and not second.called
    _, job, d = fetcher.fetches[0]
    digest = complete(reactor, job, d, b"weights")
    entry_a, created_a = first.result
    entry_b, created_b = second.result
    assert entry_a is entry_b and created_a and created_b
    assert entry_a.primary.digest == digest
    assert downloads.running(url) is None and downloads.active() == 0
    # Present now: a third request is answered from the store, no fetch.
    third = downloads.ensure(FetchRequest(url))
    assert third.called and third.result == (entry_a, False)
    assert len(fetcher.fetches) == 1


def test_a_failed_fetch_answers_every_waiter_and_is_remembered(tmp_path: Path) -> None:
    reactor, downloads, fetcher = make(tmp_path)
    url = "hand://example.org/missing.bin"
    first = downloads.ensure(FetchRequest(url))
    second = downloads.ensure(FetchRequest(url))
    errors: list[BaseException] = []
    first.addErrback(lambda f: errors.append(f.value))
    second.addErrback(lambda f: errors.append(f.value))
    fetcher.fetches[0][2].errback(RuntimeError("origin went away"))
    reactor.run_threads()
    assert [type(e) for e in errors] == [RuntimeError, RuntimeError]
    failed = downloads.failed(url)
    assert failed is not None and failed.code == "INTERNAL_ERROR"
    # Asked again: a new fetch (single flight is per running download).
    downloads.ensure(FetchRequest(url)).addErrback(lambda _: None)
    assert len(fetcher.fetches) == 2
    assert downloads.failed(url) is None
    fetcher.fetches[1][2].errback(RuntimeError("still away"))
    reactor.run_threads()


def test_a_completed_download_is_an_entry_on_disk(tmp_path: Path) -> None:
    reactor, downloads, fetcher = make(tmp_path)
    url = "hand://example.org/data.txt"
    pending = downloads.ensure(FetchRequest(url, pin=True))
    _, job, d = fetcher.fetches[0]
    digest = complete(reactor, job, d, b"hello, cache")
    entry: Entry = pending.result[0]
    layout = downloads.store.layout
    assert layout.blob_path(digest).read_bytes() == b"hello, cache"
    assert digest == Digest(hashlib.sha256(b"hello, cache").hexdigest())
    assert entry.pinned
    index = json.loads(layout.index_path.read_text())
    (only,) = index["manifests"]
    assert only["digest"] == str(entry.descriptor.digest)
    assert layout.has_blob(entry.descriptor.digest)  # the artifact manifest made for it
    assert only["annotations"]["io.nekko.storage-manager.url"] == url
    assert list(layout.small_dir.glob("*.tmp")) == []
