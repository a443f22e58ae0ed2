"""The record of one cache entry in the shared store (``<prefix>/refs/<hex>``).

A record is what another node needs to rebuild the entry without its
origin: the entry's URL (its key: without credentials or signatures), its
descriptor as ``index.json`` holds it (the manifest's media type, digest,
size and the entry's annotations), the manifest digest (the blob to read
first; it is the descriptor's), when and by which node it was written.
One small JSON document::

    {"version": 1, "url": "...", "descriptor": {...}, "manifest": "sha256:...",
     "writtenAt": "2026-12-07T12:00:00Z", "node": "10.0.0.5:8080"}

The store is shared and may hold anything: :meth:`RefRecord.from_bytes` takes
only a document of this exact shape, at most :data:`MAX_RECORD` bytes, whose
URL has no secrets, and raises :class:`InvalidRecord` for anything else.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import attrs

from proxy.presigned import entry_key
from proxy.redact import redact_url
from proxy.types import Descriptor, Digest, InvalidDigest

VERSION = 1
MAX_RECORD = 1024 * 1024
MAX_URL = 8192
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_NODE_RE = re.compile(r"[\x21-\x7e]{1,300}")
_FIELDS = frozenset({"version", "url", "descriptor", "manifest", "writtenAt", "node"})


class InvalidRecord(ValueError):
    """A refs/ object that is not a record this project writes."""


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidRecord("record url must be a non-empty string")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidRecord("record url has whitespace or control characters")
    try:
        clean = entry_key(url)
    except ValueError:
        raise InvalidRecord("record url is not a URL") from None
    if clean != url or redact_url(url) != url:
        raise InvalidRecord("record url carries credentials or a signature")
    return url


def _check_time(text: str) -> str:
    if not isinstance(text, str) or not _RFC3339_RE.fullmatch(text):
        raise InvalidRecord("record writtenAt must be YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise InvalidRecord("record writtenAt is not a date") from None
    return text


def _check_node(node: str) -> str:
    if not isinstance(node, str) or not _NODE_RE.fullmatch(node):
        raise InvalidRecord("record node must be printable ASCII without spaces")
    return node


@attrs.frozen
class RefRecord:
    """One entry as the shared store knows it."""

    url: str = attrs.field(converter=_check_url)
    descriptor: Descriptor
    manifest: Digest
    written_at: str = attrs.field(converter=_check_time)
    node: str = attrs.field(converter=_check_node)

    def __attrs_post_init__(self) -> None:
        if self.descriptor.digest != self.manifest:
            raise InvalidRecord("record manifest is not its descriptor's digest")

    @property
    def written(self) -> datetime.datetime:
        return datetime.datetime.strptime(self.written_at, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )

    def to_bytes(self) -> bytes:
        doc = {
            "version": VERSION,
            "url": self.url,
            "descriptor": self.descriptor.to_json(),
            "manifest": str(self.manifest),
            "writtenAt": self.written_at,
            "node": self.node,
        }
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_RECORD:
            raise InvalidRecord(f"record larger than {MAX_RECORD} bytes")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> RefRecord:
        if len(data) > MAX_RECORD:
            raise InvalidRecord(f"record larger than {MAX_RECORD} bytes")
        try:
            doc: Any = json.loads(data)
        except (ValueError, RecursionError):
            raise InvalidRecord("record is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != _FIELDS:
            raise InvalidRecord("record fields are not version/url/descriptor/manifest/...")
        if doc["version"] != VERSION or isinstance(doc["version"], bool):
            raise InvalidRecord(f"record version {str(doc['version'])[:20]!r} is not {VERSION}")
        try:
            descriptor = Descriptor.from_json(doc["descriptor"])
            manifest = Digest.parse(doc["manifest"])
        except (ValueError, InvalidDigest) as e:
            raise InvalidRecord(f"record descriptor: {e}") from None
        return cls(doc["url"], descriptor, manifest, doc["writtenAt"], doc["node"])
