"""Eviction under ``--max-cache-size``: room made for new bytes, and its timing.

:meth:`Eviction.make_room` is what a download (and an import) asks before it
writes; :meth:`Eviction.evict` removes whole entries, least recently used
first, down to the low watermark; :meth:`Eviction.evict_soon` is the check
run after a download or push and every ``interval`` seconds on the injected
clock (:meth:`Eviction.start`). Evictions run one at a time; asking for one
while another already waits to run adds nothing (it will see the same cache).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import blockingCallFromThread

from proxy import metrics
from proxy.cache import bundle
from proxy.cache.store import Entry, Store
from proxy.cache.usage import Usage, usage
from proxy.errors import DiskFull
from proxy.redact import redact_url
from proxy.service.entries import Entries
from proxy.service.jobs import Jobs
from proxy.threads import in_thread
from proxy.types import Digest

log = logging.getLogger(__name__)


class Eviction:
    """The cache's size limit, kept by removing entries no one uses."""

    def __init__(
        self,
        clock: IReactorTime,
        threads: IReactorThreads,
        store: Store,
        jobs: Jobs,
        entries: Entries,
        limit: Callable[[], int | None] | None = None,
        low_watermark: float = 0.9,
    ) -> None:
        self._clock = clock
        self._threads = threads
        self._store = store
        self._jobs = jobs
        self._entries = entries
        self.limit = limit  # bytes the cache may use (None: no limit)
        self._low_watermark = low_watermark
        self._lock = DeferredLock()
        self._queued = False  # an evict_soon waits for the one running
        self._timer: LoopingCall | None = None

    def _limit(self) -> int | None:
        return self.limit() if self.limit is not None else None

    # -- timing ------------------------------------------------------------------

    def start(self, interval: float) -> None:
        """Check now, then every ``interval`` seconds of the clock."""
        timer = LoopingCall(self.evict_soon)
        timer.clock = self._clock
        timer.start(interval, now=True)
        self._timer = timer

    def stop(self) -> None:
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None

    def evict_soon(self) -> None:
        """Evict in the background, once the eviction running (if any) ends;
        nothing more when one already waits to run."""
        if self._queued:
            return
        self._queued = True
        d = Deferred.fromCoroutine(self._soon())
        d.addErrback(lambda f: log.error("eviction failed", exc_info=f.value))

    async def _soon(self) -> None:
        await self._lock.acquire()
        self._queued = False
        try:
            await self._evict_locked(self._limit(), 0)
        finally:
            self._lock.release()

    # -- room --------------------------------------------------------------------

    def make_room(self, nbytes: int) -> Deferred[None]:
        """Room for ``nbytes`` more; DiskFull when even evicting cannot make it."""
        return Deferred.fromCoroutine(self.room(nbytes)).addCallback(lambda _: None)

    async def room(self, nbytes: int, only_if_it_fits: bool = False) -> int | None:
        """:meth:`make_room` (``only_if_it_fits``: nothing is evicted either
        when even evicting all it may would not make room); the bytes left
        under the limit afterwards (None: no limit)."""
        limit = self._limit()
        if limit is None:
            return None
        if only_if_it_fits:
            now: Usage = await in_thread(self._threads, usage, self._store.layout, set())
            evictable = await in_thread(self._threads, self._evictable_bytes, self._evictable())
            if now.total_bytes - evictable + nbytes > limit:
                raise DiskFull(
                    f"{nbytes} more bytes do not fit in the cache's limit of {limit} bytes "
                    f"({now.total_bytes} in use, {evictable} of them evictable)"
                )
        used = await self.evict(nbytes)
        if used + nbytes > limit:
            raise DiskFull(
                f"{nbytes} more bytes do not fit in the cache's limit of {limit} bytes "
                f"({used} in use, the rest pinned, being read or downloading)"
            )
        return limit - used - nbytes

    def import_room(self) -> bundle.Room:
        """What :func:`bundle.stage` calls (in its thread) before staging a new
        blob: room under --max-cache-size, made by the eviction rules of any
        download (:meth:`make_room`) and only when the blob then fits; without
        a limit, the free space of the filesystem. The room found is used up
        before the cache is looked at again (one walk for many small blobs)."""
        threads = self._threads
        root = self._store.layout.ingest_dir
        left = 0

        def room(nbytes: int) -> None:
            nonlocal left
            if nbytes <= left:
                left -= nbytes
                return
            if self._limit() is None:
                free = shutil.disk_usage(root).free
                if nbytes > free:
                    raise DiskFull(f"{nbytes} more bytes do not fit: {free} bytes free on disk")
                return
            made: Callable[[int], Any] = self._room_for_import  # mypy: Deferred[int | None]
            left = blockingCallFromThread(threads, made, nbytes) or 0

        return room

    def _room_for_import(self, nbytes: int) -> Deferred[int | None]:
        return Deferred.fromCoroutine(self.room(nbytes, only_if_it_fits=True))

    # -- the rules -----------------------------------------------------------------

    def _may_evict(self, entry: Entry) -> bool:
        """The eviction rules: never pinned entries, entries of the Go
        storage-manager, entries downloading, entries an answer is reading."""
        return not (
            entry.pinned
            or entry.legacy
            or entry.url in self._jobs.running
            or self._store.being_read(entry)
            or self._store.get(entry.url) is not entry
        )

    def _evictable(self) -> set[Digest]:
        """The blobs that evicting every evictable entry would free."""
        entries = [e for e in self._store.entries() if self._may_evict(e)]
        keep = self._store.referenced(excluding={e.url for e in entries})
        return {d for e in entries for d in e.blobs} - keep

    def _evictable_bytes(self, blobs: set[Digest]) -> int:
        """Their bytes (blocking)."""
        layout = self._store.layout
        return sum(layout.blob_size(d) or 0 for d in blobs)

    async def evict(self, extra: int = 0) -> int:
        """If the cache (plus ``extra`` bytes to come) is over its limit,
        remove whole entries, least recently used first, until it is under
        the low watermark. Never evicted: pinned entries, entries of the Go
        storage-manager, entries downloading, entries whose blobs an answer is
        streaming; shared blobs stay while another entry uses them. Return the
        bytes in use afterwards."""
        limit = self._limit()
        await self._lock.acquire()
        try:
            return await self._evict_locked(limit, extra)
        finally:
            self._lock.release()

    async def _evict_locked(self, limit: int | None, extra: int) -> int:
        layout = self._store.layout
        now: Usage = await in_thread(self._threads, usage, layout, set())
        used = now.total_bytes
        if limit is None or used + extra <= limit:
            return used
        target = self._low_watermark * limit - extra
        for entry in self._store.lru():
            if used <= target:
                break
            if not self._may_evict(entry):
                continue
            freed = await self._store.remove(entry.url)
            used -= freed
            metrics.EVICTIONS.inc()
            metrics.EVICTED.inc(freed)
            log.info(
                "evicted %s (%d bytes freed; %d of %d bytes in use)",
                redact_url(entry.url),
                freed,
                used,
                limit,
            )
        await self._entries.sync_views()
        after: Usage = await in_thread(self._threads, usage, layout, set())
        return after.total_bytes
