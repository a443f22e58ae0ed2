"""The root resource: sends each request to the API that owns its path.

``/v2`` → :class:`proxy.api.registry.RegistryAPI` (first: it is the hot path);
``/content`` → :class:`proxy.api.content.ContentAPI`; ``/metrics`` →
Prometheus text (:mod:`proxy.metrics`); ``/admin/`` →
:class:`proxy.api.admin.AdminAPI` (gc, du); ``/healthz`` and
``/readyz`` → health checks (always open: they are what probes call);
``/hf`` → :class:`proxy.api.hub.HfMirror` (a Hugging Face Hub mirror).
With an API token, changes always need it, and with ``protect_reads`` every
``/content``, ``/v2`` and ``/hf`` request does; one rule, shared with the
channel that judges request bodies, decides it (:mod:`proxy.api.admission`).
An absolute-form target (``GET http://<registry>/v2/...``, a forward-proxy request) goes to the
registry API with ``<registry>`` as its namespace; any other proxy request is
502, so a client with fallback goes to the origin itself. Everything else is
404 with a JSON error.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import BadHost

from proxy import metrics
from proxy.api.admin import AdminAPI
from proxy.api.admission import Access, Route, render_refusal, route_of
from proxy.api.answers import json_answer
from proxy.api.content import ContentAPI
from proxy.api.errors import json_error
from proxy.api.hub import HfMirror
from proxy.api.peers import PeerAPI
from proxy.api.registry import RegistryAPI, query_args
from proxy.service.membership import is_loopback_host
from proxy.web.auth import authorized


class Root(Resource):
    isLeaf = True
    # Debug (--verbose 1 and up): /healthz says which process answered
    # (X-Worker-Pid), to see the --workers processes share the port.
    show_pid = False

    def __init__(
        self,
        content: ContentAPI,
        registry: RegistryAPI,
        api_token: str | None = None,
        protect_reads: bool = False,
        admin: AdminAPI | None = None,
        peers: PeerAPI | None = None,
        cluster_token: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._admin = admin
        self._peers = peers
        self._api_token = api_token
        self._cluster_token = cluster_token
        # Who needs the token, and what bodies are taken (shared with the channel).
        self.access = Access(
            api_token,
            protect_reads and api_token is not None,
            push=registry.push is not None,
            admin=admin is not None,
            peers=peers is not None,
            cluster_token=cluster_token,
        )
        self._content = content.app.resource()
        self._registry = registry
        self._layout = content.layout
        self._hf = HfMirror(content.downloads.store, registry.sender)

    def render(self, request: IRequest) -> Any:
        path: bytes = request.path
        route = route_of(path, self._admin is not None)
        refused = self.access.refusal(
            route, request.method, path, lambda: authorized(request, self._api_token)
        )
        if refused is None and route is Route.PEER:
            refused = self.access.peer_refusal(
                self._cluster_token is not None and authorized(request, self._cluster_token),
                is_loopback_host(getattr(request.getClientAddress(), "host", "") or ""),
            )
        if refused is not None:
            return render_refusal(refused, request)
        if route is Route.PEER and self._peers is not None:
            return self._peers.render(request, path)
        if route is Route.REGISTRY:
            return self._registry.render(request, path)
        if route is Route.PROXY:
            return self._forward_proxy(request, path)
        if route is Route.CONTENT:
            try:
                unquote_to_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                # Klein would answer this in plain text; keep errors JSON.
                return json_error(request, 400, "BAD_REQUEST", "the path is not UTF-8")
            try:
                return self._content.render(request)
            except BadHost:
                # Klein hands the Host header to werkzeug, which refuses some.
                return json_error(request, 400, "BAD_REQUEST", "invalid Host header")
        if route is Route.HF:
            return self._hf.render(request, path)
        if path == b"/admin/peers" and self._peers is not None:
            return self._peers.admin(request)
        if route is Route.ADMIN and self._admin is not None:
            return self._admin.render(request, path)
        if route is Route.METRICS:
            body, ctype = metrics.exposition()
            request.setHeader(b"Content-Type", ctype)
            return body
        if path == b"/healthz":
            if self.show_pid:
                request.setHeader(b"X-Worker-Pid", b"%d" % os.getpid())
            return json_answer(request, {"status": "ok"}, 200)
        if path == b"/readyz":
            layout = self._layout
            checks = {
                "indexLoaded": layout.index_path.is_file(),
                "cacheWritable": all(
                    os.access(p, os.W_OK | os.X_OK) for p in (layout.blobs_dir, layout.ingest_dir)
                ),
            }
            ok = all(checks.values())
            return json_answer(request, {"ready": ok, "checks": checks}, 200 if ok else 503)
        return json_error(request, 404, "NOT_FOUND", "no such endpoint")

    def _forward_proxy(self, request: Any, target: bytes) -> Any:
        try:
            parts = urlsplit(target.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return json_error(request, 400, "BAD_REQUEST", "malformed request target")
        path = parts.path.encode("ascii")
        if parts.netloc and (path == b"/v2" or path.startswith(b"/v2/")):
            request.args = query_args(request.uri)
            return self._registry.render(request, path, proxied_host=parts.netloc.lower())
        # Not something this cache holds: let the client go to the origin itself.
        return json_error(request, 502, "NOT_CACHED", "only /v2 content is served as a proxy")
