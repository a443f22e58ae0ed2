"""What a change of the entry table costs as the cache grows (issue 24, item 4).

For 1,000 / 10,000 / 100,000 entries (``--quick``: 1,000 / 10,000): a cache of that many
small-file entries is made directly on disk (:func:`make_cache`: a file blob, the empty
config and an artifact manifest each, as a POST of an http file leaves them, and one
``index.json``), then a fresh process (:mod:`tests.bench.index_child`) opens it as the server
does and measures the seconds to load it (the restart), its RSS per entry, and the seconds a
change takes until it is answered: ``Store.put`` one at a time and 8 at once, and
``Store.remove``, then the same with the views kept in line after each change as the server
does (:meth:`proxy.service.entries.Entries.sync_views`), and the seconds to start (the load and
the full sync of the views, as ``proxy.server.build`` does before ``/readyz``). A smaller
run goes through real POSTs: a server on a cache of 1,000 and of
10,000 entries, 8 clients POSTing small http files; the figure is the median seconds per
POST, and the server's start until ``/readyz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.cache import artifact
from proxy.cache.layout import Layout
from proxy.cache.store import Entry, new_entry
from proxy.types import (
    ANNOTATION_TITLE,
    EMPTY_DIGEST,
    EMPTY_JSON,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
    Digest,
)

if TYPE_CHECKING:
    from tests.bench.run import Bench

SCENARIO = "index_cost"
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
CHANGES = 64  # changes measured at each size
POST_SIZES = (1_000, 10_000)
POSTS = 64
REPO = Path(__file__).resolve().parents[2]


def _write_blob(layout: Layout, data: bytes) -> Digest:
    """A blob written without an fsync (a fixture, not a commit)."""
    digest = Digest.of(data)
    path = layout.blob_path(digest)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    return digest


def fabricate_entry(layout: Layout, name: str, *, write: bool) -> Entry:
    """The entry a POST of ``https://bench.invalid/<name>`` (a small file) makes, its blobs
    written when ``write``."""
    data = f"{name}\n".encode()
    file = Descriptor(
        "application/octet-stream",
        Digest(hashlib.sha256(data).hexdigest()),
        len(data),
        annotations={ANNOTATION_TITLE: name},
    )
    manifest_bytes = artifact.file_manifest([file])
    manifest = Descriptor(
        MEDIA_TYPE_IMAGE_MANIFEST,
        Digest(hashlib.sha256(manifest_bytes).hexdigest()),
        len(manifest_bytes),
    )
    if write:
        _write_blob(layout, data)
        _write_blob(layout, manifest_bytes)
        _write_blob(layout, EMPTY_JSON)
    return new_entry(
        f"https://bench.invalid/{name}",
        "file",
        manifest,
        [file],
        file,
        blobs={file.digest, EMPTY_DIGEST},
    )


def make_cache(root: Path, entries: int) -> Path:
    """A cache of ``entries`` small-file entries, written directly (no server), with
    the model directory a server makes for each (:mod:`proxy.cache.modelviews`)."""
    layout = Layout(root)
    layout.create()
    models = root / "views" / "models"
    models.mkdir(parents=True)
    manifests = []
    for i in range(entries):
        entry = fabricate_entry(layout, f"f{i:07d}", write=True)
        manifests.append(entry.index_json())
        directory = models / entry.descriptor.digest.hex
        directory.mkdir()
        (directory / f"f{i:07d}").symlink_to(f"../../../blobs/sha256/{entry.primary.digest.hex}")
    layout.write_index({"schemaVersion": 2, "manifests": manifests})
    return root


def child(cache: Path, changes: int) -> dict[str, Any]:
    """Open ``cache`` in a fresh process and measure (see :mod:`tests.bench.index_child`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.index_child", str(cache), str(changes)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_sizes(root: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """The store-level figures at each size (a fresh cache and process each)."""
    rows = []
    for n in sizes:
        t = time.perf_counter()
        cache = make_cache(root / f"c{n}", n)
        os.sync()  # a restart opens a cache at rest, not one whose writes are still under way
        made = time.perf_counter() - t
        r = child(cache, CHANGES)
        r["made_s"] = made
        r["rss_per_entry"] = (r["rss_after_load"] - r["rss_before"]) / max(1, n)
        rows.append(r)
    return rows


def run_index_cost(bench: Bench) -> None:
    sizes = list(QUICK_SIZES if bench.plan.quick else SIZES)
    bench.log(f"index_cost: caches of {', '.join(map(str, sizes))} entries")
    root = bench.tmp / "index-cost"
    try:
        bench.figures[SCENARIO] = {"store": measure_sizes(root, sizes)}
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        bench.fail(SCENARIO, "storage-manager", str(e))


def report_lines(bench: Bench) -> list[str]:
    """The curve: per-change cost, RSS per entry and load time against entries."""
    figures = bench.figures.get(SCENARIO)
    if not figures:
        return []
    lines = [
        "index_cost: entries | put (1 at a time) | put (8 at once, per change) | remove"
        " | put + views | remove + views | RSS per entry | load | start (load + views)"
    ]
    for r in figures["store"]:
        lines.append(
            f"  {r['entries']:>7} | {r['put_s_median'] * 1e3:.2f} ms | "
            f"{r['put8_s_per_change_median'] * 1e3:.2f} ms | {r['remove_s_median'] * 1e3:.2f} ms"
            f" | {r['put_views_s_median'] * 1e3:.2f} ms"
            f" | {r['remove_views_s_median'] * 1e3:.2f} ms"
            f" | {r['rss_per_entry'] / 1024:.2f} KiB | {r['load_s']:.2f} s"
            f" ({r['load_cpu_s']:.2f} s CPU) | {r['start_s']:.2f} s"
        )
    return lines


def main() -> None:
    """``python -m tests.bench.index_cost [N ...]``: the store-level curve alone."""
    import tempfile

    sizes = [int(a) for a in sys.argv[1:]] or list(SIZES)
    with tempfile.TemporaryDirectory(prefix="sm-index-") as tmp:
        for r in measure_sizes(Path(tmp), sizes):
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
