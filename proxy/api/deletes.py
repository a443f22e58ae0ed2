"""Deletes through the /v2 push API (``--allow-push``, same token rules as
pushes)::

    DELETE /v2/<name>/manifests/<tag>     202: the entry of <name>:<tag> is removed
    DELETE /v2/<name>/manifests/<digest>  202: every entry of <name> whose
                                          manifest is <digest> is removed (its
                                          tags too)
    DELETE /v2/<name>/blobs/<digest>      202: the blob is removed, from every
                                          repository (the cache is one store)

Only pushed entries (``oci-push://``) are deleted here; downloaded content
keeps ``DELETE /content/<base64 of the URL>`` (its names are refused before,
:meth:`proxy.api.push.PushAPI._check_pushed_name`). Removing an entry removes
the blobs no remaining entry references, as ``DELETE /content/`` does.

A blob is deleted only when nothing needs it: no entry (pushed, pulled or
imported) and no manifest of ``index.json`` references it, and no download
holds it. A pushed blob that no manifest uses yet is deletable (its push's
hold is dropped). A referenced blob is refused with 405 ``UNSUPPORTED`` (the
spec's answer for a delete the registry does not do) naming who uses it:
delete those manifests first. Unknown tags, manifests and blobs are 404.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.defer import Deferred

from proxy.api.errors import OciError
from proxy.cache.catalog import Catalog, is_pushed
from proxy.cache.store import Store
from proxy.cache.uploads import Uploads
from proxy.naming import PUSH_SCHEME
from proxy.threads import in_thread
from proxy.types import Digest
from proxy.units import human_size

log = logging.getLogger(__name__)


class Deletes:
    """Tag, manifest and blob deletes on one store."""

    def __init__(self, store: Store, uploads: Uploads, catalog: Catalog, reactor: Any) -> None:
        self.store = store
        self.uploads = uploads
        self.catalog = catalog
        self._reactor = reactor

    async def tag(self, name: str, tag: str) -> None:
        url = f"{PUSH_SCHEME}{name}:{tag}"
        if self.store.get(url) is None:
            raise OciError("MANIFEST_UNKNOWN", f"{name}:{tag} is not in this registry")
        freed = await self.store.remove(url)
        log.info("deleted tag %s:%s (%s freed)", name, tag, human_size(freed))

    async def manifest(self, name: str, digest: Digest) -> None:
        urls = [
            e.url
            for e in self.catalog.entries_of(name, None)
            if is_pushed(e) and e.descriptor.digest == digest
        ]
        if not urls:
            user = next(
                (e.url for e in self.catalog.entries_of(name, None) if digest in e.blobs), None
            )
            if user is not None:
                raise OciError(
                    "UNSUPPORTED",
                    f"{digest} is part of {user}, not a manifest of its own: delete that first",
                )
            raise OciError("MANIFEST_UNKNOWN", f"{name}@{digest} is not in this registry")
        freed = 0
        for url in urls:
            if self.store.get(url) is not None:
                freed += await self.store.remove(url)
        log.info("deleted %s@%s (%d entries, %s freed)", name, digest, len(urls), human_size(freed))

    async def blob(self, name: str, digest: Digest) -> None:
        def locked() -> Deferred[int]:
            # Under the blob lock: no entry can take the blob between the
            # check and the removal.
            user = self.store.user_of(digest)
            if user is not None:
                raise OciError(
                    "UNSUPPORTED",
                    f"{digest} is used by {user}: delete the manifests that use it first",
                )
            if self.store.holds(digest) > self.uploads.holds(digest):
                raise OciError("UNSUPPORTED", f"{digest} is being downloaded; try again later")
            self.uploads.settle([digest])
            return in_thread(self._reactor, self.store.layout.remove_blob, digest)

        if not await in_thread(self._reactor, self.store.layout.has_blob, digest):
            raise OciError("BLOB_UNKNOWN", f"{digest} is not in this registry")
        freed = await self.store.blob_lock.run(locked)
        log.info("deleted blob %s through %s (%s)", digest, name, human_size(freed))
