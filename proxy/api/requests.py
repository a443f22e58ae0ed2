"""A POST /content body, validated into the typed
:class:`proxy.request.FetchRequest` the service takes: a URL (with a hint
when a path or an image name was typed instead), credentials, an expected
digest, a pin."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from proxy.cache.grammar import MAX_URL
from proxy.errors import BadRequest
from proxy.request import FetchRequest, entry_url, parse_credentials, split_userinfo
from proxy.types import Digest, InvalidDigest


def parse_post(body: Any) -> FetchRequest:
    """Validate a POST /content body (already JSON-decoded)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    url = _url(body.get("url"))
    credentials = parse_credentials(body.get("credentials"), body.get("credentialsType"))
    clean, from_url = split_userinfo(url)
    if credentials is None:
        credentials = from_url
    expected = body.get("digest")
    digest = None
    if expected is not None:
        try:
            digest = Digest.parse(expected)
        except InvalidDigest as e:
            raise BadRequest(str(e)) from None
    pin = body.get("pin")
    if pin is not None and not isinstance(pin, bool):
        raise BadRequest("pin must be true or false")
    key = entry_url(clean)
    return FetchRequest(
        url=key,
        credentials=credentials,
        expected=digest,
        source=clean if key != clean else None,
        pin=pin,
    )


def _url(url: object) -> str:
    """The body's ``url``: a non-empty string, a URL (scheme://...)."""
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("missing 'url' (a non-empty string)")
    url = url.strip()
    if len(url) > MAX_URL or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise BadRequest("url is too long or contains control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as e:
        raise BadRequest(f"malformed url: {e}") from None
    if not parts.scheme or "://" not in url:
        hint = suggest_url(url)
        raise BadRequest(
            f"{url!r} is not a URL (scheme://...)" + (f": did you mean {hint}?" if hint else "")
        )
    return url


_IMAGE_REF_RE = re.compile(
    r"(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)


def suggest_url(text: str) -> str | None:
    """What a user who typed a path or a ``docker pull`` name meant:
    ``/tmp/x.bin`` -> ``file:///tmp/x.bin``, ``alpine:3`` ->
    ``oci://docker.io/library/alpine:3``."""
    if text.startswith(("/", "./", "../", "~")):
        return "file://" + os.path.abspath(os.path.expanduser(text))
    if not _IMAGE_REF_RE.fullmatch(text):
        return None
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return f"oci://{text}"  # it names its registry
    return f"oci://docker.io/{text if rest else 'library/' + text}"
