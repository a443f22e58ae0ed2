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
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator
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


def stage(layout: Layout, source: IO[bytes] | Path, directory: Path) -> Staged:
    """Read a layout -- a tar stream, or a layout directory -- into
    ``directory``, verifying every blob; raise BadRequest / BadContent (and
    leave nothing) on a bad bundle."""
    directory.mkdir(parents=True, exist_ok=False)
    try:
        return _stage(layout, source, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def is_layout(path: str) -> bool:
    """Whether ``path`` is an OCI image layout: a directory with ``oci-layout``,
    or a tar that holds one at its top."""
    p = Path(path)
    if p.is_dir():
        return (p / "oci-layout").is_file() and (p / "index.json").is_file()
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(512)
        # Only an uncompressed tar (ustar/GNU magic): never decompress to find out.
        if len(head) < 512 or head[257:262] != b"ustar":
            return False
        with tarfile.open(p, mode="r:") as tar:  # headers only: data is seeked past
            for n, member in enumerate(tar):
                if member.name.removeprefix("./") == "oci-layout":
                    return True
                if n >= 10_000:
                    break
    except (tarfile.TarError, OSError):
        return False
    return False


def stage_path(layout: Layout, path: str, directory: Path) -> Staged:
    """:func:`stage` of a layout directory or a layout tar on disk."""
    if Path(path).is_dir():
        return stage(layout, Path(path), directory)
    with open(path, "rb") as f:
        return stage(layout, f, directory)


def _tar_members(stream: IO[bytes]) -> Iterator[tuple[str, int, IO[bytes] | None]]:
    """(name, size, file or None for a directory) of a tar stream, in order."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed below
    except tarfile.TarError as e:
        raise BadRequest(f"not a tar archive: {e}") from None
    with tar:
        for member in tar:
            if member.isdir():
                yield member.name, 0, None
                continue
            if not member.isfile():
                raise BadRequest(f"{member.name[:100]!r}: only regular files belong in a layout")
            yield member.name, member.size, tar.extractfile(member)


def _dir_members(root: Path) -> Iterator[tuple[str, int, IO[bytes] | None]]:
    """The same for a layout directory (symlinks are not followed)."""
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise BadRequest(f"{rel[:100]!r}: only regular files belong in a layout")
                yield rel, os.fstat(f.fileno()).st_size, f


def _stage(layout: Layout, source: IO[bytes] | Path, directory: Path) -> Staged:
    index: dict[str, Any] | None = None
    layout_seen = False
    new: list[Digest] = []
    present: list[Digest] = []
    members = _dir_members(source) if isinstance(source, Path) else _tar_members(source)
    try:
        for name, size, f in members:
            name = name.removeprefix("./")
            if f is None:
                continue
            if name == "oci-layout":
                doc = json.loads(f.read(4096))
                if not isinstance(doc, dict) or doc.get("imageLayoutVersion") != "1.0.0":
                    raise BadRequest("oci-layout is not imageLayoutVersion 1.0.0")
                layout_seen = True
            elif name == "index.json":
                if size > MAX_INDEX:
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
    except (tarfile.TarError, ValueError, UnicodeDecodeError, OSError) as e:
        if isinstance(e, BadRequest | BadContent):
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
    if h.hexdigest() != digest.hex:
        raise BadContent(f"blob {digest} in the bundle hashes to sha256:{h.hexdigest()}")
