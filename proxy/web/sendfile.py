"""Sending blob bytes: a pull producer over an open file descriptor.

The transport asks for more only when its buffer has drained, so a slow
client never makes the server read ahead; at most :data:`CHUNK` bytes of a
blob are in memory per connection. The file stays open until the answer is
done, so a blob removed meanwhile (``unlink``) is still sent whole.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from typing import Any

from twisted.internet.interfaces import IPullProducer, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

CHUNK = 256 * 1024


@implementer(IPullProducer)
class FileRangeProducer:
    """Writes ``length`` bytes of ``fd`` from ``offset`` to a request, then finishes it."""

    def __init__(self, request: Any, fd: int, offset: int, length: int) -> None:
        self._request = request
        self._fd: int | None = fd
        self._offset = offset
        self._remaining = length
        request.notifyFinish().addBoth(lambda _: self._close())

    def start(self) -> None:
        if self._remaining == 0:
            self._close()
            self._request.finish()
            return
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._fd is None:
            return
        data = os.pread(self._fd, min(CHUNK, self._remaining), self._offset)
        if not data:
            # The file is shorter than it was: never let a short body pass as complete.
            self._close()
            self._request.unregisterProducer()
            self._request.channel.transport.abortConnection()
            return
        self._offset += len(data)
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining == 0:
            self._close()
            self._request.unregisterProducer()
            self._request.finish()

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


# -- zero-copy path ------------------------------------------------------------

SENDFILE_MIN = 256 * 1024  # smaller answers: one pread and write is cheaper than a thread hop
STALL_TIMEOUT = 60.0  # a client that takes nothing for this long is dropped


def plain_socket(transport: Any) -> socket.socket | None:
    """The socket under a plain TCP (or Unix) transport, which bytes may be
    written to directly; None otherwise. Above all None for TLS: a wrapping
    protocol (TLSMemoryBIOProtocol is one) hands attribute lookups down to the
    TCP transport under it, so a lookup of ``socket`` there would write
    plaintext past the TLS layer."""
    if isinstance(transport, ProtocolWrapper):
        return None
    sock = getattr(transport, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def transport_drained(transport: Any) -> bool | None:
    """Whether Twisted's write buffer is empty (None: cannot tell)."""
    try:
        pending = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return None
    return bool(pending == 0)


def _sendfile_all(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Blocking: send ``count`` bytes of ``file_fd`` to a non-blocking socket."""
    sent = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            n = -1
        if n == 0:
            raise OSError("file ended before the blob did")
        if n > 0:
            sent += n
            continue
        events = poller.poll(STALL_TIMEOUT * 1000)
        if not events:
            raise TimeoutError("client took no data")
        if any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events):
            raise ConnectionError("client went away")
    return sent


class BlobSender:
    """Sends byte ranges of open files as response bodies (see :meth:`send`).

    ``clock`` times the wait for the headers to leave; ``threads`` is the
    reactor the sendfile workers report back to (both the reactor in the
    server, a :class:`twisted.internet.task.Clock` and a fake in tests).
    """

    def __init__(self, clock: IReactorTime, threads: IReactorFromThreads, pool: ThreadPool) -> None:
        self.clock = clock
        self.threads = threads
        self.pool = pool  # sendfile(2) workers

    def send(self, request: Any, fd: int, offset: int, length: int) -> None:
        """Send a byte range of ``fd`` as the body of ``request`` and finish it
        (``fd`` is closed when done).

        Large bodies go out with ``sendfile(2)`` from a worker thread once the
        headers have left Twisted's buffer (the socket is ``dup``'d so a
        connection closed meanwhile can never redirect the bytes elsewhere);
        small ones, and transports without a socket, use the pull producer.
        """
        transport: Any = request.channel.transport if request.channel is not None else None
        if length < SENDFILE_MIN and length > 0:
            _send_small(request, transport, fd, offset, length)
            return
        handle = plain_socket(transport)
        # Slow clients may hold sendfile workers; when none is free, stream from
        # the reactor instead of queueing behind them.
        busy = len(self.pool.working) >= self.pool.max
        if busy or length < SENDFILE_MIN or handle is None or transport_drained(transport) is None:
            FileRangeProducer(request, fd, offset, length).start()
            return
        request.write(b"")  # the headers, into Twisted's buffer
        transport.doWrite()
        try:
            sock_fd = os.dup(handle.fileno())
        except OSError:
            os.close(fd)
            transport.abortConnection()
            return
        _Sendfile(self, request, transport, sock_fd, fd, offset, length).start()


def _send_small(request: Any, transport: Any, fd: int, offset: int, length: int) -> None:
    """One pread and one write: cheaper than a thread hop for a small body."""
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        transport.abortConnection()
        return
    request.write(data)
    request.finish()


HEADERS_POLL = 0.001  # how often to look whether the headers have left


class _Sendfile:
    """One zero-copy answer: wait for the headers to leave, try sendfile on
    the reactor without blocking, send the rest from a worker thread."""

    def __init__(
        self,
        sender: BlobSender,
        request: Any,
        transport: Any,
        sock_fd: int,
        fd: int,
        offset: int,
        length: int,
    ) -> None:
        self._sender = sender
        self._request = request
        self._transport = transport
        self._sock_fd = sock_fd
        self._fd = fd
        self._offset = offset
        self._length = length
        self._deadline = sender.clock.seconds() + STALL_TIMEOUT

    def start(self) -> None:
        request, transport = self._request, self._transport
        if request._disconnected:
            self._done(0)
            return
        if not transport_drained(transport):
            # Twisted tells nothing when its buffer empties: look again soon,
            # until a real deadline.
            if self._sender.clock.seconds() >= self._deadline:
                self._done(Failure(TimeoutError("headers not taken")))
                return
            self._sender.clock.callLater(HEADERS_POLL, self.start)
            return
        self._try_now()

    def _try_now(self) -> None:
        """First try without blocking, from here: a range that fits the socket
        buffer leaves at once, with no thread hop (most nydusd reads)."""
        try:
            sent = os.sendfile(self._sock_fd, self._fd, self._offset, self._length)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._done(Failure(e))
            return
        if sent == self._length:
            self._done(sent)
            return

        def rest(n: int | Failure) -> None:
            self._done(n if isinstance(n, Failure) else sent + n)

        sender = self._sender
        d = deferToThreadPool(
            sender.threads,
            sender.pool,
            _sendfile_all,
            self._sock_fd,
            self._fd,
            self._offset + sent,
            self._length - sent,
        )
        d.addBoth(rest)

    def _done(self, result: int | Failure) -> None:
        os.close(self._sock_fd)
        os.close(self._fd)
        request = self._request
        if request.finished:
            return
        if request._disconnected:
            # The client hung up after (or while) taking the body: there is no
            # finish() to log the request, so log it here, with what was sent.
            site = getattr(request, "site", None)
            if site is not None and not isinstance(result, Failure):
                request.sentLength += result
                site.log(request)
            return
        if isinstance(result, Failure):
            self._transport.abortConnection()
            return
        request.sentLength += result
        request.finish()
