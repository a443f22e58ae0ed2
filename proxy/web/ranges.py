"""HTTP ``Range`` for blob answers (RFC 9110 section 14).

One range of bytes is served as 206. Everything else this server does not
serve partially -- several ranges, another unit, a malformed header -- is
ignored and the whole blob goes out with 200, which RFC 9110 allows
("a server MAY ignore the Range header field"). A single range that selects
no byte of the blob is refused with 416: one that starts past the end, and
one whose last position is before its first (RFC 9110 calls it invalid; Go's
net/http, which serves docker-registry's blobs, answers 416, and the OCI
distribution conformance suite requires it).

Positions are numerals of any length (:mod:`proxy.numerals`): a first
position of 5000 digits is past the end (416), a last one the end itself.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from proxy.numerals import decimal_less, read_decimal

_SINGLE_RE = re.compile(r"bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")


@attrs.frozen
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    """The range selects no byte of the blob."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range to serve, or None for the whole blob.

    Raise :class:`Unsatisfiable` for a valid single range outside the blob.
    """
    if header is None:
        return None
    m = _SINGLE_RE.fullmatch(header)
    if m is None:
        return None  # another unit, several ranges, or malformed: ignore
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        suffix = read_decimal(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - suffix), size - 1)
    if last != "" and decimal_less(last, first):
        raise Unsatisfiable()  # last before first: no byte selected
    start = read_decimal(first)
    end = read_decimal(last) if last != "" else size - 1
    if start >= size:
        raise Unsatisfiable()
    return ByteRange(start, min(end, size - 1))


def answer_range(request: Any, wanted: str | None, size: int) -> ByteRange | None:
    """Set the status, ``Content-Range`` and ``Content-Length`` of the answer
    for ``wanted`` of a blob of ``size`` bytes; return the bytes to send (the
    whole blob when no range applies), or None when the answer is a 416 (its
    headers set, no body)."""
    try:
        byte_range = parse_range(wanted, size)
    except Unsatisfiable:
        request.setResponseCode(416)
        request.setHeader(b"Content-Range", f"bytes */{size}".encode())
        request.setHeader(b"Content-Length", b"0")
        return None
    if byte_range is None:
        byte_range = ByteRange(0, size - 1)
    else:
        request.setResponseCode(206)
        cr = f"bytes {byte_range.start}-{byte_range.end}/{size}"
        request.setHeader(b"Content-Range", cr.encode())
    request.setHeader(b"Content-Length", str(byte_range.length).encode())
    return byte_range
