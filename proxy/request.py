"""What a client asks to fetch, as a typed value: the URL an entry is known by
(secrets removed), the credentials kept apart (their ``repr`` is redacted),
an expected digest and a pin. The /content route builds one from a POST body
(:mod:`proxy.api.requests`), the mirror from a /v2 request; fetchers and
downloads take it.
"""

from __future__ import annotations

import base64
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import attrs

from proxy.errors import BadRequest
from proxy.presigned import entry_key
from proxy.types import Digest

CREDENTIAL_TYPES = ("Bearer", "Basic")


@attrs.frozen(repr=False)
class Credentials:
    """A secret for one download; ``repr`` and ``str`` never show it."""

    secret: str
    kind: str = "Bearer"

    def authorization(self) -> bytes:
        return f"{self.kind} {self.secret}".encode()

    def __repr__(self) -> str:
        return f"Credentials(kind={self.kind!r}, secret=<redacted>)"

    __str__ = __repr__


def parse_credentials(secret: object, kind: object) -> Credentials | None:
    """Validate the POST body's ``credentials``/``credentialsType``."""
    if kind is None:
        kind = "Bearer"
    if not isinstance(kind, str):
        raise BadRequest("credentialsType must be a string")
    canonical = next((k for k in CREDENTIAL_TYPES if k.lower() == kind.lower()), None)
    if canonical is None:
        raise BadRequest(f"unknown credentialsType {kind[:40]!r}: use Bearer or Basic")
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str):
        raise BadRequest("credentials must be a string")
    if any(c in secret for c in "\r\n\0"):
        raise BadRequest("credentials contain control characters")
    return Credentials(secret, canonical)


def split_userinfo(url: str) -> tuple[str, Credentials | None]:
    """Remove ``user:password@`` from a URL; return the clean URL and the
    secret as Basic credentials (base64 ``user:pass``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rsplit("@", 1)[1]
    clean = urlunsplit(SplitResult(parts.scheme, host, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return clean, Credentials(token, "Basic")


@attrs.frozen
class FetchRequest:
    """``url`` names the entry (no secrets: it is stored and shown); the
    download itself goes to ``source`` when that differs (a pre-signed URL)."""

    url: str
    credentials: Credentials | None = None
    expected: Digest | None = None
    source: str | None = attrs.field(default=None, repr=False)
    pin: bool | None = None  # True/False: pin or unpin the entry (None: leave it)

    @property
    def fetch_url(self) -> str:
        return self.source or self.url

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()


def entry_url(url: str, hidden_given: bool = False) -> str:
    """The URL an entry is known by: no userinfo, no signature of a
    pre-signed URL of a known form (the same for every fresh signature);
    ``hidden_given``: the URL may already carry hidden secrets, as listed
    (see :func:`proxy.presigned.entry_key`)."""
    return entry_key(split_userinfo(url)[0], hidden_given=hidden_given)
