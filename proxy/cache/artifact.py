"""OCI artifact manifests for plain files (http, hf, s3, file sources).

A file or a set of files is described by an OCI image manifest with an
``artifactType``, the 2-byte empty config and one layer per file titled with
its path, so every entry can also be pulled through ``/v2`` with oras.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.types import (
    ANNOTATION_TITLE,
    ARTIFACT_TYPE_FILE,
    EMPTY_DIGEST,
    EMPTY_JSON,
    MEDIA_TYPE_EMPTY,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
)

EMPTY_CONFIG = Descriptor(MEDIA_TYPE_EMPTY, EMPTY_DIGEST, len(EMPTY_JSON), data="e30=")

MANIFEST_MEDIA_TYPES = frozenset(
    {
        MEDIA_TYPE_IMAGE_MANIFEST,
        MEDIA_TYPE_IMAGE_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)

# Indexes name alternatives (platforms): their absent children are legitimate.
INDEX_MEDIA_TYPES = frozenset(
    {MEDIA_TYPE_IMAGE_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"}
)


def file_manifest(files: list[Descriptor], artifact_type: str = ARTIFACT_TYPE_FILE) -> bytes:
    """Serialise the manifest of a set of files (each with a title annotation)."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": artifact_type,
        "config": EMPTY_CONFIG.to_json(),
        "layers": [f.to_json() for f in files],
    }
    return json.dumps(manifest, indent=2).encode() + b"\n"


def load_json(data: bytes) -> Any:
    """A JSON document (a manifest) from untrusted bytes: ValueError for
    anything that is not one, nesting too deep for the parser included."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def children(media_type: str, data: bytes) -> list[Descriptor]:
    """Descriptors a manifest or index references (config, layers, manifests).

    Raise ValueError when the bytes are not such a document.
    """
    if media_type not in MANIFEST_MEDIA_TYPES:
        return []
    doc = load_json(data)
    if not isinstance(doc, dict):
        raise ValueError("manifest is not a JSON object")
    out: list[Descriptor] = []
    if isinstance(doc.get("config"), dict):
        out.append(Descriptor.from_json(doc["config"]))
    for key in ("layers", "manifests", "blobs"):
        for item in doc.get(key) or []:
            out.append(Descriptor.from_json(item))
    if isinstance(doc.get("subject"), dict):
        out.append(Descriptor.from_json(doc["subject"]))
    return out


def title_of(desc: Descriptor) -> str | None:
    return desc.annotations.get(ANNOTATION_TITLE)
