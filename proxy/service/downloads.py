"""Running downloads: one per URL, joined by every caller that asks for it.

:class:`Downloads` is what the /content API talks to: it picks the fetcher
by scheme, runs at most ``max_downloads`` at once, and lets a second request
for the same URL wait on the running download (single flight by URL). It is
composed of the parts that own the rest, and answers for them under the same
names: :mod:`proxy.service.jobs` (the state by URL, one download),
:mod:`proxy.service.entries` (a fetch result becomes an entry),
:mod:`proxy.service.eviction` (room and the size limit) and
:mod:`proxy.service.upkeep` (gc, DELETE, import, the startup scan).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import IO

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.python.failure import Failure

from proxy import metrics
from proxy.cache import bundle
from proxy.cache.ingest import IngestFile
from proxy.cache.layout import ingest_key, is_disk_full
from proxy.cache.store import Entry, Store
from proxy.errors import (
    Cancelled,
    Conflict,
    DiskFull,
    StorageError,
    TargetDenied,
    UnsupportedScheme,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.fetch.base import Fetcher, FetchResult, Job, Writers
from proxy.fetch.transfer import Retryable
from proxy.redact import redact_url
from proxy.request import FetchRequest
from proxy.service.entries import Entries
from proxy.service.eviction import Eviction
from proxy.service.failures import Failed, Failures
from proxy.service.jobs import Download, Interrupted, Jobs, read_interrupted
from proxy.service.peerfills import SCHEME as FILL_SCHEME
from proxy.service.peerpull import PeerPull
from proxy.service.sharedpull import SharedPull
from proxy.service.sharedtier import SharedTier
from proxy.service.upkeep import GcReport, Upkeep
from proxy.shared.location import StoreLocation
from proxy.shared.record import RefRecord
from proxy.threads import in_thread
from proxy.units import human_size, plural

log = logging.getLogger(__name__)

# Errors that mean the origin cannot be asked at all (not that it said no).
OUT_OF_REACH = (UpstreamUnreachable, TargetDenied, UpstreamTimeout)


def _elsewhere(job: Download, error: BaseException) -> bool:
    """Whether a failed download may still be had from the peers or the
    shared store: the origin is out of reach, the download was not
    cancelled, and it is not a fill a peer asked for (one hop)."""
    return (
        isinstance(error, OUT_OF_REACH) and not job.cancelled and job.request.scheme != FILL_SCHEME
    )


@attrs.define
class _Refused:
    """A fetcher for a URL this node may not reach: its download fails with
    that refusal, so the peers are asked (:meth:`Downloads._from_peers`)."""

    error: TargetDenied
    schemes: tuple[str, ...] = ()

    def validate(self, request: FetchRequest) -> None:
        raise self.error

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return fail(self.error)


class Downloads:
    """Every download of this server, running or interrupted."""

    def __init__(
        self,
        reactor: IReactorThreads,
        clock: IReactorTime,
        store: Store,
        fetchers: Mapping[str, Fetcher],
        max_downloads: int = 4,
        limit: Callable[[], int | None] | None = None,
        low_watermark: float = 0.9,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self.store = store
        self.fetchers = dict(fetchers)
        # With --peers: where an entry comes from when its origin is out of reach.
        self.peer_pull: PeerPull | None = None
        # With --shared-store: where stored entries are written back to, and
        # where an entry comes from when its origin (and every peer) is out of reach.
        self.shared: SharedTier | None = None
        self.shared_pull: SharedPull | None = None
        # Entries copied from a record of the shared store, by URL: the record
        # (the answer says so, with its age, until the URL is fetched again).
        self.from_store: dict[str, RefRecord] = {}
        # export --to / import --from: the tier of any store location (the server's
        # endpoints and credentials); None until the server sets it.
        self.tier_for: Callable[[StoreLocation], SharedTier] | None = None
        self.jobs = Jobs()
        self.writers = Writers()  # the blobs being written now, by digest
        self._slots = DeferredSemaphore(max_downloads)
        self._limited = limit is not None
        self.entries = Entries(store, reactor)
        self.eviction = Eviction(
            clock, reactor, store, self.jobs, self.entries, limit, low_watermark
        )
        self.upkeep = Upkeep(clock, reactor, store, self.jobs, self.entries, self.eviction)

    @property
    def reactor(self) -> IReactorThreads:
        return self._reactor

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    @property
    def failures(self) -> Failures:
        """The last error of each failed download."""
        return self.jobs.failures

    # -- queries -------------------------------------------------------------

    def running(self, url: str) -> Download | None:
        return self.jobs.running.get(url)

    def interrupted(self, url: str) -> Interrupted | None:
        if url in self.jobs.running:
            return None
        return self.jobs.interrupted.get(url)

    def failed(self, url: str) -> Failed | None:
        """The last error of ``url``'s download, unless it runs again."""
        if url in self.jobs.running:
            return None
        return self.jobs.failures.get(url)

    def active(self) -> int:
        """Downloads running or waiting for a slot."""
        return len(self.jobs.running)

    def urls(self) -> list[str]:
        urls = dict.fromkeys(e.url for e in self.store.entries())
        urls.update(dict.fromkeys(self.jobs.urls()))
        return list(urls)

    def log_interrupted(self) -> None:
        """Say which downloads a stop interrupts (at shutdown, before they are cut)."""
        self.jobs.log_interrupted()

    # -- the parts, by their old names ---------------------------------------------

    def scan_ingest(self) -> None:
        self.upkeep.scan_ingest()

    async def gc(self, ingest_age: float) -> GcReport:
        return await self.upkeep.gc(ingest_age)

    async def delete(self, url: str) -> int:
        self.from_store.pop(url, None)
        return await self.upkeep.delete(url)

    async def layout_at(self, request: FetchRequest) -> bundle.LocalLayout | None:
        fetcher = self.fetcher_for(request)
        fetcher.validate(request)
        return await self.upkeep.layout_at(request, fetcher)

    async def import_bundle(
        self, source: IO[bytes] | bundle.LocalLayout
    ) -> tuple[list[Entry], int, int]:
        entries, added, skipped = await self.upkeep.import_bundle(source)
        if self.shared is not None:  # every blob and record, for the other nodes
            for entry in entries:
                self.shared.written(entry)
        return entries, added, skipped

    def evict_soon(self) -> None:
        self.eviction.evict_soon()

    def make_room(self, nbytes: int) -> Deferred[None]:
        return self.eviction.make_room(nbytes)

    async def evict(self, extra: int = 0) -> int:
        return await self.eviction.evict(extra)

    def sync_views(self) -> Deferred[None]:
        return self.entries.sync_views()

    # -- POST ------------------------------------------------------------------

    def fetcher_for(self, request: FetchRequest) -> Fetcher:
        fetcher = self.fetchers.get(request.scheme)
        if fetcher is None:
            known = ", ".join(sorted(self.fetchers))
            raise UnsupportedScheme(f"unsupported URL scheme {request.scheme!r} (known: {known})")
        return fetcher

    def ensure(self, request: FetchRequest) -> Deferred[tuple[Entry, bool]]:
        """Make the URL's content present; fire with (entry, created)."""
        fetcher = self.fetcher_for(request)
        try:
            fetcher.validate(request)
        except TargetDenied as e:
            if self.peer_pull is None and self.shared_pull is None:
                raise
            # Out of this node's reach: its peers may hold the entry (one hop, no
            # origin), or the shared store its record.
            fetcher = _Refused(e)
        entry = self.store.get(request.url)
        # A mirror fill of a tag holds only its manifest: a POST pulls the rest.
        if entry is not None and entry.complete and entry.kind != "mirror":
            if request.expected is not None and entry.primary.digest != request.expected:
                raise Conflict(
                    f"{request.url} is cached with digest {entry.primary.digest}, "
                    f"not {request.expected}; DELETE it first to replace it"
                )
            if request.pin is not None and request.pin != entry.pinned:
                return self.store.set_pin(entry.url, request.pin).addCallback(lambda e: (e, False))
            return succeed((entry, False))
        job = self.jobs.running.get(request.url)
        if job is None:
            return self.start(request, fetcher).wait()
        log.info("joining the running download of %s", redact_url(request.url))
        waiter = job.wait()
        expected = request.expected
        if expected is not None and expected != job.request.expected:

            def check(result: tuple[Entry, bool]) -> tuple[Entry, bool]:
                if result[0].primary.digest != expected:
                    raise Conflict(
                        f"{request.url} was downloaded as {result[0].primary.digest}, "
                        f"not {expected}"
                    )
                return result

            waiter.addCallback(check)
        return waiter

    def start(
        self, request: FetchRequest, fetcher: Fetcher | None = None, queued: bool = True
    ) -> Download:
        """The running download of a URL, started if there is none (single flight).
        ``queued=False`` skips the wait for a download slot (one small request,
        such as a mirror's manifest fill, is not kept behind large blobs)."""
        job = self.jobs.running.get(request.url)
        if job is not None:
            return job
        fetcher = fetcher or self.fetcher_for(request)
        job = Download(request, self.store, self._reactor, writers=self.writers)
        self.jobs.failures.forget(request.url)  # retried: its last error is history
        if self._limited:
            job.make_room = self.eviction.make_room
        self.jobs.running[request.url] = job
        if queued:
            self._slots.run(self._run, job, fetcher)
        else:
            self._run(job, fetcher)
        return job

    def _run(self, job: Download, fetcher: Fetcher) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run_async(job, fetcher))

    async def _run_async(self, job: Download, fetcher: Fetcher) -> None:
        url = job.request.url
        if job.cancelled:  # deleted while it waited for a slot: already answered
            self.jobs.forget(url, job)
            return
        log.info("downloading %s", redact_url(url))
        job.state = "downloading"
        started = self._clock.seconds()
        try:
            job.check_cancelled()
            result = await fetcher.fetch(job.request, job)
            job.check_cancelled()
            entry = await self.entries.store_result(job, result)
            self.from_store.pop(url, None)
        except BaseException as raised:
            # A transfer's retryable error that escaped its fetcher: its cause is the error.
            e = raised.cause if isinstance(raised, Retryable) else raised
            from_elsewhere = await self._from_peers(job, e)
            if from_elsewhere is None:
                from_elsewhere = await self._from_store(job, e)
                if from_elsewhere is None:
                    await self._failed(job, e, started)
                    return
            entry = from_elsewhere
        await self._stored(job, entry, started)

    async def _from_peers(self, job: Download, error: BaseException) -> Entry | None:
        """An air-gapped member: the origin is out of reach (unreachable, or
        refused by the reach rules), so a peer that holds the entry complete
        gives it (proxy.service.peerpull). None: no peer did."""
        if self.peer_pull is None or not _elsewhere(job, error):
            return None
        url = job.request.url
        log.info("%s: the origin is out of reach (%s); asking the peers", redact_url(url), error)
        try:
            entry = await self.peer_pull.pull(url, job)
        except Exception:  # whatever it was, the origin's error is the answer
            log.exception("%s: asking the peers failed", redact_url(url))
            return None
        if entry is not None:
            await self.entries.sync_views()
        return entry

    async def _from_store(self, job: Download, error: BaseException) -> Entry | None:
        """An air-gapped node: the origin is out of reach, so the entry is
        rebuilt from its record in the shared store (proxy.service.sharedpull).
        None: the store has no usable record of it."""
        pull = self.shared_pull
        if pull is None or not _elsewhere(job, error):
            return None
        url = job.request.url
        log.info(
            "%s: the origin is out of reach (%s); asking the shared store", redact_url(url), error
        )
        try:
            found = await pull.pull(url, job)
        except Exception:  # whatever it was, the origin's error is the answer
            log.exception("%s: asking the shared store failed", redact_url(url))
            return None
        if found is None:
            return None
        entry, record = found
        self.from_store[url] = record
        await self.entries.sync_views()
        return entry

    async def _stored(self, job: Download, entry: Entry, started: float) -> None:
        url = job.request.url
        job.release()
        self.jobs.forget(url, job)
        self.jobs.interrupted.pop(url, None)
        for cleanup in job.cleanups(stored=True):
            await in_thread(self._reactor, cleanup)
        seconds = self._clock.seconds() - started
        metrics.observe_download(job.request.scheme, "stored", seconds)
        if self._limited:
            # Over the limit now (sizes were not all known ahead): evict others.
            self.eviction.evict_soon()
        log.info(
            "stored %s as %s (%s, %s in %.2f s)",
            redact_url(url),
            entry.primary.digest,
            plural(len(entry.files), "file"),
            human_size(entry.size),
            seconds,
        )
        if self.peer_pull is not None:  # in a cache array: where each blob came from
            sources = Counter(b.source for b in job.progress.blobs if b.source is not None)
            if sources:
                where = ", ".join(f"{n} from {s}" for s, n in sorted(sources.items()))
                log.info("%s: blobs %s", redact_url(url), where)
        # In the background: the answer does not wait. An entry copied from the
        # store is there already (its record keeps the writer's time).
        if self.shared is not None and url not in self.from_store:
            self.shared.written(entry, record=job.request.scheme != FILL_SCHEME)
        job.settle((entry, True))

    async def _failed(self, job: Download, error: BaseException, started: float) -> None:
        url = job.request.url
        failure = (
            Failure(error)
            if not isinstance(error, CancelledError)
            else Failure(Cancelled("download cancelled"))
        )
        job.release()
        self.jobs.forget(url, job)
        for cleanup in job.cleanups(stored=False):
            await in_thread(self._reactor, cleanup)
        await self._note_interrupted(url)
        if isinstance(failure.value, OSError) and is_disk_full(failure.value):
            failure = Failure(DiskFull("no space left in the cache"))
        value = failure.value
        code = value.code if isinstance(value, StorageError) else "INTERNAL"
        seconds = self._clock.seconds() - started
        metrics.observe_download(job.request.scheme, "failed", seconds, code)
        if isinstance(value, StorageError):
            log.warning("download of %s failed: %s", redact_url(url), value.message)
            message = value.message
        else:
            log.error("download of %s failed", redact_url(url), exc_info=value)
            message = "internal error (see the server log)"
        # A DELETE removed it: nothing to remember; a fill a peer asked for is the
        # peer's to report (its log and metrics say it here).
        if not job.cancelled and job.request.scheme != FILL_SCHEME:
            self.jobs.failures.record(
                url, code if code != "INTERNAL" else "INTERNAL_ERROR", message
            )
        job.settle(failure)

    async def _note_interrupted(self, url: str) -> None:
        layout = self.store.layout
        found = await in_thread(self._reactor, read_interrupted, layout, url)
        if found is not None and (found.bytes_done > 0 or found.verified or found.pull):
            self.jobs.interrupted[url] = found
        else:
            self.jobs.interrupted.pop(url, None)
            await in_thread(self._reactor, IngestFile(layout, ingest_key(url)).discard)
