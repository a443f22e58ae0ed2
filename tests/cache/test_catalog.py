"""Name mapping of entries to /v2 names and tags (DESIGN.md, OCI distribution API)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor

from proxy.cache.catalog import Catalog, normalize_registry, served
from proxy.cache.layout import Layout
from proxy.cache.store import Entry, Store, new_entry
from proxy.types import MEDIA_TYPE_IMAGE_MANIFEST, Descriptor, Digest


def entry(url: str, reference: str | None, n: int, kind: str = "oci") -> Entry:
    desc = Descriptor(MEDIA_TYPE_IMAGE_MANIFEST, Digest(f"{n:064x}"), 10)
    return new_entry(url, kind, desc, [desc], desc, blobs=set(), reference=reference)


def test_docker_hub_aliases_are_one_registry() -> None:
    for alias in ("docker.io", "index.docker.io", "registry-1.docker.io", "Docker.IO"):
        assert normalize_registry(alias) == "docker.io"
    assert normalize_registry("ghcr.io") == "ghcr.io"


def test_served_names() -> None:
    s = served(entry("oci://docker.io/library/alpine:3", "docker.io/library/alpine:3", 1))
    assert s is not None and (s.registry, s.name, s.tag) == ("docker.io", "library/alpine", "3")
    s = served(entry("oci://r:5000/a@sha256:" + "1" * 64, "r:5000/a@sha256:" + "1" * 64, 2))
    assert s is not None and (s.registry, s.name, s.tag) == ("r:5000", "a", None)
    s = served(entry("https://h/m.gguf", None, 3, kind="file"))
    assert s is not None and (s.registry, s.name, s.tag) == (None, "h/m.gguf", "latest")


def test_catalog_resolution(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    store = Store(layout, reactor)
    for e in (
        entry("oci://docker.io/library/alpine:3", "docker.io/library/alpine:3", 1),
        entry("oci://quay.io/library/alpine:3", "quay.io/library/alpine:3", 2),
        entry("https://h/m.gguf", None, 3, kind="file"),
    ):
        store._entries[e.url] = e  # type: ignore[attr-defined]
    cat = Catalog(store)
    hub = cat.resolve("library/alpine", "3", "registry-1.docker.io")
    assert hub is not None and hub.descriptor.digest == Digest(f"{1:064x}")
    quay = cat.resolve("library/alpine", "3", "quay.io")
    assert quay is not None and quay.descriptor.digest == Digest(f"{2:064x}")
    assert cat.resolve("library/alpine", "3", None) is None  # ambiguous
    assert cat.resolve("h/m.gguf", "latest", None) is not None
    assert cat.resolve("h/m.gguf", "latest", "docker.io") is None
    assert Catalog(store, upstream="index.docker.io").resolve("library/alpine", "3", None) == hub
    assert cat.names() == ["h/m.gguf", "library/alpine"]
    assert cat.tags("library/alpine", "quay.io") == ["3"]
    assert cat.tags("nope", None) is None
