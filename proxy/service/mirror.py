"""Pull-through mirror: ``/v2`` misses filled from the upstream registry.

With ``--mirror``, a request for a manifest or blob the cache lacks is
fetched from its upstream -- the registry named by ``?ns=`` (or by the target
of a forward-proxy request), else ``--upstream`` -- and served while it is
written to the cache. Only ``--upstream`` and the registries in
``--allow-upstream`` are filled from; anything else is ``DENIED``: the
server is never an open relay.

* Blobs: one fill per digest (single flight through :class:`Downloads`, as an
  ``oci-blob://`` entry), streamed to every client that asks meanwhile from
  the bytes already on disk; a Range far ahead of the fill is passed through
  to upstream at once. The fill is verified before it becomes a blob; a
  mismatch aborts the clients still reading rather than completing them.
* Tag lists are upstream's (first page) with the cached tags of the name.
* Manifests by digest are immutable: fetched once. Manifests by tag are
  revalidated with a HEAD once the TTL has passed, and served from the cache
  when upstream cannot be reached.

Fills are ordinary entries (``index.json``, ``GET /content/``, DELETE).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from twisted.internet.defer import Deferred

from proxy.cache.catalog import Catalog, normalize_registry
from proxy.cache.store import Entry
from proxy.errors import StorageError
from proxy.fetch.base import FetchResult, Job
from proxy.fetch.oci import OciFetcher
from proxy.fetch.ociref import ImageReference
from proxy.fetch.reach import entry_matches
from proxy.fetch.transfer import Retryable
from proxy.request import Credentials, FetchRequest
from proxy.service.downloads import Downloads
from proxy.service.jobs import Download
from proxy.types import Digest

log = logging.getLogger(__name__)


class Denied(Exception):
    """The registry is not one this mirror fills from."""


class Mirror:
    def __init__(
        self,
        downloads: Downloads,
        oci: OciFetcher,
        catalog: Catalog,
        upstream: str | None,
        allowed: frozenset[str],
        ttl: float = 60.0,
        credentials: dict[str, Credentials] | None = None,
    ) -> None:
        self.downloads = downloads
        self.oci = oci
        self.catalog = catalog
        self.upstream = normalize_registry(upstream) if upstream else None
        self.allowed = {normalize_registry(h) for h in allowed} | (
            {self.upstream} if self.upstream else set()
        )
        self.ttl = ttl
        self.credentials = {normalize_registry(k): v for k, v in (credentials or {}).items()}
        self._checked: dict[tuple[str, str, str], float] = {}

    def registry_for(self, ns: str | None) -> str | None:
        """The upstream registry of a request, or None when there is none to fill from."""
        registry = normalize_registry(ns) if ns else self.upstream
        if registry is None:
            return None
        if registry not in self.allowed and not self._wildcard_allows(registry):
            raise Denied(f"{registry} is not an upstream of this mirror")
        return registry

    def _wildcard_allows(self, registry: str) -> bool:
        """``--allow-upstream`` ``*.example.com`` entries cover the registries below them."""
        host, _, port = registry.rpartition(":") if registry.count(":") == 1 else (registry, "", "")
        number = int(port) if port.isdigit() else None
        return any(entry_matches(e, host, number) for e in self.allowed if e.startswith("*."))

    def _credentials(self, registry: str) -> Credentials | None:
        return self.credentials.get(registry)

    # -- blobs -----------------------------------------------------------------

    def fill_blob(self, registry: str, name: str, digest: Digest) -> Download:
        """The running fill of a blob (started if none runs)."""
        url = f"oci-blob://{registry}/{name}@{digest}"
        return self.downloads.start(FetchRequest(url, self._credentials(registry)))

    async def pass_through(
        self, registry: str, name: str, digest: Digest, first: int, last: int
    ) -> Any:
        """An upstream response for one byte range of a blob (not cached)."""
        ref = ImageReference(registry, name, None, digest)
        creds = self._credentials(registry)
        job = self._scratch_job(f"oci://{registry}/{name}@{digest}", creds)
        return await self.oci.blob_range(ref, self.oci.auth(ref, creds), first, last, job)

    def _scratch_job(self, url: str, creds: Credentials | None) -> Download:
        """A Job for one request outside any download (nothing is stored)."""
        return Download(FetchRequest(url, creds), self.downloads.store, self.downloads.reactor)

    # -- tags ----------------------------------------------------------------------

    def tags(self, registry: str, name: str) -> Deferred[list[str] | None]:
        """The tags upstream lists for ``name`` (None: it has no such name)."""
        image = ImageReference(registry, name, None, None)
        creds = self._credentials(registry)
        job = self._scratch_job(f"oci://{registry}/{name}", creds)
        return Deferred.fromCoroutine(self.oci.tags(image, self.oci.auth(image, creds), job))

    # -- manifests ---------------------------------------------------------------

    def manifest(self, registry: str, name: str, ref: str) -> Deferred[Digest | None]:
        """Make sure the cache has an up-to-date manifest for ``name:ref``; fire
        with its digest (None when upstream has none and the cache neither)."""
        return Deferred.fromCoroutine(self._manifest(registry, name, ref))

    async def _manifest(self, registry: str, name: str, ref: str) -> Digest | None:
        by_digest = ref.startswith("sha256:")
        digest = Digest.parse(ref) if by_digest else None
        cached: Entry | None = None if by_digest else self.catalog.resolve(name, ref, registry)
        key = (registry, name, ref)
        if cached is not None and time.monotonic() - self._checked.get(key, -1e9) < self.ttl:
            return cached.descriptor.digest
        image = ImageReference(registry, name, None if by_digest else ref, digest)
        where = f"{registry}/{name}{'@' if by_digest else ':'}{ref}"
        creds = self._credentials(registry)
        try:
            if cached is not None and await self._still(image, creds, cached.descriptor.digest):
                self._checked[key] = time.monotonic()
                return cached.descriptor.digest
            # The same single flight as every download (a POST of this URL is joined).
            fill = ManifestFill(self.oci, image, where)
            job = self.downloads.start(FetchRequest(f"oci://{where}", creds), fill, queued=False)
            entry, _ = await job.wait()
        except (StorageError, Retryable) as e:
            if cached is not None:
                log.warning(
                    "upstream %s unreachable (%s); serving the cached %s:%s", registry, e, name, ref
                )
                return cached.descriptor.digest
            if isinstance(e, StorageError) and getattr(e, "upstream_status", None) == 404:
                return None
            raise
        self._checked[key] = time.monotonic()
        return entry.descriptor.digest

    async def _still(
        self, image: ImageReference, creds: Credentials | None, digest: Digest
    ) -> bool:
        """Whether upstream still reports ``digest`` for a tag (a HEAD)."""
        job = self._scratch_job(f"oci://{image.registry}/{image.repository}", creds)
        reported = await self.oci.manifest_digest(image, self.oci.auth(image, creds), job)
        return reported == str(digest)


class ManifestFill:
    """The fetcher of a mirror's manifest fill: one manifest, no layers (a
    client pulls those through ``/v2`` as it needs them). When the URL's entry
    already holds that manifest (a full pull, say), the entry stays as it is."""

    schemes: tuple[str, ...] = ("oci",)

    def __init__(self, oci: OciFetcher, ref: ImageReference, reference: str) -> None:
        self.oci = oci
        self.ref = ref
        self.reference = reference

    def validate(self, request: FetchRequest) -> None:
        self.oci.validate(request)

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        auth = self.oci.auth(self.ref, request.credentials)
        try:
            manifest = await self.oci.manifest(self.ref, auth, job)
        except Retryable as e:
            raise e.cause from None
        await job.put_blob(manifest.data)
        desc = manifest.descriptor
        log.info("mirrored %s manifest (%s)", self.reference, desc.digest)
        return FetchResult(
            files=(desc,),
            primary=desc,
            kind="mirror",
            manifest=desc,
            reference=self.reference,
            keep_existing=True,
        )
