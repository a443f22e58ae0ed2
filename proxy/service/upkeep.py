"""Upkeep of the cache around the downloads: the interrupted downloads found
at startup (:meth:`Upkeep.scan_ingest`), garbage collection (unreferenced
blobs, stale ingest directories), DELETE of a URL (cancel, forget, free), and
the import of an OCI layout (a tar stream or a local directory/tar)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure

from proxy.cache import bundle
from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout, ingest_key, is_url_ingest_key
from proxy.cache.store import Entry, Store
from proxy.errors import Cancelled, EntryUnknown
from proxy.fetch.base import Fetcher
from proxy.fetch.file import FileFetcher
from proxy.redact import redact_url
from proxy.request import FetchRequest
from proxy.service.entries import Entries
from proxy.service.eviction import Eviction
from proxy.service.jobs import Jobs, interrupted_from
from proxy.threads import in_thread
from proxy.types import Digest
from proxy.units import human_size

log = logging.getLogger(__name__)


@attrs.frozen
class GcReport:
    blobs: int
    blob_bytes: int
    ingest_dirs: int
    ingest_bytes: int

    def to_json(self) -> dict[str, int]:
        return {
            "blobsRemoved": self.blobs,
            "ingestRemoved": self.ingest_dirs,
            "bytesFreed": self.blob_bytes + self.ingest_bytes,
        }


def _sweep(
    layout: Layout, busy: set[str], running: set[str], now: float, ingest_age: float
) -> tuple[int, int, list[str]]:
    """Remove the ingest directories no one uses, last written ``ingest_age``
    seconds before ``now`` or earlier (blocking); return how many, their
    bytes, and the URLs of the downloads they held."""
    count = freed = 0
    forgotten: list[str] = []
    for d in sorted(layout.ingest_dir.iterdir()):
        if not d.is_dir() or d == layout.small_dir or d.name in busy:
            continue
        files = [p for p in d.rglob("*") if p.is_file()]
        newest = max((p.stat().st_mtime for p in files), default=d.stat().st_mtime)
        if now - newest < ingest_age:
            continue
        state = IngestFile(layout, d.name).read_state() if is_url_ingest_key(d.name) else None
        if state is not None and state.url in running:
            continue
        freed += sum(p.stat().st_size for p in files)
        shutil.rmtree(d, ignore_errors=True)
        count += 1
        if state is not None:
            forgotten.append(state.url)
    return count, freed, forgotten


class Upkeep:
    """gc, DELETE, import and the startup scan of ``ingest/``."""

    def __init__(
        self,
        clock: IReactorTime,
        threads: IReactorThreads,
        store: Store,
        jobs: Jobs,
        entries: Entries,
        eviction: Eviction,
    ) -> None:
        self._clock = clock
        self._threads = threads
        self._store = store
        self._jobs = jobs
        self._entries = entries
        self._eviction = eviction
        self._importing: set[str] = set()  # ingest/import-* directories being staged

    # -- startup (blocking) ----------------------------------------------------

    def scan_ingest(self) -> None:
        """Find interrupted downloads in ingest/ (called once before serving)."""
        layout = self._store.layout
        for d in sorted(layout.ingest_dir.iterdir()):
            if not d.is_dir():
                continue
            # A state file being replaced when the process died; state.json is whole.
            (d / "state.json.tmp").unlink(missing_ok=True)
            if not is_url_ingest_key(d.name):  # a blob of a pull, resumed by its pull
                continue
            ingest = IngestFile(layout, d.name)
            state = ingest.read_state()
            if state is None:
                continue
            entry = self._store.get(state.url)
            if (
                entry is not None
                and state.verified is not None
                and state.verified in {str(f.digest) for f in entry.files}
            ):
                # Its entry was recorded (index.journal) before the process died,
                # before this directory was removed: nothing is left to resume.
                shutil.rmtree(d, ignore_errors=True)
                continue
            self._jobs.interrupted[state.url] = interrupted_from(state, ingest)
        # Small-blob scratch files are never resumable.
        for p in layout.small_dir.glob("*.tmp"):
            p.unlink(missing_ok=True)

    # -- GC ------------------------------------------------------------------------

    async def gc(self, ingest_age: float) -> GcReport:
        """Remove unreferenced blobs, and ingest directories no running
        download uses that were last written ``ingest_age`` seconds ago or
        more (0: all of them; their downloads start over next time)."""
        blobs, blob_bytes = await self._store.collect()
        running = set(self._jobs.running)
        busy = self._jobs.busy_ingests() | self._store.ingests_in_use() | self._importing
        now = self._clock.seconds()
        layout = self._store.layout
        swept = await in_thread(self._threads, _sweep, layout, busy, running, now, ingest_age)
        dirs, ingest_bytes, forgotten = swept
        for url in forgotten:
            self._jobs.interrupted.pop(url, None)
        log.info(
            "gc: %d unreferenced blobs (%d bytes), %d ingest directories (%d bytes) removed",
            blobs,
            blob_bytes,
            dirs,
            ingest_bytes,
        )
        return GcReport(blobs, blob_bytes, dirs, ingest_bytes)

    # -- DELETE ----------------------------------------------------------------

    async def _cancel(self, url: str) -> bool:
        """Cancel the download of ``url`` if one runs; whether one did."""
        job = self._jobs.running.get(url)
        if job is None:
            return False
        if job.state == "queued":
            # Not started: answer its waiters now rather than after a free slot.
            job.cancel()
            self._jobs.forget(url, job)
            job.settle(Failure(Cancelled("download cancelled by DELETE")))
        else:
            finished = job.finished()
            job.cancel()
            await finished
        for key in job.ingests:
            lock = self._store.ingest_lock(key)
            if not lock.locked and not is_url_ingest_key(key):
                # Partial blobs of a cancelled pull: nothing will resume them now.
                await in_thread(self._threads, IngestFile(self._store.layout, key).discard)
        return True

    async def delete(self, url: str) -> int:
        """Cancel, forget and free a URL; return bytes freed."""
        found = await self._cancel(url)
        freed = 0
        if self._store.get(url) is not None:
            found = True
            freed += await self._store.remove(url)
            await self._entries.sync_views()
        ingest = IngestFile(self._store.layout, ingest_key(url))
        if self._jobs.interrupted.pop(url, None) is not None:
            found = True
        if self._jobs.failures.forget(url):
            found = True
        partial = await in_thread(self._threads, ingest.bytes_on_disk)
        if await in_thread(self._threads, ingest.dir.exists):
            await in_thread(self._threads, ingest.discard)
            freed += partial
        if not found:
            raise EntryUnknown(f"{url} is not in the cache")
        log.info("deleted %s (%s freed)", redact_url(url), human_size(freed))
        return freed

    # -- import ------------------------------------------------------------------------

    async def layout_at(self, request: FetchRequest, fetcher: Fetcher) -> bundle.LocalLayout | None:
        """The OCI image layout (a directory or a tar) a ``file://`` POST
        names, opened once at its resolved path and checked again once open
        (--allow-file-import, never the cache itself), else None. The caller
        hands it to :meth:`import_bundle`, which closes it."""
        if not isinstance(fetcher, FileFetcher):
            return None
        path = fetcher.parse(request.url)

        def probe() -> bundle.LocalLayout | None:
            fd = fetcher.open_checked(path)
            if fd is None:
                return None
            try:
                found = bundle.local_layout(fd, path)
            except BaseException:
                os.close(fd)
                raise
            if found is None:
                os.close(fd)
            return found

        return await in_thread(self._threads, probe)

    async def import_bundle(
        self, source: IO[bytes] | bundle.LocalLayout
    ) -> tuple[list[Entry], int, int]:
        """Load an OCI layout (see :mod:`proxy.cache.bundle`) from a tar stream
        or a local layout (which it closes): every blob verified, the ones
        already here skipped, the new ones within the cache's limit (507
        ``DISK_FULL`` otherwise, nothing kept); fire with (entries, blobs
        added, skipped)."""
        directory = self._store.layout.import_dir()
        self._importing.add(directory.name)  # gc leaves it alone
        try:
            return await self._import(source, directory)
        finally:
            self._importing.discard(directory.name)
            if isinstance(source, bundle.LocalLayout):
                source.close()

    async def _import(
        self, source: IO[bytes] | bundle.LocalLayout, directory: Path
    ) -> tuple[list[Entry], int, int]:
        layout = self._store.layout
        store = self._store
        threads = self._threads
        held: list[Digest] = []

        def hold(digest: Digest) -> None:  # on the reactor
            store.hold(digest)
            held.append(digest)

        def keep(digest: Digest) -> None:  # in the staging thread
            blockingCallFromThread(threads, hold, digest)

        try:
            room = self._eviction.import_room()
            staged: bundle.Staged = await in_thread(
                threads, bundle.stage, layout, source, directory, room, keep
            )
            added = await self._commit(staged, directory, hold)
            try:
                entries = await store.adopt(staged.index["manifests"])
            except BaseException:
                for d in held:
                    store.release(d)
                held.clear()
                await self._drop_unreferenced(added)
                raise
        finally:
            for d in held:
                store.release(d)
            await in_thread(threads, shutil.rmtree, directory, True)
        await self._entries.sync_views()
        log.info(
            "imported %d entries (%d blobs added, %d already here)",
            len(entries),
            len(staged.new),
            len(staged.present),
        )
        return entries, len(staged.new), len(staged.present)

    async def _commit(
        self, staged: bundle.Staged, directory: Path, hold: Callable[[Digest], None]
    ) -> list[Digest]:
        """Move the staged new blobs into blobs/ (held first); the ones added."""
        layout = self._store.layout
        added: list[Digest] = []
        await self._store.blob_lock.acquire()
        try:
            for d in staged.new:
                hold(d)
            for d in staged.new:
                if await in_thread(self._threads, layout.commit_file, directory / d.hex, d):
                    added.append(d)
        finally:
            self._store.blob_lock.release()
        return added

    async def _drop_unreferenced(self, digests: list[Digest]) -> None:
        """Remove the blobs a refused import committed that nothing uses."""
        store = self._store

        def locked() -> Deferred[int]:
            orphans = set(digests) - store.referenced()
            layout = store.layout
            return in_thread(self._threads, lambda: sum(layout.remove_blob(b) for b in orphans))

        await store.blob_lock.run(locked)
