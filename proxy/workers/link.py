"""The socket pair between the writer and one reader (:mod:`proxy.workers`).

Frames: one type byte, a 4-byte big-endian length, the payload.

* ``C``: a client connection handed to the writer. Its descriptor travels
  with the frame (``SCM_RIGHTS``); the payload is the socket's address
  family (one byte) and the bytes the reader read from it (a request head,
  maybe the start of its body), which the writer parses first.
* ``U``: last uses the reader saw (JSON ``{url: seconds}``), for eviction's
  order; the writer keeps the later of its own and these.

When the writer goes away, the reader's end reads EOF and the reader stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from proxy.web.sendfile import transport_drained

log = logging.getLogger("proxy")
_HEAD = struct.Struct(">cI")
CONNECTION = b"C"
USES = b"U"
MAX_FRAME = 16 * 1024 * 1024  # a reader never sends more; a bigger length is a broken peer


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


class _Frames(Protocol):
    """Splits the stream into frames."""

    _buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _HEAD.size:
            kind, length = _HEAD.unpack_from(self._buffer)
            if length > MAX_FRAME:
                log.error("worker link: a frame of %d bytes: closing the link", length)
                assert self.transport is not None
                self.transport.loseConnection()
                return
            end = _HEAD.size + length
            if len(self._buffer) < end:
                return
            payload = self._buffer[_HEAD.size : end]
            self._buffer = self._buffer[end:]
            self.frame_received(kind, payload)

    def frame_received(self, kind: bytes, payload: bytes) -> None:
        raise NotImplementedError


@implementer(IFileDescriptorReceiver)
class WriterEnd(_Frames):
    """The writer's end: adopts handed-off connections into ``site``, and
    merges reported uses with ``merge_uses``."""

    def __init__(
        self,
        reactor: Any,
        site: Factory,
        merge_uses: Callable[[dict[str, float]], None],
        lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._reactor = reactor
        self._site = site
        self._merge_uses = merge_uses
        self._lost = lost
        self._fds: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def frame_received(self, kind: bytes, payload: bytes) -> None:
        if kind == CONNECTION:
            if not self._fds:
                log.error("worker link: a handed-off connection came without its socket")
                return
            fd = self._fds.pop(0)
            try:
                transport = self._reactor.adoptStreamConnection(fd, payload[0], self._site)
            except OSError as e:  # the client is already gone
                log.debug("cannot adopt a handed-off connection: %s", e)
                return
            finally:
                os.close(fd)  # adopted as a copy
            transport.protocol.dataReceived(payload[1:])
        elif kind == USES:
            try:
                used = json.loads(payload)
            except ValueError:
                return
            if isinstance(used, dict):
                self._merge_uses(
                    {u: float(t) for u, t in used.items() if isinstance(t, (int, float))}
                )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._lost()


class ReaderEnd(_Frames):
    """The reader's end: sends connections and uses; ``lost`` is called when
    the writer is gone."""

    def __init__(self, reactor: Any, lost: Callable[[], None]) -> None:
        self._reactor = reactor
        self._lost = lost
        self._closing: list[Callable[[], None]] = []  # sent sockets, closed once out
        self._checking = False

    def frame_received(self, kind: bytes, payload: bytes) -> None:
        pass  # the writer sends nothing (yet)

    def send_connection(self, sock: socket.socket, raw: bytes, sent: Callable[[], None]) -> None:
        """Send ``sock`` with ``raw``; ``sent`` is called once the kernel has
        the descriptor (then the reader closes its copy)."""
        transport: Any = self.transport
        transport.sendFileDescriptor(sock.fileno())
        transport.write(frame(CONNECTION, bytes([int(sock.family)]) + raw))
        self._closing.append(sent)
        self._check_sent()

    def send_uses(self, used: dict[str, float]) -> None:
        assert self.transport is not None
        self.transport.write(frame(USES, json.dumps(used).encode()))

    def _check_sent(self) -> None:
        """Descriptors go out with the first byte of their frame: once the
        transport's buffer is empty, every one queued so far has."""
        if self._checking:
            return
        if transport_drained(self.transport) is not False:
            closing, self._closing = self._closing, []
            for sent in closing:
                sent()
            return
        self._checking = True

        def again() -> None:
            self._checking = False
            self._check_sent()

        self._reactor.callLater(0.001, again)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        closing, self._closing = self._closing, []
        for sent in closing:
            sent()
        self._lost()
