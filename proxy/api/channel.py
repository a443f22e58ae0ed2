"""The HTTP/1.1 connection of the server: quick to refuse a TLS handshake, and
a short way through for the hottest requests.

Registry clients (skopeo, containerd, Go's net/http) try HTTPS first. A plain
HTTP server that waits for a request line while the client waits for a
ServerHello costs each of them a 10 s handshake timeout before falling back
to HTTP. Like Go's own server, answer a TLS ClientHello with a plain-text 400
at once, so the client falls back immediately.

Fast path: twisted.web's request machinery (line parsing, ``Headers``,
``Request``, resource traversal) costs several times what answering a
``HEAD`` or a small ranged ``GET`` of a cached blob does. When the site has
a ``fast_blobs`` answerer and the connection is idle (no request in
progress, nothing buffered), a complete request head that arrived in one
piece is offered to it first; it answers synchronously or declines, and a
declined request (anything unusual: another route, a miss, a body,
``Connection`` or conditional headers, ...) goes through twisted.web exactly
as before, as does everything after it until the connection is idle again.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from twisted.web.http import HTTPChannel

from proxy.api.blobs import transport_drained
from proxy.numerals import CAP, is_decimal, read_decimal

_TLS_HANDSHAKE = 0x16
_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"Client sent an HTTPS request to an HTTP server.\n"
)
MAX_FAST_HEAD = 8192  # a longer request head goes the ordinary way


class FastAnswer(Protocol):
    def __call__(self, channel: PlainHTTPChannel, head: bytes) -> bool:
        """Answer the request whose head (without the final blank line) is
        ``head`` by writing to ``channel.transport``; False to decline
        (nothing written)."""


class PlainHTTPChannel(HTTPChannel):
    _first = True
    fast: FastAnswer | None = None
    peer_host = "unix"

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.fast = getattr(getattr(self, "site", None), "fast_blobs", None)
        assert self.transport is not None
        self.peer_host = getattr(self.transport.getPeer(), "host", None) or "unix"

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if data[0] == _TLS_HANDSHAKE:
                assert self.transport is not None
                self.transport.write(_ANSWER)
                self.transport.loseConnection()
                return
        if self.fast is not None and self._idle():
            data = self._answer_fast(self.fast, data)
            if not data:
                self.resetTimeout()  # type: ignore[no-untyped-call]
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header line longer than ``MAX_LENGTH``: answer
        414 or 431 with a JSON error, rather than Twisted's silent close."""
        first = getattr(self, "_HTTPChannel__first_line", 0)
        status, phrase, what = (
            (414, b"URI Too Long", "request line")
            if first
            else (431, b"Request Header Fields Too Large", "header line")
        )
        self._refuse(status, phrase, f"{what} longer than {self.MAX_LENGTH} bytes")

    def headerReceived(self, line: bytes) -> bool:
        """Refuse (413) a ``Content-Length`` past :data:`proxy.numerals.CAP`
        before Twisted's ``int()`` raises on one of over 4300 digits (an
        unhandled error and a connection dropped without an answer)."""
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            digits = value.strip().decode("latin-1")
            if is_decimal(digits) and (len(digits) > 4000 or read_decimal(digits) >= CAP):
                self._refuse(413, b"Content Too Large", "Content-Length is too large")
                return False
        ok: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's answer to a malformed request line or headers over
        ``totalHeadersSize``: the same 400, with a JSON error body."""
        self._refuse(400, b"Bad Request", "malformed request line or headers too large")

    def _refuse(self, status: int, phrase: bytes, message: str) -> None:
        body = json.dumps({"error": {"code": "BAD_REQUEST", "message": message}}).encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status, phrase)
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        assert self.transport is not None
        self.transport.write(head + body)
        self.loseConnection()  # type: ignore[no-untyped-call]

    def send(self, data: bytes) -> None:
        """Write an answer: straight to the socket when Twisted has nothing
        buffered (no write registration, no extra reactor turn), else, and
        for whatever the socket does not take, through the transport."""
        transport: Any = self.transport
        sock = getattr(transport, "socket", None)
        if sock is not None and transport_drained(transport):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # would block, or broken: the transport finds out and closes
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def send_file(self, head: bytes, fd: int, offset: int, length: int) -> bool:
        """Write ``head``, then ``length`` bytes of ``fd`` from ``offset``:
        ``sendfile(2)`` without blocking while the socket takes them, the rest
        read into the transport's buffer (so at most ``length`` bytes are held).
        False if nothing was written (Twisted has data buffered, or no socket)."""
        transport: Any = self.transport
        sock = getattr(transport, "socket", None)
        if sock is None or not transport_drained(transport):
            return False
        try:
            sent = sock.send(head)
        except OSError:
            sent = 0
        done = 0
        if sent == len(head):
            try:
                done = os.sendfile(sock.fileno(), fd, offset, length)
            except OSError:
                done = 0  # would block, or broken: the transport finds out
        try:
            rest = b"" if done == length else os.pread(fd, length - done, offset + done)
        except OSError:
            rest = b""  # the head may be out: this answer can only be cut short
        if len(rest) != length - done:
            # The file is shorter than it was: never let a short body pass as complete.
            transport.abortConnection()
            return True
        if sent < len(head) or rest:
            transport.write(head[sent:] + rest if sent < len(head) else rest)
        return True

    def _idle(self) -> bool:
        """No request in progress and nothing half-parsed: the next bytes
        start a request."""
        transport: Any = self.transport
        return bool(
            self.line_mode
            and not self._busyReceiving
            and not self._buffer
            and not self.paused
            and not self._handlingRequest
            and not self.requests
            and self.persistent
            and self._HTTPChannel__first_line == 1  # type: ignore[attr-defined]
            and self._receivedHeaderSize == 0
            and transport is not None
            and not transport.disconnecting
        )

    def _answer_fast(self, fast: FastAnswer, data: bytes) -> bytes:
        """Answer the complete requests at the start of ``data`` that ``fast``
        takes; return the rest (from the first one it declines)."""
        while data:
            end = data.find(b"\r\n\r\n", 0, MAX_FAST_HEAD)
            if end < 0 or not fast(self, data[:end]):
                return data
            data = data[end + 4 :]
            if not self._idle():
                return data
        return data
