"""The one interface every downloader implements, and the values it uses.

A fetcher takes a :class:`proxy.request.FetchRequest` (a validated POST:
the URL with secrets removed, credentials kept apart), stores the content in
the cache and returns a :class:`FetchResult` naming what it stored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, DeferredLock

from proxy.cache.ingest import IngestFile
from proxy.request import FetchRequest
from proxy.types import Descriptor, Digest


def _fire(waiters: list[Deferred[None]]) -> None:
    """Fire (and forget) every waiter not already called (a waiter gone away is cancelled)."""
    pending = list(waiters)
    waiters.clear()
    for d in pending:
        if not d.called:
            d.callback(None)


@attrs.define
class BlobProgress:
    """Progress of one blob of a download."""

    title: str
    total: int | None = None
    done: int = 0
    digest: Digest | None = None
    state: str = "downloading"  # downloading | complete
    written: int = 0  # bytes of the ingest file on disk, readable by a tail reader
    source: str | None = None  # where it came from: origin, peer <address>, cache
    _waiters: list[Deferred[None]] = attrs.field(factory=list, repr=False, eq=False)

    def complete(self, digest: Digest, size: int) -> None:
        """The blob is whole: ``size`` bytes of ``digest``."""
        self.digest, self.done, self.total, self.state = digest, size, size, "complete"

    def when_changed(self) -> Deferred[None]:
        """Fires the next time the writer reports a change (``total``,
        ``written`` or ``state``): a reader waits on this, never polls."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def changed(self) -> None:
        """Called by the writer after it updated ``total``, ``written`` or ``state``."""
        _fire(self._waiters)


@attrs.define
class Progress:
    """What a running download has done so far (read by GET /content)."""

    blobs: list[BlobProgress] = attrs.field(factory=list)
    _waiters: list[Deferred[None]] = attrs.field(factory=list, repr=False, eq=False)

    def add(self, title: str, total: int | None = None) -> BlobProgress:
        b = BlobProgress(title=title, total=total)
        self.blobs.append(b)
        _fire(self._waiters)
        return b

    def when_added(self) -> Deferred[None]:
        """Fires when the next blob is added."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    @property
    def done(self) -> int:
        return sum(b.done for b in self.blobs)

    @property
    def total(self) -> int | None:
        totals = [b.total for b in self.blobs]
        if not totals or any(t is None for t in totals):
            return None
        return sum(t for t in totals if t is not None)


@attrs.define(eq=False)
class Writing:
    """One blob being written into ``ingest/`` now: its progress, and whether
    the writer is done with it (``ok``: verified and committed)."""

    blob: BlobProgress
    path: Path  # the ingest file being written (renamed into blobs/ by the commit)
    ended: bool = False
    ok: bool = False


class Writers:
    """The blobs being written into ``ingest/`` now, by digest, whoever writes
    them (a POST's download, a mirror fill, a fill for a peer): a reader that
    wants one of them follows it as it grows instead of fetching it again."""

    def __init__(self) -> None:
        self._now: dict[Digest, Writing] = {}
        self._waiters: dict[Digest, list[Deferred[None]]] = {}

    def start(self, digest: Digest, blob: BlobProgress, path: Path) -> Callable[[], None]:
        """``blob`` is being written as ``digest`` into ``path``; returns what
        to call when the writer is done with it (after its commit, or on failure)."""
        writing = Writing(blob, path)
        self._now[digest] = writing
        _fire(self._waiters.pop(digest, []))

        def end() -> None:
            writing.ended = True
            writing.ok = blob.state == "complete"
            if self._now.get(digest) is writing:
                del self._now[digest]
            blob.changed()  # a reader waiting for more learns the end

        return end

    def get(self, digest: Digest) -> Writing | None:
        return self._now.get(digest)

    def when_started(self, digest: Digest) -> Deferred[None]:
        """Fires when a writer of ``digest`` starts."""
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(digest, []).append(d)
        return d

    def forget_waiter(self, digest: Digest, d: Deferred[None]) -> None:
        waiters = self._waiters.get(digest)
        if waiters is not None and d in waiters:
            waiters.remove(d)
            if not waiters:
                del self._waiters[digest]


@attrs.frozen
class FetchResult:
    """What a fetcher stored.

    ``files`` are the blobs of the entry and ``primary`` the one /content calls
    ``digest``; None for a set of files (a directory, a repository, a prefix):
    then ``digest`` is the entry's manifest, as for an image. When ``manifest``
    is None the files are plain files (titled layers) and the entry gets an
    artifact manifest; otherwise the fetcher
    stored the manifest itself (an image, an index) and ``reference`` names it.
    """

    files: tuple[Descriptor, ...]
    primary: Descriptor | None
    kind: str
    manifest: Descriptor | None = None
    reference: str | None = None
    annotations: dict[str, str] = attrs.field(factory=dict)
    artifact_type: str | None = None  # of the artifact manifest made for plain files
    # The URL's entry, when it already holds this manifest, stays as it is (a
    # mirror's manifest fill must not replace a full pull of the same tag).
    keep_existing: bool = False


class Job(Protocol):
    """What a fetcher may ask of the download it runs in."""

    progress: Progress

    def abortable(self, abort: Callable[[], None]) -> Callable[[], None]:
        """Register how to stop one network activity if the download is
        cancelled; return the function that unregisters it. Several may be
        registered at once (parallel blob downloads)."""

    def check_cancelled(self) -> None:
        """Raise :class:`proxy.errors.Cancelled` if the download was cancelled."""

    def commit(self, ingest: IngestFile, digest: Digest) -> Deferred[None]:
        """Move verified ingest data into blobs/ and keep it alive until the
        entry is stored; the ingest directory is removed after that."""

    def hold_existing(self, digest: Digest) -> Deferred[int | None]:
        """Keep a blob already in the cache alive for this download; fire with
        its size, or None when it is not there."""

    def put_blob(self, data: bytes) -> Deferred[Digest]:
        """Store a small blob (a manifest) and keep it alive like ``commit``."""

    def after_commit(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` (blocking, in a thread) once the entry is stored."""

    def ingest_lock(self, key: str) -> DeferredLock:
        """The lock making this download the only writer of ``ingest/<key>``."""

    def reserve(self, nbytes: int) -> Deferred[None]:
        """Make room for ``nbytes`` more in the cache (evicting if there is a
        size limit); errback with DiskFull when they cannot fit."""

    def writing(self, digest: Digest, blob: BlobProgress, path: Path) -> Callable[[], None]:
        """``blob`` is now written as ``digest`` into ``path`` (others may follow it, see
        :class:`Writers`); returns what to call when the writer is done."""


class Fetcher(Protocol):
    schemes: tuple[str, ...]

    def validate(self, request: FetchRequest) -> None:
        """Raise BadRequest for a URL this fetcher cannot use (no network)."""

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        """Store the content in the cache."""
