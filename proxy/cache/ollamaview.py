"""Ollama's models directory over the cache: ``OLLAMA_MODELS=<cache>/views/ollama``.

Ollama finds a model by name in its models directory (ollama's
``server/modelpath.go`` and ``server/manifest.go``, now ``manifest/paths.go``,
``manifest/manifest.go`` and ``types/model/name.go``)::

    <cache>/views/ollama/
      manifests/<host>/<namespace>/<model>/<tag>   the manifest (a link to its blob)
      blobs/sha256-<hex>                           config and layers (links to blobs/sha256/<hex>)

``<host>`` is the registry (``registry.ollama.ai`` for ``ollama.com``, with
``:port`` when the URL had one), as ``model.Name.Filepath`` joins host,
namespace, model and tag; blobs are named ``sha256-<hex>`` as ``BlobsPath``
writes ``sha256:<hex>`` (only sha256). Ollama opens both by path, following the
links, reads the manifest's config and layers by digest and hashes the
manifest's bytes for its digest: the links name the blobs this cache stores
byte for byte. Derived from the ``ollama://`` entries like every view
(:func:`proxy.cache.views.sync` does the linking and tidying).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from proxy.cache import artifact
from proxy.cache.layout import Layout
from proxy.cache.store import Entry
from proxy.cache.views import Parts, Unsafe, _ensure_link, _plain, _prune

log = logging.getLogger(__name__)

ROOT = "ollama"


def models_dir(layout: Layout) -> Path:
    """What ``OLLAMA_MODELS`` is set to."""
    return layout.root / "views" / ROOT


def manifest_parts(reference: str) -> Parts | None:
    """``manifests/<host>/<namespace>/<model>/<tag>`` of an ``ollama://``
    entry's reference (``<host>/<namespace>/<model>:<tag>``), None if it is not one."""
    host, _, rest = reference.partition("/")
    repo, _, tag = rest.rpartition(":")
    names = (host, *repo.split("/"), tag)
    if len(names) != 4:
        return None
    try:
        return ("manifests", *(_plain(n) for n in names))
    except Unsafe:
        return None


def links(layout: Layout, entries: list[Entry]) -> dict[Parts, str]:
    """Every link of the view below ``views/ollama``: its parts -> target from there."""
    out: dict[Parts, str] = {}
    for entry in entries:
        if entry.kind != "ollama" or not entry.complete:
            continue
        manifest = manifest_parts(entry.reference)
        if manifest is None or entry.descriptor.digest.algorithm != "sha256":
            log.warning("ollama view: no view for %r", entry.url[:200])
            continue
        # From views/ollama/<parts[:-1]> to the cache's root: one "../" per part, then views/.
        ups = "../" * (len(manifest) + 1)
        out.setdefault(manifest, f"{ups}blobs/sha256/{entry.descriptor.digest.hex}")
        for f in entry.files:
            if f.media_type in artifact.MANIFEST_MEDIA_TYPES or f.digest.algorithm != "sha256":
                continue
            out.setdefault(
                ("blobs", f"sha256-{f.digest.hex}"), f"../../../blobs/sha256/{f.digest.hex}"
            )
    return out


def sync(layout: Layout, entries: list[Entry]) -> None:
    """Make ``views/ollama`` match the ``ollama://`` entries (blocking)."""
    wanted = links(layout, entries)
    where = models_dir(layout)
    if not wanted and not where.is_dir():
        return
    views = where.parent
    try:
        views.mkdir(exist_ok=True)
        top = os.open(views, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        log.warning("ollama view: cannot open %s: %s", views, e)
        return
    try:
        keep: set[Parts] = set()
        for parts, target in wanted.items():
            link = (ROOT, *parts)
            try:
                _ensure_link(top, link, target)
                keep.add(link)
            except OSError as e:
                log.warning("ollama view: cannot link %s: %s", "/".join(link)[:300], e)
        try:
            _prune(top, ROOT, keep, {(ROOT, "manifests"), (ROOT, "blobs")})
        except (OSError, RecursionError) as e:
            log.warning("ollama view: cannot tidy: %s", e)
    finally:
        os.close(top)
