"""Air-gapped members of a cache array: an entry this node cannot fetch at
its origin (unreachable, or outside ``--allow-upstream``) is copied from a
peer that holds it complete.

The peers are asked in rendezvous order of the entry's URL
(:mod:`proxy.service.membership`): ``GET /peer/v1/entries/<base64 URL>``
answers the entry's ``index.json`` descriptor and the blobs it needs; each
blob then comes from ``GET /peer/v1/blobs/<digest>`` through the same
download code as any origin (resumable, hashed while written, committed only
if it matches its digest), and the descriptor is adopted as an imported
bundle's is (:meth:`proxy.cache.store.Store.adopt`: every name checked
against its grammar). A peer is untrusted: a wrong byte, a bad name or a
descriptor that needs a blob it did not send refuses that peer's copy, and
the next peer is asked. Requests carry the cluster token; they are never
forwarded (a peer answers from its own cache only: one hop).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import attrs

from proxy import metrics
from proxy.cache.artifact import load_json
from proxy.cache.ingest import IngestFile
from proxy.cache.layout import blob_ingest_key
from proxy.cache.store import Entry, Store
from proxy.errors import BadContent, StorageError
from proxy.fetch.base import Job
from proxy.fetch.transfer import HttpClient, Retryable, Wanted, download
from proxy.service.membership import Membership
from proxy.types import ANNOTATION_URL, Digest, InvalidDigest

log = logging.getLogger(__name__)

MAX_LISTING = 4 * 1024 * 1024  # an entry's descriptor and blob list, as a peer sends it
MAX_BLOBS = 100_000


@attrs.frozen
class PeerEntry:
    """What a peer says it holds of one entry."""

    descriptor: dict[str, Any]
    blobs: tuple[tuple[Digest, int], ...]


def entry_path(url: str) -> str:
    return "/peer/v1/entries/" + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def parse_listing(data: bytes) -> PeerEntry:
    """A peer's answer, checked: raises BadContent for anything malformed."""
    try:
        doc = load_json(data)
        descriptor = doc["descriptor"]
        blobs = tuple((Digest.parse(b["digest"]), int(b["size"])) for b in doc["blobs"])
    except (ValueError, KeyError, TypeError, InvalidDigest) as e:
        raise BadContent(f"a malformed entry listing: {e}") from None
    if not isinstance(descriptor, dict) or len(blobs) > MAX_BLOBS:
        raise BadContent("a malformed entry listing")
    if any(size < 0 for _, size in blobs):
        raise BadContent("a negative blob size")
    return PeerEntry(descriptor, blobs)


class PeerPull:
    """Copies entries from peers (see the module's docstring)."""

    def __init__(
        self,
        membership: Membership,
        client: HttpClient,
        store: Store,
        token: str | None,
        scheme: str = "http",
    ) -> None:
        self.membership = membership
        self.scheme = scheme  # https between nodes with TLS (verified against --tls-ca)
        self.client = client
        self.store = store
        self._auth = f"Bearer {token}".encode() if token else None

    async def pull(self, url: str, job: Job) -> Entry | None:
        """The entry of ``url`` copied from the first peer that has it
        complete and sends it correctly; None if no peer does."""
        for address in self.membership.order(url):
            try:
                listing = await self._listing(address, url, job)
                if listing is None:
                    continue
                annotations = listing.descriptor.get("annotations")
                if not isinstance(annotations, dict) or annotations.get(ANNOTATION_URL) != url:
                    raise BadContent("it listed another entry than the one asked for")
                entry = await self._copy(address, listing, job)
            except (StorageError, Retryable) as failure:
                e = failure.cause if isinstance(failure, Retryable) else failure
                log.warning("peer %s: no copy of %s: %s", address, url, e.message)
                if not isinstance(e, BadContent):
                    self.membership.failed(address, e.message)
                metrics.PEER_FAILURES.inc()
                continue
            log.info("copied %s from peer %s (%d blobs)", url, address, len(listing.blobs))
            return entry
        return None

    async def _listing(self, address: str, url: str, job: Job) -> PeerEntry | None:
        response = await self.client.get(
            f"{self.scheme}://{address}{entry_path(url)}", job, authorization=self._auth
        )
        data = await self.client.read_small(response, MAX_LISTING)
        self.membership.answered(address)
        if response.code == 404:
            return None
        if response.code != 200:
            raise BadContent(f"answered {response.code} to an entry listing")
        return parse_listing(data)

    async def _copy(self, address: str, listing: PeerEntry, job: Job) -> Entry:
        for digest, size in listing.blobs:
            blob = job.progress.add(digest.hex[:12])
            want = Wanted(
                f"{self.scheme}://{address}/peer/v1/blobs/{digest}",
                authorization=self._auth,
                expected=digest,
                size=size,
                immutable=True,
                name=f"peer {address} {digest}",
                via_peers=False,  # it is a peer: one hop
                source="peer",
            )
            ingest = IngestFile(self.store.layout, blob_ingest_key(digest))
            await download(self.client, ingest, want, job, blob)
        try:
            entries = await self.store.adopt([listing.descriptor])
        except StorageError as e:
            raise BadContent(f"its entry cannot be adopted: {e.message}") from None
        return entries[0]
