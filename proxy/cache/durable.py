"""When a committed blob reaches the disk, and what a restart does when it may not have.

A verified blob is renamed into ``blobs/`` as soon as its digest checks out;
it is visible and served from then on, from the page cache. By default
(:class:`Syncer`) its data is fsync'd afterwards, in a background thread,
instead of before the rename: the answer to a download does not wait for the
disk, which on this kind of machine writes slower than the network delivers.

What keeps that safe is a marker, ``ingest/unsynced/<hex>``, holding the
kernel's boot id. It is written and fsync'd before the rename and removed
only once the blob's data is fsync'd. At startup (:func:`recover`):

* a marker of the same boot means only the process stopped: the kernel still
  has every byte, so the blob is fsync'd (in the background) and kept;
* a marker of an earlier boot means the machine stopped (power loss, kernel
  crash) before the data was known to be on disk: the blob is hashed again
  before anything can serve it, and quarantined with the entries that need it
  when it does not match (the next ``POST`` fetches them again).

So no wrong byte is ever served, whatever stops when. Without a syncer (the
``--sync-commits`` flag, the offline commands) the data is fsync'd before the
rename, as containerd's content store does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from proxy.types import SHA256_HEX_RE, SHA512_HEX_RE, Digest

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
_FLUSH = "flush"
QUIET = 1.0  # seconds without a commit before the fsyncs run
MAX_DELAY = 10.0  # seconds a commit waits for its fsync at most, commits going on or not


def boot_id() -> str:
    """This boot of the kernel (Linux); empty where unknown, which every
    restart then treats as an earlier boot (the careful answer)."""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    _fsync(path, 0)


def fsync_dir(path: Path) -> None:
    _fsync(path, os.O_DIRECTORY)


class Syncer:
    """Makes committed blobs durable behind their rename (one worker thread).

    :meth:`mark` runs before the rename into ``blobs/``, :meth:`schedule`
    after it; both block (call them from a worker thread, like the rename).
    A marker is removed only after an fsync of the very file the blob path
    names at that moment: a blob removed and committed again meanwhile keeps
    its (new) marker until its own fsync.
    """

    def __init__(self, blobs_dir: Path, marks_dir: Path) -> None:
        self.blobs_dir = blobs_dir
        self.marks_dir = marks_dir
        self.boot = boot_id()
        self._lock = threading.Lock()  # a marker's write + rename vs its removal
        self._queue: queue.Queue[Digest | str | None] = queue.Queue()
        self._hurry = False  # set by flush(): no more waiting for commits to pause
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    def blob_path(self, digest: Digest) -> Path:
        """Where a blob is: ``blobs_dir`` (sha256) or its sibling ``sha512``;
        a marker is named by the hex alone (its length says which)."""
        if digest.algorithm == "sha256":
            return self.blobs_dir / digest.hex
        return self.blobs_dir.parent / digest.algorithm / digest.hex

    def mark(self, digest: Digest) -> None:
        """Record, durably, that ``digest``'s data may not be on disk yet."""
        if not self.marks_dir.is_dir():  # Layout.create makes it; removed by hand since
            self.marks_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.marks_dir.parent)
        path = self.marks_dir / digest.hex
        with open(path, "w") as f:
            f.write(self.boot + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.marks_dir)

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Held around a marked blob's rename, so no removal of its marker
        (for an earlier file of the same digest) slips in between."""
        with self._lock:
            yield None

    def schedule(self, digest: Digest) -> None:
        """fsync ``digest``'s blob soon, then drop its marker."""
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="blob-fsync", daemon=True)
                self._thread.start()
        self._queue.put(digest)

    def forget(self, digest: Digest) -> None:
        """Drop the marker of a blob that is gone (quarantined, say)."""
        with self._lock:
            (self.marks_dir / digest.hex).unlink(missing_ok=True)

    def pending(self) -> int:
        """Blobs committed whose fsync has not finished."""
        return self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """fsync everything scheduled now, without waiting for commits to
        pause, and from now on (at shutdown); False if ``timeout`` ran out."""
        self._hurry = True
        self._queue.put(_FLUSH)
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every scheduled fsync is done; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, str):  # _FLUSH with nothing waiting
                continue
            batch = [first]
            # Wait for commits to pause (QUIET), at most MAX_DELAY: on ext4 a blob's
            # writeback joins the journal, and every fsync until it is done (the
            # index.json written right after a commit, the next blob's marker) would
            # wait for the whole blob to reach the disk.
            start = time.monotonic()
            while (left := min(QUIET, start + MAX_DELAY - time.monotonic())) > 0:
                if self._hurry:
                    break
                try:
                    more = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                if isinstance(more, str):  # _FLUSH
                    break
                batch.append(more)
            for digest in batch:
                try:
                    self.sync_now(digest)
                except OSError as e:  # the marker stays: the next start checks the blob
                    log.warning("fsync of blob %s failed: %s", digest, e)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def sync_now(self, digest: Digest) -> None:
        """fsync one blob (blocking) and remove its marker."""
        path = self.blob_path(digest)
        marker = self.marks_dir / digest.hex
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            with self._lock:
                if not path.exists():
                    marker.unlink(missing_ok=True)
            return
        try:
            os.fsync(fd)
            synced = os.fstat(fd)
        finally:
            os.close(fd)
        with self._lock:
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) == (synced.st_dev, synced.st_ino):
                marker.unlink(missing_ok=True)


@attrs.frozen
class Recovery:
    """What :func:`recover` found."""

    resynced: tuple[Digest, ...] = ()  # same boot: being fsync'd again, kept
    suspect: tuple[Digest, ...] = ()  # earlier boot: the caller hashes them before serving


def recover(syncer: Syncer) -> Recovery:
    """Settle the markers a stopped process left (blocking; before serving).

    Markers of this boot are handed to ``syncer`` (their data is in the page
    cache). Blobs of an earlier boot's markers are returned as suspect: the
    caller hashes them, then drops each marker (:meth:`Syncer.forget`).
    Markers of blobs no longer present, and stray files, are removed.
    """
    marks = syncer.marks_dir
    if not marks.is_dir():
        return Recovery()
    resynced: list[Digest] = []
    suspect: list[Digest] = []
    for marker in sorted(marks.iterdir()):
        if not (SHA256_HEX_RE.fullmatch(marker.name) or SHA512_HEX_RE.fullmatch(marker.name)):
            marker.unlink(missing_ok=True)  # a half-written name cannot happen; be tidy
            continue
        digest = Digest.from_file_name(marker.name)
        try:
            boot = marker.read_text().strip()
        except OSError:
            boot = ""
        if not syncer.blob_path(digest).exists():
            marker.unlink(missing_ok=True)
        elif boot and syncer.boot and boot == syncer.boot:
            syncer.schedule(digest)
            resynced.append(digest)
        else:
            suspect.append(digest)
    return Recovery(tuple(resynced), tuple(suspect))
