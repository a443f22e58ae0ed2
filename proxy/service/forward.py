"""An origin request handed to a peer: what the owner of a blob needs to
fetch it from its origin for the node that asked.

The requesting node resolved the blob at the origin (a registry's token, a
hub's file URL, an object store's signature); :class:`Origin` carries the
one request that fetches it -- URL, Authorization, the headers only that
origin may see, the object's ETag -- in one request header of the peer route
(``X-Nekko-Origin``: base64url of JSON). It travels only to peers over TLS or
on loopback, with the cluster token; the owner keeps it in memory for the
fetch only, logs the secret-free ``name`` instead, and still applies its own
reach rules (``--allow-upstream``, no metadata addresses) to the URL.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import attrs

from proxy.errors import BadRequest

HEADER = b"X-Nekko-Origin"
MAX_ENCODED = 16 * 1024  # bytes of the header's value
_TEXT_LIMIT = 8 * 1024


def _text(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _TEXT_LIMIT:
        raise BadRequest(f"origin request: {what} must be a string of at most {_TEXT_LIMIT}")
    if any(c in value for c in "\r\n\0"):
        raise BadRequest(f"origin request: {what} contains control characters")
    return value


@attrs.frozen(repr=False)
class Origin:
    """One request for a blob at its origin (``repr`` shows no secret)."""

    url: str
    name: str  # what logs and ingest state show (no secret)
    authorization: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # only for url's own origin (a signature)
    if_match: str | None = None  # the object's ETag when the requester looked
    size: int | None = None

    def __repr__(self) -> str:
        return f"Origin(name={self.name!r}, size={self.size!r})"

    def private(self) -> dict[bytes, bytes]:
        return {k.encode("latin-1"): v.encode("latin-1") for k, v in self.headers}

    def encode(self) -> bytes:
        doc = {
            "url": self.url,
            "name": self.name,
            "authorization": self.authorization,
            "headers": [list(h) for h in self.headers],
            "ifMatch": self.if_match,
            "size": self.size,
        }
        return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def decode(cls, data: bytes) -> Origin:
        """The origin request a peer sent (untrusted): BadRequest when malformed."""
        if len(data) > MAX_ENCODED:
            raise BadRequest(f"origin request larger than {MAX_ENCODED} bytes")
        try:
            doc = json.loads(base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4)))
        except (ValueError, binascii.Error):
            raise BadRequest("origin request is not base64url JSON") from None
        if not isinstance(doc, dict):
            raise BadRequest("origin request is not a JSON object")
        url = _text(doc.get("url"), "url")
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise BadRequest("origin request: url must be http(s)")
        headers = doc.get("headers", [])
        if not isinstance(headers, list) or len(headers) > 32:
            raise BadRequest("origin request: headers must be a list of at most 32 pairs")
        pairs: list[tuple[str, str]] = []
        for h in headers:
            if not isinstance(h, list) or len(h) != 2:
                raise BadRequest("origin request: a header is not a [name, value] pair")
            name, value = _text(h[0], "header name"), _text(h[1], "header value")
            assert name is not None and value is not None
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise BadRequest("origin request: a header name is not a token")
            pairs.append((name, value))
        size = doc.get("size")
        if size is not None and (type(size) is not int or not 0 <= size < 1 << 53):
            raise BadRequest("origin request: size must be a non-negative integer")
        try:
            for n, v in pairs:
                n.encode("latin-1"), v.encode("latin-1")
            name_text = _text(doc.get("name"), "name")
            assert name_text is not None
            return cls(
                url=url,
                name=name_text,
                authorization=_text(doc.get("authorization"), "authorization", optional=True),
                headers=tuple(pairs),
                if_match=_text(doc.get("ifMatch"), "ifMatch", optional=True),
                size=size,
            )
        except UnicodeEncodeError:
            raise BadRequest("origin request: headers must be latin-1") from None
