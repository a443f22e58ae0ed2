"""Who may send what: the token each route needs, and how large a request
body may be, decided from the request head alone.

twisted.web stores a request body (in memory, or in a temporary file above
100 kB) before any resource sees the request, so a check made while
rendering comes after the bytes are on disk: a 2 GiB body to ``/healthz``
would sit in a temporary file first. The channel
(:mod:`proxy.web.channel`) therefore asks :meth:`Access.admit` as soon as
the headers are in, before the first body byte, and answers a refusal at
once, with ``Connection: close``, without reading the body. :class:`Root
<proxy.api.root.Root>` asks :meth:`Access.refusal` the same question for
every request: one place decides whether a route needs the token.

Routes and their bodies (``GET``/``HEAD`` and everything else not listed:
at most :data:`SMALL_BODY` bytes)::

    POST /content                            JSON, MAX_BODY (64 KiB; over: 413)
    POST /admin/pin                          JSON, 64 KiB (over: 413)
    POST /admin/export-store, import-store   JSON, 64 KiB (over: 413)
    POST /admin/import                       unbounded, spooled into ingest/
    PUT  /v2/<name>/manifests/<ref>          MAX_MANIFEST (4 MiB, as distribution)
    POST /v2/<name>/blobs/uploads/           unbounded, spooled into ingest/
    PATCH, PUT /v2/<name>/blobs/uploads/<id> unbounded, spooled into ingest/

(the last three only with ``--allow-push``). A refused body is answered 401
when the route needs the token and the request lacks it, 404 on an unknown
path, 405 for a write to the read-only registry, else 413. A chunked body
(no ``Content-Length``) is cut off with the same answer as soon as its
running total passes the limit.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from proxy.api.content import MAX_BODY
from proxy.api.errors import OciError, error_body, json_error
from proxy.types import MAX_MANIFEST
from proxy.web.admission import Limit, Refusal
from proxy.web.auth import REALM

SMALL_BODY = 4096  # what a request that takes no body may still carry
PIN_BODY = 64 * 1024
READS = (b"GET", b"HEAD")


class Route(enum.Enum):
    REGISTRY = "registry"  # /v2, /v2/...
    PROXY = "proxy"  # an absolute-form target (forward proxy)
    CONTENT = "content"
    HF = "hf"
    ADMIN = "admin"
    METRICS = "metrics"
    HEALTH = "health"  # /healthz, /readyz: always open
    PEER = "peer"  # /peer/v1/...: the cache array's own routes
    UNKNOWN = "unknown"


def route_of(path: bytes, admin: bool) -> Route:
    """The route of a request path (no query), as :class:`Root
    <proxy.api.root.Root>` dispatches it."""
    if path == b"/v2" or path.startswith(b"/v2/"):
        return Route.REGISTRY
    if path.startswith((b"http://", b"https://")):
        return Route.PROXY
    if path == b"/content" or path.startswith(b"/content/"):
        return Route.CONTENT
    if path == b"/hf" or path.startswith(b"/hf/"):
        return Route.HF
    if admin and path.startswith(b"/admin/"):
        return Route.ADMIN
    if path == b"/metrics":
        return Route.METRICS
    if path in (b"/healthz", b"/readyz"):
        return Route.HEALTH
    if path.startswith(b"/peer/"):
        return Route.PEER
    return Route.UNKNOWN


def is_push(method: bytes, path: bytes, token: bool) -> bool:
    """Whether a /v2 request belongs to the push API (everything but reads,
    and the upload-status GET), or, with a token, is the ``/v2/`` ping
    (skopeo and containerd decide from its answer whether to send
    credentials at all)."""
    if method not in READS or b"/blobs/uploads/" in path:
        return True
    return token and path in (b"/v2", b"/v2/")


@attrs.frozen
class Access:
    """The server's access rules: its token, ``--protect-reads``,
    ``--allow-push`` and whether ``/admin/`` is served."""

    token: str | None
    protect_reads: bool
    push: bool
    admin: bool
    peers: bool = False  # the /peer/ routes are served (--peers)
    cluster_token: str | None = attrs.field(default=None, repr=False)

    def peer_refusal(self, carries_cluster_token: bool, from_loopback: bool) -> Refusal | None:
        """The answer to a /peer/ request that may not have one: 404 without
        --peers; 401 without the cluster token (without a cluster token set,
        only clients on loopback may call: peers on other hosts need one)."""
        if not self.peers:
            return Refusal(404, "NOT_FOUND", "this node is not in a cache array", False)
        if carries_cluster_token if self.cluster_token is not None else from_loopback:
            return None
        return Refusal(401, "UNAUTHORIZED", "peer routes need the cluster token", False, True)

    def needs_token(self, route: Route, method: bytes, path: bytes) -> bool:
        """Whether a request must carry the API token: every read with
        ``--protect-reads`` (except the health checks), every change to
        ``/content`` and ``/admin/``, and every push request."""
        if self.token is None or route in (Route.HEALTH, Route.UNKNOWN, Route.PEER):
            return False  # the peer routes have their own token (peer_refusal)
        if self.protect_reads:
            return True
        if route in (Route.CONTENT, Route.ADMIN):
            return method not in READS
        return route is Route.REGISTRY and self.push and is_push(method, path, True)

    def refusal(
        self, route: Route, method: bytes, path: bytes, authorized: Callable[[], bool]
    ) -> Refusal | None:
        """The 401 for a request that lacks a token it needs, else None."""
        if not self.needs_token(route, method, path) or authorized():
            return None
        if route in (Route.REGISTRY, Route.PROXY):
            pushing = route is Route.REGISTRY and self.push and is_push(method, path, True)
            what = "pushing to this registry" if pushing else "this registry"
            return Refusal(401, "UNAUTHORIZED", f"{what} needs the API token", True, True)
        return Refusal(401, "UNAUTHORIZED", "this needs the API token", False, True)

    def admit(
        self, method: bytes, target: bytes, authorized: Callable[[], bool]
    ) -> Limit | Refusal:
        """The body a request with this head may send, or its refusal
        (``target``: the request target, query included)."""
        path = target.split(b"?", 1)[0]
        route = route_of(path, self.admin)
        refused = self.refusal(route, method, path, authorized)
        if refused is not None:
            return refused
        return self._limit(route, method, path)

    def _limit(self, route: Route, method: bytes, path: bytes) -> Limit:
        oci = route in (Route.REGISTRY, Route.PROXY)
        if route is Route.UNKNOWN:
            return Limit(SMALL_BODY, Refusal(404, "NOT_FOUND", "no such endpoint", False))
        if oci and method not in READS and not (route is Route.REGISTRY and self.push):
            unsupported = "this registry is read-only (push is not enabled)"
            refusal = Refusal(405, "UNSUPPORTED", unsupported, True, allow=b"GET, HEAD")
            return Limit(SMALL_BODY, refusal)
        size = SMALL_BODY
        if route is Route.REGISTRY and self.push:
            if method == b"PUT" and b"/manifests/" in path:
                size = MAX_MANIFEST
            elif method in (b"POST", b"PATCH", b"PUT") and b"/blobs/uploads" in path:
                return Limit(None, _too_large(0, oci))
        elif route is Route.CONTENT and method == b"POST" and path in (b"/content", b"/content/"):
            return Limit(MAX_BODY, _too_large(MAX_BODY, False))
        elif route is Route.ADMIN and method == b"POST":
            if path == b"/admin/import":
                return Limit(None, _too_large(0, oci))
            if path in (b"/admin/pin", b"/admin/export-store", b"/admin/import-store"):
                return Limit(PIN_BODY, _too_large(PIN_BODY, False))
        return Limit(size, _too_large(size, oci))


def _too_large(size: int, oci: bool) -> Refusal:
    message = f"the request body is larger than this request takes ({size} bytes)"
    return Refusal(413, "SIZE_INVALID" if oci else "TOO_LARGE", message, oci)


def render_refusal(refusal: Refusal, request: Any) -> bytes:
    """A refusal as the answer of a twisted.web request: status and headers
    set on ``request``; the body returned."""
    if refusal.challenge:
        request.setHeader(b"WWW-Authenticate", REALM)
    if refusal.allow is not None:
        request.setHeader(b"Allow", refusal.allow)
    if refusal.oci:
        body = error_body(request, OciError(refusal.code, refusal.message, refusal.status))
        return b"" if request.method == b"HEAD" else body
    return json_error(request, refusal.status, refusal.code, refusal.message)
