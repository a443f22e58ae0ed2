"""Blob sources: where ``/v2`` finds a blob, as one chain.

``/v2`` asks one :class:`BlobSource` for a digest and never knows where the
answer comes from (distribution's ``proxyBlobStore`` implements the local
store's interface the same way). A source answers with a :class:`BlobHandle`:

* a :class:`StoredBlob`, a committed file (an open descriptor and its size),
  which the HTTP layer sends with ``sendfile(2)``;
* a :class:`GrowingBlob`, a fill still being written: its size, the bytes
  readable so far, and a Deferred the writer fires when there are more.

Sources, tried in order by a :class:`Chain` (built in ``proxy.server``):

* :class:`LocalBlobs`, the cache's ``blobs/`` (this module);
* the upstream registry's fill with ``--mirror`` (``proxy.service.fills``).

A new source (a peer, a shared store) is one class with :meth:`BlobSource.open`
and one line in ``proxy.server``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed

from proxy.cache.catalog import Catalog
from proxy.cache.layout import Layout
from proxy.service.forward import Origin
from proxy.types import Digest


@attrs.frozen
class BlobWant:
    """What a client asked for: a blob by digest, under a repository name, from
    the registry ``ns`` names (None: the default upstream, if any)."""

    digest: Digest
    name: str
    ns: str | None = None
    # A peer's request for a blob its owner may fetch from the origin (the cache array).
    origin: Origin | None = None


def _nothing() -> None:
    pass


@attrs.define(eq=False)
class StoredBlob:
    """A committed blob: ``fd`` is open for reading (the receiver closes it)
    and ``size`` is its length; :meth:`release` ends the hold that keeps it
    from eviction while it is sent."""

    fd: int
    size: int
    _release: Callable[[], None] = attrs.field(default=_nothing, repr=False)

    def release(self) -> None:
        release, self._release = self._release, _nothing
        release()


class GrowingBlob(Protocol):
    """A blob still being written by a fill; read it as it grows."""

    @property
    def size(self) -> int:
        """The blob's length (known before a handle is given out)."""

    @property
    def failed(self) -> bool:
        """The fill failed: whatever was read, the rest never comes."""

    def readable(self) -> int:
        """How many bytes from the start may be read now. The last byte is
        only readable once the fill is verified, so a digest mismatch can
        never complete a wrong body."""

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (below :meth:`readable`); b"" when
        the file cannot be read now."""

    def when_more(self) -> Deferred[None]:
        """Fires when the writer wrote more, was verified, or the fill ended."""

    def far_ahead(self, offset: int) -> bool:
        """Whether ``offset`` is so far beyond what is written that asking
        upstream for the range directly beats waiting."""

    def pass_through(self, first: int, last: int) -> Deferred[Any]:
        """An upstream response (body unread) for bytes ``first..last``."""

    def close(self) -> None:
        """Let go of the file (the reader is done)."""


BlobHandle = StoredBlob | GrowingBlob


class BlobSource(Protocol):
    """Something that may have a blob."""

    def open(self, want: BlobWant) -> Deferred[BlobHandle | None]:
        """The blob, or None when this source does not have it. Errors (a
        registry this server may not fill from, a fill that gave no size)
        errback."""


class LocalBlobs:
    """The cache's committed blobs (``blobs/``); a hit counts as a use of
    every entry holding the blob and is not evicted while it is sent."""

    def __init__(self, layout: Layout, catalog: Catalog) -> None:
        self.layout = layout
        self.catalog = catalog

    def open(self, want: BlobWant) -> Deferred[BlobHandle | None]:
        # One open and fstat on the reactor, as a small read does.
        try:
            fd = os.open(self.layout.blob_path(want.digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return succeed(None)
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self.catalog.touch_blob(want.digest.hex)
        return succeed(StoredBlob(fd, size, self.catalog.reading(want.digest.hex)))


@attrs.frozen
class Chain:
    """Sources tried in order: the first that has the blob answers."""

    sources: Sequence[BlobSource]

    def open(self, want: BlobWant) -> Deferred[BlobHandle | None]:
        return Deferred.fromCoroutine(self._open(want))

    async def _open(self, want: BlobWant) -> BlobHandle | None:
        for source in self.sources:
            handle = await source.open(want)
            if handle is not None:
                return handle
        return None
