"""Serving a blob while a fill is still writing it: the HTTP side.

A :class:`FillWriter` answers one client from a
:class:`proxy.service.sources.GrowingBlob` (the service side of a fill): it
sends bytes as soon as the stream has them, pausing when the client is slow
and waiting on the stream's Deferred when it has nothing new. The stream holds
the last byte back until the fill is verified, so a digest mismatch aborts
the connection instead of completing a wrong body. A Range that starts far
beyond what the fill has reached is passed through from upstream at once
rather than waiting for the fill.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from proxy.service.sources import GrowingBlob
from proxy.web.ranges import ByteRange

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


@implementer(IPushProducer)
class FillWriter:
    """Writes bytes ``byte_range`` of a growing blob to ``request``, then finishes it
    (the headers are already set)."""

    def __init__(self, request: Any, stream: GrowingBlob, byte_range: ByteRange, what: str) -> None:
        self._request = request
        self._stream = stream
        self._what = what  # for the log
        self._first, self._last = byte_range.start, byte_range.end
        self._offset = byte_range.start
        self._end = byte_range.end + 1  # exclusive
        self._paused = False
        self._waiting = False
        self._done = False
        request.notifyFinish().addBoth(self._gone)

    def start(self) -> None:
        if self._stream.far_ahead(self._offset):
            self._forward()
            return
        self._request.registerProducer(self, True)
        self._pump()

    def _pump(self, _: object = None) -> None:
        self._waiting = False
        if self._done or self._paused:
            return
        stream = self._stream
        if stream.failed:
            # Whatever was sent, the rest will never be right: cut the connection.
            self._abort("the fill failed")
            return
        while not self._paused and self._offset < self._end:
            n = min(stream.readable(), self._end) - self._offset
            data = stream.read(self._offset, min(n, CHUNK)) if n > 0 else b""
            if not data:
                # More comes with the writer's next write, its verdict, or the end.
                if not self._waiting:
                    self._waiting = True
                    stream.when_more().addCallback(self._pump)
                return
            self._offset += len(data)
            self._request.write(data)
        if self._offset >= self._end:
            self._done = True
            self._stream.close()
            self._request.unregisterProducer()
            self._request.finish()

    def _abort(self, why: str) -> None:
        log.warning("aborting a client of the fill of %s: %s", self._what, why)
        self._done = True
        self._stream.close()
        transport = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()

    def _gone(self, _: object) -> None:
        self._done = True
        self._stream.close()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._gone(None)

    # -- passing a range through ----------------------------------------------------

    def _forward(self) -> None:
        first, last = self._first, self._last
        size = self._stream.size
        self._stream.close()
        d = self._stream.pass_through(first, last)

        def got(response: Any) -> None:
            expected = f"bytes {first}-{last}/{size}".encode()
            ranges = response.headers.getRawHeaders(b"Content-Range") or []
            if response.code != 206 or ranges[:1] != [expected]:
                response.deliverBody(_Relay(None, 0))
                self._abort(f"upstream answered {response.code} to a pass-through range")
                return
            response.deliverBody(_Relay(self._request, last - first + 1))

        def failed(f: Failure) -> None:
            self._abort(f"pass-through failed: {f.getErrorMessage()}")

        d.addCallbacks(got, failed)


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
