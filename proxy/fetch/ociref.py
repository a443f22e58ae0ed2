"""``oci://`` URLs: image references in the distribution grammar, and platforms.

``oci://<registry>/<repository>[:<tag>][@sha256:<hex>][?platform=<os>/<arch>[/<variant>]]``

The grammar is distribution/reference's: a domain (host names, IPv4, or a
bracketed IPv6 address, with an optional port), lowercase path components
separated by ``/``, a tag of at most 128 word characters, and a digest.
``docker.io``, ``index.docker.io`` and ``registry-1.docker.io`` are one
registry (reached at ``registry-1.docker.io``), where a one-part name means
``library/<name>``. Everything is checked here, before any network call.
"""

from __future__ import annotations

import platform as _platform
import re
import sys
from urllib.parse import parse_qsl, urlsplit

import attrs

from proxy.errors import BadRequest
from proxy.naming import DOMAIN_RE, NAME_COMPONENT_RE, TAG_RE
from proxy.types import Digest, InvalidDigest

DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

_DIGEST_GRAMMAR_RE = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
)
_PLATFORM_PART_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_NAME = 255

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@attrs.frozen
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART_RE.fullmatch(p) for p in parts):
            raise BadRequest(f"invalid platform {text[:60]!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def running(cls) -> Platform:
        """The platform of this node, as containerd names it."""
        machine = _platform.machine().lower()
        arch = _ARCH.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
        os_name = "linux" if sys.platform.startswith("linux") else sys.platform
        return cls(os_name, arch, variant)

    def matches(self, candidate: object) -> bool:
        """Whether an index entry's ``platform`` object is this platform."""
        if not isinstance(candidate, dict):
            return False
        if candidate.get("os") != self.os or candidate.get("architecture") != self.architecture:
            return False
        variant = candidate.get("variant")
        if self.variant is None:
            # arm64 images are often labelled v8; any variant is fine when none was asked.
            return True
        return variant == self.variant or (variant is None and self.variant == "v8")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@attrs.frozen
class ImageReference:
    registry: str  # as written, lowercased (``docker.io`` for Docker Hub)
    repository: str
    tag: str | None
    digest: Digest | None
    platform: Platform | None = None  # chosen in the URL; None = the node's

    @property
    def endpoint(self) -> str:
        """The host[:port] to talk to."""
        return DOCKER_HUB_ENDPOINT if self.registry in DOCKER_HUB_ALIASES else self.registry

    @property
    def hostname(self) -> str:
        host = self.endpoint
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest when there is one."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    @property
    def name(self) -> str:
        """``<registry>/<repository>:<tag>`` (``@digest`` when there is no tag)."""
        head = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            return f"{head}:{self.tag}"
        if self.digest is not None:
            return f"{head}@{self.digest}"
        return f"{head}:latest"


def parse_oci_url(url: str) -> ImageReference:
    """Parse an ``oci://`` URL; raise :class:`BadRequest` on anything invalid."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "oci":
        raise BadRequest(f"not an oci:// URL: {url[:100]}")
    registry = parts.netloc.lower()
    if not registry or not DOMAIN_RE.fullmatch(registry):
        raise BadRequest(f"invalid registry {parts.netloc[:100]!r} in {url[:200]}")
    if registry in DOCKER_HUB_ALIASES:
        registry = "docker.io"
    rest = parts.path.lstrip("/")
    if parts.fragment:
        raise BadRequest("oci:// URLs take no #fragment")
    digest = None
    if "@" in rest:
        rest, digest_text = rest.split("@", 1)
        if not _DIGEST_GRAMMAR_RE.fullmatch(digest_text):
            raise BadRequest(f"invalid digest {digest_text[:80]!r}")
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest:
            digest = None
        # Pulls verify manifests and blobs by sha256 (the registry side also takes sha512).
        if digest is None or digest.algorithm != "sha256":
            raise BadRequest(f"unsupported digest {digest_text[:80]!r}: only sha256")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not TAG_RE.fullmatch(tag):
            raise BadRequest(f"invalid tag {tag[:140]!r}")
    components = rest.split("/")
    if not rest or not all(NAME_COMPONENT_RE.fullmatch(c) for c in components):
        raise BadRequest(
            f"invalid repository name {rest[:100]!r}: lowercase letters, digits and "
            "separators (. _ __ -) in /-separated parts"
        )
    if registry == "docker.io" and len(components) == 1:
        rest = f"library/{rest}"
    if len(registry) + 1 + len(rest) > MAX_NAME:
        raise BadRequest("repository name longer than 255 characters")
    chosen = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "platform":
            raise BadRequest(f"unknown oci:// URL parameter {key[:40]!r} (known: platform)")
        chosen = Platform.parse(value)
    return ImageReference(registry, rest, tag, digest, chosen)


def split_hub_url(url: str, schemes: tuple[str, ...], default_host: str) -> tuple[str, str]:
    """(host, path) of a model-hub URL (``hf://``, ``ollama://``): no query or
    fragment, an empty host meaning ``default_host``, the host in the grammar."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        raise BadRequest(f"not a {schemes[0]}:// URL: {url[:100]}")
    if parts.query or parts.fragment:
        raise BadRequest(f"{schemes[0]}:// URLs take no query or fragment")
    host = parts.netloc.lower() or default_host
    if not DOMAIN_RE.fullmatch(host):
        raise BadRequest(f"invalid host {parts.netloc[:100]!r}")
    return host, parts.path
