"""The routes peers of a cache array call (``/peer/v1/...``), and
``GET /admin/peers``.

* ``GET /peer/v1/entries/<base64 URL>``: a complete entry's ``index.json``
  descriptor and the blobs it needs (digest, size), from this node's cache
  only; 404 otherwise.
* ``GET|HEAD /peer/v1/blobs/sha256:<hex>``: a committed blob, with ranges,
  served exactly as ``/v2`` serves it, from this node's cache only (a peer's
  request is never forwarded: one hop).

Who may call them is decided with every other route's rules
(:class:`proxy.api.admission.Access`): the cluster token, or, without one,
clients on loopback only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorThreads
from twisted.web.server import NOT_DONE_YET

from proxy.api.answers import json_answer
from proxy.api.content import decode_url
from proxy.api.errors import json_error
from proxy.api.registry import RegistryAPI
from proxy.cache.store import Entry, Store
from proxy.errors import BadRequest
from proxy.service.membership import Membership
from proxy.threads import in_thread

ENTRIES = b"/peer/v1/entries/"
BLOBS = b"/peer/v1/blobs/"


class PeerAPI:
    def __init__(
        self,
        store: Store,
        local: RegistryAPI,
        membership: Membership,
        threads: IReactorThreads,
    ) -> None:
        self.store = store
        self.local = local  # /v2 answers from this cache alone
        self.membership = membership
        self._threads = threads

    def render(self, request: Any, path: bytes) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_error(request, 405, "METHOD_NOT_ALLOWED", "peer routes are reads")
        if path.startswith(BLOBS) and len(path) > len(BLOBS):
            return self.local.render(request, b"/v2/peer/blobs/" + path[len(BLOBS) :])
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
        return json_answer(request, self.membership.to_json())
