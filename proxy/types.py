"""Validated value types shared by the cache, the fetchers and the API.

Everything that names a file on disk (a digest) or travels between layers
(a descriptor) is one of these frozen attrs values, validated on creation, so
invalid input never reaches the filesystem.
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import Any

import attrs

# OCI image-spec: digest grammar, restricted to the algorithms this cache
# stores: sha256 (the canonical one) and sha512 (``blobs/sha512/``).
# SHA256_HEX_RE is the one spelling of a sha256 in hex (a blob's file name).
SHA256_HEX_RE = re.compile(r"[a-f0-9]{64}")
SHA512_HEX_RE = re.compile(r"[a-f0-9]{128}")
HEX_RE = {"sha256": SHA256_HEX_RE, "sha512": SHA512_HEX_RE}
ALGORITHMS = tuple(HEX_RE)  # sha256 first: the canonical one
_ALGORITHM_NAMES = {a: a for a in HEX_RE}

MEDIA_TYPE_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
# The largest manifest this server reads, from a client, an upstream or a blob
# on disk (distribution's limit; the conformance suite pushes 3.9 MB ones). A
# larger blob is never read as a manifest: it is not one.
MAX_MANIFEST = 4 * 1024 * 1024
MEDIA_TYPE_OCTET = "application/octet-stream"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"

# Project-namespaced annotations (never org.opencontainers.*).
ANNOTATION_URL = "io.nekko.storage-manager.url"
ANNOTATION_KIND = "io.nekko.storage-manager.kind"
ANNOTATION_PRIMARY = "io.nekko.storage-manager.primary"
ANNOTATION_PINNED = (
    "io.nekko.storage-manager.pinned"  # "true": never evicted  # digest of the file /content names
)
# Hugging Face metadata of hf:// entries (entry) and their files (layers).
ANNOTATION_HF_REPO = "io.nekko.storage-manager.hf.repo"
ANNOTATION_HF_REPO_TYPE = "io.nekko.storage-manager.hf.repo-type"
ANNOTATION_HF_REVISION = "io.nekko.storage-manager.hf.revision"
ANNOTATION_HF_COMMIT = "io.nekko.storage-manager.hf.commit"
ANNOTATION_HF_OID = "io.nekko.storage-manager.hf.oid"
ANNOTATION_HF_LFS = "io.nekko.storage-manager.hf.lfs-sha256"
ANNOTATION_HF_ENDPOINT = "io.nekko.storage-manager.hf.endpoint"

# s3:// entries (entry) and their objects (layers).
ANNOTATION_S3_BUCKET = "io.nekko.storage-manager.s3.bucket"
ANNOTATION_S3_ENDPOINT = "io.nekko.storage-manager.s3.endpoint"
ANNOTATION_S3_KEY = "io.nekko.storage-manager.s3.key"
ANNOTATION_S3_ETAG = "io.nekko.storage-manager.s3.etag"
ANNOTATION_S3_VERSION = "io.nekko.storage-manager.s3.version-id"
ANNOTATION_GCS_BUCKET = "io.nekko.storage-manager.gcs.bucket"
ANNOTATION_GCS_ENDPOINT = "io.nekko.storage-manager.gcs.endpoint"
ANNOTATION_GCS_OBJECT = "io.nekko.storage-manager.gcs.object"
ANNOTATION_GCS_GENERATION = "io.nekko.storage-manager.gcs.generation"
ANNOTATION_GCS_ETAG = "io.nekko.storage-manager.gcs.etag"
ANNOTATION_GCS_MD5 = "io.nekko.storage-manager.gcs.md5"
ANNOTATION_GCS_SIZE = "io.nekko.storage-manager.gcs.size"
ANNOTATION_AZURE_ACCOUNT = "io.nekko.storage-manager.azure.account"
ANNOTATION_AZURE_CONTAINER = "io.nekko.storage-manager.azure.container"
ANNOTATION_AZURE_ENDPOINT = "io.nekko.storage-manager.azure.endpoint"
ANNOTATION_AZURE_BLOB = "io.nekko.storage-manager.azure.blob"
ANNOTATION_AZURE_ETAG = "io.nekko.storage-manager.azure.etag"
ANNOTATION_AZURE_SIZE = "io.nekko.storage-manager.azure.size"

ARTIFACT_TYPE_FILE = "application/vnd.nekko.storage-manager.file.v1"

# Annotations whose values are a small vocabulary: one string per value (sys.intern).
_VOCABULARY = frozenset(
    {ANNOTATION_KIND, ANNOTATION_PINNED, ANNOTATION_HF_REPO_TYPE, ANNOTATION_HF_REVISION}
)

EMPTY_JSON = b"{}"


class InvalidDigest(ValueError):
    """A string is not a sha256 or sha512 digest in the OCI grammar."""


@attrs.frozen(order=True)
class Digest:
    """A content digest, ``sha256:<64 lowercase hex>`` (the default algorithm)
    or ``sha512:<128 lowercase hex>``."""

    hex: str = attrs.field()
    algorithm: str = attrs.field(default="sha256")

    @algorithm.validator
    def _check(self, _attr: attrs.Attribute[str], value: str) -> None:
        pattern = HEX_RE.get(value)
        if pattern is None:
            raise InvalidDigest(f"unsupported digest algorithm: {value[:20]!r}")
        if not isinstance(self.hex, str) or not pattern.fullmatch(self.hex):
            raise InvalidDigest(f"invalid {value} digest: {str(self.hex)[:80]!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>`` or ``sha512:<hex>``; raise :class:`InvalidDigest` otherwise."""
        if not isinstance(text, str):
            raise InvalidDigest("digest must be a string")
        known = _WELL_KNOWN.get(text)
        if known is not None:  # one object for a digest every entry names (the empty config)
            return known
        algorithm, colon, hex_ = text.partition(":")
        pattern = HEX_RE.get(algorithm)
        if not colon or pattern is None or not pattern.fullmatch(hex_):
            raise InvalidDigest(
                f"invalid digest {text[:80]!r}: expected sha256:<64 hex digits> "
                "or sha512:<128 hex digits>"
            )
        # The algorithm's one string, not a copy per digest (a loaded cache holds 100,000s).
        return cls(hex_, _ALGORITHM_NAMES[algorithm])

    @classmethod
    def from_file_name(cls, name: str) -> Digest:
        """The digest of a file named by its hex alone (a blob under
        ``blobs/<algorithm>/``, a marker): the length says the algorithm."""
        return cls(name, "sha512" if len(name) == 128 else "sha256")

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of some bytes (small ones: this hashes in the caller's thread)."""
        if algorithm not in HEX_RE:
            raise InvalidDigest(f"unsupported digest algorithm: {algorithm[:20]!r}")
        return cls(hashlib.new(algorithm, data).hexdigest(), algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


EMPTY_DIGEST = Digest("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
_WELL_KNOWN = {str(EMPTY_DIGEST): EMPTY_DIGEST}


@attrs.frozen
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = attrs.field(factory=dict, eq=False, hash=False)
    artifact_type: str | None = None
    data: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.data is not None:
            out["data"] = self.data
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        """Build from parsed JSON; raise ValueError on anything malformed."""
        if not isinstance(obj, dict):
            raise ValueError("descriptor must be an object")
        media_type = obj.get("mediaType", "")
        size = obj.get("size", 0)
        annotations = obj.get("annotations") or {}
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise ValueError("descriptor has a bad mediaType or size")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ValueError("descriptor annotations must map strings to strings")
        artifact_type = obj.get("artifactType")
        data = obj.get("data")
        # Media types and annotation keys are a small vocabulary repeated by every
        # descriptor of a loaded cache: one string each (interned strings are freed
        # with their last user, so names from outside cost nothing once gone).
        return cls(
            media_type=sys.intern(media_type),
            digest=Digest.parse(obj.get("digest", "")),
            size=size,
            annotations={
                sys.intern(k): sys.intern(v) if k in _VOCABULARY else v
                for k, v in annotations.items()
            },
            artifact_type=sys.intern(artifact_type) if isinstance(artifact_type, str) else None,
            data=data if isinstance(data, str) else None,
        )
