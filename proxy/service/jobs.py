"""The downloads of this server by URL, and one running download.

:class:`Download` is one running download: the Job its fetcher sees (commit,
hold, small blobs, ingest locks, room), and the callers waiting for it.
:class:`Jobs` is the state single flight keys by URL: the one download
running per URL, the interrupted ones whose bytes wait in ``ingest/`` to be
resumed, and the last error of each failed one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import Layout, ingest_key
from proxy.cache.store import Entry, Store
from proxy.errors import Cancelled
from proxy.fetch.base import BlobProgress, Progress, Writers
from proxy.redact import redact_url
from proxy.request import FetchRequest
from proxy.service.failures import Failures
from proxy.threads import in_thread
from proxy.types import Digest

log = logging.getLogger(__name__)


@attrs.frozen
class Interrupted:
    """A download that stopped before completion; its bytes wait in ingest/."""

    url: str
    bytes_done: int
    total: int | None
    verified: bool = False
    pull: bool = False  # a multi-blob pull; its finished blobs are already in blobs/


def interrupted_from(state: IngestState, ingest: IngestFile) -> Interrupted:
    """What an ingest directory's state file says of its download (blocking)."""
    return Interrupted(
        url=state.url,
        bytes_done=ingest.bytes_on_disk(),
        total=state.total,
        verified=state.verified is not None,
        pull=state.kind != "file",
    )


def read_interrupted(layout: Layout, url: str) -> Interrupted | None:
    """The interrupted download of ``url`` its ingest directory holds (blocking)."""
    ingest = IngestFile(layout, ingest_key(url))
    state = ingest.read_state()
    return interrupted_from(state, ingest) if state is not None else None


@attrs.define(eq=False)
class Download:
    """One running download: the Job its fetcher sees, and its waiters."""

    request: FetchRequest
    store: Store
    threads: IReactorThreads
    progress: Progress = attrs.field(factory=Progress)
    state: str = "queued"
    cancelled: bool = False
    _aborts: list[Callable[[], None]] = attrs.field(factory=list)
    ingests: set[str] = attrs.field(factory=set)  # ingest directories it wrote to
    _held: list[Digest] = attrs.field(factory=list)
    _cleanups: list[Callable[[], None]] = attrs.field(factory=list)  # once stored
    _committed: list[Callable[[], None]] = attrs.field(factory=list)  # in any case
    _waiters: list[Deferred[tuple[Entry, bool]]] = attrs.field(factory=list)
    _finished: list[Deferred[None]] = attrs.field(factory=list)
    make_room: Callable[[int], Deferred[None]] | None = None  # Eviction.make_room
    writers: Writers | None = None  # the blobs this server writes now (Downloads')

    # -- Job -------------------------------------------------------------------

    def abortable(self, abort: Callable[[], None]) -> Callable[[], None]:
        if self.cancelled:
            abort()
            return lambda: None
        self._aborts.append(abort)

        def remove() -> None:
            if abort in self._aborts:
                self._aborts.remove(abort)

        return remove

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled("download cancelled by DELETE")

    def commit(self, ingest: IngestFile, digest: Digest) -> Deferred[None]:
        def locked() -> Deferred[None]:
            self._hold(digest)
            return in_thread(self.threads, ingest.commit, digest).addCallback(lambda _: None)

        # Once its data is in blobs/, the ingest directory has nothing left to resume.
        self._committed.append(ingest.discard)
        return self.store.blob_lock.run(locked)

    def hold_existing(self, digest: Digest) -> Deferred[int | None]:
        def locked() -> Deferred[int | None]:
            self._hold(digest)
            return in_thread(self.threads, self.store.layout.blob_size, digest)

        return self.store.blob_lock.run(locked)

    def put_blob(self, data: bytes) -> Deferred[Digest]:
        layout = self.store.layout

        def locked() -> Deferred[Digest]:
            d = in_thread(self.threads, layout.put_small_blob, data)
            return d.addCallback(self._hold)

        return self.store.blob_lock.run(locked)

    def after_commit(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def ingest_lock(self, key: str) -> DeferredLock:
        self.ingests.add(key)
        return self.store.ingest_lock(key)

    def reserve(self, nbytes: int) -> Deferred[None]:
        if self.make_room is None:
            return succeed(None)
        return self.make_room(nbytes)

    def writing(self, digest: Digest, blob: BlobProgress, path: Path) -> Callable[[], None]:
        if self.writers is None:
            return lambda: None
        return self.writers.start(digest, blob, path)

    def _hold(self, digest: Digest) -> Digest:
        self.store.hold(digest)
        self._held.append(digest)
        return digest

    # -- lifecycle -----------------------------------------------------------

    def release(self) -> None:
        for d in self._held:
            self.store.release(d)
        self._held.clear()

    def cleanups(self, stored: bool) -> list[Callable[[], None]]:
        """What to remove from ingest/ now that the download ended."""
        return list(self._committed) + (list(self._cleanups) if stored else [])

    def wait(self) -> Deferred[tuple[Entry, bool]]:
        d: Deferred[tuple[Entry, bool]] = Deferred()
        self._waiters.append(d)
        return d

    def clients(self) -> int:
        """Clients waiting for this download now (POSTs and watchers still
        connected: a request that went away cancelled its waiter)."""
        return sum(1 for w in self._waiters if not w.called)

    def finished(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._finished.append(d)
        return d

    def settle(self, result: tuple[Entry, bool] | Failure) -> None:
        self.state = "failed" if isinstance(result, Failure) else "complete"
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if w.called:  # its caller went away (the request was cancelled)
                continue
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)
        finished, self._finished = self._finished, []
        for f in finished:
            f.callback(None)

    def cancel(self) -> None:
        self.cancelled = True
        aborts, self._aborts = self._aborts, []
        for abort in aborts:
            abort()


@attrs.define(eq=False)
class Jobs:
    """Downloads by URL: running (one per URL), interrupted, failed."""

    running: dict[str, Download] = attrs.field(factory=dict)
    interrupted: dict[str, Interrupted] = attrs.field(factory=dict)
    failures: Failures = attrs.field(factory=Failures)  # the last error of each

    def forget(self, url: str, job: Download) -> None:
        """``job`` no longer runs for ``url`` (a newer one may)."""
        if self.running.get(url) is job:
            del self.running[url]

    def urls(self) -> list[str]:
        """Every URL with a download running, interrupted or failed."""
        urls = dict.fromkeys(self.running)
        urls.update(dict.fromkeys(self.interrupted))
        urls.update(dict.fromkeys(self.failures.urls()))
        return list(urls)

    def busy_ingests(self) -> set[str]:
        """The ingest directories running downloads use."""
        busy: set[str] = set()
        for job in self.running.values():
            busy |= job.ingests
            busy.add(ingest_key(job.request.url))
        return busy

    def log_interrupted(self) -> None:
        """Say which downloads a stop interrupts (at shutdown, before they are cut)."""
        for url, job in self.running.items():
            total = job.progress.total
            log.warning(
                "stopping: the download of %s is interrupted (%s, %d%s bytes done); "
                "the bytes kept resume on its next POST",
                redact_url(url),
                job.state,
                job.progress.done,
                f" of {total}" if total is not None else "",
            )
