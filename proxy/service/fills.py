"""The mirror's blob source: a blob the cache lacks, filled from upstream.

:class:`MirrorBlobs` starts (or joins) the single-flight fill of a blob
through the mirror (:class:`Upstream`) and answers with a
:class:`FillStream` once upstream told the blob's size. The stream reads the
bytes as they land in ``ingest/`` (or, once committed, in ``blobs/``); every
wait -- for the size, for more bytes, for the verdict -- is a Deferred fired
by the writer (:class:`proxy.fetch.base.BlobProgress`) or by the download's
end, never a polling loop. Writing HTTP is ``proxy.api.fill``'s job.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from proxy.cache.layout import Layout, blob_ingest_key
from proxy.fetch.base import BlobProgress
from proxy.service.jobs import Download
from proxy.service.sources import BlobHandle, BlobWant
from proxy.types import Digest

log = logging.getLogger(__name__)

PASS_THROUGH_GAP = 8 * 1024 * 1024  # a Range this far ahead of the fill goes to upstream
WAIT_FOR_SIZE = 30.0  # seconds a client waits for upstream to tell the size


class Upstream(Protocol):
    """What a fill needs of the mirror (:class:`proxy.service.mirror.Mirror`)."""

    def registry_for(self, ns: str | None) -> str | None:
        """The registry to fill from (None: none); raises ``Denied``."""

    def fill_blob(self, registry: str, name: str, digest: Digest) -> Download:
        """The running fill of a blob (single flight)."""

    async def pass_through(
        self, registry: str, name: str, digest: Digest, first: int, last: int
    ) -> Any:
        """An upstream response for one byte range of a blob (not cached)."""


class NoSize(Exception):
    """Upstream told no size in time: the client's connection is cut."""


class FillStream:
    """One reader of a running fill (see :class:`proxy.service.sources.GrowingBlob`)."""

    def __init__(
        self,
        mirror: Upstream,
        registry: str,
        want: BlobWant,
        job: Download,
        blob: BlobProgress | None,
        layout: Layout,
        size: int,
    ) -> None:
        self._mirror = mirror
        self._registry = registry
        self._want = want
        self._job = job
        self._blob = blob  # None: the fill was already complete
        self._layout = layout
        self._size = size
        self._fd: int | None = None
        self._more: list[Deferred[None]] = []
        self._listening = False
        job.finished().addCallback(self._changed)

    @property
    def size(self) -> int:
        return self._size

    @property
    def failed(self) -> bool:
        return self._job.state == "failed"

    def _verified(self) -> bool:
        return self._blob is None or self._blob.state == "complete"

    def readable(self) -> int:
        if self._verified():
            return self._size
        assert self._blob is not None
        return min(self._blob.written, self._size - 1)

    def read(self, offset: int, n: int) -> bytes:
        fd = self._open()
        if fd is None:
            return b""
        return os.pread(fd, n, offset)

    def _open(self) -> int | None:
        if self._fd is None:
            digest = self._want.digest
            self._fd = open_first(
                self._layout.ingest_path(blob_ingest_key(digest)) / "data",
                self._layout.blob_path(digest),
            )
        return self._fd

    def when_more(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._more.append(d)
        if not self._listening and self._blob is not None and not self._verified():
            self._listening = True
            self._blob.when_changed().addCallback(self._changed)
        return d

    def _changed(self, _: object) -> None:
        self._listening = False
        more, self._more = self._more, []
        for d in more:
            if not d.called:
                d.callback(None)

    def far_ahead(self, offset: int) -> bool:
        written = self._blob.written if self._blob is not None else self._size
        return offset > written + PASS_THROUGH_GAP

    def pass_through(self, first: int, last: int) -> Deferred[Any]:
        want = self._want
        return Deferred.fromCoroutine(
            self._mirror.pass_through(self._registry, want.name, want.digest, first, last)
        )

    def close(self) -> None:
        self._changed(None)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def open_first(*paths: os.PathLike[str] | str) -> int | None:
    """A descriptor of the first of ``paths`` that exists (a fill's ingest
    file, then the blob it was renamed to once committed); None: neither."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return None


class MirrorBlobs:
    """The upstream registry's fill of a blob, with ``--mirror``."""

    def __init__(self, mirror: Upstream, layout: Layout, clock: IReactorTime) -> None:
        self.mirror = mirror
        self.layout = layout
        self.clock = clock

    def open(self, want: BlobWant) -> Deferred[BlobHandle | None]:
        registry = self.mirror.registry_for(want.ns)  # Denied: not an upstream of ours
        if registry is None:
            return succeed(None)
        job = self.mirror.fill_blob(registry, want.name, want.digest)
        d = Deferred.fromCoroutine(self._sized(job, want.digest))
        d.addTimeout(WAIT_FOR_SIZE, self.clock, self._no_size)

        def stream(found: tuple[BlobProgress | None, int] | None) -> BlobHandle | None:
            if found is None:
                return None
            blob, size = found
            return FillStream(self.mirror, registry, want, job, blob, self.layout, size)

        return d.addCallback(stream)

    @staticmethod
    def _no_size(result: object, timeout: float) -> Any:
        raise NoSize(f"upstream told no size in {timeout:g} s")

    async def _sized(self, job: Download, digest: Digest) -> tuple[BlobProgress | None, int] | None:
        """The fill's blob and its size once upstream told it (None: the fill
        failed, or ended without the blob)."""
        while True:
            if job.state == "failed":
                return None
            blobs = job.progress.blobs
            if blobs and blobs[0].total is not None:
                return blobs[0], blobs[0].total
            if job.state == "complete":
                size = self.layout.blob_size(digest)
                return (None, size) if size is not None else None
            await first_of(
                blobs[0].when_changed() if blobs else job.progress.when_added(),
                job.finished(),
            )


def first_of(*waits: Deferred[Any]) -> Deferred[None]:
    """Fires when the first of ``waits`` does, success or failure; their
    results are passed on untouched (the others are left to fire unheard)."""
    d: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        if not d.called:
            d.callback(None)
        return result

    for w in waits:
        w.addBoth(fire)
    return d
