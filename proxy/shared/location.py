"""Where the shared store is, and where things go in it.

``--shared-store`` names one place in one object store:

* ``s3://<bucket>[/<prefix>]`` (S3, MinIO, Ceph RGW...),
* ``gs://<bucket>[/<prefix>]`` (Google Cloud Storage),
* ``azure://<account>/<container>[/<prefix>]`` (Azure Blob Storage, Azurite).

Bucket, account and container names follow the fetchers' grammars
(:mod:`proxy.fetch.s3`, :mod:`proxy.fetch.gcs`, :mod:`proxy.fetch.azure`);
the prefix is stricter than an object name may be, so that every key this
project makes is the same plain ASCII on every store: segments of
``[A-Za-z0-9._-]`` (not ``.`` or ``..``) joined by single ``/``, at most
:data:`MAX_PREFIX` characters, no percent-escapes, no userinfo, query or
fragment. A trailing ``/`` is allowed and dropped.

The layout under the prefix (``<p>/`` is the prefix and a slash, or nothing)::

    <p>blobs/sha256/<hex>      one blob, named by the sha256 of its bytes
    <p>refs/<hex>              one record per cache entry (proxy.shared.record),
                               <hex> = sha256 of the entry's key (its URL
                               without secrets)
    <p>leases/sha256/<hex>     who is fetching blob <hex> now (proxy.shared.lease)
    <p>leases/probes/<name>    the start-up probe of conditional writes

Keys given to and returned by a :class:`~proxy.shared.store.SharedStore` are
relative to the prefix; anything listed under the prefix that is not one of
these shapes is outside the layout and ignored (:func:`blob_digest`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import attrs

from proxy.errors import BadRequest
from proxy.types import SHA256_HEX_RE, Digest

Kind = Literal["s3", "gs", "azure"]

MAX_PREFIX = 512
BLOBS = "blobs/sha256/"
REFS = "refs/"
LEASES = "leases/sha256/"
PROBES = "leases/probes/"

_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
# What may follow "scheme://" at all: the same characters, "/" and nothing else.
_RAW_RE = re.compile(r"[A-Za-z0-9._/-]*")
_SCHEMES: dict[str, Kind] = {"s3": "s3", "gs": "gs", "azure": "azure"}
# A bucket the store is written to is named as S3 requires of new buckets (the
# downloaders also read legacy names with capitals and "_").
_S3_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")


class InvalidLocation(BadRequest):
    """A ``--shared-store`` value outside the grammar."""


@attrs.frozen
class StoreLocation:
    """One ``--shared-store``: the store, its bucket (or account and
    container) and the prefix everything goes under (``""``: the bucket's root)."""

    kind: Kind
    bucket: str  # the S3/GCS bucket, or the Azure container
    prefix: str  # no leading or trailing "/"
    account: str | None = None  # Azure only

    @property
    def url(self) -> str:
        """The canonical ``--shared-store`` value."""
        where = f"{self.account}/{self.bucket}" if self.account else self.bucket
        return f"{self.kind}://{where}" + (f"/{self.prefix}" if self.prefix else "")

    def __str__(self) -> str:
        return self.url

    def object_name(self, key: str) -> str:
        """The store's name of the layout key ``key``."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def relative(self, name: str) -> str | None:
        """The layout key of the store's object ``name``; None when it lies
        outside the prefix."""
        if not self.prefix:
            return name or None
        head = self.prefix + "/"
        return name[len(head) :] if name.startswith(head) and len(name) > len(head) else None


def check_key(key: str) -> None:
    """Refuse a relative key that could leave the prefix or is not plain."""
    if not key or len(key) > 1024 or not _RAW_RE.fullmatch(key):
        raise ValueError(f"invalid store key {key[:80]!r}")
    if any(not _SEGMENT_RE.fullmatch(s) or s in (".", "..") for s in key.rstrip("/").split("/")):
        raise ValueError(f"invalid store key {key[:80]!r}")


def is_layout_key(key: str) -> bool:
    """Whether a listed key is one this project could have written."""
    try:
        check_key(key)
    except ValueError:
        return False
    return not key.endswith("/")


def listed_key(location: StoreLocation, name: str, prefix: str) -> str | None:
    """The layout key of the listed object ``name`` when it starts with
    ``prefix`` and is one this project could have written; else None."""
    rel = location.relative(name)
    if rel is None or not rel.startswith(prefix) or not is_layout_key(rel):
        return None
    return rel


def name_prefix(location: StoreLocation, prefix: str) -> str:
    """The store's name prefix of the layout keys starting with ``prefix``
    (``""``: everything under the location)."""
    if prefix:
        check_key(prefix)
    return (location.prefix + "/" if location.prefix else "") + prefix


def _prefix(path: str, value: str) -> str:
    path = path.removesuffix("/")
    if not path:
        return ""
    if len(path) > MAX_PREFIX:
        raise InvalidLocation(f"shared-store prefix longer than {MAX_PREFIX} characters")
    for segment in path.split("/"):
        if not _SEGMENT_RE.fullmatch(segment) or segment in (".", ".."):
            raise InvalidLocation(
                f"invalid shared-store prefix in {value[:100]!r}: segments are "
                "[A-Za-z0-9._-], not empty, '.' or '..'"
            )
    return path


def parse_location(value: str) -> StoreLocation:
    """The location a ``--shared-store`` value names; :class:`InvalidLocation` otherwise."""
    if not isinstance(value, str):
        raise InvalidLocation("shared-store must be a string")
    scheme, sep, rest = value.partition("://")
    kind = _SCHEMES.get(scheme)
    if not sep or kind is None:
        raise InvalidLocation(
            f"shared-store {value[:100]!r}: expected s3://bucket/prefix, gs://bucket/prefix "
            "or azure://account/container/prefix"
        )
    # Checked before any URL parsing: no %, @, ?, #, ":", whitespace or controls at all.
    if not _RAW_RE.fullmatch(rest) or "//" in rest:
        raise InvalidLocation(f"invalid characters in shared-store {value[:100]!r}")
    # The URL grammars live with the fetchers; imported here, not at the top, so
    # that reading the configuration (proxy.config) loads no fetcher and, through
    # them, no prometheus_client: --workers must choose its multiprocess mode first.
    from proxy.fetch.azure import parse_azure_url
    from proxy.fetch.gcs import parse_gcs_url
    from proxy.fetch.s3 import parse_s3_url

    try:
        if kind == "s3":
            s3 = parse_s3_url(value)
            if not _S3_BUCKET_RE.fullmatch(s3.bucket) or _IPV4_RE.fullmatch(s3.bucket):
                raise InvalidLocation(f"invalid S3 bucket name {s3.bucket[:80]!r}")
            return StoreLocation("s3", s3.bucket, _prefix(s3.key, value))
        if kind == "gs":
            gs = parse_gcs_url(value)
            return StoreLocation("gs", gs.bucket, _prefix(gs.name, value))
        az = parse_azure_url(value)
    except InvalidLocation:
        raise
    except BadRequest as e:
        raise InvalidLocation(f"shared-store: {e.message}") from None
    return StoreLocation("azure", az.container, _prefix(az.name, value), az.account)


def blob_key(digest: Digest) -> str:
    return BLOBS + digest.hex


def lease_key(digest: Digest) -> str:
    return LEASES + digest.hex


def ref_key(entry_key: str) -> str:
    """The record of the entry whose key (URL without secrets) is ``entry_key``."""
    return REFS + hashlib.sha256(entry_key.encode()).hexdigest()


def probe_key(name: str) -> str:
    return PROBES + name


def blob_digest(key: str) -> Digest | None:
    """The digest a layout key names as a blob; None for anything else."""
    if not key.startswith(BLOBS):
        return None
    hex_ = key[len(BLOBS) :]
    return Digest(hex_) if SHA256_HEX_RE.fullmatch(hex_) else None
