"""The entry key of a URL: which query parameters are dropped, which hidden.

A pre-signed URL carries a signature that changes every time it is issued
while the content it names does not, so the cache names the entry after the
URL without its signature. Only the parameters of a pre-signed URL of a
*known form* are dropped, and only when the whole form is there:

=====================  =====================================================
form                   recognised by / parameters dropped
=====================  =====================================================
AWS SigV4 (and S3-     ``X-Amz-Algorithm=AWS4-HMAC-SHA256`` with
compatible, GCS in     ``X-Amz-Credential``, ``X-Amz-Date``,
its AWS dialect)       ``X-Amz-SignedHeaders``, ``X-Amz-Signature`` / those,
                       ``X-Amz-Expires``, ``X-Amz-Security-Token``,
                       ``X-Amz-Content-Sha256``
AWS SigV2 query auth   ``AWSAccessKeyId``, ``Signature``, ``Expires`` / those,
                       ``x-amz-security-token``
GCS V4                 ``X-Goog-Algorithm`` (``GOOG4-*``) with credential,
                       date, signed headers, signature / those,
                       ``X-Goog-Expires``
GCS V2                 ``GoogleAccessId``, ``Expires``, ``Signature``
Azure SAS              ``sig`` with ``sv`` and ``se`` or ``si`` / the SAS
                       fields (:data:`_AZURE_SAS`)
CloudFront             ``Signature`` with ``Key-Pair-Id`` and ``Expires`` or
                       ``Policy`` / those
Hugging Face CDN       a SigV4 or CloudFront form on ``*.hf.co`` or
                       ``*.huggingface.co`` (``cas-bridge.xethub.hf.co``
                       carries both) / also ``X-Xet-Cas-Uid``, the requester
=====================  =====================================================

Anything else stays in the key, because another value may name other
content (``?key=a`` and ``?key=b`` are two entries). A kept parameter whose
name says it is a secret (:data:`proxy.redact.SECRET_PARAMS`: ``key``,
``token``, ``password`` ...) keeps its place as the SHA-256 of its value,
so the key stays distinct without the secret being stored or listed.
Kept parameters are kept byte for byte (no re-encoding: ``a+b`` and ``a%20b``
stay different).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

from proxy.redact import SECRET_PARAMS

HIDDEN_PREFIX = "redacted-sha256-"
_HIDDEN_RE = re.compile(re.escape(HIDDEN_PREFIX) + "[0-9a-f]{64}")

_SIGV4 = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "X-Amz-Content-Sha256",
    }
)
_SIGV4_REQUIRED = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
_SIGV4_ALGORITHMS = frozenset({"AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"})
_SIGV2 = frozenset({"AWSAccessKeyId", "Signature", "Expires", "x-amz-security-token"})
_GOOG4 = frozenset(
    {
        "X-Goog-Algorithm",
        "X-Goog-Credential",
        "X-Goog-Date",
        "X-Goog-Expires",
        "X-Goog-SignedHeaders",
        "X-Goog-Signature",
    }
)
_GOOG4_REQUIRED = ("X-Goog-Credential", "X-Goog-Date", "X-Goog-SignedHeaders", "X-Goog-Signature")
_GOOG4_ALGORITHMS = frozenset({"GOOG4-RSA-SHA256", "GOOG4-HMAC-SHA256"})
_GOOG2 = frozenset({"GoogleAccessId", "Expires", "Signature"})
# Azure Storage SAS (account, service and user delegation) fields; the
# response-header overrides (rscc, rscd ...) stay: they change the answer.
_AZURE_SAS = frozenset(
    {
        "sv",
        "ss",
        "srt",
        "sp",
        "se",
        "st",
        "spr",
        "sip",
        "sig",
        "sr",
        "si",
        "ses",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "sdd",
        "saoid",
        "suoid",
        "scid",
        "skdutid",
        "sduoid",
    }
)
_CLOUDFRONT = frozenset({"Signature", "Key-Pair-Id", "Expires", "Policy"})
_HF_EXTRA = frozenset({"X-Xet-Cas-Uid"})
_HF_DOMAINS = ("hf.co", "huggingface.co")

Query = Mapping[str, list[str]]


def _sigv4(q: Query) -> frozenset[str]:
    algorithm = q.get("X-Amz-Algorithm")
    if algorithm and algorithm[0] in _SIGV4_ALGORITHMS and all(n in q for n in _SIGV4_REQUIRED):
        return _SIGV4
    return frozenset()


def _sigv2(q: Query) -> frozenset[str]:
    if all(n in q for n in ("AWSAccessKeyId", "Signature", "Expires")):
        return _SIGV2
    return frozenset()


def _goog4(q: Query) -> frozenset[str]:
    algorithm = q.get("X-Goog-Algorithm")
    if algorithm and algorithm[0] in _GOOG4_ALGORITHMS and all(n in q for n in _GOOG4_REQUIRED):
        return _GOOG4
    return frozenset()


def _goog2(q: Query) -> frozenset[str]:
    return _GOOG2 if all(n in q for n in _GOOG2) else frozenset()


def _azure(q: Query) -> frozenset[str]:
    if "sig" in q and "sv" in q and ("se" in q or "si" in q):
        return _AZURE_SAS
    return frozenset()


def _cloudfront(q: Query) -> frozenset[str]:
    if "Signature" in q and "Key-Pair-Id" in q and ("Expires" in q or "Policy" in q):
        return _CLOUDFRONT
    return frozenset()


_FORMS: tuple[Callable[[Query], frozenset[str]], ...] = (
    _sigv4,
    _sigv2,
    _goog4,
    _goog2,
    _azure,
    _cloudfront,
)


def _is_hf_cdn(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in _HF_DOMAINS)


def signing_params(host: str, query: Query) -> frozenset[str]:
    """The names in ``query`` (decoded, case as sent) that sign it, by the
    known forms above; a form whose fields appear more than once is not
    that form."""
    unique = {name: values for name, values in query.items() if len(values) == 1}
    dropped: set[str] = set()
    for form in _FORMS:
        dropped |= form(unique)
    if dropped and (_sigv4(unique) or _cloudfront(unique)) and _is_hf_cdn(host):
        dropped |= _HF_EXTRA
    return frozenset(n for n in dropped if n in unique)


def _hidden(value: str) -> str:
    return HIDDEN_PREFIX + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def entry_key(url: str, *, hidden_given: bool = False) -> str:
    """The name of the entry ``url`` (without userinfo) is stored under: the
    URL without the signature of a known pre-signed form, its other secret
    values hidden. The same for every fresh signature, and safe to store and
    show. With ``hidden_given`` (looking an entry up by the key a listing
    showed), a value already hidden is taken as it is, so the function is
    idempotent; a download never takes one so, to keep keys from being
    forged. Raises ValueError for a URL :func:`urllib.parse.urlsplit`
    refuses."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    segments = parts.query.split("&")
    decoded: list[tuple[str, str] | None] = []
    query: dict[str, list[str]] = {}
    for segment in segments:
        if not segment:
            decoded.append(None)
            continue
        raw_name, _, raw_value = segment.partition("=")
        name, value = unquote_plus(raw_name), unquote_plus(raw_value)
        decoded.append((name, value))
        query.setdefault(name, []).append(value)
    dropped = signing_params(parts.hostname or "", query)
    kept: list[str] = []
    changed = False
    for segment, pair in zip(segments, decoded, strict=True):
        if pair is None:
            kept.append(segment)
            continue
        name, value = pair
        if name in dropped:
            changed = True
        elif name.lower() in SECRET_PARAMS and not (hidden_given and _HIDDEN_RE.fullmatch(value)):
            kept.append(segment.partition("=")[0] + "=" + _hidden(value))
            changed = True
        else:
            kept.append(segment)
    if not changed:
        return url
    return urlunsplit(SplitResult(parts.scheme, parts.netloc, parts.path, "&".join(kept), ""))
