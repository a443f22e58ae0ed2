"""The fast path's request reader takes only simple heads; anything else is
left to twisted.web (None)."""

from __future__ import annotations

import pytest

from proxy.web.fastpath import FastRequest, answer_head, parse


def test_a_simple_head_is_read() -> None:
    head = (
        b"GET /v2/x/blobs/d HTTP/1.1\r\nHost: h:5000\r\nRange: bytes=0-9\r\nConnection: keep-alive"
    )
    assert parse(head) == FastRequest(b"GET", b"/v2/x/blobs/d", b"h:5000", b"bytes=0-9")
    assert parse(b"HEAD / HTTP/1.1") == FastRequest(b"HEAD", b"/", b"localhost", None)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.0",
        b"POST / HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.1\r\nContent-Length: 0",
        b"GET / HTTP/1.1\r\nConnection: close",
        b"GET / HTTP/1.1\r\nIf-None-Match: x",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b",
        b"GET / HTTP/1.1\r\nX: a\r\n folded",
        b"GET / HTTP/1.1\r\nBad Name: a",
    ],
)
def test_anything_else_is_declined(head: bytes) -> None:
    assert parse(head) is None


def test_answer_head() -> None:
    assert answer_head(b"X: y\r\n", b"D", 5, (1, 5, 10)) == (
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1-5/10\r\n"
        b"X: y\r\nDate: D\r\nContent-Length: 5\r\n\r\n"
    )
