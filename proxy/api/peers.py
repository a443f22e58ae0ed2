"""The routes peers of a cache array call (``/peer/v1/...``), and
``GET /admin/peers``.

* ``GET /peer/v1/entries/<base64 URL>``: a complete entry's ``index.json``
  descriptor and the blobs it needs (digest, size), from this node's cache
  only; 404 otherwise.
* ``GET|HEAD /peer/v1/blobs/sha256:<hex>``: a blob, with ranges, served as
  ``/v2`` serves it: committed here, being written here (streamed as it
  grows), or -- with the origin request header -- fetched from its origin
  for the peer (:mod:`proxy.service.peerfills`). A peer's request is never
  routed to another peer (one hop). Beyond ``--peer-fanout`` streams of one
  blob, a request is redirected (307) to a peer that holds it
  (:mod:`proxy.service.fanout`).

Who may call them is decided with every other route's rules
(:class:`proxy.api.admission.Access`): the cluster token, or, without one,
clients on loopback only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from proxy.api.answers import json_answer
from proxy.api.content import decode_url
from proxy.api.errors import OciError, json_error, oci_error
from proxy.api.registry import RegistryAPI
from proxy.cache.store import Entry, Store
from proxy.errors import BadRequest, StorageError
from proxy.service.fanout import Fanout
from proxy.service.forward import HEADER as ORIGIN_HEADER
from proxy.service.forward import Origin
from proxy.service.membership import Membership
from proxy.service.peerfills import PeerBlobs
from proxy.service.peerroute import NO_REDIRECT_HEADER, PEER_HEADER
from proxy.service.sources import BlobWant
from proxy.threads import in_thread
from proxy.types import Digest, InvalidDigest

ENTRIES = b"/peer/v1/entries/"
BLOBS = b"/peer/v1/blobs/"


class PeerAPI:
    def __init__(
        self,
        store: Store,
        local: RegistryAPI,
        membership: Membership,
        threads: IReactorThreads,
        blobs: PeerBlobs,
        fanout: Fanout,
        scheme: str = "http",
    ) -> None:
        self.store = store
        self.local = local  # how /v2 answers a blob
        self.membership = membership
        self._threads = threads
        self.blobs = blobs
        self.fanout = fanout
        self.scheme = scheme  # of the redirects to other peers

    def render(self, request: Any, path: bytes) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_error(request, 405, "METHOD_NOT_ALLOWED", "peer routes are reads")
        if path.startswith(BLOBS) and len(path) > len(BLOBS):
            return self._blob(request, path[len(BLOBS) :])
        if path.startswith(ENTRIES) and len(path) > len(ENTRIES):
            try:
                url = decode_url(path[len(ENTRIES) :])
            except BadRequest as e:
                return json_error(request, 400, "BAD_REQUEST", e.message)
            entry = self.store.get(url)
            if entry is None or not entry.complete or entry.legacy:
                return json_error(request, 404, "NOT_FOUND", f"{url} is not complete here")
            listed = in_thread(self._threads, self._listing, entry)
            listed.addCallback(lambda body: self._finish(request, body))
            return NOT_DONE_YET
        return json_error(request, 404, "NOT_FOUND", "no such peer route")

    def _blob(self, request: Any, ref: bytes) -> Any:
        try:
            digest = Digest.parse(ref.decode("ascii"))
            raw = request.getHeader(ORIGIN_HEADER)
            origin = Origin.decode(raw) if raw else None
        except (InvalidDigest, UnicodeDecodeError):
            return json_error(request, 400, "BAD_REQUEST", "not a digest")
        except BadRequest as e:
            return json_error(request, 400, "BAD_REQUEST", e.message)
        said = request.getHeader(PEER_HEADER)
        peer = said.decode("latin-1") if said else None
        if request.method == b"HEAD":
            return self.local.answer_found(
                self.blobs.local.open(BlobWant(digest, "peer")), request, "peer", digest
            )
        insist = request.getHeader(NO_REDIRECT_HEADER) == b"1"
        target = self.fanout.admit(digest, peer, insist)
        if target is not None:
            request.setResponseCode(307)
            request.setHeader(
                b"Location", f"{self.scheme}://{target}{BLOBS.decode()}{digest}".encode()
            )
            request.setHeader(b"Content-Length", b"0")
            return b""

        def ended(result: object) -> None:
            ok = not isinstance(result, Failure) and request.code < 400
            self.fanout.done(digest, peer, ok)

        request.notifyFinish().addBoth(ended)
        found = self.blobs.open(BlobWant(digest, "peer", origin=origin))
        found.addErrback(_as_oci_error, digest)
        return self.local.answer_found(found, request, "peer", digest)

    def _listing(self, entry: Entry) -> dict[str, Any]:
        """The entry's descriptor and the blobs it keeps alive that are here
        (blocking: one stat per blob)."""
        layout = self.store.layout
        blobs = []
        for digest in sorted(entry.blobs):
            size = layout.blob_size(digest)
            if size is not None:
                blobs.append({"digest": str(digest), "size": size})
        return {"url": entry.url, "descriptor": entry.index_json(), "blobs": blobs}

    @staticmethod
    def _finish(request: Any, body: dict[str, Any]) -> None:
        if request.finished:
            return
        request.write(json_answer(request, body))
        request.finish()

    def admin(self, request: Any) -> bytes:
        """``GET /admin/peers``: the peers this node knows, and their state."""
        doc = self.membership.to_json()
        doc["fanout"] = {
            "limit": self.fanout.limit,
            "streams": self.fanout.streams(),
            "mostAtOnce": self.fanout.most,
        }
        return json_answer(request, doc)


def _as_oci_error(f: Failure, digest: Digest) -> Failure:
    """How a fill for a peer failed, as an answer (never a cut connection: a
    cut says the node is down, not that the origin failed)."""
    if isinstance(f.value, StorageError):
        raise oci_error(f.value, "BLOB_UNKNOWN")
    if f.check(CancelledError, TimeoutError):
        raise OciError("UNAVAILABLE", f"{digest}: no writer told its size in time", 503)
    return f
