"""How much of the disk the cache uses (``storage-manager du``, ``GET /admin/du``).

Blocking: call it from a thread. Shared blobs count once; "unreferenced" is
what ``gc`` would free from ``blobs/``.
"""

from __future__ import annotations

import os
from collections.abc import Set
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

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.ingest_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs,
            "blobBytes": self.blob_bytes,
            "unreferencedBytes": self.unreferenced_bytes,
            "ingestBytes": self.ingest_bytes,
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
        count, total, unreferenced, ingest, fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
    )
