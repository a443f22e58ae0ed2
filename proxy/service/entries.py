"""Entries from what a fetcher stored: a :class:`proxy.fetch.base.FetchResult`
becomes an :class:`proxy.cache.store.Entry` (with an artifact manifest made
for plain files), put in the store; and the directories of links (the hub
cache view) kept in line with the entries after every change."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorThreads

from proxy.cache import artifact, views
from proxy.cache.store import Entry, Store, new_entry
from proxy.fetch.base import FetchResult
from proxy.service.jobs import Download
from proxy.threads import in_thread
from proxy.types import (
    ANNOTATION_PINNED,
    ARTIFACT_TYPE_FILE,
    EMPTY_JSON,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
)


class Entries:
    """Stores the entries of finished downloads; keeps the views in line."""

    def __init__(self, store: Store, threads: IReactorThreads) -> None:
        self._store = store
        self._threads = threads
        self._views_lock = DeferredLock()

    def sync_views(self) -> Deferred[None]:
        """Bring the directories of links (hub cache view) in line with the entries."""
        snapshot = self._store.entries()
        layout = self._store.layout
        return self._views_lock.run(in_thread, self._threads, views.sync, layout, snapshot)

    async def store_result(self, job: Download, result: FetchResult) -> Entry:
        """The entry of ``job``'s URL, as ``result`` describes it, stored."""
        blobs = {f.digest for f in result.files}
        manifest = result.manifest
        if manifest is None:
            blobs.add(await job.put_blob(EMPTY_JSON))
            data = artifact.file_manifest(
                list(result.files), result.artifact_type or ARTIFACT_TYPE_FILE
            )
            digest = await job.put_blob(data)
            manifest = Descriptor(MEDIA_TYPE_IMAGE_MANIFEST, digest, len(data))
        existing = self._store.get(job.request.url)
        if (
            result.keep_existing
            and existing is not None
            and existing.descriptor.digest == manifest.digest
        ):
            return existing  # a mirror's fill never replaces a full pull of the same manifest
        entry = new_entry(
            job.request.url,
            result.kind,
            manifest,
            list(result.files),
            result.primary or manifest,  # a set of files: the manifest names it
            blobs=blobs,
            reference=result.reference,
            annotations={
                **result.annotations,
                **({ANNOTATION_PINNED: "true"} if job.request.pin else {}),
            },
        )
        await self._store.put(entry)
        await self.sync_views()
        return entry
