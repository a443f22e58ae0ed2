"""OCI image layout tarballs: ``storage-manager export`` and ``import``.

A bundle is a standard OCI image layout in a tar (``oci-layout``,
``index.json``, ``blobs/sha256/<hex>``), so ``skopeo copy oci-archive:...``,
oras and umoci read it. The index holds the exported entries' descriptors
as they are in the cache, annotations included (source URL, reference name),
and the blobs are every present blob those entries reach (absent children
of an image index -- other platforms -- stay absent, as the layout allows).

Export only reads the cache (blobs are immutable, index.json is replaced
atomically), so it runs beside a live server. Import goes through the one
writer: :func:`stage` reads a tar stream and writes each blob into a staging
directory under ``ingest/``, hashing while it copies and refusing any blob
whose bytes do not match its name, skipping blobs the cache already has;
the caller then commits the staged blobs and adds the entries. Everything
here blocks: run it in a thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import attrs

from proxy.cache.layout import OCI_LAYOUT, Layout
from proxy.cache.store import Entry
from proxy.errors import BadContent, BadRequest
from proxy.types import Digest

_BLOB_RE = re.compile(r"(?:\./)?blobs/sha256/([a-f0-9]{64})")
CHUNK = 4 * 1024 * 1024
MAX_INDEX = 64 * 1024 * 1024


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def export(layout: Layout, entries: Iterable[Entry], out: IO[bytes]) -> tuple[int, int]:
    """Write the entries as an OCI layout tar to ``out``: (blobs, bytes)."""
    chosen = list(entries)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [e.index_json() for e in chosen],
    }
    digests = sorted({d for e in chosen for d in e.blobs})
    count = total = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps(OCI_LAYOUT).encode())
        _add_bytes(tar, "index.json", json.dumps(index, indent=2).encode() + b"\n")
        for d in digests:
            path = layout.blob_path(d)
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue  # an absent child of an index: legitimately not here
            with f:
                info = tar.gettarinfo(fileobj=f, arcname=f"blobs/sha256/{d.hex}")
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, "", ""
                tar.addfile(info, f)
                count += 1
                total += info.size
    return count, total


@attrs.frozen
class Staged:
    """What :func:`stage` read: the bundle's index and the blobs to commit."""

    directory: Path
    index: dict[str, Any]
    new: tuple[Digest, ...]  # staged in ``directory``, named by their hex
    present: tuple[Digest, ...]  # already in the cache: skipped


def stage(layout: Layout, stream: IO[bytes], directory: Path) -> Staged:
    """Read a layout tar from ``stream`` into ``directory``, verifying every
    blob; raise BadRequest / BadContent (and leave nothing) on a bad bundle."""
    directory.mkdir(parents=True, exist_ok=False)
    try:
        return _stage(layout, stream, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _stage(layout: Layout, stream: IO[bytes], directory: Path) -> Staged:
    index: dict[str, Any] | None = None
    layout_seen = False
    new: list[Digest] = []
    present: list[Digest] = []
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed below
    except tarfile.TarError as e:
        raise BadRequest(f"not a tar archive: {e}") from None
    with tar:
        try:
            for member in tar:
                name = member.name
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BadRequest(f"{name[:100]!r}: only regular files belong in a layout")
                f = tar.extractfile(member)
                assert f is not None
                if name.removeprefix("./") == "oci-layout":
                    doc = json.loads(f.read(4096))
                    if not isinstance(doc, dict) or doc.get("imageLayoutVersion") != "1.0.0":
                        raise BadRequest("oci-layout is not imageLayoutVersion 1.0.0")
                    layout_seen = True
                elif name.removeprefix("./") == "index.json":
                    if member.size > MAX_INDEX:
                        raise BadRequest("index.json is too large")
                    doc = json.loads(f.read())
                    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
                        raise BadRequest("index.json is not an OCI image index")
                    index = doc
                elif m := _BLOB_RE.fullmatch(name):
                    digest = Digest(m.group(1))
                    if layout.has_blob(digest):
                        present.append(digest)
                        continue  # the stream moves past it
                    _copy_verified(f, directory / digest.hex, digest)
                    new.append(digest)
                else:
                    raise BadRequest(f"{name[:100]!r} does not belong in an OCI layout")
        except (tarfile.TarError, ValueError, UnicodeDecodeError) as e:
            if isinstance(e, BadRequest):
                raise
            raise BadRequest(f"unreadable bundle: {e}") from None
    if not layout_seen or index is None:
        raise BadRequest("not an OCI image layout (no oci-layout or index.json)")
    return Staged(directory, index, tuple(new), tuple(present))


def _copy_verified(src: IO[bytes], dst: Path, digest: Digest) -> None:
    h = hashlib.sha256()
    with open(dst, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != digest.hex:
        raise BadContent(f"blob {digest} in the bundle hashes to sha256:{h.hexdigest()}")
