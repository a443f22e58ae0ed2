"""The owner's side of the cache array: a blob a peer asks for, served from
this cache, from the blob being written here now, or fetched from its
origin for the peer -- once, however many peers ask.

``GET /peer/v1/blobs/<digest>`` (``proxy.api.peers``) asks :class:`PeerBlobs`:

* a committed blob is sent as any ``/v2`` blob is;
* a blob being written now (by any download of this node: a POST, a mirror
  fill, a fill for a peer; :class:`proxy.fetch.base.Writers`) is streamed as
  it grows (:class:`GrowingFile`), its last byte held back until this node
  verified the digest;
* otherwise, when the request carries the origin request
  (:class:`proxy.service.forward.Origin`), this node fetches the blob from its
  origin as the entry ``peer-fill://<digest>`` (:class:`OriginFill`: single
  flight by digest, not queued behind this node's own downloads, so two
  nodes that wait on each other cannot deadlock), and streams it.

The origin fetch goes through this node's own HTTP client: its
``--allow-upstream`` and metadata-address rules apply to what a peer asks,
and it is never routed to another peer (one hop). The entry is evicted like
any other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout, blob_ingest_key
from proxy.fetch.base import FetchResult, Job, Writers, Writing
from proxy.fetch.transfer import HttpClient, Wanted, download
from proxy.request import FetchRequest
from proxy.service.fills import first_of, open_first
from proxy.service.forward import Origin
from proxy.service.jobs import Download
from proxy.service.sources import BlobHandle, BlobWant, LocalBlobs
from proxy.types import ANNOTATION_TITLE, MEDIA_TYPE_OCTET, Descriptor, Digest

log = logging.getLogger(__name__)

WAIT = 30.0  # seconds a peer waits for the blob's writer to start and tell its size
SCHEME = "peer-fill"


def fill_url(digest: Digest) -> str:
    """The entry a blob fetched for peers is kept as."""
    return f"{SCHEME}://{str(digest).replace(':', '/')}"


class GrowingFile:
    """A reader of a blob being written (see :class:`proxy.service.sources.GrowingBlob`)."""

    def __init__(self, writing: Writing, digest: Digest, layout: Layout, size: int) -> None:
        self._writing = writing
        self._digest = digest
        self._layout = layout
        self._size = size
        self._fd: int | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def failed(self) -> bool:
        return self._writing.ended and not self._writing.ok

    def readable(self) -> int:
        if self._writing.ok:
            return self._size
        return max(0, min(self._writing.blob.written, self._size - 1))

    def read(self, offset: int, n: int) -> bytes:
        if self._fd is None:
            self._fd = open_first(self._writing.path, self._layout.blob_path(self._digest))
            if self._fd is None:
                return b""
        return os.pread(self._fd, n, offset)

    def when_more(self) -> Deferred[None]:
        if self._writing.ended:
            return succeed(None)
        return self._writing.blob.when_changed()

    def far_ahead(self, offset: int) -> bool:
        return False  # a peer waits for the bytes: there is no upstream to pass it to

    def pass_through(self, first: int, last: int) -> Deferred[Any]:
        raise AssertionError("a peer's blob is never passed through")

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


@attrs.define
class OriginFill:
    """The fetcher of ``peer-fill://<digest>``: one blob from the origin a peer named."""

    client: HttpClient  # this node's own: its reach rules
    layout: Layout
    digest: Digest
    origin: Origin
    schemes: tuple[str, ...] = (SCHEME,)

    def validate(self, request: FetchRequest) -> None:
        pass

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(job))

    async def _fetch(self, job: Job) -> FetchResult:
        origin = self.origin
        blob = job.progress.add(self.digest.hex[:12], origin.size)
        private = origin.private()

        async def prepare(headers: dict[bytes, bytes]) -> tuple[str, dict[bytes, bytes]]:
            return origin.url, private

        want = Wanted(
            origin.url,
            authorization=origin.authorization.encode("latin-1") if origin.authorization else None,
            expected=self.digest,
            size=origin.size,
            immutable=True,  # named by its digest: the check at the end catches any mix
            name=origin.name,
            if_match=origin.if_match,
            prepare=prepare if private else None,
            via_peers=False,  # asked by a peer: one hop
        )
        ingest = IngestFile(self.layout, blob_ingest_key(self.digest))
        digest, size = await download(self.client, ingest, want, job, blob)
        desc = Descriptor(MEDIA_TYPE_OCTET, digest, size, {ANNOTATION_TITLE: str(digest)})
        return FetchResult(files=(desc,), primary=desc, kind="blob")


class PeerBlobs:
    """A peer's blob: committed, being written, or fetched for it (see the module)."""

    def __init__(
        self,
        writers: Writers,
        local: LocalBlobs,
        start_fill: Callable[[Digest, Origin], Download],
        clock: IReactorTime,
    ) -> None:
        self.writers = writers
        self.local = local
        self.start_fill = start_fill
        self.clock = clock

    def open(self, want: BlobWant) -> Deferred[BlobHandle | None]:
        d = Deferred.fromCoroutine(self._open(want))
        return d.addTimeout(WAIT, self.clock)

    async def _open(self, want: BlobWant) -> BlobHandle | None:
        digest = want.digest
        fill: Download | None = None
        ended: list[Any] = []  # the fill's outcome, once it has one
        while True:
            handle = await self.local.open(want)
            if handle is not None:
                return handle
            writing = self.writers.get(digest)
            if writing is not None:
                size = writing.blob.total
                if size is None and want.origin is not None:
                    size = want.origin.size
                if size is not None:
                    return GrowingFile(writing, digest, self.local.layout, size)
                await writing.blob.when_changed()  # until the origin tells the size
                continue
            if want.origin is None:
                return None
            if fill is None:
                fill = self.start_fill(digest, want.origin)
                fill.wait().addBoth(ended.append)
            elif ended:
                if isinstance(ended[0], Failure):
                    ended[0].raiseException()  # its failure is the answer
                return await self.local.open(want)  # committed (None: evicted at once)
            started = self.writers.when_started(digest)
            try:
                await first_of(started, fill.finished())
            finally:
                self.writers.forget_waiter(digest, started)
