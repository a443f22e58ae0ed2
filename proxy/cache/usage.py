"""How much of the disk the cache uses (``storage-manager du``, ``GET /admin/du``).

Blocking: call it from a thread. Shared blobs count once; "unreferenced" is
what ``gc`` would free from ``blobs/``. The regular files under ``views/``
(tar layers unpacked into model directories, :mod:`proxy.cache.modelviews`)
count too: they are bytes of the cache, bounded by ``--max-cache-size`` like
blobs (links count nothing).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Set
from pathlib import Path
from typing import Any

import attrs

from proxy.cache.layout import Layout
from proxy.types import HEX_RE, Digest


@attrs.frozen
class Usage:
    blobs: int
    blob_bytes: int
    unreferenced_bytes: int
    ingest_bytes: int
    filesystem_bytes: int
    filesystem_free: int
    view_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.ingest_bytes + self.view_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs,
            "blobBytes": self.blob_bytes,
            "unreferencedBytes": self.unreferenced_bytes,
            "ingestBytes": self.ingest_bytes,
            "viewBytes": self.view_bytes,
            "totalBytes": self.total_bytes,
            "filesystem": {"bytes": self.filesystem_bytes, "free": self.filesystem_free},
        }


def usage(layout: Layout, referenced: Set[Digest]) -> Usage:
    count = total = unreferenced = 0
    for algorithm, pattern in HEX_RE.items():
        where = layout.algorithm_dir(algorithm)
        if algorithm != "sha256" and not where.is_dir():
            continue  # blobs/sha512 is made with its first blob
        for entry in os.scandir(where):
            if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            size = entry.stat(follow_symlinks=False).st_size
            count += 1
            total += size
            if Digest(entry.name, algorithm) not in referenced:
                unreferenced += size
    ingest = 0
    for dirpath, _dirs, files in os.walk(layout.ingest_dir):
        for name in files:
            try:
                ingest += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue  # finished meanwhile
    fs = os.statvfs(layout.root)
    return Usage(
        count,
        total,
        unreferenced,
        ingest,
        fs.f_blocks * fs.f_frsize,
        fs.f_bavail * fs.f_frsize,
        _files_bytes(layout.root / "views"),
    )


def _files_bytes(top: Path) -> int:
    """Bytes of the regular files below ``top`` (never following a link)."""
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
