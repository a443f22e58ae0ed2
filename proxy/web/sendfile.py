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
from typing import Any

from twisted.internet.interfaces import IPullProducer
from twisted.internet.threads import deferToThreadPool
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


def send_blob(request: Any, fd: int, offset: int, length: int, pool: ThreadPool) -> None:
    """Send a byte range of ``fd`` as the body of ``request`` and finish it.

    Large bodies go out with ``sendfile(2)`` from a worker thread once the
    headers have left Twisted's buffer (the socket is ``dup``'d so a
    connection closed meanwhile can never redirect the bytes elsewhere);
    small ones, and transports without a socket, use the pull producer.
    """
    transport: Any = request.channel.transport if request.channel is not None else None
    handle = getattr(transport, "socket", None)
    # Slow clients may hold sendfile workers; when none is free, stream from
    # the reactor instead of queueing behind them.
    busy = len(pool.working) >= pool.max
    if busy or length < SENDFILE_MIN or handle is None or transport_drained(transport) is None:
        if length < SENDFILE_MIN and length > 0:
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
            if len(data) != length:
                transport.abortConnection()
                return
            request.write(data)
            request.finish()
            return
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
    from twisted.internet import reactor

    clock: Any = reactor
    deadline = [0.0]

    def done(result: int | Failure) -> None:
        os.close(sock_fd)
        os.close(fd)
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
            transport.abortConnection()
            return
        request.sentLength += result
        request.finish()

    def go() -> None:
        if request._disconnected:
            done(0)
            return
        if not transport_drained(transport):
            deadline[0] += 0.001
            if deadline[0] > STALL_TIMEOUT:
                done(Failure(TimeoutError("headers not taken")))
                return
            clock.callLater(0.001, go)
            return
        # First try without blocking, from here: a range that fits the socket
        # buffer leaves at once, with no thread hop (most nydusd reads).
        try:
            sent = os.sendfile(sock_fd, fd, offset, length)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            done(Failure(e))
            return
        if sent == length:
            done(sent)
            return

        def rest(n: int | Failure) -> None:
            done(n if isinstance(n, Failure) else sent + n)

        d = deferToThreadPool(clock, pool, _sendfile_all, sock_fd, fd, offset + sent, length - sent)
        d.addBoth(rest)

    go()
