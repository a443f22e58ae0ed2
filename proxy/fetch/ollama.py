"""The ``ollama://`` downloader: models from an Ollama registry.

``ollama://[<host>]/[<namespace>/]<model>[:<tag>]`` -- host ``ollama.com``
(its registry is ``registry.ollama.ai``) when empty, namespace ``library``,
tag ``latest``. An Ollama registry speaks the distribution API with quirks a
generic client trips on, all handled by the registry pull this reuses
(:class:`proxy.fetch.oci.OciFetcher`): no ``GET /v2/`` ping (it answers
404), manifests without ``Content-Length`` and as ``text/plain`` (the media
type is read from the body), no manifests by digest (never asked for), and
blob GETs answered with 307 to a CDN (followed without credentials).

Ollama's layers (``application/vnd.ollama.image.model``, ``.template``,
``.params``, ``.license``, ``.system``, ``.projector``, ``.adapter``, ...)
are files, not tarballs: they are stored as blobs, by digest, and nothing in
them becomes a path. The entry's ``digest`` is the model layer, the file an
inference engine opens.
"""

from __future__ import annotations

from proxy.errors import BadRequest
from proxy.fetch.oci import OciFetcher
from proxy.fetch.ociref import ImageReference, split_hub_url
from proxy.naming import NAME_COMPONENT_RE, TAG_RE
from proxy.types import Descriptor

DEFAULT_HOST = "ollama.com"
REGISTRY = "registry.ollama.ai"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"


def parse_ollama_url(url: str) -> ImageReference:
    """Parse an ``ollama://`` URL into the registry reference it names."""
    host, raw_path = split_hub_url(url, ("ollama",), DEFAULT_HOST)
    if host in (DEFAULT_HOST, REGISTRY):
        host = REGISTRY
    path = raw_path.strip("/")
    tag = "latest"
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    components = path.split("/") if path else []
    if len(components) == 1:
        components.insert(0, "library")
    if len(components) != 2 or not all(NAME_COMPONENT_RE.fullmatch(c) for c in components):
        raise BadRequest(
            f"invalid Ollama model {raw_path[:100]!r}: expected [<namespace>/]<model>[:<tag>] "
            "in lowercase letters, digits and . _ -"
        )
    if not TAG_RE.fullmatch(tag):
        raise BadRequest(f"invalid tag {tag[:140]!r}")
    return ImageReference(host, "/".join(components), tag, None)


class OllamaFetcher(OciFetcher):
    """Pulls Ollama models (manifest, config and every layer) into the cache."""

    schemes: tuple[str, ...] = ("ollama",)
    kind = "ollama"

    def parse(self, url: str) -> ImageReference:
        return parse_ollama_url(url)

    def primary(self, top: Descriptor, blobs: list[Descriptor]) -> Descriptor:
        return next((b for b in blobs if b.media_type == MODEL_MEDIA_TYPE), top)
