"""``storage-manager verify``: re-hash every blob and check ``index.json``.

What it checks, the guarantees of :mod:`proxy.cache.layout`:

* every file in ``blobs/sha256/`` is named by a sha256 digest and hashes to
  that name (``corrupt`` otherwise, ``unreadable`` if it cannot be read, and
  ``stray`` for a file whose name is not a digest);
* ``index.json`` parses as an OCI image index, and every manifest it names is
  present, with the config and layers of every present manifest (``missing``).
  Absent children of an image index are allowed (other platforms are not
  fetched); so are the layers of a mirror's tag-only fill (kind ``mirror``).
  A blob named as a manifest is read only if it is no larger than a manifest
  may be (``manifest`` otherwise: it is not one, and is not followed).

Reading needs no lock, so it runs beside a live server. ``quarantine`` moves
corrupt blobs to ``<cache>/quarantine/`` (never served) and drops the
entries that need them from ``index.json``, so the next ``POST`` fetches them
again; it changes the cache, so it takes the write lock.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from proxy.cache import artifact
from proxy.cache.durable import fsync_dir
from proxy.cache.layout import Layout, NotAManifest
from proxy.types import (
    ANNOTATION_KIND,
    ANNOTATION_REF_NAME,
    ANNOTATION_URL,
    SHA256_HEX_RE,
    SHA512_HEX_RE,
    Descriptor,
    Digest,
)
from proxy.units import human_size, plural


@attrs.frozen
class Problem:
    """One thing wrong with the cache."""

    kind: str  # corrupt | unreadable | stray | missing | manifest | index
    path: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return attrs.asdict(self)


@attrs.frozen
class Report:
    blobs: int
    bytes: int
    problems: tuple[Problem, ...]
    quarantined: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # entries removed from index.json by quarantine

    @property
    def corrupt(self) -> list[Digest]:
        return [
            Digest.from_file_name(Path(p.path).name) for p in self.problems if p.kind == "corrupt"
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "problems": [p.to_json() for p in self.problems],
            "quarantined": list(self.quarantined),
            "droppedEntries": list(self.dropped),
        }


def hash_file(path: Path) -> tuple[Path, int, str | None, str | None]:
    """(path, size, hex digest, error); sha512 for a name of 128 hex
    (``blobs/sha512/``), else sha256."""
    algorithm = "sha512" if len(path.name) == 128 else "sha256"
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, algorithm).hexdigest()
            size = f.tell()
    except OSError as e:
        return path, 0, None, e.strerror or str(e)
    return path, size, digest, None


Progress = Callable[[int, int, int, int], None]  # blobs done, of blobs, bytes done, of bytes


def check_blobs(
    layout: Layout, workers: int | None = None, progress: Progress | None = None
) -> tuple[int, int, list[Problem]]:
    """Re-hash every blob: (count, bytes, problems). Hashing runs in threads
    (``hashlib`` releases the GIL), one per CPU by default; ``progress`` is
    called after each blob."""
    problems: list[Problem] = []
    paths: list[Path] = []
    for p in sorted(layout.blobs_dir.iterdir()):
        if SHA256_HEX_RE.fullmatch(p.name) and p.is_file():
            paths.append(p)
        else:
            problems.append(Problem("stray", str(p), "not a blob: its name is not a sha256"))
    sha512_dir = layout.algorithm_dir("sha512")
    for p in sorted(sha512_dir.iterdir()) if sha512_dir.is_dir() else []:
        if SHA512_HEX_RE.fullmatch(p.name) and p.is_file():
            paths.append(p)
        else:
            problems.append(Problem("stray", str(p), "not a blob: its name is not a sha512"))
    total = 0
    expected = sum(_size(p) for p in paths) if progress is not None else 0
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for done, (path, size, digest, error) in enumerate(pool.map(hash_file, paths), 1):
            total += size
            if progress is not None:
                progress(done, len(paths), total, expected)
            if error is not None:
                problems.append(Problem("unreadable", str(path), error))
            elif digest != path.name:
                algorithm = path.parent.name
                problems.append(
                    Problem("corrupt", str(path), f"content hashes to {algorithm}:{digest}")
                )
    return len(paths), total, problems


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _entry_name(raw: dict[str, Any]) -> str:
    ann = raw.get("annotations") or {}
    return str(ann.get(ANNOTATION_URL) or ann.get(ANNOTATION_REF_NAME) or raw.get("digest"))


def needed(
    layout: Layout, desc: Descriptor, kind: str, invalid: list[tuple[Digest, str]] | None = None
) -> Iterator[tuple[Digest, bool]]:
    """Every blob ``desc`` reaches: (digest, must be present). A blob named as
    a manifest but larger than a manifest may be is not read (nor followed):
    it is added to ``invalid`` with the reason."""
    todo: list[tuple[Descriptor, bool]] = [(desc, True)]
    seen: set[Digest] = set()
    while todo:
        d, required = todo.pop()
        if d.digest in seen:
            continue
        seen.add(d.digest)
        yield d.digest, required
        if d.media_type not in artifact.MANIFEST_MEDIA_TYPES or not layout.has_blob(d.digest):
            continue
        try:
            children = artifact.children(d.media_type, layout.read_manifest(d.digest))
        except NotAManifest as e:
            if invalid is not None:
                invalid.append((d.digest, str(e)))
            continue
        except (OSError, ValueError):
            continue  # its own hash check reports it
        is_index = d.media_type in artifact.INDEX_MEDIA_TYPES
        todo.extend((c, not is_index and kind != "mirror") for c in children)


def check_index(layout: Layout) -> tuple[list[Problem], dict[str, set[Digest]]]:
    """Problems of ``index.json``, and the blobs each entry needs."""
    try:
        index = layout.read_index()
    except (OSError, ValueError) as e:
        return [Problem("index", str(layout.index_path), f"unreadable: {e}")], {}
    problems: list[Problem] = []
    needs: dict[str, set[Digest]] = {}
    for raw in index["manifests"]:
        try:
            desc = Descriptor.from_json(raw)
        except ValueError as e:
            problems.append(Problem("index", str(layout.index_path), f"bad descriptor: {e}"))
            continue
        name = _entry_name(raw)
        kind = desc.annotations.get(ANNOTATION_KIND, "")
        needs[name] = set()
        invalid: list[tuple[Digest, str]] = []
        for digest, required in needed(layout, desc, kind, invalid):
            needs[name].add(digest)
            if required and not layout.has_blob(digest):
                problems.append(
                    Problem("missing", str(layout.blob_path(digest)), f"needed by {name}")
                )
        for digest, reason in invalid:
            problems.append(
                Problem("manifest", str(layout.blob_path(digest)), f"needed by {name}: {reason}")
            )
    return problems, needs


def verify(layout: Layout, workers: int | None = None, progress: Progress | None = None) -> Report:
    count, size, problems = check_blobs(layout, workers, progress)
    index_problems, _ = check_index(layout)
    return Report(count, size, tuple(problems + index_problems))


def quarantine(layout: Layout, report: Report) -> Report:
    """Move the corrupt blobs out of ``blobs/`` and drop the entries that need
    them from ``index.json`` (blocking; the caller holds the write lock)."""
    bad = set(report.corrupt)
    if not bad:
        return report
    where = layout.root / "quarantine"
    where.mkdir(exist_ok=True)
    moved = []
    for digest in sorted(bad):
        os.replace(layout.blob_path(digest), where / digest.hex)
        moved.append(str(where / digest.hex))
    fsync_dir(layout.blobs_dir)
    _, needs = check_index(layout)
    index = layout.read_index()
    keep, dropped = [], []
    for raw in index["manifests"]:
        if needs.get(_entry_name(raw), set()) & bad:
            dropped.append(_entry_name(raw))
        else:
            keep.append(raw)
    if dropped:
        layout.write_index({**index, "manifests": keep})
    return attrs.evolve(report, quarantined=tuple(moved), dropped=tuple(dropped))


def render(report: Report) -> str:
    """The report for a terminal."""
    lines = [f"{plural(report.blobs, 'blob')}, {human_size(report.bytes)} checked"]
    lines += [f"{p.kind}: {p.path}: {p.detail}" for p in report.problems]
    lines += [f"quarantined: {p}" for p in report.quarantined]
    lines += [f"dropped entry: {u}" for u in report.dropped]
    lines.append("ok" if not report.problems else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)
