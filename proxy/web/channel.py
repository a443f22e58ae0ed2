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

Request heads and bodies: a request head must be complete within
:data:`HEAD_TIMEOUT` of its first byte (twisted.web's idle timeout restarts
at every read, so a byte every 50 s would keep a connection forever), else
408 and close. Once the head is in, before any body byte is read, the site's
:class:`~proxy.web.admission.Admission` decides whether the body may come
and how large it may be; a refused one is answered at once and never read
(the routes' rules: :mod:`proxy.api.admission`), and a chunked body that passes its limit is
cut off the same way.

Readers (``--workers``, :mod:`proxy.workers`): a site may carry a
:class:`Handoff`. Each request head it does not answer itself (``local``
says False: a change, something only the writer knows) is handed, with the
connection and whatever bytes of it were read, to the writer process before
any body byte is read here; the writer serves the connection from then on.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from proxy.numerals import CAP, is_decimal, read_decimal
from proxy.web.auth import authorized
from proxy.web.sendfile import plain_socket, transport_drained

if TYPE_CHECKING:
    from proxy.web.admission import Admission, Refusal

_TLS_HANDSHAKE = 0x16
_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"Client sent an HTTPS request to an HTTP server.\n"
)
MAX_FAST_HEAD = 8192  # a longer request head goes the ordinary way


def _head_timeout() -> float:
    """Seconds a request head may take, at most 60; ``NEKKO_HEAD_TIMEOUT``
    lowers it (for tests, as ``NEKKO_FAULT_PAUSE`` arms fault points)."""
    try:
        seconds = float(os.environ.get("NEKKO_HEAD_TIMEOUT", "60"))
    except ValueError:
        seconds = 60.0
    return min(seconds, 60.0) if seconds > 0 else 60.0


HEAD_TIMEOUT = _head_timeout()
LINGER = 2.0  # seconds a refused body is read and dropped, so the answer is not lost to a reset


class FastAnswer(Protocol):
    def __call__(self, channel: PlainHTTPChannel, head: bytes) -> bool:
        """Answer the request whose head (without the final blank line) is
        ``head`` by writing to ``channel.transport``; False to decline
        (nothing written)."""


class Handoff(Protocol):
    """The readers' side of :mod:`proxy.workers`."""

    def local(self, method: bytes, target: bytes) -> bool:
        """Whether this process answers the request itself."""

    def take(self, channel: PlainHTTPChannel, raw: bytes) -> None:
        """Give the connection (reading stopped) to the writer, with ``raw``:
        the request head and the bytes read after it."""


class PlainHTTPChannel(HTTPChannel):
    _first = True
    fast: FastAnswer | None = None
    handoff: Handoff | None = None
    _head_lines: list[bytes]
    admission: Admission | None = None
    peer_host = "unix"
    head_timeout = HEAD_TIMEOUT
    _head_call: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _refused = False
    _quiet_until = 0.0  # time.monotonic() before which fast answers leave the idle timeout

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        site = getattr(self, "site", None)
        self.fast = getattr(site, "fast_blobs", None)
        self.admission = getattr(site, "admission", None)
        self.handoff = getattr(site, "handoff", None)
        self._head_lines = []
        assert self.transport is not None
        self.peer_host = getattr(self.transport.getPeer(), "host", None) or "unix"

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._head_call, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._head_call = self._linger = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

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
                self._active()
                return
        if (
            self._head_call is None
            and self.line_mode
            and not self._handlingRequest
            and b"\r\n\r\n" not in data  # a head that arrives whole needs no clock
        ):
            # A request head starts: it has HEAD_TIMEOUT from now, however it dribbles.
            self._head_call = self.callLater(self.head_timeout, self._head_too_slow)  # type: ignore[no-untyped-call]
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _active(self) -> None:
        """Restart the idle timeout after fast answers, at most once per
        1/64 of it: rescheduling it per request was a twentieth of a blob
        ``HEAD``; the connection may so be closed up to 1/64 of the timeout
        early (at most 0.94 s of the default 60 s)."""
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + (self.timeOut or 0) / 64
            self.resetTimeout()  # type: ignore[no-untyped-call]

    def _head_too_slow(self) -> None:
        self._head_call = None
        from proxy.web.admission import timed_out

        self.refuse(timed_out(self.head_timeout))

    def lineReceived(self, line: bytes) -> None:
        if self.handoff is not None:  # a reader keeps the head as it came, for the writer
            if self._HTTPChannel__first_line:  # type: ignore[attr-defined]
                self._head_lines = [line]
            else:
                self._head_lines.append(line)
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        """The head is in: stop its clock, and, when a body follows, decide
        before reading it whether it may come (see proxy.api.admission); in
        a reader, first whether the writer answers it."""
        call = self._head_call
        if call is not None:
            self._head_call = None
            if call.active():
                call.cancel()
        handoff = self.handoff
        if handoff is not None and not handoff.local(self._command, self._path):
            self._hand_off(handoff)
            return
        access = self.admission
        if self.length != 0 and access is not None:
            from proxy.web.admission import Refusal

            request: Any = self.requests[-1]
            verdict = access.admit(
                self._command, self._path, lambda: authorized(request, access.token)
            )
            if isinstance(verdict, Refusal):
                self.refuse(verdict, request)
                return
            if self.length is not None and not verdict.allows(self.length):
                self.refuse(verdict.over, request)
                return
            request.body_limit = verdict
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def allContentReceived(self) -> None:
        if not self._refused:  # a body cut off: the end of its chunks changes nothing
            super().allContentReceived()  # type: ignore[no-untyped-call]

    def body_too_large(self, request: Any) -> None:
        """A body without a length passed its limit (``request.body_limit``)."""
        self.refuse(request.body_limit.over, request)

    def refuse(self, refusal: Refusal, request: Any = None) -> None:
        """Answer ``refusal`` now, without reading the request's body: what
        arrives after it is dropped; the write side is closed once the answer
        is out, and the connection a little later (closing it while body
        bytes are still unread would reset it and could lose the answer)."""
        if self._refused:
            return
        self._refused = True
        self.dataReceived = self._drop  # type: ignore[method-assign]
        self.clearLineBuffer()  # type: ignore[no-untyped-call]
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        content = getattr(request, "content", None)
        if content is not None:
            content.close()  # what a cut-off body had sent: not kept a moment longer
        transport: Any = self.transport
        method: bytes = getattr(self, "_command", b"-")
        target: bytes = getattr(self, "_path", b"-")
        answer = refusal.response(method)
        transport.write(answer)
        from proxy.logs import log_access

        show = getattr(getattr(self, "site", None), "display_path", None)

        started = getattr(request, "started_at", None)
        log_access(
            self.peer_host,
            method.decode("latin-1"),
            show(target) if show is not None else target.decode("latin-1"),
            getattr(self, "_version", b"HTTP/1.1").decode("latin-1"),
            refusal.status,
            len(answer) - answer.index(b"\r\n\r\n") - 4,
            time.monotonic() - started if started is not None else 0.0,
        )
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return
        self._linger = self.callLater(LINGER, transport.abortConnection)  # type: ignore[no-untyped-call]

    def _hand_off(self, handoff: Handoff) -> None:
        """Stop reading (what the client sends next stays in the socket, and
        goes with it) and give the connection to the writer."""
        raw = b"\r\n".join(self._head_lines) + b"\r\n" + self.clearLineBuffer()  # type: ignore[no-untyped-call]
        self._head_lines = []
        self._refused = True  # nothing more of this connection is parsed here
        self.dataReceived = self._drop  # type: ignore[method-assign]
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        transport: Any = self.transport
        transport.stopReading()
        handoff.take(self, raw)

    def _drop(self, data: bytes) -> None:
        """Bytes after a refusal: read (so the peer is not reset), never kept."""

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
        sock = plain_socket(transport)
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
        sock = plain_socket(transport)
        if sock is None or not transport_drained(transport):
            return False
        try:
            sent = sock.send(head, socket.MSG_MORE)  # one segment with the body's first bytes
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
        transport: Any = self.transport
        while data:
            end = data.find(b"\r\n\r\n", 0, MAX_FAST_HEAD)
            if end < 0 or not fast(self, data[:end]):
                return data
            data = data[end + 4 :]
            # A fast answer changes none of what makes the channel idle but the
            # transport's state (an answer cut short aborts the connection).
            if transport.disconnecting:
                return data
        return data
