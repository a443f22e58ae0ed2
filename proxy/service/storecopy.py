"""A whole cache to or from an object store, without a tar:
``storage-manager export --to s3://bucket/prefix`` and
``import --from s3://bucket/prefix`` (``POST /admin/export-store`` and
``/admin/import-store``).

The store is laid out as ``--shared-store``'s (:mod:`proxy.shared.location`),
so an export seeds a cluster's shared tier and an import reads one:

* **export**: every entry (or the ones named) goes up as the write-back
  puts it (:meth:`proxy.service.sharedtier.SharedTier.put_entry`): the blobs
  the store lacks, then the entry's record;
* **import**: every record under ``refs/`` is read, and its entry rebuilt
  from the store's blobs (:meth:`proxy.service.sharedpull.SharedPull.copy`:
  each blob verified, each name checked). Objects that are not records, or
  that sit at another URL's key, are skipped; entries already complete here
  are kept as they are.
"""

from __future__ import annotations

import logging

import attrs

from proxy.errors import StorageError
from proxy.redact import redact_url
from proxy.request import FetchRequest
from proxy.service.downloads import Downloads
from proxy.service.jobs import Download
from proxy.service.sharedpull import SharedPull
from proxy.service.sharedtier import SharedTier
from proxy.shared.location import REFS, ref_key
from proxy.shared.record import MAX_RECORD, InvalidRecord, RefRecord
from proxy.shared.store import MAX_LIST
from proxy.threads import in_thread

log = logging.getLogger(__name__)


@attrs.frozen
class CopyReport:
    """What an export or an import did."""

    entries: tuple[str, ...]  # URLs copied
    skipped: tuple[str, ...]  # URLs already there (import), or keys not records
    failed: tuple[tuple[str, str], ...]  # (URL or key, why)

    def to_json(self) -> dict[str, object]:
        return {
            "entries": list(self.entries),
            "skipped": list(self.skipped),
            "failed": [{"what": w, "error": e} for w, e in self.failed],
        }


async def export_to(tier: SharedTier, downloads: Downloads, urls: list[str] | None) -> CopyReport:
    """The entries named by ``urls`` (None: every complete entry) into the store."""
    store = downloads.store
    chosen = [e for e in store.entries() if e.complete and (urls is None or e.url in urls)]
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    for entry in chosen:
        try:
            await tier.put_entry(entry)
        except (StorageError, OSError) as e:
            msg = e.message if isinstance(e, StorageError) else str(e)
            failed.append((entry.url, msg))
            continue
        done.append(entry.url)
    log.info("exported %d entries to %s", len(done), tier.store.location)
    return CopyReport(tuple(done), (), tuple(failed))


async def import_from(tier: SharedTier, downloads: Downloads) -> CopyReport:
    """Every entry the store has a record of, into this cache."""
    store = downloads.store
    pull = SharedPull(tier, store, downloads.reactor)
    listed = await tier.store.list(REFS, MAX_LIST)
    done: list[str] = []
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    for item in listed:
        found = await tier.store.read_small(item.key, MAX_RECORD)
        try:
            record = RefRecord.from_bytes(found.data if found is not None else b"")
        except InvalidRecord as e:
            log.warning("shared store: %s is not a record (%s): skipped", item.key, e)
            skipped.append(item.key)
            continue
        if ref_key(record.url) != item.key:
            log.warning("shared store: %s is the record of another URL: skipped", item.key)
            skipped.append(item.key)
            continue
        existing = store.get(record.url)
        if existing is not None and existing.complete:
            skipped.append(record.url)
            continue
        job = Download(
            FetchRequest(record.url), store, downloads.reactor, writers=downloads.writers
        )
        stored = False
        try:
            await pull.copy(record, job)
            stored = True
        except StorageError as e:
            log.warning("%s: not imported from the store: %s", redact_url(record.url), e.message)
            failed.append((record.url, e.message))
        finally:
            job.release()
            for cleanup in job.cleanups(stored=stored):
                await in_thread(downloads.reactor, cleanup)
        if stored:
            done.append(record.url)
    if done:
        await downloads.entries.sync_views()
    log.info("imported %d entries from %s", len(done), tier.store.location)
    return CopyReport(tuple(done), tuple(skipped), tuple(failed))
