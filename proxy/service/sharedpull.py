"""Entries rebuilt from the shared store's records: how an air-gapped node
serves a URL its origin cannot give.

A URL's record (``refs/<sha256 of the URL>``, :mod:`proxy.shared.record`)
names the entry's ``index.json`` descriptor. :meth:`SharedPull.copy` reads
every blob that descriptor reaches from ``blobs/sha256/<hex>`` (manifests
first, then what they name; each read verified as every read-through is,
:meth:`proxy.service.sharedtier.SharedTier.fetch`) and adopts the
descriptor as an imported bundle's is (:meth:`proxy.cache.store.Store.adopt`:
every name checked against its grammar). The children of an image index
are taken when the store has them (the platforms the writer pulled).

The store is shared and may hold anything: a refs/ object that is not a
record, or is the record of another URL, is ignored (logged); a record whose
blobs the store lacks or whose bytes do not match gives nothing.

:class:`~proxy.service.downloads.Downloads` asks for a record only when the
origin is out of reach (unreachable, or outside ``--allow-upstream``), for
mutable references (tags, branches, http URLs) and immutable ones alike:
with the origin reachable, a tag is resolved there and only the blobs come
from the store.
"""

from __future__ import annotations

import logging

import attrs
from twisted.internet.interfaces import IReactorThreads

from proxy.cache.ingest import IngestFile
from proxy.cache.layout import blob_ingest_key
from proxy.cache.store import Entry, Store
from proxy.cache.verify import needed
from proxy.errors import StorageError
from proxy.fetch.base import Job
from proxy.fetch.transfer import Wanted
from proxy.redact import redact_url
from proxy.service.sharedtier import SharedTier
from proxy.shared.location import ref_key
from proxy.shared.record import MAX_RECORD, InvalidRecord, RefRecord
from proxy.shared.store import SharedStoreError
from proxy.threads import in_thread
from proxy.types import ANNOTATION_KIND, ANNOTATION_PINNED, Digest

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # manifest levels followed (an index of manifests is two)


class SharedPull:
    """Copies entries from the shared store (see the module docstring)."""

    def __init__(self, tier: SharedTier, cache: Store, reactor: IReactorThreads) -> None:
        self.tier = tier
        self.cache = cache
        self.reactor = reactor

    async def record(self, url: str, job: Job) -> RefRecord | None:
        """The store's record of ``url`` (None: none, or not a usable one)."""
        key = ref_key(url)
        try:
            found = await self.tier.store.read_small(key, MAX_RECORD, job)
        except SharedStoreError as e:
            log.warning("%s: no record from the shared store: %s", redact_url(url), e.message)
            return None
        if found is None:
            return None
        try:
            record = RefRecord.from_bytes(found.data)
        except InvalidRecord as e:
            log.warning("shared store: %s is not a record (%s): ignored", key, e)
            return None
        if record.url != url:
            log.warning("shared store: %s is the record of another URL: ignored", key)
            return None
        return record

    async def pull(self, url: str, job: Job) -> tuple[Entry, RefRecord] | None:
        """The entry of ``url`` rebuilt from its record; None when the store
        has no usable record or lacks a blob it needs."""
        record = await self.record(url, job)
        if record is None:
            return None
        try:
            entry = await self.copy(record, job)
        except StorageError as e:
            log.warning("%s: not copied from the shared store: %s", redact_url(url), e.message)
            return None
        log.info(
            "%s: copied from the shared store (record written %s by %s)",
            redact_url(url),
            record.written_at,
            record.node,
        )
        return entry, record

    async def copy(self, record: RefRecord, job: Job) -> Entry:
        """Read the blobs ``record``'s descriptor reaches, then adopt it;
        :class:`SharedStoreError` when a needed blob cannot be had."""
        annotations = dict(record.descriptor.annotations)
        annotations.pop(ANNOTATION_PINNED, None)  # the writer's pin is the writer's
        descriptor = attrs.evolve(record.descriptor, annotations=annotations)
        kind = annotations.get(ANNOTATION_KIND, "file")
        layout = self.cache.layout
        tried: set[Digest] = set()
        for _round in range(MAX_ROUNDS):

            def missing() -> list[tuple[Digest, bool]]:
                return [
                    (d, required)
                    for d, required in needed(layout, descriptor, kind)
                    if d not in tried and not layout.has_blob(d)
                ]

            wanted = await in_thread(self.reactor, missing)
            if not wanted:
                break
            for digest, required in wanted:
                tried.add(digest)
                if not await self._blob(digest, job) and required:
                    raise SharedStoreError(f"{digest} is not in the shared store")
        entries = await self.cache.adopt([descriptor.to_json()])
        return entries[0]

    async def _blob(self, digest: Digest, job: Job) -> bool:
        """One blob from the store into the cache (verified); False when the
        store does not have it."""
        ingest = IngestFile(self.cache.layout, blob_ingest_key(digest))
        lock = job.ingest_lock(ingest.dir.name)
        await lock.acquire()
        try:
            if await job.hold_existing(digest) is not None:
                return True
            blob = job.progress.add(digest.hex[:12])
            want = Wanted(
                f"shared-store:{digest}",
                expected=digest,
                immutable=True,
                via_peers=False,
                source="shared-store",
            )
            return await self.tier.fetch(ingest, want, job, blob) is not None
        finally:
            lock.release()
