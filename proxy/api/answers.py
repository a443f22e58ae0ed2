"""How an answer is written: one helper for every API's JSON bodies, and
one that finishes an answer with its own ``Content-Length``.

/content, /admin and the root answer ``application/json`` with a trailing
newline; /v2 and /hf answer the bytes alone (registries and the Hub do), /hf
with ``; charset=utf-8``. The status, type and body are set in one place.
"""

from __future__ import annotations

import json
from typing import Any

JSON = b"application/json"
JSON_UTF8 = b"application/json; charset=utf-8"


def json_answer(
    request: Any,
    body: Any,
    status: int = 200,
    content_type: bytes = JSON,
    newline: bool = True,
) -> bytes:
    """Set ``status`` and ``Content-Type`` on ``request``; the body to send."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    data = json.dumps(body).encode()
    return data + b"\n" if newline else data


def finish_with_length(request: Any, body: bytes) -> None:
    """Write ``body`` and finish, with a ``Content-Length`` of its own unless
    the route set one: twisted.web would rewrite the ``Content-Length`` of a
    ``HEAD`` answer to the length of its (empty) body."""
    if request.responseHeaders.getRawHeaders(b"content-length") is None:
        request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()
