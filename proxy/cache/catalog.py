"""Which cached entry the OCI distribution API serves under which name and tag.

An entry's ``reference`` decides it:

* content pulled with ``oci://<registry>/<repo>:<tag>`` is served as
  ``<repo>:<tag>`` of registry ``<registry>`` (``docker.io``,
  ``index.docker.io`` and ``registry-1.docker.io`` are one registry);
* every other entry (http, hf, ...) is served under its whole reference,
  ``<host>[-<port>]/<path>:<tag>``, and belongs to no registry.

A tag is looked up with the registry the client names (containerd's
``?ns=<registry>``); without one, in ``--upstream``'s registry if that is
set, else wherever the name and tag are unique.

Pushed entries (``oci-push://``) belong to no registry, like downloads, and
share their names with nothing: a push to a name a download is served under is
refused (:mod:`proxy.api.push`), and where a download's name is already a
pushed repository (the push came first), the push keeps the name: the
download is not served under it (it stays in ``/content``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from proxy.cache import artifact, modelpackout
from proxy.naming import NAME_RE, PUSH_SCHEME, TAG_RE, is_host_name
from proxy.types import Descriptor

if TYPE_CHECKING:
    from proxy.cache.store import Entry, Store

DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def normalize_registry(host: str) -> str:
    host = host.lower()
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def is_pushed(entry: Entry) -> bool:
    return entry.url.startswith(PUSH_SCHEME)


def _held_by_pushes(items: list[Served]) -> list[Served]:
    """``items`` without the downloads named like a pushed repository among them."""
    pushed = {s.name for s in items if is_pushed(s.entry)}
    if not pushed:
        return items
    return [s for s in items if is_pushed(s.entry) or s.name not in pushed]


def push_conflict(name: str, entries: Iterable[Entry]) -> str | None:
    """Why ``name`` may not be a pushed repository beside ``entries``, or None:
    its first component is a host (the form of http(s) downloads' names,
    present or not), or a download is served under it (any tag, any registry)."""
    if is_host_name(name):
        return (
            f"{name[:255]}: a name whose first component is a host (has a '.', or is "
            "localhost) is the name of downloaded content (<host>[-<port>]/<path>)"
        )
    for entry in entries:
        s = served(entry) if not is_pushed(entry) else None
        if s is not None and s.name == name:
            return f"{name}: this name belongs to downloaded content in the cache"
        m = served_as_modelpack(entry) if not is_pushed(entry) else None
        if m is not None and m.name == name:
            return f"{name}: this name belongs to a model in the cache (served as ModelPack)"
    return None


@attrs.frozen
class Served:
    registry: str | None
    name: str
    tag: str | None
    entry: Entry


def served(entry: Entry) -> Served | None:
    """How ``entry`` appears under /v2, or None when it has no manifest to serve."""
    if entry.descriptor.media_type not in artifact.MANIFEST_MEDIA_TYPES or not entry.complete:
        return None
    rest = entry.reference
    registry = None
    if entry.url.startswith(("oci://", "ollama://")) and "/" in rest:
        registry, rest = rest.split("/", 1)
        registry = normalize_registry(registry)
    tag: str | None = None
    if "@" in rest:
        rest = rest.split("@", 1)[0]
    elif ":" in rest.rsplit("/", 1)[-1]:
        rest, tag = rest.rsplit(":", 1)
        if not TAG_RE.fullmatch(tag):
            return None
    if not NAME_RE.fullmatch(rest):
        return None
    return Served(registry, rest, tag, entry)


def served_as_modelpack(entry: Entry) -> Served | None:
    """How ``entry``'s ModelPack artifact appears under /v2 (``hf/<org>/<repo>:<revision>``,
    ... see :mod:`proxy.cache.modelpackout`), or None. The entry in the answer is a copy
    whose descriptor and reference are the artifact's, so that it is what a tag serves."""
    if not entry.complete:
        return None
    found = modelpackout.recorded(entry.descriptor.annotations)
    if found is None:
        return None
    reference, manifest = found
    name, _, tag = reference.rpartition(":")
    if not NAME_RE.fullmatch(name) or not TAG_RE.fullmatch(tag):
        return None
    as_modelpack = attrs.evolve(entry, descriptor=manifest, reference=reference, files=())
    return Served(None, name, tag, as_modelpack)


class Catalog:
    """Names and tags of a store, as the distribution API sees them."""

    def __init__(self, store: Store, upstream: str | None = None) -> None:
        self._store = store
        self._upstream = normalize_registry(upstream) if upstream else None

    def touch_blob(self, hex_: str) -> None:
        self._store.touch_blob(hex_)

    def reading(self, hex_: str) -> Callable[[], None]:
        return self._store.reading(hex_)

    def _all(self) -> list[Served]:
        out = []
        for entry in self._store.entries():
            for s in (served(entry), served_as_modelpack(entry)):
                if s is not None:
                    out.append(s)
        return out

    def _in_scope(self, items: list[Served], ns: str | None) -> list[Served]:
        if ns:
            registry = normalize_registry(ns)
            return [s for s in items if s.registry == registry]
        if self._upstream is not None:
            return _held_by_pushes([s for s in items if s.registry in (self._upstream, None)])
        return _held_by_pushes(items)

    def push_conflict(self, name: str) -> str | None:
        """Why ``name`` may not be pushed to (see :func:`push_conflict`), or None."""
        return push_conflict(name, self._store.entries())

    def resolve(self, name: str, tag: str, ns: str | None) -> Entry | None:
        """The entry serving ``name:tag``, or None (unknown or ambiguous)."""
        everything = self._all()
        hits = [s for s in self._in_scope(everything, ns) if s.name == name and s.tag == tag]
        if not hits and ns is None and self._upstream is not None:
            # The Ollama client never sends ?ns=: its models are found by name
            # even when --upstream names another registry.
            hits = [
                s
                for s in _held_by_pushes(everything)
                if s.name == name and s.tag == tag and s.entry.url.startswith("ollama://")
            ]
        digests = {s.entry.descriptor.digest for s in hits}
        if len(digests) != 1:
            return None
        return hits[0].entry

    def tags(self, name: str, ns: str | None) -> list[str] | None:
        """Tags of ``name`` (None when the name is unknown)."""
        items = [s for s in self._in_scope(self._all(), ns) if s.name == name]
        if not items:
            return None
        return sorted({s.tag for s in items if s.tag is not None})

    def entries_of(self, name: str, ns: str | None) -> list[Entry]:
        """The entries served under ``name`` (any tag, or by digest)."""
        return [s.entry for s in self._in_scope(self._all(), ns) if s.name == name]

    def manifests_of(self, name: str, ns: str | None) -> list[Descriptor]:
        """The manifests of repository ``name``: its entries' and the ones inside them."""
        out: dict[object, Descriptor] = {}
        for entry in self.entries_of(name, ns):
            for d in (entry.descriptor, *entry.files):
                if d.media_type in artifact.MANIFEST_MEDIA_TYPES:
                    out.setdefault(d.digest, d)
        return list(out.values())

    def names(self, ns: str | None = None) -> list[str]:
        return sorted({s.name for s in self._in_scope(self._all(), ns)})

    def known_media_type(self, digest: object) -> str | None:
        """The media type some entry records for a blob, if any does."""
        for entry in self._store.entries():
            if entry.descriptor.digest == digest:
                return entry.descriptor.media_type
            for f in entry.files:
                if f.digest == digest:
                    return f.media_type
        return None
