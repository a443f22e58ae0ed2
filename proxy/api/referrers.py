"""The referrers API of OCI distribution-spec 1.1:
``GET /v2/<name>/referrers/<digest>[?artifactType=<type>]``.

The answer is an image index (``application/vnd.oci.image.index.v1+json``)
listing every manifest of repository ``<name>`` whose ``subject`` is
``<digest>`` -- empty when none is, or when the digest is unknown (the spec
answers 200 either way). Each listed descriptor has the referrer's media
type, digest and size, its ``artifactType`` (the manifest's own, else its
config's media type) and its annotations. With ``?artifactType=`` only
referrers of that type are listed, and ``OCI-Filters-Applied: artifactType``
says so.

The manifests of a repository are those of the entries served under its name
(:class:`proxy.cache.catalog.Catalog`: pushed, pulled and imported ones) and the
manifests inside them. What a manifest says about its subject is read once per
digest (manifests are immutable) in a worker thread, and remembered.
"""

from __future__ import annotations

from typing import Any

import attrs

from proxy.cache import artifact
from proxy.cache.layout import Layout
from proxy.types import MEDIA_TYPE_IMAGE_INDEX, Descriptor, Digest, InvalidDigest

FILTERS_APPLIED = b"OCI-Filters-Applied"


@attrs.frozen
class Referrer:
    """What one manifest says of itself, for a referrers list."""

    subject: Digest | None
    descriptor: dict[str, Any]  # mediaType, digest, size, artifactType, annotations


def describe(desc: Descriptor, data: bytes) -> Referrer | None:
    """The referrer facts of a manifest's bytes (None: not a manifest)."""
    try:
        doc = artifact.load_json(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    subject: Digest | None = None
    raw_subject = doc.get("subject")
    if isinstance(raw_subject, dict):
        try:
            subject = Digest.parse(raw_subject.get("digest", ""))
        except InvalidDigest:
            subject = None
    media_type = doc.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        media_type = desc.media_type
    out: dict[str, Any] = {"mediaType": media_type, "digest": str(desc.digest), "size": len(data)}
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str) or not artifact_type:
        config = doc.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    if isinstance(artifact_type, str) and artifact_type:
        out["artifactType"] = artifact_type
    annotations = doc.get("annotations")
    if isinstance(annotations, dict) and annotations:
        out["annotations"] = annotations
    return Referrer(subject, out)


class Referrers:
    """Finds the referrers of a digest among a repository's manifests."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._known: dict[Digest, Referrer | None] = {}

    def _facts(self, desc: Descriptor) -> Referrer | None:
        """Blocking: reads the manifest the first time it is asked about."""
        if desc.digest in self._known:
            return self._known[desc.digest]
        try:
            data = self.layout.read_manifest(desc.digest)
        except (OSError, ValueError):
            return None  # absent (a partial index) or not a manifest: not remembered
        facts = describe(desc, data)
        self._known[desc.digest] = facts
        return facts

    def index(
        self, manifests: list[Descriptor], subject: Digest, artifact_type: str | None
    ) -> dict[str, Any]:
        """The referrers index of ``subject`` among ``manifests``; blocking."""
        found: dict[str, dict[str, Any]] = {}
        for desc in manifests:
            if desc.media_type not in artifact.MANIFEST_MEDIA_TYPES:
                continue
            facts = self._facts(desc)
            if facts is None or facts.subject != subject:
                continue
            if artifact_type is not None and facts.descriptor.get("artifactType") != artifact_type:
                continue
            found.setdefault(facts.descriptor["digest"], facts.descriptor)
        return {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_IMAGE_INDEX,
            "manifests": list(found.values()),
        }
