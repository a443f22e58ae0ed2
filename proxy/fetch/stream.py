"""Stream one HTTP response body into an ingest file.

Shared by every downloader that receives a blob over HTTP: the body is fed
to an :class:`IngestSink` (writes and hashing happen in a worker thread),
reading pauses while the disk is behind, and an idle timer aborts a body that
stops flowing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from proxy.cache.ingest import IngestFile, IngestSink
from proxy.errors import UpstreamTimeout

# Bytes asked of the socket per read while a body streams (Twisted reads 64 KiB):
# fewer, larger reads cost the reactor thread less per byte.
RECV_SIZE = 1024 * 1024


class BodyCut(Exception):
    """The body ended before it was complete (connection lost, reset)."""


class _BodyReceiver(Protocol):
    def __init__(
        self,
        clock: IReactorTime,
        threads: IReactorThreads,
        ingest: IngestFile,
        idle_timeout: float,
        on_bytes: Callable[[int], None],
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self._on_written = on_written
        self.done: Deferred[bool] = Deferred(self._cancel)
        self._clock = clock
        self._threads = threads
        self._ingest = ingest
        self._idle_timeout = idle_timeout
        self._on_bytes = on_bytes
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self.sink: IngestSink | None = None
        self._connection: Any = None
        self._buffer_size = 0

    def connectionMade(self) -> None:
        transport: Any = self.transport
        # The TCP connection behind the response's transport proxy, if it is one.
        connection: Any = getattr(transport, "_producer", None)
        size = getattr(connection, "bufferSize", None)
        if isinstance(size, int) and size < RECV_SIZE:
            self._connection, self._buffer_size = connection, size
            connection.bufferSize = RECV_SIZE
        self.sink = IngestSink(
            self._threads,
            self._ingest,
            transport.pauseProducing,
            transport.resumeProducing,
            self._on_written,
        )
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        else:
            self._timer = self._clock.callLater(self._idle_timeout, self._idle)

    def _idle(self) -> None:
        self._timed_out = True
        self.abort()

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _cancel(self, _: Deferred[bool]) -> None:
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        assert self.sink is not None
        self.sink.write(data)
        if self.sink.failed is not None:
            self.abort()
            return
        self._on_bytes(len(data))
        self._arm()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._connection is not None:
            # The connection may serve other requests now: their reads as before.
            self._connection.bufferSize = self._buffer_size
            self._connection = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        assert self.sink is not None
        sink = self.sink
        complete = reason.check(ResponseDone, PotentialDataLoss) is not None
        exact = reason.check(ResponseDone) is not None

        def settled(_: None) -> None:
            if self.done.called:
                return
            if sink.failed is not None:
                self.done.errback(sink.failed)
            elif self._timed_out:
                self.done.errback(UpstreamTimeout(f"no data for {self._idle_timeout:g} s"))
            elif complete:
                self.done.callback(exact)
            else:
                self.done.errback(BodyCut(reason.getErrorMessage()))

        sink.drain().addCallback(settled)


def stream_body(
    response: Any,
    clock: IReactorTime,
    threads: IReactorThreads,
    ingest: IngestFile,
    idle_timeout: float,
    on_bytes: Callable[[int], None],
    abortable: Callable[[Callable[[], None]], Callable[[], None]],
    on_written: Callable[[int], None] | None = None,
) -> Deferred[bool]:
    """Deliver ``response``'s body into ``ingest``; fire with True when the
    body ended as framed (Content-Length or chunked), False when it ended by
    connection close without framing; errback with :class:`BodyCut`,
    :class:`UpstreamTimeout` or a disk error. Every byte delivered is on its
    way to disk when this fires."""
    receiver = _BodyReceiver(clock, threads, ingest, idle_timeout, on_bytes, on_written)
    remove = abortable(receiver.abort)
    response.deliverBody(receiver)

    def unregister(result: bool) -> bool:
        remove()
        return result

    return receiver.done.addBoth(unregister)
