"""Blob uploads of the /v2 push API (``--allow-push``).

An upload is an ingest directory, ``ingest/upload-<uuid>/data`` (uuid: 32
lowercase hex), written by :class:`proxy.cache.ingest.IngestFile` in a worker
thread: every byte is hashed as it is written, so finishing needs no second
read (a blob pushed by its sha512 is read once more to hash it so). The data
is renamed into ``blobs/`` (under the store's blob lock, as downloads commit)
only when its digest is the ``?digest=`` the client named;
on a mismatch the directory is removed and nothing is kept.

Request bodies: twisted.web reads a request's whole body before the resource
renders it, into memory below 100 kB and above into an anonymous temporary
file, which this server opens in the cache's ``ingest/`` (see
``proxy.web.site.TimedRequest``; a push body is only read at all once the channel
admitted it, :mod:`proxy.api.admission`). This module then copies the body
from that file into the upload in a worker thread, a chunk at a time, so a
body is never held in memory whole and the reactor thread never reads or
hashes it.

State: the upload's name, its lock and its open :class:`IngestFile` (offset
and running hash) live in memory; after a restart an upload whose directory
is still there is resumed from its data (re-hashed once). Uploads idle for
:data:`IDLE_SECONDS` are discarded. A pushed (or mounted) blob is held for
:data:`HOLD_SECONDS` after it is stored, so GC and eviction leave it alone
until a manifest that references it makes it part of an entry.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime

from proxy.cache.ingest import IngestFile
from proxy.cache.store import Store
from proxy.threads import in_thread
from proxy.types import Digest
from proxy.units import human_size

log = logging.getLogger(__name__)

UUID_RE = re.compile(r"[a-f0-9]{32}")
COPY_CHUNK = 1024 * 1024
IDLE_SECONDS = 3600.0  # an upload untouched this long is discarded
HOLD_SECONDS = 3600.0  # a pushed blob is kept this long for the manifest that needs it


class UploadUnknown(Exception):
    """No such upload (never started, finished, cancelled or expired)."""


class BadOffset(Exception):
    """A chunk does not start where the upload ends."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"the upload has {offset} bytes; a chunk must start there")
        self.offset = offset


class BadChunk(Exception):
    """A chunk's Content-Range does not match its body."""


class DigestMismatch(Exception):
    """The uploaded bytes do not hash to the digest the client named."""

    def __init__(self, expected: Digest, actual: Digest, size: int) -> None:
        super().__init__(f"the upload ({size} bytes) is {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


@attrs.define(eq=False)
class Upload:
    uuid: str
    name: str | None  # None: resumed after a restart (the name was not kept)
    ingest: IngestFile
    lock: DeferredLock = attrs.field(factory=DeferredLock)
    touched: float = attrs.field(factory=time.monotonic)

    @property
    def key(self) -> str:
        return f"upload-{self.uuid}"

    @property
    def offset(self) -> int:
        return self.ingest.offset


def copy_body(ingest: IngestFile, body: IO[bytes], start: int | None, end: int | None) -> int:
    """Append a request body to an upload; blocking (runs in a thread).

    ``start``/``end`` are the chunk's Content-Range (inclusive), if it had one.
    Return the upload's new size.
    """
    if start is not None and start != ingest.offset:
        raise BadOffset(ingest.offset)
    length = body.seek(0, 2)
    if start is not None and end is not None and end - start + 1 != length:
        raise BadChunk(f"Content-Range {start}-{end} is not the body's {length} bytes")
    body.seek(0)
    while chunk := body.read(COPY_CHUNK):
        ingest.write(chunk)
    ingest.flush()  # the size answered is in the file (a restart resumes from there)
    return ingest.offset


class Uploads:
    """The blob uploads in progress on one store."""

    def __init__(self, store: Store, reactor: Any) -> None:
        self.store = store
        self._reactor: IReactorThreads = reactor
        self._clock: IReactorTime = reactor
        self._uploads: dict[str, Upload] = {}
        self._holds: dict[Digest, list[IDelayedCall]] = {}

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, name: str) -> Upload:
        self._expire()
        upload_id = uuid.uuid4().hex
        up = Upload(upload_id, name, IngestFile(self.store.layout, f"upload-{upload_id}"))
        await in_thread(self._reactor, up.ingest.open, False)
        self._adopt(up)
        return up

    def _adopt(self, up: Upload) -> None:
        self._uploads[up.uuid] = up
        # Marks the directory busy, so GC of ingest/ leaves it alone.
        self.store.ingest_lock(up.key).acquire()

    def _forget(self, up: Upload) -> None:
        if self._uploads.pop(up.uuid, None) is up:
            lock = self.store.ingest_lock(up.key)
            if lock.locked:
                lock.release()

    async def find(self, name: str, upload_id: str) -> Upload:
        """The upload ``upload_id`` of repository ``name``; UploadUnknown if none."""
        if not UUID_RE.fullmatch(upload_id):
            raise UploadUnknown(upload_id)
        up = self._uploads.get(upload_id)
        if up is None:
            # Started before a restart: its data is all there is; re-hash it once.
            ingest = IngestFile(self.store.layout, f"upload-{upload_id}")

            def reopen() -> bool:
                if not ingest.data_path.is_file():
                    return False
                ingest.open(True)
                return True

            if not await in_thread(self._reactor, reopen):
                raise UploadUnknown(upload_id)
            up = self._uploads.get(upload_id)  # another request may have got there first
            if up is None:
                up = Upload(upload_id, None, ingest)
                self._adopt(up)
            else:
                ingest.close()
        if up.name is not None and up.name != name:
            raise UploadUnknown(upload_id)
        up.touched = time.monotonic()
        return up

    async def append(
        self, up: Upload, body: IO[bytes], start: int | None = None, end: int | None = None
    ) -> int:
        """Write a chunk (in a thread, in order); return the upload's size."""
        await up.lock.acquire()
        try:
            if self._uploads.get(up.uuid) is not up:
                raise UploadUnknown(up.uuid)
            size: int = await in_thread(self._reactor, copy_body, up.ingest, body, start, end)
            up.touched = time.monotonic()
            return size
        finally:
            up.lock.release()

    async def finish(self, up: Upload, expected: Digest) -> bool:
        """Verify and store the upload as ``expected``; True if the blob is
        new. DigestMismatch (and the upload is gone) when the bytes differ."""
        await up.lock.acquire()
        try:
            if self._uploads.get(up.uuid) is not up:
                raise UploadUnknown(up.uuid)
            actual, size = await in_thread(self._reactor, up.ingest.finish)
            if expected.algorithm != actual.algorithm:  # pushed by its sha512
                actual = await in_thread(self._reactor, up.ingest.digest_as, expected.algorithm)
            if actual != expected:
                self._forget(up)
                await in_thread(self._reactor, up.ingest.discard)
                raise DigestMismatch(expected, actual, size)

            def locked() -> Deferred[bool]:
                self.hold(expected)
                return in_thread(self._reactor, up.ingest.commit, expected)

            try:
                created: bool = await self.store.blob_lock.run(locked)
            finally:
                self._forget(up)
                await in_thread(self._reactor, up.ingest.discard)
            log.info("pushed blob %s (%s)", expected, human_size(size))
            return created
        finally:
            up.lock.release()

    async def cancel(self, up: Upload) -> None:
        await up.lock.acquire()
        try:
            self._forget(up)
            await in_thread(self._reactor, up.ingest.discard)
        finally:
            up.lock.release()

    async def mount(self, digest: Digest) -> int | None:
        """Hold a blob already in the cache for a manifest to come; its size,
        or None when it is not here."""

        def locked() -> Deferred[int | None]:
            return in_thread(self._reactor, self.store.layout.blob_size, digest)

        size: int | None = await self.store.blob_lock.run(locked)
        if size is not None:
            self.hold(digest)
        return size

    def hold(self, digest: Digest) -> None:
        """Keep a pushed blob alive for :data:`HOLD_SECONDS`, or until
        :meth:`settle` (a manifest's entry keeps it from then on)."""
        self.store.hold(digest)
        calls = self._holds.setdefault(digest, [])

        def expire() -> None:
            calls.remove(call)
            if not calls and self._holds.get(digest) is calls:
                del self._holds[digest]
            self.store.release(digest)

        call = self._clock.callLater(HOLD_SECONDS, expire)
        calls.append(call)

    def holds(self, digest: Digest) -> int:
        """How many of the store's holds on a blob are pushes' (see :meth:`hold`)."""
        return len(self._holds.get(digest, ()))

    def settle(self, digests: Iterable[Digest]) -> None:
        """An entry now references these blobs: drop the holds of their pushes."""
        for digest in digests:
            for call in self._holds.pop(digest, []):
                call.cancel()
                self.store.release(digest)

    def _expire(self) -> None:
        now = time.monotonic()
        for up in list(self._uploads.values()):
            if now - up.touched > IDLE_SECONDS and not up.lock.locked:
                log.info("discarding upload %s, idle for %.0f s", up.uuid, now - up.touched)
                self._forget(up)
                in_thread(self._reactor, up.ingest.discard).addErrback(
                    lambda f: log.warning("could not remove an idle upload: %s", f.value)
                )
