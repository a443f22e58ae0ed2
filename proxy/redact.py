"""Remove secrets from URLs before they reach a log line.

What names an entry (a URL without its pre-signature) is
:func:`proxy.presigned.entry_key`'s business; this list is broader, for logs.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that carry signatures or tokens (S3, GCS, Azure SAS, generic).
SECRET_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "sig",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "se",
        "sv",
    }
)


def redact_url(url: str) -> str:
    """``url`` with its userinfo password and secret query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:REDACTED@{host}" if ":" in userinfo else f"REDACTED@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, "REDACTED" if k.lower() in SECRET_PARAMS else v) for k, v in pairs]
            )
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))
