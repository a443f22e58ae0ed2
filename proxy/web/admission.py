"""Refusing a request from its head: the answer written before a body is
read (a :class:`Refusal`), the body a request may send (a :class:`Limit`),
and the question the channel asks (an :class:`Admission`).

Which route needs what is the routes' business (:mod:`proxy.api.admission`
implements :class:`Admission`); this module only knows how such answers look
on the wire: the /content JSON error, or the OCI error JSON for /v2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from proxy.web.auth import REALM

# Every /v2 answer carries it (distribution's API version header).
OCI_API_VERSION = (b"Docker-Distribution-Api-Version", b"registry/2.0")
_PHRASES = {
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
}


def error_document(code: str, message: str, oci: bool) -> dict[str, Any]:
    """The one spelling of an error body: OCI error JSON (``/v2``), or the
    /content JSON (:mod:`proxy.api.errors` writes both the same way)."""
    if oci:
        return {"errors": [{"code": code, "message": message, "detail": {}}]}
    return {"error": {"code": code, "message": message}}


@attrs.frozen
class Refusal:
    """An answer given instead of running the route: a status, an error
    code and message, as OCI error JSON (``/v2``) or as the /content JSON."""

    status: int
    code: str
    message: str
    oci: bool
    challenge: bool = False  # 401 with WWW-Authenticate
    allow: bytes | None = None  # 405's Allow

    def response(self, method: bytes) -> bytes:
        """The whole HTTP/1.1 answer, for the channel to write before the
        request exists as a twisted.web request; it closes the connection."""
        body = json.dumps(error_document(self.code, self.message, self.oci)).encode() + b"\n"
        lines = [
            b"HTTP/1.1 %d %s" % (self.status, _PHRASES.get(self.status, b"Error")),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if self.oci:
            lines.append(b"%s: %s" % OCI_API_VERSION)
        if self.challenge:
            lines.append(b"WWW-Authenticate: " + REALM)
        if self.allow is not None:
            lines.append(b"Allow: " + self.allow)
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        return head if method == b"HEAD" else head + body


@attrs.frozen
class Limit:
    """An admitted body: at most ``max_bytes`` (None: no bound; then it is
    spooled into the cache's ``ingest/``), else ``over`` is the answer."""

    max_bytes: int | None
    over: Refusal

    def allows(self, length: int) -> bool:
        return self.max_bytes is None or length <= self.max_bytes


class Admission(Protocol):
    """What the channel asks once a request head is in, before its body."""

    @property
    def token(self) -> str | None:
        """The API token requests are checked against (None: no token)."""

    def admit(
        self, method: bytes, target: bytes, authorized: Callable[[], bool]
    ) -> Limit | Refusal: ...


def timed_out(seconds: float) -> Refusal:
    """The answer to a request head not complete within ``seconds``."""
    message = f"the request head was not complete within {seconds:g} s"
    return Refusal(408, "REQUEST_TIMEOUT", message, False)
