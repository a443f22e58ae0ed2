"""The asking side of the cache array: a blob whose digest is known before
it is fetched comes from its owner, not from its origin.

When a download needs a blob of known digest (an image's layer, an hf LFS
file, an ollama layer, an object with a checksum, a POSTed digest),
:class:`PeerRoute` asks the blob's owner -- the first of the live nodes in
rendezvous order of the digest (:mod:`proxy.service.membership`) -- with
``GET /peer/v1/blobs/<digest>`` and the origin request
(:class:`proxy.service.forward.Origin`). The owner fetches it from the origin
once (single flight) and streams it to every node that asks while it is still
arriving (:mod:`proxy.service.peerfills`). This node is the owner: the origin.

Every byte is verified here as any download's is (the digest check before the
commit). Faults:

* the owner cut off or silent (connect or idle timeout): it is marked down
  for :data:`proxy.service.membership.RETRY_AFTER` seconds and the download
  goes on from the bytes it has (a ``Range``), at the next node in rendezvous
  order (the new owner) or, when that is this node, at the origin;
* wrong bytes: nothing is kept, that node is skipped for this blob (not
  marked down), and the next one is asked;
* an error answer of the owner (its origin failed it): the origin is asked
  from here, so the error is the one a single node gives;
* a redirect (the owner serves ``--peer-fanout`` nodes already): the peer it
  names (one that holds or is streaming the blob) is asked without the origin
  request; if that fails, the owner again, which then serves it itself.

A request this node sends carries ``X-Nekko-Peer`` (its own address, for the
owner's fan-out) and the cluster token; what a peer asks of this node is
never routed again (one hop).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from proxy import metrics
from proxy.cache.ingest import IngestFile
from proxy.errors import (
    BadContent,
    Cancelled,
    DiskFull,
    Redirected,
    StorageError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.fetch.base import BlobProgress, Job
from proxy.fetch.transfer import HttpClient, Wanted, transfer
from proxy.redact import redact_url
from proxy.service.forward import HEADER as ORIGIN_HEADER
from proxy.service.forward import Origin
from proxy.service.membership import Membership, rendezvous
from proxy.types import Digest

log = logging.getLogger(__name__)

PEER_HEADER = b"X-Nekko-Peer"  # the asking node's address
NO_REDIRECT_HEADER = b"X-Nekko-No-Redirect"  # serve it yourself (a redirect target failed)
MAX_HOPS = 4  # redirects followed for one blob before the owner must serve it


async def origin_of(want: Wanted) -> Origin:
    """The origin request of ``want``, to hand to its owner (signed without a
    ``Range``: the owner adds its own)."""
    url, private = want.url, dict[bytes, bytes]()
    if_match = want.if_match
    if want.prepare is not None:
        headers = {b"If-Match": if_match.encode("latin-1")} if if_match else {}
        url, private = await want.prepare(headers)
        if b"If-Match" not in headers:  # the signer moved it into the URL (GCS)
            if_match = None
    return Origin(
        url=url,
        name=want.recorded,
        authorization=want.authorization.decode("latin-1") if want.authorization else None,
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in private.items()),
        if_match=if_match,
        size=want.size,
    )


class PeerRoute:
    """Blobs of known digest from their owner (see the module's docstring)."""

    def __init__(
        self,
        membership: Membership,
        client: HttpClient,
        token: str | None,
        scheme: str = "http",
    ) -> None:
        self.membership = membership
        self.client = client  # to peers: short timeouts, one attempt per peer
        self.scheme = scheme
        self._auth = f"Bearer {token}".encode() if token else None

    async def fetch(
        self, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
    ) -> tuple[Digest, int] | None:
        assert want.expected is not None
        digest = want.expected
        me = self.membership.self_address
        skipped: set[str] = set()
        origin: Origin | None = None
        target: str | None = None  # where a redirect said to go
        hops = 0
        insist = False  # the owner must serve it itself
        while True:
            if target is None:
                order = rendezvous(str(digest), self.membership.live())
                order = [a for a in order if a not in skipped]
                if not order or order[0] == me:
                    if skipped:
                        log.info("%s: %s from the origin (peers skipped)", want.recorded, digest)
                    return None
                address, carry = order[0], True
            else:
                address, carry, target = target, False, None
            if carry and origin is None:
                origin = await origin_of(want)
            try:
                got = await transfer(
                    self.client,
                    ingest,
                    self._wanted(address, want, origin if carry else None, insist),
                    job,
                    blob,
                )
            except Redirected as r:
                hops += 1
                if carry and insist:  # told to serve it itself, and it did not
                    skipped.add(address)
                    continue
                target = self._peer_at(r.location)
                if target is None or target in skipped or hops > MAX_HOPS:
                    target, insist = None, True
                continue
            except (Cancelled, DiskFull):
                raise
            except StorageError as e:
                metrics.PEER_FAILURES.inc()
                log.warning("peer %s: %s not fetched from it: %s", address, digest, e.message)
                if isinstance(e, (UpstreamUnreachable, UpstreamTimeout)):
                    self.membership.failed(address, e.message)
                elif carry and not isinstance(e, BadContent):
                    # The owner answered an error: its origin's. Ask the origin here,
                    # so the answer is the one a single node gives.
                    return None
                if carry:
                    skipped.add(address)
                else:
                    insist = True  # a redirect target failed: back to the owner
                continue
            self.membership.answered(address)
            blob.source = f"peer {address}"
            log.info("%s: %s from peer %s", redact_url(want.recorded), digest, address)
            return got

    def _wanted(self, address: str, want: Wanted, origin: Origin | None, insist: bool) -> Wanted:
        assert want.expected is not None
        headers = {PEER_HEADER: self.membership.self_address.encode()}
        if origin is not None:
            headers[ORIGIN_HEADER] = origin.encode()
        if insist:
            headers[NO_REDIRECT_HEADER] = b"1"
        url = f"{self.scheme}://{address}/peer/v1/blobs/{want.expected}"

        async def prepare(h: dict[bytes, bytes]) -> tuple[str, dict[bytes, bytes]]:
            return url, headers

        return Wanted(
            url,
            authorization=self._auth,
            expected=want.expected,
            size=want.size,
            immutable=True,
            name=want.recorded,  # the origin's resume check sees the same source
            prepare=prepare,
            via_peers=False,
            source="peer",
            follow_redirects=False,
        )

    def _peer_at(self, location: str) -> str | None:
        """The known peer a redirect names (None: not a peer of ours)."""
        parts = urlsplit(location)
        if parts.scheme != self.scheme or not parts.path.startswith("/peer/v1/blobs/"):
            return None
        address = parts.netloc
        return address if address in self.membership.addresses() else None
