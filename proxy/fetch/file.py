"""The ``file://`` importer: pre-downloaded files and directories, no network.

``file:///path/to/model.gguf`` (or ``file://localhost/...``) imports one
file; ``file:///path/to/dir/`` -- or any path that is a directory -- imports
every regular file under it as one artifact manifest (one layer per file,
titled by its path relative to the directory, POSIX separators, sorted).

Security, checked before any byte is read:

* nothing is imported unless the server was started with
  ``--allow-file-import DIRS`` and the real path (``os.path.realpath``, every
  symlink resolved) lies inside one of those roots: 403 ``DENIED`` otherwise;
* a URL host other than empty or ``localhost`` is 400 (this is not a network
  file system client);
* the cache directory is never a source, nor a directory holding it;
* only regular files are read: a FIFO, socket or device named by the URL is
  refused (403) and is never opened in a way that could block. Files are
  opened with ``O_NOFOLLOW | O_NONBLOCK`` at their resolved path and checked
  again once open (``fstat``, and the path the kernel reports for the open
  descriptor), so a symlink swapped in after the check cannot lead out;
* in a directory, a file symlink is followed when its target stays inside the
  roots (a Hugging Face snapshot directory is such links) and **the whole
  import is refused (403)** when one leads outside the roots or into the
  cache: an incomplete model is worse than a clear error. Symlinks to
  directories are not descended into (no loops); FIFOs, sockets, devices and
  dangling links inside a directory are skipped with a log line (the import is
  "every regular file").

The bytes are copied in a worker thread, in big chunks, into
``ingest/<key>/`` with :class:`IngestFile` (hashed while written),
then verified against an expected ``digest`` (502 ``DIGEST_MISMATCH``,
nothing kept) and committed through the job (rename into ``blobs/``;
identical content already there is stored once). A file that changes while it
is copied (size, mtime or ctime differ before and after, or fewer/more bytes
than its size) is copied once more; if it changes again the import fails with
409 ``CONFLICT``. A directory is copied file by file and nothing is committed
before every file is copied and verified, so a cancelled (DELETE) or failed
import leaves nothing behind: its ingest directory is removed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred

from proxy.cache import grammar
from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import Layout, ingest_key
from proxy.errors import (
    BadContent,
    BadRequest,
    Cancelled,
    Conflict,
    TargetDenied,
    UpstreamError,
)
from proxy.fetch.base import BlobProgress, FetchResult, Job
from proxy.request import FetchRequest
from proxy.threads import in_thread
from proxy.types import ANNOTATION_TITLE, MEDIA_TYPE_OCTET, Descriptor, Digest

log = logging.getLogger(__name__)

ARTIFACT_TYPE_DIRECTORY = "application/vnd.nekko.storage-manager.directory.v1"
COPY_CHUNK = 8 * 1024 * 1024
MAX_FILES = 100_000


@attrs.frozen
class LocalFile:
    """One file to import: its title and the resolved path it is read from."""

    title: str
    path: str
    size: int


def _inside(path: str, root: str) -> bool:
    return path == root or os.path.commonpath([path, root]) == root


class _PartFile(IngestFile):
    """The n-th file of a directory import: ``ingest/<key>/data.<n>``, so one
    ingest directory (one state file, one DELETE) holds the whole import."""

    def __init__(self, layout: Layout, key: str, n: int) -> None:
        super().__init__(layout, key)
        self.data_path = self.dir / f"data.{n}"


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileFetcher:
    """Imports local files and directories under ``roots`` into the cache."""

    schemes: tuple[str, ...] = ("file",)

    def __init__(self, reactor: Any, layout: Layout, roots: Sequence[Path]) -> None:
        self.reactor = reactor
        self.layout = layout
        self.roots = tuple(roots)

    # -- checks (validate runs on the reactor: realpath only, no file opened) --

    @staticmethod
    def parse(url: str) -> str:
        """The absolute local path of a ``file://`` URL (400 when malformed)."""
        parts = urlsplit(url)
        if parts.netloc.lower() not in ("", "localhost"):
            raise BadRequest(
                f"file:// URL names host {parts.netloc[:80]!r}: only local files "
                "(file:///path or file://localhost/path) can be imported"
            )
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise BadRequest("file:// URL has a query or fragment: percent-encode '?' and '#'")
        path = unquote(parts.path)
        if not path.startswith("/") or "\0" in path:
            raise BadRequest("file:// URL needs an absolute path: file:///path")
        return path

    def _real_roots(self) -> list[str]:
        return [os.path.realpath(r) for r in self.roots]

    def check_path(self, real: str, shown: str) -> None:
        """Refuse a resolved path outside the roots, or in (or holding) the cache."""
        if not self.roots:
            raise TargetDenied(
                "file:// imports are disabled: start the server with --allow-file-import DIRS"
            )
        if not any(_inside(real, root) for root in self._real_roots()):
            raise TargetDenied(f"{shown} is outside the directories allowed for file:// imports")
        cache = os.path.realpath(self.layout.root)
        if _inside(real, cache) or _inside(cache, real):
            raise TargetDenied(f"{shown}: cannot import from the cache directory itself")

    def validate(self, request: FetchRequest) -> None:
        path = self.parse(request.url)
        self.check_path(os.path.realpath(path), path)
        if path.endswith("/") and request.expected is not None:
            raise BadRequest("an expected digest can only be given for one file")

    # -- blocking parts (worker threads) ---------------------------------------

    def _listing(self, path: str) -> tuple[str, list[LocalFile]]:
        """("file" | "dir", the files to import), every one checked."""
        real = os.path.realpath(path)
        self.check_path(real, path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise UpstreamError(f"{path} does not exist", 404) from None
        except PermissionError:
            raise TargetDenied(f"{path}: permission denied") from None
        if stat.S_ISREG(st.st_mode):
            if path.endswith("/"):
                raise UpstreamError(f"{path} is not a directory", 404)
            name = grammar.safe_name(PurePosixPath(path).name)
            return "file", [LocalFile(name, real, st.st_size)]
        if not stat.S_ISDIR(st.st_mode):
            raise TargetDenied(f"{path} is not a regular file or a directory")
        files: list[LocalFile] = []

        def walk_error(e: OSError) -> None:
            if isinstance(e, PermissionError):
                raise TargetDenied(f"{path}: permission denied reading {e.filename}") from None
            raise e

        for top, dirs, names in os.walk(real, onerror=walk_error, followlinks=False):
            for d in dirs:
                if os.path.islink(os.path.join(top, d)):
                    log.warning("file import %s: not following directory link %s", path, d)
            for name in names:
                full = os.path.join(top, name)
                rel = PurePosixPath(os.path.relpath(full, real)).as_posix()
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    raise BadRequest(f"{path}: file name {shown!r} is not UTF-8") from None
                if not grammar.is_title(rel):
                    raise BadRequest(f"{path}: file name {rel[:200]!r} cannot be a title")
                target = os.path.realpath(full)
                self.check_path(target, f"{path.rstrip('/')}/{rel}")
                try:
                    fst = os.stat(target)
                except FileNotFoundError:
                    log.warning("file import %s: skipping dangling link %s", path, rel)
                    continue
                if not stat.S_ISREG(fst.st_mode):
                    log.warning("file import %s: skipping %s (not a regular file)", path, rel)
                    continue
                files.append(LocalFile(rel, target, fst.st_size))
                if len(files) > MAX_FILES:
                    raise BadRequest(f"{path} holds more than {MAX_FILES} files")
        if not files:
            raise UpstreamError(f"{path} is a directory with no regular files", 404)
        return "dir", sorted(files, key=lambda f: f.title)

    def _open(self, item: LocalFile) -> int:
        """Open a checked file for reading, and check it again once open."""
        try:
            fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UpstreamError(f"{item.title} disappeared before it was imported", 404) from None
        except PermissionError:
            raise TargetDenied(f"{item.title}: permission denied") from None
        except OSError as e:
            raise TargetDenied(f"{item.title}: cannot open ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TargetDenied(f"{item.title} is not a regular file")
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = os.path.realpath(item.path)
            self.check_path(opened, item.title)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_checked(self, path: str) -> int | None:
        """Open what ``path`` names -- a regular file or a directory -- once,
        at its resolved path without following a last link, and check the
        opened object's own path (what the kernel reports for the descriptor)
        against the roots and the cache: later reads go through the
        descriptor, so a link swapped into the path after this check changes
        nothing. None when there is nothing (or nothing readable) there.
        Blocking."""
        real = os.path.realpath(path)
        self.check_path(real, path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                os.close(fd)
                return None
            self.check_path(os.readlink(f"/proc/self/fd/{fd}"), path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def copy(
        self,
        item: LocalFile,
        ingest: IngestFile,
        progress: Callable[[int], None],
        cancelled: threading.Event,
    ) -> tuple[Digest, int]:
        """Copy one file into ``ingest`` while hashing it. Blocking.

        The file is copied again (once) when it changed during the copy."""
        for attempt in (1, 2):
            fd = self._open(item)
            try:
                before = os.fstat(fd)
                ingest.open(resume=False)
                progress(0)
                done = 0
                while True:
                    if cancelled.is_set():
                        raise Cancelled("import cancelled by DELETE")
                    chunk = os.read(fd, COPY_CHUNK)
                    if not chunk:
                        break
                    ingest.write(chunk)
                    done += len(chunk)
                    progress(done)
                digest, size = ingest.finish()
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if _stamp(before) == _stamp(after) and size == before.st_size:
                return digest, size
            log.warning(
                "file import %s changed while it was copied (attempt %d)", item.title, attempt
            )
        raise Conflict(f"{item.title} changed while it was being imported twice; try again")

    # -- the import --------------------------------------------------------------

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        path = self.parse(request.url)
        kind, items = await in_thread(self.reactor, self._listing, path)
        if kind == "dir" and request.expected is not None:
            raise BadRequest("an expected digest can only be given for one file")
        key = ingest_key(request.url)
        lock = job.ingest_lock(key)
        await lock.acquire()
        marker = IngestFile(self.layout, key)
        try:
            # A fresh copy every time: whatever an earlier, interrupted import left goes.
            await in_thread(self.reactor, marker.discard)
            state = IngestState(
                url=request.url,
                kind="file" if kind == "file" else "file-dir",
                total=sum(i.size for i in items),
                expected=str(request.expected) if request.expected else None,
            )
            await in_thread(self.reactor, marker.write_state, state)
            ingests: list[IngestFile] = []
            copied: list[tuple[LocalFile, BlobProgress, Digest, int]] = []
            for n, item in enumerate(items):
                ingest = marker if kind == "file" else _PartFile(self.layout, key, n)
                ingests.append(ingest)
                blob = job.progress.add(item.title, item.size)
                digest, size = await self._copy(item, ingest, blob, job)
                if request.expected is not None and digest != request.expected:
                    raise BadContent(
                        f"{request.url}: content has digest {digest}, "
                        f"expected {request.expected}; discarded"
                    )
                copied.append((item, blob, digest, size))
            job.check_cancelled()
            files = []
            for (item, blob, digest, size), ingest in zip(copied, ingests, strict=True):
                await job.commit(ingest, digest)
                blob.complete(digest, size)
                blob.written = size
                blob.changed()
                files.append(
                    Descriptor(MEDIA_TYPE_OCTET, digest, size, {ANNOTATION_TITLE: item.title})
                )
            job.after_commit(marker.discard)
        except BaseException:
            await in_thread(self.reactor, marker.discard)
            raise
        finally:
            lock.release()
        return FetchResult(
            files=tuple(files),
            primary=files[0] if kind == "file" else None,
            kind="file",
            artifact_type=ARTIFACT_TYPE_DIRECTORY if kind == "dir" else None,
        )

    async def _copy(
        self, item: LocalFile, ingest: IngestFile, blob: BlobProgress, job: Job
    ) -> tuple[Digest, int]:
        job.check_cancelled()
        cancelled = threading.Event()
        unregister = job.abortable(cancelled.set)

        def advance(done: int) -> None:
            blob.done = blob.written = done
            blob.changed()

        def progress(done: int) -> None:  # in the copying thread
            self.reactor.callFromThread(advance, done)

        try:
            result: tuple[Digest, int] = await in_thread(
                self.reactor, self.copy, item, ingest, progress, cancelled
            )
        finally:
            unregister()
            await in_thread(self.reactor, ingest.close)
        job.check_cancelled()
        return result
