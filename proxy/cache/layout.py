"""The cache directory on disk: every path under it is named here.

The cache is a valid OCI image layout (image-spec ``image-layout.md``), so
skopeo, oras and umoci can read it directly, plus an ``ingest/`` area for
downloads in progress::

    <cache>/
      oci-layout                  {"imageLayoutVersion": "1.0.0"}
      index.json                  one manifest descriptor per cached URL (an
                                  "entry"); annotations:
                                    org.opencontainers.image.ref.name
                                        normalised reference (how /v2 serves it)
                                    io.nekko.storage-manager.url
                                        the source URL, secrets removed (the key)
                                  entries written by the Go storage-manager carry
                                  only ref.name = the raw URL; they are adopted
                                  as they are and never rewritten or collected.
      index.journal               entry changes since (at most) index.json's
                                  snapshot, one checksummed line each, replayed
                                  over it when the cache is read; index.json is
                                  rewritten from them (proxy.cache.journal)
      index.json.tmp-<pid>-<n>    index being replaced (write, fsync, rename);
                                  stray ones are removed at startup
      blobs/sha256/<hex>          verified, immutable, read-only (0444) content:
                                  files as downloaded, manifests, configs
      blobs/sha512/<hex>          the same, for content pushed by its sha512
                                  (made when the first one is committed)
      ingest/<key>/               one download in progress, key = sha256(URL), or
                                  sha256-<hex> for a blob known by its digest
        state.json                source URL (no secrets), validators (ETag,
                                  Last-Modified), expected/verified digest
        data                      the bytes received so far (resume point)
      ingest/small/blob-<n>.tmp   small blobs (manifests) being written; never
                                  resumed, removed at startup
      ingest/import-<uuid>/       an OCI layout being imported (POST /import):
                                  its new blobs, staged and verified before
                                  they are committed (proxy.cache.bundle)
      ingest/upload-<uuid>/data   a blob pushed through /v2 (--allow-push), uuid =
                                  32 hex: the bytes received so far, hashed as
                                  they are written, renamed into blobs/ only
                                  once they match the client's ?digest=
                                  (proxy.cache.uploads); no state file, an
                                  upload is resumed from its data alone
      last-used.json              {url: seconds since the epoch} of each entry's
                                  last use, written in batches (atomically);
                                  not part of the OCI layout, safe to delete
      .lock                       flock(2) held by the one process that writes;
                                  its text: the pid, then (once it listens) the
                                  address its API answers at, one per line, so
                                  the CLI finds the server of this cache

      ingest/unsynced/<hex>       a committed blob whose data may not be on disk
                                  yet (the boot id; proxy.cache.durable)

Invariants: a file appears under ``blobs/`` only by ``rename(2)`` after its
size and sha256 were checked, and either its data was fsync'd first or its
``ingest/unsynced/`` marker was (the data is fsync'd right after; a restart
after a power loss hashes a marked blob again before serving it); its
directory is fsync'd after the rename; ``index.json`` with ``index.journal``
replayed over it only ever references blobs that are present (index.json alone
may still name an entry removed since its last compaction, until the next one).
After a crash at any point the layout is valid and every download
can resume from ``ingest/``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any

import attrs

from proxy import faults
from proxy.cache import journal
from proxy.cache.durable import Syncer, fsync_dir, fsync_file
from proxy.types import MAX_MANIFEST, Digest

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
_INGEST_KEY_RE = re.compile(r"(?:sha256-)?[a-f0-9]{64}|upload-[a-f0-9]{32}")
_tmp_counter = itertools.count()


class NotAManifest(ValueError):
    """A blob read as a manifest is larger than a manifest may be, or is not a
    regular file: it is not one (and it is not read)."""


class CacheLocked(Exception):
    """Another process holds the cache's write lock."""


@attrs.frozen
class LockHolder:
    """The process that holds a cache's lock, as its lock file says."""

    pid: int | None
    address: str | None  # None until it listens (or a server that does not say)

    def __str__(self) -> str:
        who = f"storage-manager pid {self.pid}" if self.pid else "a storage-manager"
        return f"{who} at {self.address}" if self.address else who


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _write_synced(path: Path, data: bytes, fault: str | None = None) -> None:
    """Write a whole file and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        if fault is not None:
            f.write(data[: len(data) // 2])
            f.flush()
            faults.point(fault)
            f.write(data[len(data) // 2 :])
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def ingest_key(url: str) -> str:
    """The ingest directory name of a source URL (its secrets already removed)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def blob_ingest_key(digest: Digest) -> str:
    """The ingest directory name of a blob known by its digest (a blob of a
    pull, a mirror fill): ``sha256-<hex>``, shared by every download of it."""
    return f"sha256-{digest.hex}"


def is_url_ingest_key(name: str) -> bool:
    """Whether an ingest directory is a URL's (:func:`ingest_key`: 64 hex),
    the one kind with a download to resume (a state file naming its URL)."""
    return len(name) == 64


@attrs.frozen
class Layout:
    """Paths of one cache directory; all filesystem calls here are blocking."""

    root: Path
    # Makes committed blobs durable after their rename (proxy.cache.durable); None:
    # each blob is fsync'd before it (the offline commands, --sync-commits).
    syncer: Syncer | None = attrs.field(default=None, eq=False, repr=False)
    # Downloads and uploads are written past the page cache where the filesystem
    # allows (proxy.cache.direct; the server's --direct-writes); False: through it.
    direct_writes: bool = True

    def with_deferred_sync(self) -> Layout:
        """This layout, committing blobs before their fsync (the server's way)."""
        return attrs.evolve(self, syncer=Syncer(self.blobs_dir, self.unsynced_dir))

    @property
    def unsynced_dir(self) -> Path:
        """Markers of committed blobs whose data may not be on disk yet."""
        return self.ingest_dir / "unsynced"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def ingest_dir(self) -> Path:
        return self.root / "ingest"

    @property
    def small_dir(self) -> Path:
        """Scratch space of small blobs being written (never resumed)."""
        return self.ingest_dir / "small"

    def import_dir(self) -> Path:
        """A fresh staging directory for one import (``ingest/import-<uuid>``)."""
        return self.ingest_dir / f"import-{uuid.uuid4().hex}"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def algorithm_dir(self, algorithm: str) -> Path:
        """``blobs/<algorithm>``: ``blobs_dir`` for sha256."""
        return self.root / "blobs" / algorithm

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def blob_file(self, digest: Digest) -> str:
        """:meth:`blob_path` as a string, built without pathlib (the hot calls:
        a load of 100,000 entries makes several per entry)."""
        return f"{self.root}{os.sep}blobs{os.sep}{digest.algorithm}{os.sep}{digest.hex}"

    def blob_names(self, algorithm: str) -> set[str]:
        """The names under ``blobs/<algorithm>`` that :meth:`has_blob` finds
        (regular files, through symlinks), in one listing; blocking."""
        try:
            with os.scandir(self.algorithm_dir(algorithm)) as it:
                return {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def ingest_path(self, key: str) -> Path:
        """``ingest/<sha256 of URL>`` for a URL, ``ingest/sha256-<hex>`` for a
        blob known by its digest, ``ingest/upload-<uuid>`` for a pushed blob."""
        if not _INGEST_KEY_RE.fullmatch(key):
            raise ValueError(f"invalid ingest key {key!r}")
        return self.ingest_dir / key

    # -- setup -----------------------------------------------------------

    def create(self) -> None:
        """Create the skeleton if missing; never touch existing content."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        if not self.unsynced_dir.is_dir():
            self.unsynced_dir.mkdir()
            fsync_dir(self.ingest_dir)
        marker = self.root / "oci-layout"
        if not marker.exists():
            self._write_atomic(marker, json.dumps(OCI_LAYOUT).encode())
        if not self.index_path.exists():
            self.write_index({"schemaVersion": 2, "manifests": []})

    def lock(self) -> int:
        """Take the exclusive write lock; return its fd (keep it open)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise CacheLocked(
                f"cache directory {self.root} is in use by another storage-manager{who}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    @staticmethod
    def announce(lock_fd: int, address: str) -> None:
        """Write where this cache's server listens into its lock file."""
        text = f"{os.getpid()}\n{address}\n".encode()
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, text, 0)

    def lock_holder(self) -> LockHolder | None:
        """The process holding this cache's lock (pid and address), or None
        if no process holds it."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                lines = os.pread(fd, 4096, 0).decode("utf-8", "replace").splitlines()
                pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
                address = lines[1].strip() if len(lines) > 1 and lines[1].strip() else None
                return LockHolder(pid, address)
            return None
        finally:
            os.close(fd)

    def remove_stray_temp_files(self) -> list[Path]:
        """Remove temporary files this program leaves behind after a crash."""
        removed = []
        for p in [
            *self.root.glob("index.json.tmp-*"),
            *self.root.glob("last-used.json.tmp-*"),
            *self.root.glob("index.journal.tmp-*"),
            *self.ingest_dir.glob(".direct-probe-*"),  # proxy.cache.direct.supported
        ]:
            p.unlink(missing_ok=True)
            removed.append(p)
        return removed

    # -- index.json --------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.root / "index.journal"

    def read_index(self) -> dict[str, Any]:
        """The entries: ``index.json`` with ``index.journal`` replayed over it
        (the journal is opened first: a compaction between the two reads then
        replays changes the newer index.json has, which is harmless)."""
        _, records, _, _ = journal.read_file(self.journal_path)
        return journal.merge(self.read_index_file(), records)

    def read_index_file(self) -> dict[str, Any]:
        """``index.json`` alone, as an OCI tool reads it."""
        return self.parse_index(self.read_index_bytes())

    def read_index_bytes(self) -> bytes:
        """The bytes of ``index.json``."""
        with open(self.index_path, "rb") as f:
            return f.read()

    def parse_index(self, data: bytes) -> dict[str, Any]:
        index = json.loads(data)
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise ValueError(f"{self.index_path} is not an OCI image index")
        index.setdefault("manifests", [])
        return index

    def write_index(self, index: dict[str, Any]) -> None:
        """Replace the entries by ``index`` (the offline commands): index.json,
        then a new generation of an empty journal, when there is one."""
        self.write_index_file(index)
        generation, records, _, _ = journal.read_file(self.journal_path)
        if generation >= 0 and records:
            journal.create(self.journal_path, generation + 1)

    def write_index_file(self, index: dict[str, Any]) -> int:
        """Replace index.json (atomically, fsync'd); return its size."""
        data = json.dumps(index, indent=2, sort_keys=False).encode() + b"\n"
        self._write_atomic(self.index_path, data, fault="index")
        return len(data)

    def _write_atomic(self, path: Path, data: bytes, fault: str | None = None) -> None:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{next(_tmp_counter)}")
        try:
            _write_synced(tmp, data, f"{fault}-writing" if fault else None)
            if fault:
                faults.point(f"{fault}-fsynced")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    # -- last use --------------------------------------------------------------

    @property
    def last_used_path(self) -> Path:
        return self.root / "last-used.json"

    def read_last_used(self) -> dict[str, float]:
        """The recorded last uses; empty when missing or unreadable."""
        try:
            with open(self.last_used_path, "rb") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: float(v)
            for k, v in data.items()
            if isinstance(k, str) and isinstance(v, int | float)
        }

    def write_last_used(self, times: dict[str, float]) -> None:
        self._write_atomic(self.last_used_path, json.dumps(times).encode())

    # -- blobs ---------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        return os.path.isfile(self.blob_file(digest))

    def blob_size(self, digest: Digest) -> int | None:
        try:
            return os.stat(self.blob_file(digest)).st_size
        except FileNotFoundError:
            return None

    def read_manifest(self, digest: Digest) -> bytes:
        """The bytes of a blob read as a manifest (or any JSON document named by
        a descriptor); blocking. Its size is checked before anything is read,
        and at most ``MAX_MANIFEST`` + 1 bytes are: NotAManifest (a ValueError)
        when it is larger, FileNotFoundError when it is absent."""
        fd = os.open(self.blob_file(digest), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:  # os calls, not a file object: a load reads one per entry
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise NotAManifest(f"blob {digest} is not a regular file")
            if info.st_size > MAX_MANIFEST:
                raise NotAManifest(
                    f"blob {digest} has {info.st_size} bytes, more than a manifest may "
                    f"({MAX_MANIFEST})"
                )
            data = os.read(fd, info.st_size + 1)
            if len(data) > info.st_size:  # it grew since the fstat: read up to the limit
                data += os.read(fd, max(0, MAX_MANIFEST + 1 - len(data)))
        finally:
            os.close(fd)
        if len(data) > MAX_MANIFEST:  # it grew since the fstat (not a blob of ours)
            raise NotAManifest(f"blob {digest} is larger than a manifest may be ({MAX_MANIFEST})")
        return data

    def commit_file(self, src: Path, digest: Digest, synced: bool = False) -> bool:
        """Move a verified file into ``blobs/``: fsync'd before the rename
        (``synced``: already), or marked unsynced and fsync'd after it by the
        syncer (see :mod:`proxy.cache.durable`).

        Return False when the blob was already there (the source is removed:
        identical content is stored once).
        """
        dst = self.blob_path(digest)
        if dst.exists():
            src.unlink(missing_ok=True)
            return False
        if not dst.parent.is_dir():  # blobs/sha512, at its first blob
            dst.parent.mkdir(exist_ok=True)
            fsync_dir(dst.parent.parent)
        os.chmod(src, 0o444)
        syncer = None if synced else self.syncer
        if syncer is None:
            if not synced:
                fsync_file(src)
            faults.point("blob-verified")
            os.replace(src, dst)
        else:
            with syncer.committing():  # the marker and the rename, as one step
                syncer.mark(digest)
                faults.point("blob-verified")
                os.replace(src, dst)
        fsync_dir(dst.parent)
        if syncer is not None:
            syncer.schedule(digest)
        return True

    def put_small_blob(self, data: bytes, algorithm: str = "sha256") -> Digest:
        """Write a small in-memory blob (manifest, config) atomically."""
        digest = Digest.of(data, algorithm)
        if self.has_blob(digest):
            return digest
        scratch = self.small_dir
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = scratch / f"blob-{os.getpid()}-{next(_tmp_counter)}.tmp"
        try:
            _write_synced(tmp, data)
            self.commit_file(tmp, digest, synced=True)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def remove_blob(self, digest: Digest) -> int:
        """Delete one blob; return the bytes freed (0 when absent)."""
        p = self.blob_path(digest)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return 0
        return size
