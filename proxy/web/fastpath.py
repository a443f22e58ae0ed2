"""The fast path's wire: reading a simple request head, writing an answer head.

:mod:`proxy.web.channel` offers each complete request head of an idle
connection to a fast answerer before twisted.web parses it. This module owns
the HTTP of that: :func:`parse` returns a :class:`FastRequest` for a head
simple enough to answer without twisted.web (``HTTP/1.1``, ``GET`` or
``HEAD``, well-formed unfolded headers, no body, no conditional, no
``Connection`` other than keep-alive) and None for anything else, which then
takes the ordinary way; :func:`answer_head` writes the status line and
headers of the answer. What to answer is the caller's business
(:meth:`proxy.api.registry.RegistryAPI.fast_blob`).

Every request on this path costs a few microseconds of Python, which is what
limits small range reads: keep the work here as it is (one split, one pass
over the headers, no per-request objects beyond the result).
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

from twisted.web.http import datetimeToString

from proxy.web.ranges import Unsatisfiable

_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CTL = b"\x00\r\n"
# Request headers that make the fast path decline (twisted.web's own handling,
# a body, or a conditional request).
_DECLINE = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"connection",
        b"upgrade",
        b"if-none-match",
        b"if-range",
    }
)


class FastRequest(NamedTuple):
    """A request head simple enough for the fast path."""

    method: bytes  # b"GET" or b"HEAD"
    target: bytes  # as sent (origin form)
    host: bytes  # the Host header (b"localhost" when absent or empty)
    range: bytes | None  # the Range header, if any


def parse(head: bytes) -> FastRequest | None:
    """The request in ``head`` (without its final CRLF CRLF), or None when
    twisted.web should handle it."""
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3:
        return None
    method, target, proto = request_line
    if proto != b"HTTP/1.1" or (method != b"HEAD" and method != b"GET"):
        return None
    host = b"localhost"
    wanted: bytes | None = None
    seen: set[bytes] = set()
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(key) or len(line.translate(None, _CTL)) != len(line):
            return None  # malformed, or folded: twisted.web answers those
        key = key.lower()
        keep_alive = key == b"connection" and value.strip().lower() == b"keep-alive"
        if (key in _DECLINE or key in seen) and not keep_alive:
            return None
        seen.add(key)
        if key == b"host":
            host = value.strip(b" \t") or b"localhost"
        elif key == b"range":
            wanted = value.strip(b" \t")
    return FastRequest(method, target, host, wanted)


_SIMPLE_RANGE_RE = re.compile(rb"bytes=([0-9]{1,18})-([0-9]{1,18})")


def simple_range(wanted: bytes, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes of ``size`` that ``wanted`` selects when it is
    the plain ``bytes=<first>-<last>`` of clients' ranged reads (numerals of
    at most 18 digits), read as :func:`proxy.web.ranges.parse_range` reads
    it (a last past the end is the end; :class:`~proxy.web.ranges.Unsatisfiable`
    for no byte selected); None for any other form, which that function reads."""
    m = _SIMPLE_RANGE_RE.fullmatch(wanted)
    if m is None:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    if last < first or first >= size:
        raise Unsatisfiable()
    return first, min(last, size - 1)


class HttpDate:
    """The ``Date`` header value, formatted once a second."""

    def __init__(self) -> None:
        self._date = (0, b"")

    def now(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, datetimeToString(now))
        return self._date[1]


def answer_head(
    fields: bytes, date: bytes, length: int, part: tuple[int, int, int] | None = None
) -> bytes:
    """The status line and headers of an answer: 200, or 206 for ``part`` =
    (first, last, size); ``fields`` are the other header lines, each ending
    in CRLF."""
    if part is None:
        status = b"HTTP/1.1 200 OK\r\n"
    else:
        status = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n" % part
    return b"".join((status, fields, b"Date: ", date, b"\r\nContent-Length: %d\r\n\r\n" % length))
