"""Receiving a large response body on plain TCP in worker threads, off the reactor.

Twisted reads a body on the reactor thread, a fresh bytes object per read, and
every read then crosses to the ingest's worker threads and back. For a body of
known length on a plain TCP connection (no TLS: its bytes must be decrypted by
the reactor's TLS layer), :class:`SocketPump` takes the socket over once the
headers and the bytes already read have been delivered: one thread
``recv_into()``s a few reused buffers, one hashes each buffer and one writes it
(:meth:`IngestFile.hash_only` and :meth:`IngestFile.write_only`, as the
:class:`~proxy.cache.ingest.IngestSink` does); a buffer is refilled once both
are done with it, so a slow disk or hash stops the reading and TCP's window
stops the sender. Measured on a 2-core machine, an ``oci://`` pull of 1 GiB
from a local registry took about a quarter less time this way.

Twisted's HTTP parser never sees the rest of the body, so the connection is
closed afterwards, never given back to the pool
(:mod:`proxy.fetch.stream` does that, on the reactor).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

from proxy.cache.ingest import IngestFile
from proxy.errors import UpstreamTimeout

BUFFER = 2 * 1024 * 1024
BUFFERS = 4  # in use at once: one filling, the others being hashed and written
MIN_BODY = 16 * 1024 * 1024  # smaller bodies stay on the reactor (and keep their connection)
REPORT_EVERY = 0.1  # seconds between progress reports


class BodyCut(Exception):
    """The body ended before it was complete (connection lost, reset)."""


def plain_tcp(connection: Any) -> socket.socket | None:
    """The socket behind a response's transport when it is a plain TCP client
    connection (None for TLS, Unix sockets, or anything else)."""
    if type(connection) is not tcp.Client:  # a TLS connection is a TLS protocol instead
        return None
    sock = connection.getHandle()
    return sock if isinstance(sock, socket.socket) else None


class SocketPump:
    """Receives ``remaining`` bytes from ``sock`` into ``ingest``; :meth:`run`
    blocks (call it from a thread of its own, not the reactor's pool: it holds
    three threads for the whole body)."""

    def __init__(
        self,
        sock: socket.socket,
        ingest: IngestFile,
        remaining: int,
        idle_timeout: float,
        report: Callable[[int, int], None],
    ) -> None:
        self._sock = sock
        self._ingest = ingest
        self._remaining = remaining
        self._idle_timeout = idle_timeout
        self._report = report  # (bytes received since the last report, bytes in the file)
        self._cancelled = threading.Event()
        self._failure: BaseException | None = None  # of the hasher or the writer
        self._unreported = 0  # bytes received since the last report
        # The ring: a buffer goes to both workers, and back to ``_free`` once both are done.
        self._buffers: list[bytearray] = []  # allocated by run(), in its thread
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(BUFFERS):
            self._free.put(i)
        self._users = [0] * BUFFERS
        self._lock = threading.Lock()
        self._to_hash: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._to_write: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()

    def cancel(self) -> None:
        """Stop at once (any thread): the blocked receive is woken by a shutdown."""
        self._cancelled.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        """Receive the body; raise :class:`BodyCut`, :class:`UpstreamTimeout`,
        or what writing or hashing raised. When this returns or raises, every
        byte received is written and hashed."""
        self._buffers = [bytearray(BUFFER) for _ in range(BUFFERS)]
        helpers = [
            threading.Thread(
                target=self._work, args=(self._ingest.hash_only, self._to_hash), name="body-hash"
            ),
            threading.Thread(
                target=self._work,
                args=(self._ingest.write_only, self._to_write),
                name="body-write",
            ),
        ]
        cut: BaseException | None = None
        try:
            for t in helpers:
                t.start()
            self._receive()
        except BaseException as e:
            cut = e
        finally:
            self._to_hash.put(None)
            self._to_write.put(None)
            for t in helpers:
                if t.ident is not None:
                    t.join()
            if self._unreported:
                self._report(self._unreported, self._ingest.written)
        # A full disk stops the receive too: the cause is the disk, not the cut.
        if self._failure is not None:
            raise self._failure
        if cut is not None:
            raise cut

    def _work(
        self,
        work: Callable[[list[memoryview]], None],
        todo: queue.SimpleQueue[tuple[int, int] | None],
    ) -> None:
        """A helper thread: hash (or write) each buffer it is given, then let it go."""
        while (item := todo.get()) is not None:
            i, n = item
            try:
                if self._failure is None:
                    work([memoryview(self._buffers[i])[:n]])
            except BaseException as e:  # disk full, I/O error: the receiver stops
                self._failure = e
            finally:
                with self._lock:
                    self._users[i] -= 1
                    last = self._users[i] == 0
                if last:
                    self._free.put(i)

    def _receive(self) -> None:
        try:
            self._sock.settimeout(self._idle_timeout)
        except OSError as e:  # closed meanwhile
            raise BodyCut(str(e)) from None
        last_report = time.monotonic()
        while self._remaining > 0:
            i = self._free.get()
            if self._failure is not None:
                return  # run() raises it
            view = memoryview(self._buffers[i])[: min(BUFFER, self._remaining)]
            filled = 0
            try:
                while filled < len(view):  # fill the buffer: fewer, larger hashes and writes
                    n = self._sock.recv_into(view[filled:])
                    if n == 0:
                        break
                    filled += n
            except TimeoutError:
                raise UpstreamTimeout(f"no data for {self._idle_timeout:g} s") from None
            except OSError as e:
                if self._cancelled.is_set():
                    raise BodyCut("cancelled") from None
                raise BodyCut(str(e)) from None
            finally:
                if filled:
                    with self._lock:
                        self._users[i] = 2
                    self._to_hash.put((i, filled))
                    self._to_write.put((i, filled))
                else:
                    self._free.put(i)
                self._remaining -= filled
                self._unreported += filled
            if filled < len(view):
                if self._cancelled.is_set():
                    raise BodyCut("cancelled")
                raise BodyCut(f"connection closed {self._remaining} bytes before the end")
            now = time.monotonic()
            if now - last_report >= REPORT_EVERY:
                self._report(self._unreported, self._ingest.written)
                self._unreported, last_report = 0, now
