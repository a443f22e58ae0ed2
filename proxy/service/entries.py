"""Entries from what a fetcher stored: a :class:`proxy.fetch.base.FetchResult`
becomes an :class:`proxy.cache.store.Entry` (with an artifact manifest made
for plain files), put in the store; and the views (the hub caches, Ollama's
models directory, the model directories of :mod:`proxy.cache.modelviews`)
kept in line with the entries after every change."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorThreads

from proxy import heap
from proxy.cache import artifact, modelpack, modelpackout, modelviews
from proxy.cache.store import Entry, Store, new_entry, now_rfc3339
from proxy.fetch.base import FetchResult
from proxy.service.jobs import Download
from proxy.threads import in_thread
from proxy.types import (
    ANNOTATION_PINNED,
    ARTIFACT_TYPE_FILE,
    EMPTY_JSON,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
    Digest,
)


class Entries:
    """Stores the entries of finished downloads; keeps the views in line."""

    def __init__(
        self,
        store: Store,
        threads: IReactorThreads,
        limit: Callable[[], int | None] | None = None,
    ) -> None:
        self._store = store
        self._threads = threads
        self._views_lock = DeferredLock()
        # The cache's size limit (unpacked tar layers count in it); set by the server.
        self.limit = limit
        # What the syncs made: which model directories exist, their problems.
        self.built = modelviews.Built()
        self.views = modelviews.Views(store.layout)
        self._synced = False  # all the views once (sync_all); then change by change

    def sync_all(self) -> None:
        """Bring every view in line with every entry (blocking: at startup,
        before the reactor runs): whatever a crash left is settled here."""
        self._store.take_changes()
        limit = self.limit() if self.limit is not None else None
        self.built = self.views.sync_all(self._store.entries(), limit)
        self._synced = True
        heap.trim()  # the full sync's listings, freed (0.2 KiB an entry of a large cache)

    def sync_views(self) -> Deferred[None]:
        """Bring the views (hub caches, Ollama's, model directories) in line
        with the entries changed since the last sync, and retry the model
        directories that could not be made (the first call: every entry)."""
        return self._views_lock.run(self._sync_locked)

    def _sync_locked(self) -> Deferred[None]:
        limit = self.limit() if self.limit is not None else None
        if not self._synced:
            self._store.take_changes()
            snapshot = self._store.entries()

            def all_done(built: modelviews.Built) -> None:
                self.built, self._synced = built, True

            return in_thread(self._threads, self.views.sync_all, snapshot, limit).addCallback(
                all_done
            )
        changes = self._store.take_changes()
        names = {
            name
            for old, new in changes
            for e in (old, new)
            if e is not None and (name := modelviews.directory_name(e)) is not None
        }
        names |= set(self.built.problems)  # tried again, as room may have been made
        if not changes and not names:
            return succeed(None)
        named = {name: self._shown_in(name) for name in names}

        def done(made: modelviews.Built) -> None:
            self.built.update(named, made)

        return in_thread(self._threads, self.views.sync_changes, changes, named, limit).addCallback(
            done
        )

    def _shown_in(self, name: str) -> Descriptor | None:
        """The manifest the model directory ``name`` shows, if an entry names
        it now (an entry names the directory of a manifest among its blobs)."""
        for url in self._store.users(name):
            entry = self._store.get(url)
            if entry is not None and modelviews.directory_name(entry) == name:
                return modelviews.leaf_manifest(entry)
        return None

    @staticmethod
    async def _modelpack_out(
        job: Download, result: FetchResult, blobs: set[Digest]
    ) -> dict[str, str]:
        """Write the entry's ModelPack artifact (proxy.cache.modelpackout), if it has
        one; the annotations that record it."""
        url, collection = job.request.url, result.primary is None
        made = modelpackout.make(url, result.files, result.annotations, now_rfc3339(), collection)
        if made is None:
            return {}
        blobs.add(await job.put_blob(made.config))
        digest = await job.put_blob(made.manifest)
        blobs.add(digest)
        return {
            modelpackout.ANNOTATION_NAME: made.name,
            modelpackout.ANNOTATION_MANIFEST: str(digest),
            modelpackout.ANNOTATION_SIZE: str(len(made.manifest)),
        }

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
        kind = result.kind
        if kind == "oci" and modelpack.is_modelpack_files(result.files):
            kind = "modelpack"
        served_as = await self._modelpack_out(job, result, blobs)
        entry = new_entry(
            job.request.url,
            kind,
            manifest,
            list(result.files),
            result.primary or manifest,  # a set of files: the manifest names it
            blobs=blobs,
            reference=result.reference,
            annotations={
                **result.annotations,
                **served_as,
                **({ANNOTATION_PINNED: "true"} if job.request.pin else {}),
            },
        )
        await self._store.put(entry)
        await self.sync_views()
        return entry
