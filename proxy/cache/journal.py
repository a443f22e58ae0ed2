"""``index.journal``: the entry changes not yet (or not surely) in ``index.json``.

Why: rewriting and fsyncing the whole ``index.json`` for every change costs
O(entries) per change, O(N^2) to fill a cache. Instead a change is one line
appended to this journal and fdatasync'd before it is answered (changes that
arrive while a write is going on are written together: group commit), and
``index.json`` -- the OCI image layout's index, what skopeo and umoci read --
is rewritten from the entries in memory (:meth:`proxy.cache.store.Store`'s
compaction): before the answer while it is small (at most ``EAGER_BYTES``,
when its rewrite costs about what the append does), in the background once the
journal has grown to half its size otherwise, and at a clean stop. So a
change costs the same at 100,000 entries as at 1,000, and the index is
rewritten about once per half as many changes as it has entries.

The file: a header line then one line per change, each ``<crc32 hex> <json>``::

    <crc> {"generation": 7}
    <crc> {"put": {<the entry's descriptor, as in index.json>}}
    <crc> {"remove": "<the entry's URL>"}

Replaying a record is idempotent (a put sets an entry to a value, a remove
deletes it), and the journal always holds every change since some state of
``index.json`` no newer than the one on disk. So the cache is ``index.json``
with the journal replayed over it (:func:`merge`, done by
:meth:`proxy.cache.layout.Layout.read_index`), whatever a crash interrupted:
a compaction replaces ``index.json`` first, then the journal by a new
generation holding only the changes made since its snapshot (a new file,
renamed in). A line cut short or damaged (its checksum) ends the journal: it
was never answered; the writer cuts it off when it opens the journal.

Readers of ``--workers`` follow the journal rather than ``index.json``
(:class:`Follower`): the new lines since their last look, then, when a new
generation was renamed in, the rest of the old file (still open) and the new
one from its start, or -- when a generation was missed -- everything again.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

from proxy import faults
from proxy.cache.durable import fsync_dir
from proxy.threads import in_thread
from proxy.types import ANNOTATION_REF_NAME, ANNOTATION_URL


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


# index.json is rewritten before each answer while it has at most this many bytes.
# (NEKKO_INDEX_EAGER_BYTES, NEKKO_JOURNAL_MIN_BYTES: for tests, which need a
# small cache to behave as a large one does.)
EAGER_BYTES = _env_int("NEKKO_INDEX_EAGER_BYTES", 128 * 1024)
# The journal is compacted once it has this many bytes and half as many as index.json.
MIN_BYTES = _env_int("NEKKO_JOURNAL_MIN_BYTES", 1024 * 1024)

Record = dict[str, Any]  # {"put": descriptor} or {"remove": url}


def encode(record: Record) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode(data: bytes) -> tuple[list[Record], int, bool]:
    """The records of whole, intact lines at the start of ``data``, the bytes
    they take, and whether a damaged line (not merely an unfinished one) ended them."""
    records: list[Record] = []
    at = 0
    while True:
        end = data.find(b"\n", at)
        if end < 0:
            return records, at, False
        line = data[at:end]
        crc, _, body = line.partition(b" ")
        try:
            if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
                return records, at, True
            record = json.loads(body)
        except ValueError:
            return records, at, True
        if not isinstance(record, dict):
            return records, at, True
        records.append(record)
        at = end + 1


def url_of(descriptor: Any) -> str | None:
    """The entry URL a descriptor of index.json stands for (this server's
    annotation, or a Go storage-manager's raw-URL ref.name), if any."""
    ann = descriptor.get("annotations") if isinstance(descriptor, dict) else None
    if not isinstance(ann, dict):
        return None
    url = ann.get(ANNOTATION_URL)
    if isinstance(url, str):
        return url
    ref = ann.get(ANNOTATION_REF_NAME)
    return ref if isinstance(ref, str) and "://" in ref else None


def merge(index: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """``index`` (index.json's contents) with ``records`` replayed over it."""
    if not records:
        return index
    manifests: list[Any] = list(index.get("manifests", []))
    where: dict[str, int] = {}
    for i, desc in enumerate(manifests):
        url = url_of(desc)
        if url is not None:
            where.setdefault(url, i)
    gone: set[int] = set()
    for record in records:
        if "put" in record:
            url = url_of(record["put"])
            if url is None:
                continue
            at = where.get(url)
            if at is None:
                where[url] = len(manifests)
                manifests.append(record["put"])
            else:
                manifests[at] = record["put"]
        elif isinstance(record.get("remove"), str):
            removed = where.pop(record["remove"], None)
            if removed is not None:
                gone.add(removed)
    return {**index, "manifests": [d for i, d in enumerate(manifests) if i not in gone]}


# -- the file (blocking) ---------------------------------------------------------


def read_file(path: Path) -> tuple[int, list[Record], int, bool]:
    """A journal's generation, records, the bytes of its intact lines and
    whether damage ended them; (-1, [], 0, False) when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return -1, [], 0, False
    records, good, damaged = decode(data)
    if not records or not isinstance(records[0].get("generation"), int):
        return -1, [], 0, bool(data)
    return records[0]["generation"], records[1:], good, damaged or good < len(data)


def create(path: Path, generation: int, tail: bytes = b"") -> None:
    """Put a new journal of ``generation`` (holding ``tail``) in place atomically."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(encode({"generation": generation}) + tail)
            f.flush()
            os.fsync(f.fileno())
        faults.point("journal-rotating")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class Journal:
    """The writer's journal: appends with group commit, and generations.

    ``open`` (blocking, at startup) cuts off a damaged tail; ``append`` fires
    once its records are on disk; ``rotate`` replaces the file by the next
    generation holding what was appended from a given offset on.
    """

    def __init__(self, reactor: IReactorThreads, path: Path) -> None:
        self._reactor = reactor
        self.path = path
        self.generation = 0
        self.size = 0  # bytes on disk
        self.queued_end = 0  # bytes once everything appended so far is written
        self._fd = -1
        self._io = DeferredLock()  # one write or rotation at a time
        self._pending: list[tuple[bytes, Deferred[None]]] = []

    def open(self) -> None:
        generation, _, good, damaged = read_file(self.path)
        if generation < 0:
            create(self.path, max(generation, 0))
            generation, good = 0, len(encode({"generation": 0}))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if damaged:  # a write cut short: never answered
            os.ftruncate(fd, good)
            os.fsync(fd)
        self._fd, self.generation, self.size, self.queued_end = fd, generation, good, good

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def append(self, records: list[Record]) -> Deferred[None]:
        """Write ``records`` (one write with whatever else is waiting), fdatasync; then fire."""
        data = b"".join(encode(r) for r in records)
        d: Deferred[None] = Deferred()
        self._pending.append((data, d))
        self.queued_end += len(data)
        if len(self._pending) == 1:
            self._io.run(self._flush)
        return d

    def _flush(self) -> Deferred[None]:
        batch, self._pending = self._pending, []
        if not batch:
            return succeed(None)
        data = b"".join(b for b, _ in batch)
        fd = self._fd

        def write() -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            faults.point("journal-written")
            os.fdatasync(fd)

        def done(result: Failure | None) -> None:
            if not isinstance(result, Failure):
                self.size += len(data)
            for _, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        return in_thread(self._reactor, write).addBoth(done)

    def rotate(self, since: int) -> Deferred[None]:
        """The next generation, holding what was appended from offset ``since``
        on (the changes a compaction's snapshot does not have)."""

        def locked() -> Deferred[None]:
            size, generation = self.size, self.generation + 1

            def swap() -> int:
                with open(self.path, "rb") as f:
                    f.seek(since)
                    tail = f.read(size - since)
                create(self.path, generation, tail)
                return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

            def swapped(fd: int) -> None:
                os.close(self._fd)
                waiting = sum(len(b) for b, _ in self._pending)
                self._fd, self.generation = fd, generation
                self.size = len(encode({"generation": generation})) + size - since
                self.queued_end = self.size + waiting

            return in_thread(self._reactor, swap).addCallback(swapped)

        return self._io.run(locked)

    def records(self) -> int:
        """Bytes of changes in this generation (the header aside)."""
        return self.size - len(encode({"generation": self.generation}))


class Follower:
    """A reader's view of the journal: which file it holds, how far it read.

    ``current`` is one ``stat``; ``catch_up`` (blocking, in a thread) returns
    the records to apply and a function to run on the reactor once they are,
    or None when the reader must load everything again (a missed generation).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._key: tuple[int, int] = (-1, -1)
        self.generation = -1
        self.offset = 0

    def open(self) -> tuple[int, int, int]:
        """Open the journal as it is now (before reading index.json); return
        what :meth:`hold` takes."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        head = os.pread(fd, 4096, 0)
        records, good, _ = decode(head.split(b"\n", 1)[0] + b"\n")
        generation = records[0].get("generation", -1) if records else -1
        return fd, generation if isinstance(generation, int) else -1, good if records else 0

    def hold(self, opened: tuple[int, int, int]) -> None:
        fd, generation, offset = opened
        st = os.fstat(fd)
        old, self._fd = self._fd, fd
        self._key, self.generation, self.offset = (st.st_dev, st.st_ino), generation, offset
        if old >= 0:
            os.close(old)

    def current(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._key and st.st_size == self.offset

    def read(self, fd: int, offset: int) -> tuple[list[Record], int]:
        chunks: list[bytes] = []
        at = offset
        while chunk := os.pread(fd, 1 << 20, at):
            chunks.append(chunk)
            at += len(chunk)
        records, good, _ = decode(b"".join(chunks))
        return records, offset + good

    def catch_up(self) -> tuple[list[Record], Callable[[], None]] | None:
        try:  # before reading: a file renamed over ours is known to be final then
            st = os.stat(self.path)
        except OSError:
            return None
        records, offset = self.read(self._fd, self.offset)
        if (st.st_dev, st.st_ino) == self._key:

            def advance() -> None:
                self.offset = offset

            return records, advance
        opened = self.open()
        if opened[1] != self.generation + 1:
            os.close(opened[0])
            return None
        more, end = self.read(opened[0], opened[2])
        fd, generation, _ = opened

        def switch() -> None:
            self.hold((fd, generation, end))

        return records + more, switch
