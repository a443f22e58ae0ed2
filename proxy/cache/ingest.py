"""Resumable ingest: bytes stream into ``ingest/<key>/data`` and are hashed as
they are written; commit checks size and digest and renames the file into
``blobs/``, fsync'd before or just after (containerd's content writer, in
Python). The file is written past the page cache where the filesystem allows
(:mod:`proxy.cache.direct`), and then fsync'd before the rename, which costs
next to nothing; otherwise by default just after it (:mod:`proxy.cache.durable`).

:class:`IngestFile` is the blocking part (it runs in a worker thread);
:class:`IngestSink` is its reactor-side face: it coalesces chunks, keeps at
most one write in flight, and pauses the producer (the HTTP response) when
the disk falls behind, so memory stays bounded whatever the blob size.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from proxy import faults
from proxy.cache.direct import Appender, Buffer
from proxy.cache.layout import Layout
from proxy.types import Digest

HASH_CHUNK = 4 * 1024 * 1024

# glibc's malloc serves blocks of 128 KiB and more (its starting threshold) with
# mmap(2) and returns freed heap above 128 KiB to the kernel: every received
# buffer of a download then lands in fresh pages, and their page faults cost
# about a sixth of the CPU of an ingest. Keeping blocks up to 2 MiB in the heap,
# and up to 32 MiB of free heap mapped, reuses the same pages instead.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_allocator() -> None:
    """Once per process (glibc only; the MALLOC_*_ environment variables win)."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, 2 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 32 * 1024 * 1024)


@attrs.define
class IngestState:
    """What must survive a crash to resume a download (never secrets)."""

    url: str
    kind: str = "file"  # "file": data is the download; otherwise a marker of a pull
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    expected: str | None = None
    verified: str | None = None  # digest of data once checked, before the rename

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> IngestState:
        if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
            raise ValueError("bad ingest state")
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


class IngestFile:
    """One ingest directory. Every method blocks: call it from a thread."""

    def __init__(self, layout: Layout, key: str) -> None:
        self.layout = layout
        self.dir = layout.ingest_path(key)
        self.data_path = self.dir / "data"
        self.state_path = self.dir / "state.json"
        self._out: Appender | None = None
        self._hash = hashlib.sha256()
        self._synced = False  # finish() fsync'd the data (it was written past the page cache)
        self.offset = 0
        self.resumed_from = 0  # where the latest open() continued a partial file

    # -- state ---------------------------------------------------------------

    def read_state(self) -> IngestState | None:
        try:
            with open(self.state_path, "rb") as f:
                return IngestState.from_json(json.load(f))
        except (OSError, ValueError):
            return None

    def write_state(self, state: IngestState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.json.tmp"
        with open(tmp, "w") as f:
            json.dump(state.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # -- data ----------------------------------------------------------------

    def open(self, resume: bool) -> int:
        """Open for appending; with ``resume``, re-hash the bytes already on
        disk and continue after them, else start empty. Return the offset."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.close()
        self._hash = hashlib.sha256()
        self._synced = False
        self.offset = 0
        if resume and self.data_path.exists():
            with open(self.data_path, "rb", buffering=0) as f:
                while chunk := f.read(HASH_CHUNK):
                    self._hash.update(chunk)
                    self.offset += len(chunk)
            self.resumed_from = max(self.resumed_from, self.offset)
        self._out = Appender(self.data_path, self.offset, self.layout.direct_writes)
        return self.offset

    @property
    def written(self) -> int:
        """The bytes in the file now (:attr:`offset`: given to write; up to a
        block of them may wait for the next write or :meth:`flush`)."""
        out = self._out  # read once: close() may run in another thread
        return out.written if out is not None else self.offset

    def write(self, data: bytes | Sequence[bytes]) -> None:
        """Append ``data`` (one buffer, or several, as received: no joining
        copy) and hash it, buffer by buffer. Nothing waits for the disk here:
        the data reaches it when the kernel writes it back, or by the fsync of
        the commit (see :mod:`proxy.cache.durable`)."""
        for chunk in [data] if isinstance(data, bytes) else data:
            self.write_only([chunk])
            self.hash_only([chunk])

    def write_only(self, data: Sequence[Buffer]) -> None:
        """Append ``data`` without hashing it: :meth:`hash_only` must get the
        same buffers, in the same order (:class:`IngestSink` runs the two in
        two threads, at once)."""
        assert self._out is not None
        self._out.write(data)
        self.offset = self._out.offset
        faults.point("ingest-write")

    def hash_only(self, data: Sequence[Buffer]) -> None:
        """Hash what :meth:`write_only` appends (hashlib lets other threads run)."""
        for chunk in data:
            self._hash.update(chunk)

    def flush(self) -> None:
        """Put every byte written so far into the file (not an fsync)."""
        if self._out is not None:
            self._out.flush()

    def finish(self) -> tuple[Digest, int]:
        """The digest and size of everything written, all of it in the file.
        Written past the page cache, it is fsync'd now (next to free: only the
        last block and the metadata are left); else :meth:`commit` makes it
        durable, before or after the rename."""
        assert self._out is not None
        self._out.flush()
        if self._out.direct:
            self._out.fsync()
            self._synced = True
        return Digest(self._hash.hexdigest()), self.offset

    def digest_as(self, algorithm: str) -> Digest:
        """The digest of the data file with another algorithm than the running
        sha256 (a blob pushed by its sha512): one more read of it."""
        h = hashlib.new(algorithm)
        with open(self.data_path, "rb", buffering=0) as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        return Digest(h.hexdigest(), algorithm)

    def close(self) -> None:
        """Close the file, with every byte written so far in it if it can be."""
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.flush()
            self._out.close()
            self._out = None

    def commit(self, digest: Digest) -> bool:
        """Rename the verified data into blobs/; False if it was already there."""
        synced = self._synced
        self.close()
        return self.layout.commit_file(self.data_path, digest, synced=synced)

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def bytes_on_disk(self) -> int:
        try:
            return self.data_path.stat().st_size
        except FileNotFoundError:
            return 0


class _Lane:
    """One of the sink's two workers: buffers waiting, one batch in flight."""

    def __init__(self, work: Callable[[Sequence[bytes]], None]) -> None:
        self.work = work
        self.waiting: list[bytes] = []
        self.size = 0  # bytes waiting or in flight
        self.in_flight = 0

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.waiting


class IngestSink:
    """Reactor-side writer around an :class:`IngestFile`.

    ``write`` never blocks: data is buffered and handed, one batch at a time,
    to two worker threads at once, one writing it to the file and one hashing
    it (each alone took about as long as the network needs to deliver the
    bytes; one after the other, twice that). ``pause``/``resume`` are called
    when the slower of the two has more than the high water mark (less than
    the low water mark) left to do, so the network stops reading while the
    disk or the hash catches up and memory stays bounded.
    """

    HIGH_WATER = 8 * 1024 * 1024
    LOW_WATER = 2 * 1024 * 1024

    def __init__(
        self,
        reactor: IReactorThreads,
        ingest: IngestFile,
        pause: Callable[[], None],
        resume: Callable[[], None],
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        tune_allocator()
        self._reactor = reactor
        self._on_written = on_written
        self._ingest = ingest
        self._pause = pause
        self._resume = resume
        self._writer = _Lane(ingest.write_only)
        self._hasher = _Lane(ingest.hash_only)
        self._paused = False
        self._error: Failure | None = None
        self._drained: list[Deferred[None]] = []

    @property
    def failed(self) -> Failure | None:
        return self._error

    def _backlog(self) -> int:
        return max(self._writer.size, self._hasher.size)

    def write(self, data: bytes) -> None:
        if self._error is not None:
            return
        for lane in (self._writer, self._hasher):
            lane.waiting.append(data)  # the same buffer for both: no copy
            lane.size += len(data)
        if self._backlog() >= self.HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        self._kick(self._writer)
        self._kick(self._hasher)

    def _kick(self, lane: _Lane) -> None:
        if lane.in_flight or not lane.waiting or self._error is not None:
            if self._error is not None or (self._writer.idle and self._hasher.idle):
                self._fire_drained()
            return
        batch, lane.waiting = lane.waiting, []  # written as they are: no joining copy
        lane.in_flight = sum(len(b) for b in batch)
        pool = self._reactor.getThreadPool()
        d = deferToThreadPool(self._reactor, pool, lane.work, batch)
        d.addCallbacks(self._done, self._write_failed, callbackArgs=(lane,))

    def _done(self, _: object, lane: _Lane) -> None:
        lane.size -= lane.in_flight
        lane.in_flight = 0
        if lane is self._writer and self._on_written is not None:
            self._on_written(self._ingest.written)
        # The next batch first: once it is on its way, the buffer is empty and
        # the network may refill it while the worker works (resuming only after
        # the following batch kept the network idle for a whole batch).
        self._kick(lane)
        if self._paused and self._backlog() <= self.LOW_WATER:
            self._paused = False
            self._resume()

    def _write_failed(self, f: Failure) -> None:
        self._error = f
        for lane in (self._writer, self._hasher):  # nothing more is kicked: all forgotten
            lane.waiting.clear()
            lane.size = lane.in_flight = 0
        if self._paused:
            # Let data flow again so the reader sees the failure and aborts now,
            # not after the idle timeout.
            self._paused = False
            self._resume()
        self._fire_drained()

    def _fire_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for d in waiters:
            d.callback(None)

    def drain(self) -> Deferred[None]:
        """Fire once everything written so far is written and hashed (or failed)."""
        d: Deferred[None] = Deferred()
        if self._error is not None or (self._writer.idle and self._hasher.idle):
            d.callback(None)
        else:
            self._drained.append(d)
            self._kick(self._writer)
            self._kick(self._hasher)
        return d
