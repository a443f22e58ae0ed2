"""How an entry is named for the OCI distribution API (its ``reference``).

Source URLs become ``<name>:<tag>`` within the distribution grammar, which is
also within the grammar of the ``org.opencontainers.image.ref.name``
annotation. For http(s) sources: ``<host>[-<port>]/<path parts>:latest``,
lowercased, characters outside the grammar replaced by ``-``; a URL with a
query gets the tag ``q-<12 hex of sha256(query)>`` so two queries are two
references.

Pushed content (``oci-push://<name>:<tag>``) is named by its client, so the
two kinds of names must not meet: a name whose first component is a host name
(:func:`is_host_name`) is never a pushed name, and a name some download is
served under cannot be pushed to (:mod:`proxy.api.push`); where a download's
name is already a pushed repository, the push keeps it (:mod:`proxy.cache.catalog`).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

# distribution/reference: path component and tag grammars.
NAME_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
# A registry host: DNS labels or a bracketed IPv6 literal, and an optional port.
_LABEL = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
DOMAIN_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?")
MAX_NAME = 255
# The URL scheme of the entries pushed through /v2 (proxy.api.push).
PUSH_SCHEME = "oci-push://"
_LOCALHOST_RE = re.compile(r"localhost(?:-[0-9]+)?")


def _component(text: str) -> str:
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    # A run of separators is kept only where both grammars allow it: the
    # distribution name's ("__", "-+") and the ref.name annotation's ("--").
    text = re.sub(r"[._-]{2,}", lambda m: "--" if m.group(0) == "--" else "-", text)
    return text.strip("._-")


def name_from_parts(parts: list[str]) -> str:
    """Join sanitised components into a repository name (never empty)."""
    comps = [c for c in (_component(p) for p in parts) if c]
    name = "/".join(comps) or "content"
    while len(name) > MAX_NAME and "/" in name:
        name = name.split("/", 1)[1]
    return name[:MAX_NAME].strip("._-/") or "content"


def reference_for_url(url: str) -> str:
    """The reference (``name:tag``) under which ``/v2`` serves a URL's entry."""
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    head = host if parts.port is None else f"{host}-{parts.port}"
    name = name_from_parts([head, *parts.path.split("/")])
    tag = "latest"
    if parts.query:
        tag = "q-" + hashlib.sha256(parts.query.encode()).hexdigest()[:12]
    return f"{name}:{tag}"


def is_host_name(name: str) -> bool:
    """Whether a repository name's first component is a host, as in the names
    of downloads (``<host>[-<port>]/<path>``): it contains a ``.``, or is
    ``localhost`` (with a port or not) -- Docker's own test for a registry
    host, with this cache's ``-<port>`` for ``:<port>``."""
    first = name.split("/", 1)[0]
    return "." in first or _LOCALHOST_RE.fullmatch(first) is not None
