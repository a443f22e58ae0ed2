"""Stream one HTTP response body into an ingest file.

Shared by every downloader that receives a blob over HTTP: the body is fed
to an :class:`IngestSink` (writes and hashing happen in worker threads),
reading pauses while the disk is behind, and an idle timer aborts a body that
stops flowing. A large body of known length on plain TCP is received by a
:class:`~proxy.fetch.socketbody.SocketPump` instead, off the reactor, once the
bytes Twisted already read are in the sink.
"""

from __future__ import annotations

import logging
import socket
import threading
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
from proxy.fetch.socketbody import MIN_BODY, BodyCut, SocketPump, plain_tcp

# Bytes asked of the socket per read while a body streams (Twisted reads 64 KiB):
# fewer, larger reads cost the reactor thread less per byte.
RECV_SIZE = 1024 * 1024


__all__ = ["BodyCut", "stream_body"]

log = logging.getLogger(__name__)


def _in_own_thread(threads: IReactorThreads, f: Callable[[], None]) -> Deferred[None]:
    """Run ``f`` in a new thread; its result arrives on the reactor."""
    d: Deferred[None] = Deferred()

    def run() -> None:
        try:
            f()
        except BaseException as e:  # every failure goes to the Deferred
            failure = Failure(e)
            threads.callFromThread(d.errback, failure)
        else:
            threads.callFromThread(d.callback, None)

    threading.Thread(target=run, name="body-receive", daemon=True).start()
    return d


class _BodyReceiver(Protocol):
    def __init__(
        self,
        clock: IReactorTime,
        threads: IReactorThreads,
        ingest: IngestFile,
        idle_timeout: float,
        on_bytes: Callable[[int], None],
        on_written: Callable[[int], None] | None = None,
        length: int | None = None,
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
        self._length = length  # of the body, when the response said
        self._received = 0
        self._lost = False
        self._pump: SocketPump | None = None  # once the socket is taken over
        self._takeover: Any = None  # the TCP connection it will be taken from
        self._aborted = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self._aborted:  # cancelled before the body began
            transport.stopProducing()
        # The TCP connection behind the response's transport proxy, if it is one.
        connection: Any = getattr(transport, "_producer", None)
        size = getattr(connection, "bufferSize", None)
        if isinstance(size, int) and size < RECV_SIZE:
            self._connection, self._buffer_size = connection, size
            connection.bufferSize = RECV_SIZE
        self.sink = IngestSink(
            self._threads, self._ingest, transport.pauseProducing, self._resume, self._on_written
        )
        sock = plain_tcp(connection)
        if not self._aborted and self._length is not None and self._length >= MIN_BODY and sock:
            # Once deliverBody has delivered the bytes Twisted read already (right
            # after this), the socket is taken over.
            self._clock.callLater(0, self._take_over, connection, sock)
        self._arm()

    def _resume(self) -> None:
        if self._takeover is None:  # else the reactor must not read this socket again
            transport: Any = self.transport
            transport.resumeProducing()

    def _take_over(self, connection: Any, sock: socket.socket) -> None:
        assert self.sink is not None and self._length is not None
        if self._lost or self._aborted or self.done.called:
            return
        if connection.disconnecting or connection.disconnected:
            return  # being closed (loseConnection waits for the next write event)
        remaining = self._length - self._received
        if remaining < MIN_BODY // 2 or self.sink.failed is not None:
            return  # not worth it (or not possible): Twisted finishes the body
        # Not inside a read of Twisted's now: once paused, no byte is read but by the pump
        # (and the sink, when it catches up, must not resume the reading).
        self._takeover = connection
        transport: Any = self.transport
        transport.pauseProducing()
        log.debug("receiving the last %d bytes of the body off the reactor", remaining)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()  # the socket's own timeout from now on

        def report(n: int, written: int) -> None:
            self._threads.callFromThread(self._progress, n, written)

        pump = SocketPump(sock, self._ingest, remaining, self._idle_timeout, report)
        self._pump = pump
        # The sink's threads first finish what was delivered; then the pump's take over.
        self.sink.drain().addCallback(self._start_pump, pump).addBoth(self._pumped)

    def _start_pump(self, _: None, pump: SocketPump) -> Deferred[None]:
        assert self.sink is not None
        if self.sink.failed is not None:
            self.sink.failed.raiseException()
        return _in_own_thread(self._threads, pump.run)

    def _progress(self, n: int, written: int) -> None:
        self._on_bytes(n)
        if self._on_written is not None:
            self._on_written(written)

    def _pumped(self, result: object) -> None:
        # Twisted's parser never saw the rest of the body: the connection goes.
        connection, self._takeover = self._takeover, None
        self._connection = None
        if connection is not None:
            connection.abortConnection()
        if self.done.called:
            return
        if isinstance(result, Failure):
            self.done.errback(result)
        else:
            self.done.callback(True)

    def _arm(self) -> None:
        if self._pump is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        else:
            self._timer = self._clock.callLater(self._idle_timeout, self._idle)

    def _idle(self) -> None:
        self._timed_out = True
        self.abort()

    def abort(self) -> None:
        self._aborted = True
        if self._pump is not None:
            self._pump.cancel()
            return
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _cancel(self, _: Deferred[bool]) -> None:
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        assert self.sink is not None
        if self._takeover is not None:  # never: the reading is paused for good
            self.abort()
            raise RuntimeError("body data from Twisted after the socket was taken over")
        self._received += len(data)
        self.sink.write(data)
        if self.sink.failed is not None:
            self.abort()
            return
        self._on_bytes(len(data))
        self._arm()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._lost = True
        if self._connection is not None:
            # The connection may serve other requests now: their reads as before.
            self._connection.bufferSize = self._buffer_size
            self._connection = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._pump is not None:
            return  # the pump's end settles it (this is the abort after it)
        self._takeover = None
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
    length = getattr(response, "length", None)
    receiver = _BodyReceiver(
        clock,
        threads,
        ingest,
        idle_timeout,
        on_bytes,
        on_written,
        length if isinstance(length, int) else None,
    )
    remove = abortable(receiver.abort)
    response.deliverBody(receiver)

    def unregister(result: bool) -> bool:
        remove()
        return result

    return receiver.done.addBoth(unregister)
