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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from proxy.cache import grammar
from proxy.cache.layout import OCI_LAYOUT, Layout
from proxy.cache.store import Entry
from proxy.errors import BadContent, BadRequest
from proxy.types import Digest

_BLOB_RE = re.compile(r"(?:\./)?blobs/(?:sha256/([a-f0-9]{64})|sha512/([a-f0-9]{128}))")
CHUNK = 4 * 1024 * 1024
# Bounds on what a bundle may make this process read or hold (a compressed
# tar can expand a thousandfold; a JSON document tenfold in memory).
MAX_INDEX = 16 * 1024 * 1024  # index.json bytes
MAX_INDEX_CONTAINERS = 200_000  # objects and arrays in index.json
MAX_OCI_LAYOUT = 4096
MAX_MEMBERS = 100_000  # tar members (or files of a layout directory)
MAX_HEADER = 1024 * 1024  # one pax / GNU long-name header
MAX_HEADERS = 64 * 1024 * 1024  # all of them

# Called with the bytes of each new blob before it is staged; raises DiskFull
# (507) when they would not fit in the cache.
Room = Callable[[int], None]


@attrs.frozen
class LocalLayout:
    """An OCI layout on this machine, opened once (``file://`` imports): a
    descriptor of the layout directory or of the tar file, so what is read is
    what was checked, whatever happens to the path afterwards."""

    fd: int
    directory: bool
    shown: str  # the path as the client gave it, for messages

    def close(self) -> None:
        os.close(self.fd)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses pax and GNU long-name headers over MAX_HEADER (tarfile reads
    them into memory whole), and more than MAX_HEADERS of them in all."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        ):
            total = getattr(tarfile_, "_sm_header_bytes", 0) + self.size
            if self.size > MAX_HEADER or total > MAX_HEADERS:
                raise tarfile.HeaderError("extended tar header too large")
            tarfile_._sm_header_bytes = total  # type: ignore[attr-defined]
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


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
                info = tar.gettarinfo(fileobj=f, arcname=f"blobs/{d.algorithm}/{d.hex}")
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


def stage(
    layout: Layout,
    source: IO[bytes] | LocalLayout,
    directory: Path,
    room: Room | None = None,
    keep: Callable[[Digest], None] | None = None,
) -> Staged:
    """Read a layout -- a tar stream, or a local layout (directory or tar) --
    into ``directory``, verifying every blob; raise BadRequest / BadContent /
    DiskFull (and leave nothing) on a bad bundle or one that does not fit.

    Bounded: index.json (MAX_INDEX), oci-layout, tar headers and the member
    count are capped, each new blob is announced to ``room`` before a byte of
    it is written, and a blob the cache has is skipped only at its own size
    (and handed to ``keep``, which holds it so no eviction removes it)."""
    directory.mkdir(parents=True, exist_ok=False)
    try:
        if isinstance(source, LocalLayout) and not source.directory:
            with open(source.fd, "rb", closefd=False) as f:
                f.seek(0)
                return _stage(layout, _tar_members(f), directory, room, keep)
        members = _dir_members(source) if isinstance(source, LocalLayout) else _tar_members(source)
        return _stage(layout, members, directory, room, keep)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def local_layout(fd: int, shown: str) -> LocalLayout | None:
    """The layout ``fd`` opens (a directory with ``oci-layout`` and
    ``index.json``, or an uncompressed tar holding ``oci-layout`` at its top),
    or None when it is not one. Blocking; ``fd`` stays open either way."""
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        for name in ("oci-layout", "index.json"):
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    return None
            except OSError:
                return None
        return LocalLayout(fd, True, shown)
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        head = os.pread(fd, 512, 0)
        # Only an uncompressed tar (ustar/GNU magic): never decompress to find out.
        if len(head) < 512 or head[257:262] != b"ustar":
            return None
        with (
            open(fd, "rb", closefd=False) as f,
            tarfile.open(fileobj=f, mode="r:", tarinfo=_BoundedTarInfo) as tar,
        ):
            for n, member in enumerate(tar):  # headers only: data is seeked past
                if member.name.removeprefix("./") == "oci-layout":
                    return LocalLayout(fd, False, shown)
                if n >= 10_000:
                    break
    except (tarfile.TarError, OSError):
        return None
    return None


def _tar_members(stream: IO[bytes]) -> Iterator[tuple[str, int, IO[bytes] | None]]:
    """(name, size, file or None for a directory) of a tar stream, in order."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_BoundedTarInfo)  # noqa: SIM115
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


def _dir_members(source: LocalLayout) -> Iterator[tuple[str, int, IO[bytes] | None]]:
    """The same for a layout directory, read through its descriptor (symlinks
    are not followed, nothing is looked up by path from outside it)."""
    for dirpath, dirs, files, dfd in os.fwalk(".", dir_fd=source.fd):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(dirpath, name))
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise BadRequest(f"{rel[:100]!r}: only regular files belong in a layout")
                yield rel, st.st_size, f


def _read_bounded(f: IO[bytes], size: int, limit: int, name: str) -> bytes:
    if size > limit:
        raise BadRequest(f"{name} is larger than {limit} bytes")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise BadRequest(f"{name} is larger than {limit} bytes")
    return data


def _parse_index(data: bytes) -> dict[str, Any]:
    # json holds ~25 bytes per container for each byte of "{}": count them first.
    if data.count(b"{") + data.count(b"[") > MAX_INDEX_CONTAINERS:
        raise BadRequest(f"index.json has more than {MAX_INDEX_CONTAINERS} objects")
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise BadRequest("index.json is not an OCI image index")
    for raw in doc["manifests"]:
        ann = raw.get("annotations") if isinstance(raw, dict) else None
        if isinstance(ann, dict) and all(isinstance(v, str) for v in ann.values()):
            problem = grammar.annotations_problem(ann)
            if problem is not None:
                raise BadRequest(f"bundle index: {problem}")
    return doc


def _stage(
    layout: Layout,
    members: Iterator[tuple[str, int, IO[bytes] | None]],
    directory: Path,
    room: Room | None,
    keep: Callable[[Digest], None] | None,
) -> Staged:
    index: dict[str, Any] | None = None
    layout_seen = False
    new: list[Digest] = []
    present: list[Digest] = []
    seen: set[str] = set()
    try:
        for n, (name, size, f) in enumerate(members):
            if n >= MAX_MEMBERS:
                raise BadRequest(f"a layout of more than {MAX_MEMBERS} files")
            name = name.removeprefix("./")
            if f is None:
                continue
            if name in seen:
                raise BadRequest(f"{name[:100]!r} is twice in the bundle")
            seen.add(name)
            if name == "oci-layout":
                doc = json.loads(_read_bounded(f, size, MAX_OCI_LAYOUT, name))
                if not isinstance(doc, dict) or doc.get("imageLayoutVersion") != "1.0.0":
                    raise BadRequest("oci-layout is not imageLayoutVersion 1.0.0")
                layout_seen = True
            elif name == "index.json":
                index = _parse_index(_read_bounded(f, size, MAX_INDEX, name))
            elif m := _BLOB_RE.fullmatch(name):
                digest = Digest(m.group(1)) if m.group(1) else Digest(m.group(2), "sha512")
                have = layout.blob_size(digest)
                if have is not None:
                    if have != size:
                        raise BadRequest(f"blob {digest} is {size} bytes in the bundle, not {have}")
                    if keep is not None:
                        keep(digest)
                    present.append(digest)
                    continue  # the stream moves past it
                if room is not None:
                    room(size)
                _copy_verified(f, directory / digest.hex, digest, size)
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


def _copy_verified(src: IO[bytes], dst: Path, digest: Digest, size: int) -> None:
    """Copy exactly ``size`` bytes, hashing them: a file that has more or
    fewer (a layout file that changes meanwhile) or other bytes is refused."""
    h = hashlib.new(digest.algorithm)
    done = 0
    with open(dst, "wb") as out:
        while chunk := src.read(min(CHUNK, size + 1 - done)):
            done += len(chunk)
            if done > size:
                raise BadContent(f"blob {digest} in the bundle is longer than {size} bytes")
            h.update(chunk)
            out.write(chunk)
    if done != size or h.hexdigest() != digest.hex:
        raise BadContent(
            f"blob {digest} in the bundle hashes to {digest.algorithm}:{h.hexdigest()}"
        )
