"""The shared second tier in use: read-through, write-back and cluster single
flight on the object store of ``--shared-store`` (:mod:`proxy.shared`).

* **Read-through** (:meth:`SharedTier.fetch`): a blob whose digest is known
  before it is fetched is looked up in the store (a HEAD of
  ``blobs/sha256/<hex>``) before the peers and the origin; it is read with
  parallel ranged reads into the download's ingest file, hashed and
  committed only when its bytes are its name. An object whose size or bytes
  do not match is never used: logged, counted
  (``storage_manager_shared_store_mismatches_total``), then the peers or the
  origin serve it.
* **Cluster single flight** (:meth:`SharedTier.before_origin`): with a store
  that honours conditional writes (probed at start-up), a node takes the
  lease ``leases/sha256/<hex>`` before it fetches the blob from its origin;
  a node that finds it held waits for the blob to appear in the store (or
  for the lease to be released or to expire: then it tries again). The
  holder renews its lease while it fetches, uploads the blob right after
  its commit, then releases the lease.
* **Write-back** (:meth:`SharedTier.written`): once an entry is stored, its
  blobs the store lacks are uploaded (at most :data:`UPLOADS` at once),
  then its record (``refs/<hex>``, :mod:`proxy.shared.record`). It runs in
  the background: the local answer never waits for it, and a failure is
  retried with backoff (counted in ``..._upload_failures_total``), never
  affecting local serving. Each pending entry is a small file in
  ``<cache>/shared-uploads/``, removed once done: uploads a crash cut off
  resume at the next start (:meth:`SharedTier.resume`), and a clean stop
  waits for the pending ones up to :data:`DRAIN_WAIT` seconds
  (:meth:`SharedTier.drain`).

Whatever goes wrong with the store (down, slow, refusing, wrong bytes) the
download goes on from the peers or the origin as if there were no store.
A lookup on a download's path (the HEAD of a blob, a lease, the wait for the
start-up probe) gets at most :data:`LOOKUP_TIMEOUT` seconds; a store that
failed one is *down*: not asked on the download path for :data:`DOWN_FOR`
seconds (said once in the log), and a clean stop does not wait for uploads
to a store that is down (they resume at the next start). Nothing here ever
deletes a blob or a record from the store (its own lifecycle rules do).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from proxy import faults, metrics
from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.store import Entry, Store, now_rfc3339
from proxy.errors import Cancelled, StorageError
from proxy.fetch.base import BlobProgress, Job
from proxy.fetch.transfer import Wanted, cancellable_sleep
from proxy.redact import redact_url
from proxy.shared.lease import Held, Lease, Leases, supports_conditional_writes
from proxy.shared.location import blob_key, ref_key
from proxy.shared.record import InvalidRecord, RefRecord
from proxy.shared.store import SharedStore, SharedStoreError
from proxy.shared.wire import Detached, FileSink
from proxy.threads import in_thread
from proxy.types import Digest

log = logging.getLogger(__name__)

T = TypeVar("T")

PART = 8 * 1024 * 1024  # bytes of one ranged read
READS = 4  # ranged reads of one blob at once
UPLOADS = 4  # blob uploads at once
ATTEMPTS = 5  # tries of one entry's write-back in one run of the server
BACKOFF = 1.0  # seconds before the second try; doubled each time
DRAIN_WAIT = 60.0  # seconds a clean stop waits for pending uploads
LEASE_TTL = 120.0  # seconds a lease lives without renewal
POLL = 0.5  # seconds between two looks for a blob another node fetches (first)
MAX_POLL = 2.0
QUEUE_DIR = "shared-uploads"
LOOKUP_TIMEOUT = 5.0  # seconds a lookup on a download's path may take
DOWN_FOR = 30.0  # seconds a store that failed a lookup is left out of downloads
WAITING_MISSES = 4  # failed lookups in a row that end a wait for another node's fetch


class _Counting:
    """A sink that counts what passes into a :class:`FileSink`."""

    def __init__(self, inner: FileSink, on_bytes: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_bytes = on_bytes

    def write(self, data: bytes) -> Deferred[None] | None:
        self.on_bytes(len(data))
        return self.inner.write(data)


def _write_queue_file(path: Path, url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"url": url}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    faults.point("shared-upload")


def _read_queue(directory: Path) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    for name in names:
        path = directory / name
        if name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        try:
            url = json.loads(path.read_text())["url"]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if isinstance(url, str):
            found.append((path, url))
    return found


class SharedTier:
    """This node's use of the shared store (see the module docstring)."""

    def __init__(
        self,
        store: SharedStore,
        cache: Store,
        reactor: IReactorThreads,
        clock: IReactorTime,
        holder: str,
        backoff: float = BACKOFF,
    ) -> None:
        self.store = store
        self.cache = cache
        self.reactor = reactor
        self.clock = clock
        self.holder = holder
        self.backoff = backoff
        self.queue_dir = cache.layout.root / QUEUE_DIR
        self.leases: Leases | None = None
        self._probed: Deferred[None] = Deferred()
        self._uploads = DeferredSemaphore(UPLOADS)
        self._uploading: dict[Digest, list[Deferred[None]]] = {}
        self._pending: dict[str, Deferred[None]] = {}  # entry URL -> its write-back
        self._background: set[Deferred[Any]] = set()
        self._job = Detached()
        self._stopping = False
        self._bad: set[Digest] = set()  # objects found not to match their name
        self._down_until = 0.0  # clock seconds: the store is not asked before then

    # -- start and stop -----------------------------------------------------

    async def start(self) -> None:
        """Probe conditional writes (say what was found), then resume the
        uploads a crash left pending."""
        try:
            found = await supports_conditional_writes(self.store, self._job)
        except (StorageError, ValueError) as e:
            message = e.message if isinstance(e, StorageError) else str(e)
            log.warning(
                "shared store %s: the conditional-write probe failed (%s): "
                "no cluster single flight",
                self.store.location,
                message,
            )
        else:
            log.info("shared store %s: %s", self.store.location, found.describe())
            if found.supported:
                self.leases = Leases(self.store, self.clock, self.holder, LEASE_TTL)
        finally:
            self._probed.callback(None)
        await self.resume()

    async def resume(self) -> None:
        found = await in_thread(self.reactor, _read_queue, self.queue_dir)
        if found:
            log.info("shared store: resuming %d pending write-backs", len(found))
        for _path, url in found:
            self._schedule(url)

    def drain(self, wait: float = DRAIN_WAIT) -> Deferred[None]:
        """Fires when the pending uploads are done, or after ``wait`` seconds
        (then the rest is cancelled: it resumes at the next start)."""
        self._stopping = True
        pending = list(self._background)
        if not pending:
            return succeed(None)
        if not self.up:
            log.warning(
                "shared store: %d uploads pending, the store is down: "
                "they resume at the next start",
                len(pending),
            )
            self._job.cancel()
            return succeed(None)
        log.info("shared store: finishing %d pending uploads before stopping", len(pending))
        done: Deferred[None] = Deferred()

        def give_up() -> None:
            if not done.called:
                log.warning(
                    "shared store: uploads still pending after %g s; they resume at the next start",
                    wait,
                )
                self._job.cancel()
                done.callback(None)

        timer = self.clock.callLater(wait, give_up)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                log.info("shared store: pending uploads finished")
                done.callback(None)

        DeferredList(pending, consumeErrors=True).addCallback(finished)
        return done

    def _spawn(self, d: Deferred[Any]) -> Deferred[Any]:
        self._background.add(d)

        def gone(result: object) -> None:
            self._background.discard(d)

        d.addBoth(gone)
        return d

    # -- faults ---------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether the store may be asked on a download's path now."""
        return self.clock.seconds() >= self._down_until

    def _down(self, why: str) -> None:
        """The store failed: leave it out of downloads for :data:`DOWN_FOR` s."""
        was_up = self.up
        self._down_until = self.clock.seconds() + DOWN_FOR
        if was_up:
            metrics.SHARED_DOWN.inc()
            log.warning(
                "shared store %s: %s; not used for %g s (the peers and the origin serve)",
                self.store.location,
                why,
                DOWN_FOR,
            )

    async def _quick(self, call: Coroutine[Any, Any, T] | Deferred[T], job: Job | Detached) -> T:
        """``call``'s result within :data:`LOOKUP_TIMEOUT` seconds; a
        :class:`SharedStoreError` after that (the call goes on in the
        background until its own timeouts end it)."""
        inner: Deferred[T] = ensureDeferred(call)
        out: Deferred[T] = Deferred()

        def late() -> None:
            if not out.called:
                out.errback(
                    SharedStoreError(
                        f"shared store {self.store.location}: no answer within {LOOKUP_TIMEOUT:g} s"
                    )
                )

        timer = self.clock.callLater(LOOKUP_TIMEOUT, late)

        def aborted() -> None:
            if not out.called:
                out.errback(Cancelled("cancelled"))

        remove = job.abortable(aborted)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()
            remove()
            if out.called:
                return  # too late: dropped (a failure is consumed here)
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)  # type: ignore[arg-type]

        inner.addBoth(done)
        return await out

    # -- read-through -------------------------------------------------------

    async def fetch(
        self,
        ingest: IngestFile,
        want: Wanted,
        job: Job,
        blob: BlobProgress,
        patient: bool = False,
    ) -> tuple[Digest, int] | None:
        """The blob from the store, verified and committed; None when the
        store does not have it (or cannot give it: the caller goes on).
        ``patient``: a lookup that fails is not the store down (the caller,
        waiting for another node's fetch, asks again)."""
        assert want.expected is not None
        digest = want.expected
        if digest.algorithm != "sha256":
            return None
        if not self.up:
            return None
        key = blob_key(digest)
        try:
            info = await self._quick(self.store.head(key, job), job)
        except SharedStoreError as e:
            if not patient:
                self._down(e.message)
            return None
        if info is None:
            return None
        if want.size is not None and info.size != want.size:
            self._mismatch(digest, f"{info.size} bytes, expected {want.size}")
            return None
        await job.reserve(info.size)
        try:
            got = await self._read(ingest, want, job, blob, key, info.size)
        except SharedStoreError as e:
            await in_thread(self.reactor, ingest.discard)
            log.warning("%s: reading it from the shared store failed: %s", digest, e.message)
            self._down(e.message)
            return None
        except BaseException:
            await in_thread(self.reactor, ingest.discard)
            raise
        if got != digest:
            await in_thread(self.reactor, ingest.discard)
            self._mismatch(digest, f"its bytes have digest {got}")
            return None
        state = IngestState(
            url=want.recorded, total=info.size, expected=str(digest), verified=str(digest)
        )
        await in_thread(self.reactor, ingest.write_state, state)
        await job.commit(ingest, digest)
        blob.digest, blob.done, blob.total, blob.state = digest, info.size, info.size, "complete"
        blob.written = info.size
        blob.source = "shared-store"
        blob.changed()
        log.info("%s: %s from the shared store", redact_url(want.recorded), digest)
        return digest, info.size

    async def _read(
        self,
        ingest: IngestFile,
        want: Wanted,
        job: Job,
        blob: BlobProgress,
        key: str,
        size: int,
    ) -> Digest:
        """The object's bytes into ``ingest``'s data file (parallel ranges);
        the digest of what arrived."""
        await in_thread(self.reactor, ingest.discard)
        state = IngestState(url=want.recorded, total=size, expected=str(want.expected))
        await in_thread(self.reactor, ingest.write_state, state)
        blob.total = size
        blob.done = blob.written = 0
        blob.changed()
        path = str(ingest.data_path)
        parts = [(first, min(first + PART, size) - 1) for first in range(0, size, PART)]
        finished = [False] * len(parts)
        reads = DeferredSemaphore(READS)

        def on_bytes(n: int) -> None:
            blob.done += n
            metrics.SHARED_BYTES.labels("read").inc(n)

        async def one(i: int) -> None:
            first, last = parts[i]
            sink = FileSink(self.reactor, path, first)
            await self.store.get_range(key, first, last, _Counting(sink, on_bytes), job)
            await sink.flush()
            finished[i] = True
            contiguous = 0
            for j, (_f, end) in enumerate(parts):
                if not finished[j]:
                    break
                contiguous = end + 1
            blob.written = contiguous  # readers of the growing file see no hole
            blob.changed()

        def run(i: int) -> Deferred[None]:
            return reads.run(lambda: Deferred.fromCoroutine(one(i)))

        await _every([run(i) for i in range(len(parts))])
        job.check_cancelled()

        def hashed() -> Digest:
            ingest.open(True)  # hashes what is on disk
            digest, _n = ingest.finish()
            return digest

        got: Digest = await in_thread(self.reactor, hashed)
        return got

    def _mismatch(self, digest: Digest, why: str) -> None:
        metrics.SHARED_MISMATCHES.inc()
        self._bad.add(digest)  # the write-back replaces it with the right bytes
        log.warning(
            "shared store: object %s does not match its name (%s): not used; "
            "fetched from the peers or the origin instead",
            blob_key(digest),
            why,
        )

    # -- cluster single flight ------------------------------------------------

    async def before_origin(
        self, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
    ) -> tuple[tuple[Digest, int] | None, Lease | None]:
        """Before the origin: (the blob, when another node's fetch put it in
        the store meanwhile; the lease this node now holds, if any)."""
        assert want.expected is not None
        digest = want.expected
        if not self.up or digest.algorithm != "sha256":
            return None, None
        if not self._probed.called:
            try:  # a store that stalls its probe does not hold downloads back
                await self._quick(_observe(self._probed), job)
            except SharedStoreError:
                log.info("%s: the shared store's probe is not done: no lease", digest)
                return None, None
        leases = self.leases
        if leases is None:
            return None, None
        pause = POLL
        said = False
        misses = 0  # lookups in a row that failed while another node fetches
        while True:
            if not self.up:
                return None, None
            try:
                got = await self._quick(leases.acquire(digest, job), job)
            except SharedStoreError as e:
                misses += 1
                # A store slow to answer while it takes another node's upload is
                # not down: while waiting, a few misses are allowed.
                if not said or misses >= WAITING_MISSES:
                    self._down(e.message)
                    log.warning("%s: no lease (%s): fetching from the origin", digest, e.message)
                    return None, None
                continue
            misses = 0
            if isinstance(got, Lease):
                if said:  # the holder may have put it there and let go just now
                    found = await self.fetch(ingest, want, job, blob)
                    if found is not None:
                        self.fetched(got, ok=False)
                        return found, None
                return None, got
            assert isinstance(got, Held)
            if not said:
                holder = got.record.holder if got.record is not None else "another node"
                log.info("%s: %s fetches it; waiting for it in the shared store", digest, holder)
                said = True
            await cancellable_sleep(self.clock, pause, job)
            pause = min(pause * 2, MAX_POLL)
            found = await self.fetch(ingest, want, job, blob, patient=True)
            if found is not None:
                return found, None

    def renewing(self, lease: Lease) -> Callable[[], Lease]:
        """Renew ``lease`` every third of its life until the returned
        function is called (it gives the lease's latest version)."""
        current = [lease]
        leases = self.leases
        assert leases is not None

        async def renew() -> None:
            try:
                renewed = await leases.renew(current[0], self._job)
            except SharedStoreError as e:
                log.warning("%s: lease not renewed: %s", lease.digest, e.message)
                return
            if renewed is not None:
                current[0] = renewed

        loop = LoopingCall(lambda: Deferred.fromCoroutine(renew()))
        loop.clock = self.clock
        loop.start(LEASE_TTL / 3, now=False).addErrback(lambda f: None)

        def stop() -> Lease:
            if loop.running:
                loop.stop()
            return current[0]

        return stop

    def fetched(self, lease: Lease, ok: bool) -> None:
        """The origin fetch under ``lease`` ended: on success the blob goes up
        now (the nodes waiting for it read it), then the lease is released."""
        leases = self.leases
        assert leases is not None

        async def upload_then_release() -> None:
            try:
                if ok:
                    await self._upload_blob(lease.digest)
            except (StorageError, OSError) as e:
                msg = e.message if isinstance(e, StorageError) else str(e)
                metrics.SHARED_UPLOAD_FAILURES.inc()
                log.warning("shared store: %s not uploaded: %s", lease.digest, msg)
            finally:
                with contextlib.suppress(SharedStoreError, Cancelled):  # else it expires
                    await leases.release(lease, self._job)

        self._spawn(Deferred.fromCoroutine(upload_then_release()))

    # -- write-back -----------------------------------------------------------

    def written(self, entry: Entry, record: bool = True) -> None:
        """An entry was stored: its blobs and record go to the store, in the
        background (persisted first, so a crash does not lose it)."""
        if self._stopping:
            return
        path = self._queue_path(entry.url)

        async def queued() -> None:
            await in_thread(self.reactor, _write_queue_file, path, entry.url)
            self._schedule(entry.url, record)

        d = Deferred.fromCoroutine(queued())
        d.addErrback(lambda f: log.warning("shared store: cannot queue %s: %s", entry.url, f.value))
        self._spawn(d)

    async def put_entry(self, entry: Entry) -> None:
        """Upload ``entry``'s blobs the store lacks, then its record, now
        (``export --to``); a failure is raised."""
        blobs = [d for d in entry.blobs if d.algorithm == "sha256"]
        await _every([self._upload_blob(d) for d in blobs])
        await self._record(entry)

    def _queue_path(self, url: str) -> Path:
        return self.queue_dir / (hashlib.sha256(url.encode()).hexdigest() + ".json")

    def _schedule(self, url: str, record: bool = True) -> None:
        if url in self._pending:
            return
        d = Deferred.fromCoroutine(self._write_back(url, record))
        self._pending[url] = d

        def gone(result: object) -> object:
            self._pending.pop(url, None)
            return result

        d.addBoth(gone)
        d.addErrback(lambda f: log.error("shared store: write-back of %s failed: %s", url, f.value))
        self._spawn(d)

    async def _write_back(self, url: str, record: bool) -> None:
        path = self._queue_path(url)
        delay = self.backoff
        for attempt in range(1, ATTEMPTS + 1):
            entry = self.cache.get(url)
            if entry is None or not entry.complete:
                break  # deleted meanwhile: nothing to write (the store keeps what it has)
            try:
                blobs = [d for d in entry.blobs if d.algorithm == "sha256"]
                await _every([self._upload_blob(d) for d in blobs])
                if record:
                    await self._record(entry)
                break
            except Cancelled:
                return  # stopping: resumes at the next start
            except (StorageError, OSError) as e:
                metrics.SHARED_UPLOAD_FAILURES.inc()
                msg = e.message if isinstance(e, StorageError) else str(e)
                if isinstance(e, SharedStoreError):
                    self._down(msg)
                if attempt == ATTEMPTS:
                    log.warning(
                        "shared store: write-back of %s failed %d times (%s); "
                        "it is tried again at the next start",
                        redact_url(url),
                        attempt,
                        msg,
                    )
                    return
                log.warning(
                    "shared store: write-back of %s failed (%s); retry in %g s",
                    redact_url(url),
                    msg,
                    delay,
                )
                try:
                    await cancellable_sleep(self.clock, delay, self._job)
                except Cancelled:
                    return
                delay *= 2
        await in_thread(self.reactor, path.unlink, True)

    def _upload_blob(self, digest: Digest) -> Deferred[None]:
        """Upload one blob unless the store has it (one upload per digest at
        once: a second caller waits for the first's)."""
        d: Deferred[None] = Deferred()
        waiters = self._uploading.get(digest)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._uploading[digest] = [d]

        def done(result: object) -> None:
            del self._uploading[digest]
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)

        self._uploads.run(lambda: Deferred.fromCoroutine(self._upload(digest))).addBoth(done)
        return d

    async def _upload(self, digest: Digest) -> None:
        key = blob_key(digest)
        layout = self.cache.layout
        self.cache.hold(digest)  # not evicted while it goes up
        try:
            size = await in_thread(self.reactor, layout.blob_size, digest)
            if size is None:
                return  # evicted or deleted before its turn
            if digest not in self._bad:
                info = await self.store.head(key, self._job)
                if info is not None and info.size == size:
                    return
            await self.store.put_file(key, str(layout.blob_path(digest)), self._job)
            self._bad.discard(digest)
            metrics.SHARED_BYTES.labels("written").inc(size)
            log.info("shared store: uploaded %s (%d bytes)", digest, size)
        finally:
            self.cache.release(digest)

    async def _record(self, entry: Entry) -> None:
        try:
            record = RefRecord(
                entry.url, entry.descriptor, entry.descriptor.digest, now_rfc3339(), self.holder
            )
            data = record.to_bytes()
        except (InvalidRecord, ValueError) as e:
            log.info("shared store: no record for %s: %s", redact_url(entry.url), e)
            return
        key = ref_key(entry.url)
        existing = await self.store.read_small(key, job=self._job)
        if existing is not None:
            try:
                old = RefRecord.from_bytes(existing.data)
            except InvalidRecord:
                old = None
            if old is not None and old.url == record.url and old.descriptor == record.descriptor:
                return
            await self.store.replace_if_match(key, data, existing.etag, self._job)
            return
        await self.store.create_if_absent(key, data, self._job)


def _observe(d: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires when ``d`` does, leaving ``d``'s result alone."""
    seen: Deferred[None] = Deferred()

    def fired(result: object) -> object:
        seen.callback(None)
        return result

    d.addBoth(fired)
    return seen


async def _every(waits: list[Deferred[None]]) -> None:
    """Wait for all of ``waits``; then raise the first failure, if any."""
    results = await DeferredList(waits, consumeErrors=True)
    for ok, value in results:
        if not ok:
            assert isinstance(value, Failure)
            value.raiseException()
