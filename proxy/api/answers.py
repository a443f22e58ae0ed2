"""How a JSON answer is written: one helper for every API's JSON bodies.

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
