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
from proxy.cache.store import Entry, new_entry
from proxy.errors import StorageError
from proxy.fetch.auth import RegistryAuth
from proxy.fetch.oci import ACCEPT, OciFetcher
from proxy.fetch.ociref import ImageReference
from proxy.fetch.reach import entry_matches
from proxy.fetch.transfer import Retryable, header
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
        self._inflight: dict[tuple[str, str, str], list[Deferred[Digest | None]]] = {}

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

    def _ref(
        self, registry: str, name: str, tag: str | None, digest: Digest | None
    ) -> ImageReference:
        return ImageReference(registry, name, tag, digest)

    def _job(self, url: str, registry: str) -> Download:
        creds = self.credentials.get(registry)
        return Download(FetchRequest(url, creds), self.downloads.store, self.downloads.reactor)

    # -- blobs -----------------------------------------------------------------

    def fill_blob(self, registry: str, name: str, digest: Digest) -> Download:
        """The running fill of a blob (started if none runs)."""
        url = f"oci-blob://{registry}/{name}@{digest}"
        return self.downloads.start(FetchRequest(url, self.credentials.get(registry)))

    async def pass_through(
        self, registry: str, name: str, digest: Digest, first: int, last: int
    ) -> Any:
        """An upstream response for one byte range of a blob (not cached)."""
        ref = self._ref(registry, name, None, digest)
        job = self._job(f"oci://{registry}/{name}@{digest}", registry)
        auth = RegistryAuth(self.oci.client, ref.hostname, name, job.request.credentials)
        url = f"{self.oci.base_url(ref)}/v2/{name}/blobs/{digest}"
        rng = {b"Range": f"bytes={first}-{last}".encode(), b"Accept-Encoding": b"identity"}
        return await self.oci._get(auth, url, job, rng)

    # -- manifests ---------------------------------------------------------------

    def manifest(self, registry: str, name: str, ref: str) -> Deferred[Digest | None]:
        """Make sure the cache has an up-to-date manifest for ``name:ref``; fire
        with its digest (None when upstream has none and the cache neither)."""
        key = (registry, name, ref)
        d: Deferred[Digest | None] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        self._inflight[key] = [d]

        def settle(result: Any) -> None:
            for w in self._inflight.pop(key, []):
                if not w.called:
                    (w.errback if isinstance(result, BaseException) else w.callback)(result)

        async def run() -> None:
            try:
                result: Any = await self._manifest(registry, name, ref)
            except BaseException as e:
                result = e
            settle(result)

        Deferred.fromCoroutine(run())
        return d

    async def _manifest(self, registry: str, name: str, ref: str) -> Digest | None:
        by_digest = ref.startswith("sha256:")
        digest = Digest.parse(ref) if by_digest else None
        cached: Entry | None = None if by_digest else self.catalog.resolve(name, ref, registry)
        key = (registry, name, ref)
        if cached is not None and time.monotonic() - self._checked.get(key, -1e9) < self.ttl:
            return cached.descriptor.digest
        image = self._ref(registry, name, None if by_digest else ref, digest)
        url = f"oci://{registry}/{name}{'@' if by_digest else ':'}{ref}"
        job = self._job(url, registry)
        auth = RegistryAuth(self.oci.client, image.hostname, name, job.request.credentials)
        base = self.oci.base_url(image)
        try:
            if cached is not None:
                head = await self.oci._get(
                    auth, f"{base}/v2/{name}/manifests/{ref}", job, {b"Accept": ACCEPT}, "HEAD"
                )
                self.oci.client.discard(head)
                reported = header(head, b"Docker-Content-Digest")
                if head.code == 200 and reported == str(cached.descriptor.digest):
                    self._checked[key] = time.monotonic()
                    return cached.descriptor.digest
            manifest = await self.oci._manifest(auth, base, image, ref, job)
        except (StorageError, Retryable) as e:
            if cached is not None:
                log.warning(
                    "upstream %s unreachable (%s); serving the cached %s:%s", registry, e, name, ref
                )
                return cached.descriptor.digest
            if isinstance(e, StorageError) and getattr(e, "upstream_status", None) == 404:
                return None
            raise
        try:
            await job.put_blob(manifest.data)
            desc = manifest.descriptor
            entry = new_entry(
                url,
                "mirror",
                desc,
                [desc],
                desc,
                blobs={desc.digest},
                reference=f"{registry}/{name}{'@' if by_digest else ':'}{ref}",
            )
            existing = self.downloads.store.get(url)
            if existing is None or existing.descriptor.digest != desc.digest:
                await self.downloads.store.put(entry)
        finally:
            job.release()
        self._checked[key] = time.monotonic()
        log.info("mirrored %s/%s manifest %s (%s)", registry, name, ref, manifest.descriptor.digest)
        return manifest.descriptor.digest
