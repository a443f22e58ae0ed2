"""Serving a blob while the mirror is still filling it.

A :class:`FillReader` answers one client from a running fill: it waits for
the blob's size (the upstream's answer), then sends bytes as soon as they are
on disk in ``ingest/`` (or, once committed, from ``blobs/``), pausing when the
client is slow. The last byte of the blob is held back until the fill is
verified, so a digest mismatch aborts the connection instead of completing a
wrong body. A Range that starts far beyond what the fill has reached is passed
through from upstream at once rather than waiting for the fill.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout
from proxy.service.jobs import Download
from proxy.types import Digest
from proxy.web.ranges import answer_range

if TYPE_CHECKING:
    from proxy.fetch.base import BlobProgress

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
PASS_THROUGH_GAP = 8 * 1024 * 1024  # a Range this far ahead of the fill goes to upstream
WAIT_FOR_SIZE = 30.0


@implementer(IPushProducer)
class FillReader:
    def __init__(
        self,
        request: Any,
        job: Download,
        layout: Layout,
        digest: Digest,
        range_header: str | None,
        set_headers: Any,
        not_found: Any,
        pass_through: Any,
    ) -> None:
        self._request = request
        self._job = job
        self._layout = layout
        self._digest = digest
        self._range_header = range_header
        self._set_headers = set_headers  # (size) -> None: common blob headers
        self._not_found = not_found  # () -> None: answer 404 and finish
        self._pass_through = pass_through  # (first, last) -> Deferred[response]
        self._blob: BlobProgress | None = None
        self._fd: int | None = None
        self._offset = 0
        self._end = 0  # exclusive
        self._size = 0
        self._paused = False
        self._done = False
        self._remove: Any = None
        self._waited = 0.0
        from twisted.internet import reactor

        self._clock: Any = reactor
        request.notifyFinish().addBoth(lambda _: self._close())
        job.finished().addBoth(lambda _: self._pump())

    # -- waiting for the size --------------------------------------------------------

    def start(self) -> None:
        if self._job.state == "failed":
            self._not_found()
            return
        blobs = self._job.progress.blobs
        if not blobs or blobs[0].total is None:
            if self._job.state == "complete":
                self._ready(self._layout.blob_size(self._digest))
                return
            self._waited += 0.01
            if self._waited > WAIT_FOR_SIZE:
                self._abort("no size from upstream")
                return
            self._clock.callLater(0.01, self.start)
            return
        self._blob = blobs[0]
        self._ready(self._blob.total)

    def _ready(self, size: int | None) -> None:
        if size is None:
            self._not_found()
            return
        request = self._request
        self._size = size
        self._set_headers(size)
        byte_range = answer_range(request, self._range_header, size)
        if byte_range is None:  # 416
            request.write(b"")
            request.finish()
            return
        self._offset, self._end = byte_range.start, byte_range.end + 1
        if request.method == b"HEAD" or self._end == self._offset:
            request.write(b"")
            request.finish()
            self._close()
            return
        written = self._blob.written if self._blob is not None else size
        if self._offset > written + PASS_THROUGH_GAP:  # a range ahead of the fill
            self._forward(byte_range.start, byte_range.end)
            return
        if self._blob is not None:
            self._remove = self._blob.listen(self._pump)
        request.registerProducer(self, True)
        self._pump()

    # -- sending from disk -----------------------------------------------------------

    def _open(self) -> int | None:
        if self._fd is None:
            for path in (
                IngestFile(self._layout, f"sha256-{self._digest.hex}").data_path,
                self._layout.blob_path(self._digest),
            ):
                with contextlib.suppress(FileNotFoundError):
                    self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    break
        return self._fd

    def _pump(self) -> None:
        if self._done or self._paused or self._end == 0:
            return
        if self._job.state == "failed":
            # Whatever was sent, the rest will never be right: cut the connection.
            self._abort("the fill failed")
            return
        blob = self._blob
        verified = blob is None or blob.state == "complete"
        while not self._paused and self._offset < self._end:
            available = blob.written if blob is not None and not verified else self._size
            limit = self._end
            if limit == self._size and not verified:
                limit -= 1  # the last byte waits for the digest check
            n = min(available, limit) - self._offset
            if n <= 0:
                return  # more comes with the next write (listener) or the verdict
            fd = self._open()
            if fd is None:
                return
            data = os.pread(fd, min(n, CHUNK), self._offset)
            if not data:
                return
            self._offset += len(data)
            self._request.write(data)
        if self._offset >= self._end:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._close()
        self._request.unregisterProducer()
        self._request.finish()

    def _abort(self, why: str) -> None:
        log.warning("aborting a client of the fill of %s: %s", self._digest, why)
        self._done = True
        self._close()
        transport = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()

    def _close(self) -> None:
        self._done = True
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._close()

    # -- passing a range through ----------------------------------------------------

    def _forward(self, first: int, last: int) -> None:
        d = self._pass_through(first, last)

        def got(response: Any) -> None:
            expected = f"bytes {first}-{last}/{self._size}".encode()
            ranges = response.headers.getRawHeaders(b"Content-Range") or []
            if response.code != 206 or ranges[:1] != [expected]:
                response.deliverBody(_Relay(None, 0))
                self._abort(f"upstream answered {response.code} to a pass-through range")
                return
            response.deliverBody(_Relay(self._request, last - first + 1))

        d.addCallbacks(got, lambda f: self._abort(f"pass-through failed: {f.getErrorMessage()}"))


class _Relay(Protocol):
    """Copies an upstream body to a client request, exactly ``length`` bytes."""

    def __init__(self, request: Any, length: int) -> None:
        self._request = request
        self._left = length

    def dataReceived(self, data: bytes) -> None:
        if self._request is None:
            return
        if len(data) > self._left:
            self._cut()
            return
        self._left -= len(data)
        self._request.write(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._request is None or self._request.finished or self._request._disconnected:
            return
        if self._left == 0 and reason.check(ResponseDone):
            self._request.finish()
        else:
            self._cut()

    def _cut(self) -> None:
        request, self._request = self._request, None
        if request is not None and request.channel is not None:
            request.channel.transport.abortConnection()
