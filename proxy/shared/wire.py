"""Requests to the shared store: streamed bodies out, streamed answers in.

Requests without a body (HEAD, GET, DELETE, listings) go through the
fetchers' :class:`~proxy.fetch.transfer.HttpClient` (reach rules, proxies,
timeouts, retries of :func:`proxy.fetch.objects.small_request`). That client
sends no request body, so a :class:`Sender` sends the ones that have one
(PUT, POST) through an :class:`~proxy.fetch.outbound.OutboundAgent` made with
the same reach policy and proxies: a body is a :class:`FileBody` (a range of
a file, read in threads one chunk at a time, paused when the connection is
behind) or a :class:`BytesBody` (a small document), so memory stays at a
chunk or two whatever the file's size. Nothing is redirected: an object
store that answers a write with a redirect is answered with an error.

An answer's body is delivered to a :class:`Sink` by :func:`receive`: each
chunk is handed over as it comes, and a sink that returns an unfired
Deferred pauses the connection until it fires (:class:`FileSink` writes at
an offset of a file, in threads).

Store requests made outside any download run under a :class:`Detached` job:
it can be cancelled (every request in flight is aborted) and stores nothing
in the cache.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, FirstError, succeed
from twisted.internet.interfaces import IConsumer, IReactorThreads, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from proxy.cache.ingest import IngestFile
from proxy.errors import (
    Cancelled,
    StorageError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.fetch.base import BlobProgress, Job, Progress
from proxy.fetch.transfer import USER_AGENT, HttpClient, Retryable, gave_up
from proxy.threads import in_thread
from proxy.types import Digest

CHUNK = 1024 * 1024  # bytes read from a file, or buffered by a FileSink, at a time


class Detached:
    """The :class:`~proxy.fetch.base.Job` of store requests made outside a
    download: cancellable, and storing nothing in the cache."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.cancelled = False
        self._aborts: dict[int, Callable[[], None]] = {}
        self._next = 0

    def abortable(self, abort: Callable[[], None]) -> Callable[[], None]:
        self._next += 1
        key = self._next
        self._aborts[key] = abort

        def remove() -> None:
            self._aborts.pop(key, None)

        return remove

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled("shared-store request cancelled")

    def cancel(self) -> None:
        self.cancelled = True
        for abort in list(self._aborts.values()):
            abort()
        self._aborts.clear()

    def _nothing(self, what: str) -> StorageError:
        return StorageError(f"a shared-store request does not {what}")

    def commit(self, ingest: IngestFile, digest: Digest) -> Deferred[None]:
        raise self._nothing("commit blobs")

    def hold_existing(self, digest: Digest) -> Deferred[int | None]:
        return succeed(None)

    def put_blob(self, data: bytes) -> Deferred[Digest]:
        raise self._nothing("store blobs")

    def after_commit(self, cleanup: Callable[[], None]) -> None:
        raise self._nothing("commit blobs")

    def ingest_lock(self, key: str) -> DeferredLock:
        raise self._nothing("write ingest files")

    def reserve(self, nbytes: int) -> Deferred[None]:
        raise self._nothing("reserve cache space")

    def writing(self, digest: Digest, blob: BlobProgress, path: Path) -> Callable[[], None]:
        raise self._nothing("write blobs")


@implementer(IBodyProducer)
class BytesBody:
    """A small request body held in memory (a record, a lease, a block list)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self.data:
            consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _read_at(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


@implementer(IBodyProducer)
class FileBody:
    """``length`` bytes of the file at ``path`` from ``offset``, read in threads
    a chunk at a time; ``on_progress`` is called after each chunk is written."""

    def __init__(
        self,
        threads: IReactorThreads,
        path: str,
        offset: int,
        length: int,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.threads = threads
        self.path = path
        self.offset = offset
        self.length = length
        self.on_progress = on_progress
        self._paused: Deferred[None] | None = None
        self._stopped = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        return Deferred.fromCoroutine(self._produce(consumer))

    async def _produce(self, consumer: IConsumer) -> None:
        sent = 0
        while sent < self.length:
            if self._stopped:
                return
            if self._paused is not None:
                await self._paused
                continue
            want = min(CHUNK, self.length - sent)
            data = await in_thread(self.threads, _read_at, self.path, self.offset + sent, want)
            if self._stopped:
                return
            if len(data) != want:
                raise UpstreamError(f"{self.path} is shorter than the {self.length} bytes to send")
            consumer.write(data)
            sent += len(data)
            self.on_progress()

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()


class Sender:
    """Sends requests that carry a body (see the module docstring)."""

    def __init__(self, client: HttpClient, agent: IAgent) -> None:
        self.client = client
        self.agent = agent

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[bytes, bytes],
        body: IBodyProducer | None,
        job: Job,
    ) -> Any:
        """One request; its response (any status). Cuts and a server that
        stops answering for the idle timeout are :class:`Retryable`."""
        h = Headers({b"User-Agent": [USER_AGENT]})
        for k, v in headers.items():
            if k.lower() not in (b"content-length", b"expect", b"host"):
                h.setRawHeaders(k, [v])
        parts = urlsplit(url)
        self.client.policy.check_host(parts.hostname or "", parts.port)
        reactor = self.client.reactor
        idle = self.client.options.idle_timeout
        expired: list[bool] = []
        d = self.agent.request(method.encode(), url.encode(), h, body)
        remove = job.abortable(d.cancel)

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = reactor.callLater(idle, expire)
        if isinstance(body, FileBody):
            previous = body.on_progress

            def progressed() -> None:
                previous()
                if timer.active():
                    timer.reset(idle)

            body.on_progress = progressed
        try:
            return await d
        except StorageError:
            raise
        except Exception as e:
            job.check_cancelled()
            if expired:
                raise Retryable(
                    UpstreamTimeout(f"{parts.netloc}: no answer for {idle:g} s")
                ) from None
            cause: BaseException = e
            if isinstance(e, ResponseFailed) and e.reasons:
                cause = e.reasons[0].value
            if isinstance(cause, StorageError):
                raise cause from None
            raise Retryable(UpstreamUnreachable(f"{parts.netloc}: {cause}")) from None
        finally:
            if timer.active():
                timer.cancel()
            remove()

    async def retrying(
        self,
        prepare: Callable[[], Awaitable[tuple[str, str, dict[bytes, bytes], IBodyProducer | None]]],
        job: Job,
    ) -> Any:
        """A request with a body, prepared anew (signed, its body reopened) for
        each attempt; retried on cuts, 5xx and 429; its final response."""
        attempts = self.client.options.attempts
        for attempt in range(attempts):
            method, url, headers, body = await prepare()
            try:
                response = await self.send(method, url, headers, body, job)
            except Retryable as r:
                if attempt == attempts - 1:
                    raise gave_up(r.cause, attempts) from None
            else:
                if (response.code < 500 and response.code != 429) or attempt == attempts - 1:
                    return response
                self.client.discard(response)
            await self.client.sleep(self.client.options.pause(attempt), job)
        raise AssertionError("unreachable")


class Sink(Protocol):
    """Where :func:`receive` puts an answer's body."""

    def write(self, data: bytes) -> Deferred[None] | None:
        """Take ``data``; an unfired Deferred pauses the body until it fires."""


class _Receiver(TwistedProtocol):
    def __init__(self, clock: IReactorTime, idle: float, sink: Sink, limit: int) -> None:
        self.done: Deferred[int] = Deferred()
        self.received = 0
        self._clock = clock
        self._idle = idle
        self._sink = sink
        self._limit = limit
        self._timer: Any = None
        self._failure: Failure | None = None
        self._waiting = False

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle, self._expire)

    def _expire(self) -> None:
        self._fail(Failure(UpstreamTimeout(f"no data for {self._idle:g} s")))

    def _fail(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self.received += len(data)
        if self.received > self._limit:
            self._fail(Failure(UpstreamError(f"answer longer than the {self._limit} bytes asked")))
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)
        try:
            d = self._sink.write(data)
        except Exception:
            self._fail(Failure())
            return
        if d is not None and not d.called:
            transport: Any = self.transport
            transport.pauseProducing()
            self._waiting = True
            if self._timer is not None and self._timer.active():
                self._timer.cancel()

            def written(result: object) -> object:
                self._waiting = False
                if isinstance(result, Failure):
                    self._fail(result)
                    return None
                self._timer = self._clock.callLater(self._idle, self._expire)
                transport.resumeProducing()
                return None

            d.addBoth(written)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._failure is not None:
            self.done.errback(self._failure)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(self.received)
        else:
            self.done.errback(
                Failure(Retryable(UpstreamUnreachable(f"body cut: {reason.getErrorMessage()}")))
            )


async def receive(client: HttpClient, response: Any, sink: Sink, limit: int) -> int:
    """Deliver ``response``'s body to ``sink``; the number of bytes (at most
    ``limit``, else an error). A cut is :class:`Retryable`."""
    receiver = _Receiver(client.reactor, client.options.idle_timeout, sink, limit)
    response.deliverBody(receiver)
    got: int = await receiver.done
    return got


def _write_at(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    finally:
        os.close(fd)


class FileSink:
    """Writes what it is given at ``offset`` onward of the file ``path``
    (created if missing), in threads, buffering at most about a chunk; call
    :meth:`flush` after the last write."""

    def __init__(self, threads: IReactorThreads, path: str, offset: int = 0) -> None:
        self.threads = threads
        self.path = path
        self.offset = offset
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._writing: list[Deferred[None]] = []  # writes in threads, not yet done

    def write(self, data: bytes) -> Deferred[None] | None:
        self._buffer.append(data)
        self._buffered += len(data)
        return self._write_out() if self._buffered >= CHUNK else None

    def _write_out(self) -> Deferred[None]:
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        at = self.offset
        self.offset += len(data)
        if not data:
            return succeed(None)
        d = in_thread(self.threads, _write_at, self.path, at, data)
        self._writing.append(d)

        def done(result: object) -> object:
            if d in self._writing:
                self._writing.remove(d)
            return result

        return d.addBoth(done)

    def flush(self) -> Deferred[None]:
        """Write what is buffered; fire once every write so far is in the
        file (a write handed to a thread earlier may still be running: the
        caller hashes the file next)."""
        self._write_out()
        pending = list(self._writing)
        if not pending:
            return succeed(None)
        every = DeferredList(pending, fireOnOneErrback=True, consumeErrors=True)

        def settled(results: object) -> None:
            return None

        def first_error(f: Failure) -> Failure:
            value = f.value
            return value.subFailure if isinstance(value, FirstError) else f

        return every.addCallbacks(settled, first_error)
