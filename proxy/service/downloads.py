"""Running downloads: one per URL, joined by every caller that asks for it.

:class:`Downloads` is what the /content API talks to. It validates a POST
into a :class:`FetchRequest`, picks the fetcher by scheme, runs at most
``max_downloads`` at once, lets a second POST of the same URL wait on the
running download (single flight by URL), turns a fetcher's result into an
entry (artifact manifest, index.json), and knows the downloads that were
interrupted (their partial bytes wait in ``ingest/`` to be resumed).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.python.failure import Failure

from proxy import metrics
from proxy.cache import artifact, bundle, views
from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import ingest_key, is_disk_full
from proxy.cache.store import Entry, Store, new_entry
from proxy.cache.usage import Usage, usage
from proxy.errors import (
    BadRequest,
    Cancelled,
    Conflict,
    DiskFull,
    EntryUnknown,
    StorageError,
    UnsupportedScheme,
)
from proxy.fetch.base import (
    Fetcher,
    FetchRequest,
    FetchResult,
    Progress,
    parse_credentials,
    split_userinfo,
)
from proxy.fetch.file import FileFetcher
from proxy.presigned import entry_key
from proxy.redact import redact_url
from proxy.service.failures import Failed, Failures
from proxy.types import (
    ANNOTATION_PINNED,
    ARTIFACT_TYPE_FILE,
    EMPTY_JSON,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
    Digest,
    InvalidDigest,
)
from proxy.units import human_size, plural

log = logging.getLogger(__name__)

MAX_URL = 8192


def entry_url(url: str, hidden_given: bool = False) -> str:
    """The URL an entry is known by: no userinfo, no signature of a
    pre-signed URL of a known form (the same for every fresh signature);
    ``hidden_given``: the URL may already carry hidden secrets, as listed
    (see :func:`proxy.presigned.entry_key`)."""
    return entry_key(split_userinfo(url)[0], hidden_given=hidden_given)


def parse_post(body: Any) -> FetchRequest:
    """Validate a POST /content body (already JSON-decoded)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("missing 'url' (a non-empty string)")
    url = url.strip()
    if len(url) > MAX_URL or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise BadRequest("url is too long or contains control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as e:
        raise BadRequest(f"malformed url: {e}") from None
    if not parts.scheme or "://" not in url:
        hint = suggest_url(url)
        raise BadRequest(
            f"{url!r} is not a URL (scheme://...)" + (f": did you mean {hint}?" if hint else "")
        )
    credentials = parse_credentials(body.get("credentials"), body.get("credentialsType"))
    clean, from_url = split_userinfo(url)
    if credentials is None:
        credentials = from_url
    expected = body.get("digest")
    digest = None
    if expected is not None:
        try:
            digest = Digest.parse(expected)
        except InvalidDigest as e:
            raise BadRequest(str(e)) from None
    pin = body.get("pin")
    if pin is not None and not isinstance(pin, bool):
        raise BadRequest("pin must be true or false")
    key = entry_url(clean)
    return FetchRequest(
        url=key,
        credentials=credentials,
        expected=digest,
        source=clean if key != clean else None,
        pin=pin,
    )


_IMAGE_REF_RE = re.compile(
    r"(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)


def suggest_url(text: str) -> str | None:
    """What a user who typed a path or a ``docker pull`` name meant:
    ``/tmp/x.bin`` -> ``file:///tmp/x.bin``, ``alpine:3`` ->
    ``oci://docker.io/library/alpine:3``."""
    if text.startswith(("/", "./", "../", "~")):
        return "file://" + os.path.abspath(os.path.expanduser(text))
    if not _IMAGE_REF_RE.fullmatch(text):
        return None
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return f"oci://{text}"  # it names its registry
    return f"oci://docker.io/{text if rest else 'library/' + text}"


@attrs.frozen
class Interrupted:
    """A download that stopped before completion; its bytes wait in ingest/."""

    url: str
    bytes_done: int
    total: int | None
    verified: bool = False
    pull: bool = False  # a multi-blob pull; its finished blobs are already in blobs/


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
    make_room: Callable[[int], Deferred[None]] | None = None  # Downloads.make_room

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

    def _thread(self, f: Callable[..., Any], *a: Any) -> Deferred[Any]:
        return deferToThreadPool(self.threads, self.threads.getThreadPool(), f, *a)

    def commit(self, ingest: IngestFile, digest: Digest) -> Deferred[None]:
        def locked() -> Deferred[None]:
            self._hold(digest)
            return self._thread(ingest.commit, digest).addCallback(lambda _: None)

        # Once its data is in blobs/, the ingest directory has nothing left to resume.
        self._committed.append(ingest.discard)
        return self.store.blob_lock.run(locked)

    def hold_existing(self, digest: Digest) -> Deferred[int | None]:
        def locked() -> Deferred[int | None]:
            self._hold(digest)
            return self._thread(self.store.layout.blob_size, digest)

        return self.store.blob_lock.run(locked)

    def put_blob(self, data: bytes) -> Deferred[Digest]:
        layout = self.store.layout
        scratch = layout.ingest_dir / "small"

        def locked() -> Deferred[Digest]:
            d = self._thread(layout.put_small_blob, data, scratch)
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


class Downloads:
    """Every download of this server, running or interrupted."""

    def __init__(
        self,
        reactor: IReactorThreads,
        store: Store,
        fetchers: Mapping[str, Fetcher],
        max_downloads: int = 4,
        limit: Callable[[], int | None] | None = None,
        low_watermark: float = 0.9,
    ) -> None:
        self._reactor = reactor
        self.store = store
        self.fetchers = dict(fetchers)
        self._running: dict[str, Download] = {}
        self._interrupted: dict[str, Interrupted] = {}
        self.failures = Failures()  # the last error of each failed download
        self._slots = DeferredSemaphore(max_downloads)
        self._views_lock = DeferredLock()
        self._limit = limit  # bytes the cache may use (None: no limit)
        self._low_watermark = low_watermark
        self._evict_lock = DeferredLock()
        self._importing: set[str] = set()  # ingest/import-* directories being staged

    def _thread(self, f: Callable[..., Any], *a: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *a)

    @property
    def reactor(self) -> IReactorThreads:
        return self._reactor

    # -- startup (blocking) ----------------------------------------------------

    def scan_ingest(self) -> None:
        """Find interrupted downloads in ingest/ (called once before serving)."""
        layout = self.store.layout
        for d in sorted(layout.ingest_dir.iterdir()):
            if not d.is_dir():
                continue
            # A state file being replaced when the process died; state.json is whole.
            (d / "state.json.tmp").unlink(missing_ok=True)
            if len(d.name) != 64:  # sha256-<hex>: a blob of a pull, resumed by its pull
                continue
            ingest = IngestFile(layout, d.name)
            state = ingest.read_state()
            if state is None:
                continue
            self._interrupted[state.url] = _interrupted(state, ingest)
        # Small-blob scratch files are never resumable.
        for p in (layout.ingest_dir / "small").glob("*.tmp"):
            p.unlink(missing_ok=True)

    # -- queries -------------------------------------------------------------

    def running(self, url: str) -> Download | None:
        return self._running.get(url)

    def interrupted(self, url: str) -> Interrupted | None:
        if url in self._running:
            return None
        return self._interrupted.get(url)

    def failed(self, url: str) -> Failed | None:
        """The last error of ``url``'s download, unless it runs again."""
        if url in self._running:
            return None
        return self.failures.get(url)

    def active(self) -> int:
        """Downloads running or waiting for a slot."""
        return len(self._running)

    def urls(self) -> list[str]:
        urls = dict.fromkeys(e.url for e in self.store.entries())
        urls.update(dict.fromkeys(self._running))
        urls.update(dict.fromkeys(self._interrupted))
        urls.update(dict.fromkeys(self.failures.urls()))
        return list(urls)

    def log_interrupted(self) -> None:
        """Say which downloads a stop interrupts (at shutdown, before they are cut)."""
        for url, job in self._running.items():
            total = job.progress.total
            log.warning(
                "stopping: the download of %s is interrupted (%s, %d%s bytes done); "
                "the bytes kept resume on its next POST",
                redact_url(url),
                job.state,
                job.progress.done,
                f" of {total}" if total is not None else "",
            )

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
        fetcher.validate(request)
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
            return _succeed((entry, False))
        job = self._running.get(request.url)
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
        job = self._running.get(request.url)
        if job is not None:
            return job
        fetcher = fetcher or self.fetcher_for(request)
        job = Download(request, self.store, self._reactor)
        self.failures.forget(request.url)  # retried: its last error is history
        if self._limit is not None:
            job.make_room = self.make_room
        self._running[request.url] = job
        if queued:
            self._slots.run(self._run, job, fetcher)
        else:
            self._run(job, fetcher)
        return job

    def _run(self, job: Download, fetcher: Fetcher) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run_async(job, fetcher))

    def _forget(self, url: str, job: Download) -> None:
        if self._running.get(url) is job:
            del self._running[url]

    async def _run_async(self, job: Download, fetcher: Fetcher) -> None:
        url = job.request.url
        if job.cancelled:  # deleted while it waited for a slot: already answered
            self._forget(url, job)
            return
        log.info("downloading %s", redact_url(url))
        job.state = "downloading"
        started = time.monotonic()
        scheme = job.request.scheme
        try:
            job.check_cancelled()
            result = await fetcher.fetch(job.request, job)
            job.check_cancelled()
            entry = await self._store_entry(job, result)
        except BaseException as e:
            failure = (
                Failure(e)
                if not isinstance(e, CancelledError)
                else Failure(Cancelled("download cancelled"))
            )
            job.release()
            self._forget(url, job)
            for cleanup in job.cleanups(stored=False):
                await self._thread(cleanup)
            await self._note_interrupted(url)
            if isinstance(failure.value, OSError) and is_disk_full(failure.value):
                failure = Failure(DiskFull("no space left in the cache"))
            code = failure.value.code if isinstance(failure.value, StorageError) else "INTERNAL"
            metrics.observe_download(scheme, "failed", time.monotonic() - started, code)
            if isinstance(failure.value, StorageError):
                log.warning("download of %s failed: %s", redact_url(url), failure.value.message)
                message = failure.value.message
            else:
                log.error("download of %s failed", redact_url(url), exc_info=failure.value)
                message = "internal error (see the server log)"
            if not job.cancelled:  # a DELETE removed it: nothing to remember
                self.failures.record(url, code if code != "INTERNAL" else "INTERNAL_ERROR", message)
            job.settle(failure)
            return
        job.release()
        self._forget(url, job)
        self._interrupted.pop(url, None)
        for cleanup in job.cleanups(stored=True):
            await self._thread(cleanup)
        metrics.observe_download(scheme, "stored", time.monotonic() - started)
        if self._limit is not None:
            # Over the limit now (sizes were not all known ahead): evict others.
            self.evict_soon()
        log.info(
            "stored %s as %s (%s, %s in %.2f s)",
            redact_url(url),
            entry.primary.digest,
            plural(len(entry.files), "file"),
            human_size(entry.size),
            time.monotonic() - started,
        )
        job.settle((entry, True))

    async def _store_entry(self, job: Download, result: FetchResult) -> Entry:
        blobs = {f.digest for f in result.files}
        manifest = result.manifest
        if manifest is None:
            blobs.add(await job.put_blob(EMPTY_JSON))
            data = artifact.file_manifest(
                list(result.files), result.artifact_type or ARTIFACT_TYPE_FILE
            )
            digest = await job.put_blob(data)
            manifest = Descriptor(MEDIA_TYPE_IMAGE_MANIFEST, digest, len(data))
        existing = self.store.get(job.request.url)
        if (
            result.keep_existing
            and existing is not None
            and existing.descriptor.digest == manifest.digest
        ):
            return existing
        entry = new_entry(
            job.request.url,
            result.kind,
            manifest,
            list(result.files),
            result.primary or manifest,  # a set of files: the manifest names it
            blobs=blobs,
            reference=result.reference,
            annotations={
                **result.annotations,
                **({ANNOTATION_PINNED: "true"} if job.request.pin else {}),
            },
        )
        await self.store.put(entry)
        await self.sync_views()
        return entry

    def sync_views(self) -> Deferred[None]:
        """Bring the directories of links (hub cache view) in line with the entries."""
        snapshot = self.store.entries()
        return self._views_lock.run(self._thread, views.sync, self.store.layout, snapshot)

    async def _note_interrupted(self, url: str) -> None:
        ingest = IngestFile(self.store.layout, ingest_key(url))

        def look() -> Interrupted | None:
            state = ingest.read_state()
            return _interrupted(state, ingest) if state is not None else None

        found = await self._thread(look)
        if found is not None and (found.bytes_done > 0 or found.verified or found.pull):
            self._interrupted[url] = found
        else:
            self._interrupted.pop(url, None)
            await self._thread(ingest.discard)

    # -- eviction --------------------------------------------------------------------

    def make_room(self, nbytes: int) -> Deferred[None]:
        """Room for ``nbytes`` more; DiskFull when even evicting cannot make it."""
        return Deferred.fromCoroutine(self._make_room(nbytes)).addCallback(lambda _: None)

    async def _make_room(self, nbytes: int, only_if_it_fits: bool = False) -> int | None:
        """:meth:`make_room` (``only_if_it_fits``: nothing is evicted either
        when even evicting all it may would not make room); the bytes left
        under the limit afterwards (None: no limit)."""
        limit = self._limit() if self._limit is not None else None
        if limit is None:
            return None
        if only_if_it_fits:
            now: Usage = await self._thread(usage, self.store.layout, set())
            evictable = await self._thread(self._evictable_bytes, self._evictable())
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

    def evict_soon(self) -> None:
        d = Deferred.fromCoroutine(self.evict(0))
        d.addErrback(lambda f: log.error("eviction failed", exc_info=f.value))

    def _may_evict(self, entry: Entry) -> bool:
        """The eviction rules: never pinned entries, entries of the Go
        storage-manager, entries downloading, entries an answer is reading."""
        return not (
            entry.pinned
            or entry.legacy
            or entry.url in self._running
            or self.store.being_read(entry)
            or self.store.get(entry.url) is not entry
        )

    def _evictable(self) -> set[Digest]:
        """The blobs that evicting every evictable entry would free."""
        entries = [e for e in self.store.entries() if self._may_evict(e)]
        keep = self.store.referenced(excluding={e.url for e in entries})
        return {d for e in entries for d in e.blobs} - keep

    def _evictable_bytes(self, blobs: set[Digest]) -> int:
        """Their bytes (blocking)."""
        layout = self.store.layout
        return sum(layout.blob_size(d) or 0 for d in blobs)

    async def evict(self, extra: int = 0) -> int:
        """If the cache (plus ``extra`` bytes to come) is over its limit,
        remove whole entries, least recently used first, until it is under
        the low watermark. Never evicted: pinned entries, entries of the Go
        storage-manager, entries downloading, entries whose blobs an answer is
        streaming; shared blobs stay while another entry uses them. Return the
        bytes in use afterwards."""
        limit = self._limit() if self._limit is not None else None
        await self._evict_lock.acquire()
        try:
            layout = self.store.layout
            now: Usage = await self._thread(usage, layout, set())
            used = now.total_bytes
            if limit is None or used + extra <= limit:
                return used
            target = self._low_watermark * limit - extra
            for entry in self.store.lru():
                if used <= target:
                    break
                if not self._may_evict(entry):
                    continue
                freed = await self.store.remove(entry.url)
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
            await self.sync_views()
            after: Usage = await self._thread(usage, layout, set())
            return after.total_bytes
        finally:
            self._evict_lock.release()

    # -- import ------------------------------------------------------------------------

    async def layout_at(self, request: FetchRequest) -> bundle.LocalLayout | None:
        """The OCI image layout (a directory or a tar) a ``file://`` POST
        names, opened once at its resolved path and checked again once open
        (--allow-file-import, never the cache itself), else None. The caller
        hands it to :meth:`import_bundle`, which closes it."""
        fetcher = self.fetcher_for(request)
        fetcher.validate(request)
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

        found: bundle.LocalLayout | None = await self._thread(probe)
        return found

    async def import_bundle(
        self, source: IO[bytes] | bundle.LocalLayout
    ) -> tuple[list[Entry], int, int]:
        """Load an OCI layout (see :mod:`proxy.cache.bundle`) from a tar stream
        or a local layout (which it closes): every blob verified, the ones
        already here skipped, the new ones within the cache's limit (507
        ``DISK_FULL`` otherwise, nothing kept); fire with (entries, blobs
        added, skipped)."""
        layout = self.store.layout
        directory = layout.ingest_dir / f"import-{uuid.uuid4().hex}"
        self._importing.add(directory.name)  # gc leaves it alone
        try:
            return await self._import(source, directory)
        finally:
            self._importing.discard(directory.name)
            if isinstance(source, bundle.LocalLayout):
                source.close()

    def _import_room(self) -> bundle.Room:
        """What :func:`bundle.stage` calls (in its thread) before staging a new
        blob: room under --max-cache-size, made by the eviction rules of any
        download (:meth:`make_room`) and only when the blob then fits; without
        a limit, the free space of the filesystem. The room found is used up
        before the cache is looked at again (one walk for many small blobs)."""
        reactor = self._reactor
        root = self.store.layout.ingest_dir
        left = 0

        def room(nbytes: int) -> None:
            nonlocal left
            if nbytes <= left:
                left -= nbytes
                return
            if self._limit is None or self._limit() is None:
                free = shutil.disk_usage(root).free
                if nbytes > free:
                    raise DiskFull(f"{nbytes} more bytes do not fit: {free} bytes free on disk")
                return
            made: Callable[[int], Any] = self._room_for_import  # mypy: Deferred[int | None]
            left = blockingCallFromThread(reactor, made, nbytes) or 0

        return room

    def _room_for_import(self, nbytes: int) -> Deferred[int | None]:
        return Deferred.fromCoroutine(self._make_room(nbytes, only_if_it_fits=True))

    async def _import(
        self, source: IO[bytes] | bundle.LocalLayout, directory: Path
    ) -> tuple[list[Entry], int, int]:
        layout = self.store.layout
        reactor = self._reactor
        held: list[Digest] = []
        added: list[Digest] = []

        def hold(digest: Digest) -> None:  # on the reactor
            self.store.hold(digest)
            held.append(digest)

        def keep(digest: Digest) -> None:  # in the staging thread
            blockingCallFromThread(reactor, hold, digest)

        try:
            staged: bundle.Staged = await self._thread(
                bundle.stage, layout, source, directory, self._import_room(), keep
            )
            await self.store.blob_lock.acquire()
            try:
                for d in staged.new:
                    hold(d)
                for d in staged.new:
                    if await self._thread(layout.commit_file, directory / d.hex, d):
                        added.append(d)
            finally:
                self.store.blob_lock.release()
            try:
                entries = await self.store.adopt(staged.index["manifests"])
            except BaseException:
                for d in held:
                    self.store.release(d)
                held.clear()
                await self._drop_unreferenced(added)
                raise
        finally:
            for d in held:
                self.store.release(d)
            await self._thread(shutil.rmtree, directory, True)
        await self.sync_views()
        log.info(
            "imported %d entries (%d blobs added, %d already here)",
            len(entries),
            len(staged.new),
            len(staged.present),
        )
        return entries, len(staged.new), len(staged.present)

    async def _drop_unreferenced(self, digests: list[Digest]) -> None:
        """Remove the blobs a refused import committed that nothing uses."""

        def locked() -> Deferred[int]:
            orphans = set(digests) - self.store.referenced()
            layout = self.store.layout
            return self._thread(lambda: sum(layout.remove_blob(d) for d in orphans))

        await self.store.blob_lock.run(locked)

    # -- GC ------------------------------------------------------------------------

    async def gc(self, ingest_age: float) -> GcReport:
        """Remove unreferenced blobs, and ingest directories no running
        download uses that were last written ``ingest_age`` seconds ago or
        more (0: all of them; their downloads start over next time)."""
        blobs, blob_bytes = await self.store.collect()
        busy: set[str] = set()
        running_urls = set(self._running)
        for job in self._running.values():
            busy |= job.ingests
            busy.add(ingest_key(job.request.url))
        layout = self.store.layout
        busy |= self.store.ingests_in_use() | self._importing

        def sweep() -> tuple[int, int, list[str]]:
            count = freed = 0
            forgotten: list[str] = []
            now = time.time()
            for d in sorted(layout.ingest_dir.iterdir()):
                if not d.is_dir() or d.name == "small" or d.name in busy:
                    continue
                files = [p for p in d.rglob("*") if p.is_file()]
                newest = max((p.stat().st_mtime for p in files), default=d.stat().st_mtime)
                if now - newest < ingest_age:
                    continue
                state = IngestFile(layout, d.name).read_state() if len(d.name) == 64 else None
                if state is not None and state.url in running_urls:
                    continue
                freed += sum(p.stat().st_size for p in files)
                shutil.rmtree(d, ignore_errors=True)
                count += 1
                if state is not None:
                    forgotten.append(state.url)
            return count, freed, forgotten

        dirs, ingest_bytes, forgotten = await self._thread(sweep)
        for url in forgotten:
            self._interrupted.pop(url, None)
        report = GcReport(blobs, blob_bytes, dirs, ingest_bytes)
        log.info(
            "gc: %d unreferenced blobs (%d bytes), %d ingest directories (%d bytes) removed",
            blobs,
            blob_bytes,
            dirs,
            ingest_bytes,
        )
        return report

    # -- DELETE ----------------------------------------------------------------

    async def delete(self, url: str) -> int:
        """Cancel, forget and free a URL; return bytes freed."""
        found = False
        job = self._running.get(url)
        if job is not None:
            found = True
            if job.state == "queued":
                # Not started: answer its waiters now rather than after a free slot.
                job.cancel()
                self._forget(url, job)
                job.settle(Failure(Cancelled("download cancelled by DELETE")))
            else:
                finished = job.finished()
                job.cancel()
                await finished
            for key in job.ingests:
                lock = self.store.ingest_lock(key)
                if not lock.locked and len(key) != 64:
                    # Partial blobs of a cancelled pull: nothing will resume them now.
                    await self._thread(IngestFile(self.store.layout, key).discard)
        freed = 0
        if self.store.get(url) is not None:
            found = True
            freed += await self.store.remove(url)
            await self.sync_views()
        ingest = IngestFile(self.store.layout, ingest_key(url))
        if self._interrupted.pop(url, None) is not None:
            found = True
        if self.failures.forget(url):
            found = True
        partial = await self._thread(ingest.bytes_on_disk)
        if await self._thread(lambda: ingest.dir.exists()):
            await self._thread(ingest.discard)
            freed += partial
        if not found:
            raise EntryUnknown(f"{url} is not in the cache")
        log.info("deleted %s (%s freed)", redact_url(url), human_size(freed))
        return freed


def _interrupted(state: IngestState, ingest: IngestFile) -> Interrupted:
    return Interrupted(
        url=state.url,
        bytes_done=ingest.bytes_on_disk(),
        total=state.total,
        verified=state.verified is not None,
        pull=state.kind != "file",
    )


def _succeed(value: tuple[Entry, bool]) -> Deferred[tuple[Entry, bool]]:
    d: Deferred[tuple[Entry, bool]] = Deferred()
    d.callback(value)
    return d
