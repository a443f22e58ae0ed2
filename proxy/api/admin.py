"""Operator endpoints on the same listener: ``POST /admin/gc``, ``GET /admin/du``
and ``POST /admin/pin``.

``gc`` removes blobs no entry references and ingest directories no running
download uses (``?ingest-age=<seconds>``, default a day: newer partial
downloads are kept so they can resume); ``du`` reports what the cache holds
on disk; ``pin`` sets whether an entry may be evicted (``{"url", "pin"}``);
``info`` says which cache this server serves (``cache``, ``pid``, ``version``).
``import`` loads an OCI layout tar sent as the body (see
:mod:`proxy.cache.bundle`). ``export-store`` (``{"to": "s3://...", "urls":
[...]}``, no urls: every entry) and ``import-store`` (``{"from": "s3://..."}``)
copy entries to and from an object store in the shared store's layout
(:mod:`proxy.service.storecopy`). The CLI's ``gc``, ``du``, ``pin``, ``unpin``
and ``import`` call these.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from proxy import __version__
from proxy.api.answers import json_answer
from proxy.api.errors import json_error, render_error
from proxy.cache.store import Entry
from proxy.cache.usage import usage
from proxy.errors import StorageError
from proxy.service.downloads import Downloads
from proxy.threads import in_thread

log = logging.getLogger(__name__)
DEFAULT_INGEST_AGE = 24 * 3600.0


class AdminAPI:
    # With --workers above 1: the serving processes, for /admin/info.
    workers: Callable[[], dict[str, Any]] | None = None

    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads

    def render(self, request: Any, path: bytes) -> Any:
        route = _ROUTES.get(path)
        if route is None:
            return json_error(request, 404, "NOT_FOUND", "no such endpoint")
        if route.methods and request.method not in route.methods:
            request.setHeader(b"Allow", b", ".join(route.methods))
            what = f"{path.decode().rsplit('/', 1)[1]} is a {route.methods[0].decode()}"
            return json_error(request, 405, "METHOD_NOT_ALLOWED", what)
        return route.handler(self, request)

    def _gc(self, request: Any) -> Any:
        try:
            age = float(request.args.get(b"ingest-age", [b"%f" % DEFAULT_INGEST_AGE])[0])
        except ValueError:
            age = -1.0
        if not 0 <= age < 10**9:
            return json_error(request, 400, "BAD_REQUEST", "ingest-age is seconds, >= 0")
        gc = Deferred.fromCoroutine(self.downloads.gc(age))
        return self._later(request, gc.addCallback(lambda report: report.to_json()))

    def _du(self, request: Any) -> Any:
        store = self.downloads.store
        reactor: Any = self.downloads.reactor
        du = in_thread(reactor, usage, store.layout, store.referenced())
        entries = len(store.entries())
        return self._later(request, du.addCallback(lambda u: {**u.to_json(), "entries": entries}))

    def _info(self, request: Any) -> Any:
        # Which cache this server serves: the CLI checks it is the one it was asked for.
        store = self.downloads.store
        return json_answer(
            request,
            {
                "cache": str(store.layout.root),
                "pid": os.getpid(),
                "version": __version__,
                **({"workers": self.workers()} if self.workers is not None else {}),
            },
        )

    def _import(self, request: Any) -> Any:
        request.content.seek(0)
        loaded = Deferred.fromCoroutine(self.downloads.import_bundle(request.content))

        def report(result: tuple[list[Entry], int, int]) -> dict[str, Any]:
            entries, added, skipped = result
            return {
                "entries": [e.url for e in entries],
                "blobsAdded": added,
                "blobsSkipped": skipped,
            }

        return self._later(request, loaded.addCallback(report))

    def _store_copy(self, request: Any, field: str) -> Any:
        from proxy.service import storecopy
        from proxy.shared.location import parse_location

        try:
            body = json.loads(request.content.read(64 * 1024))
            where, urls = body[field], body.get("urls")
            if not isinstance(where, str) or not (
                urls is None or (isinstance(urls, list) and all(isinstance(u, str) for u in urls))
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            what = (
                '{"to": "s3://bucket/prefix", "urls": [...]}'
                if field == "to"
                else ('{"from": "s3://bucket/prefix"}')
            )
            return json_error(request, 400, "BAD_REQUEST", f"body is {what}")
        tier_for = self.downloads.tier_for
        if tier_for is None:
            return json_error(request, 503, "UNAVAILABLE", "no object-store support here")
        try:
            tier = tier_for(parse_location(where))
        except StorageError as e:
            return render_error(request, e)
        if field == "to":
            copied = Deferred.fromCoroutine(storecopy.export_to(tier, self.downloads, urls))
        else:
            copied = Deferred.fromCoroutine(storecopy.import_from(tier, self.downloads))
        return self._later(request, copied.addCallback(lambda report: report.to_json()))

    def _export_store(self, request: Any) -> Any:
        return self._store_copy(request, "to")

    def _import_store(self, request: Any) -> Any:
        return self._store_copy(request, "from")

    def _pin(self, request: Any) -> Any:
        try:
            body = json.loads(request.content.read(64 * 1024))
            url, pin = body["url"], body.get("pin", True)
            if not isinstance(url, str) or not isinstance(pin, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return json_error(
                request, 400, "BAD_REQUEST", 'body is {"url": "...", "pin": true|false}'
            )
        store = self.downloads.store
        if store.get(url) is None:
            return json_error(request, 404, "NOT_FOUND", f"{url} is not in the cache")
        try:
            pinned = store.set_pin(url, pin)
        except StorageError as e:
            return render_error(request, e)
        answer = pinned.addCallback(lambda e: {"url": e.url, "pinned": e.pinned})
        return self._later(request, answer)

    @staticmethod
    def _later(request: Any, d: Deferred[Any]) -> Any:
        def done(body: Any) -> None:
            request.write(json_answer(request, body))
            request.finish()

        def failed(f: Failure) -> None:
            if isinstance(f.value, StorageError):
                data = render_error(request, f.value)
            else:
                log.error("admin request failed", exc_info=f.value)
                data = json_error(request, 500, "INTERNAL_ERROR", "internal error (see the log)")
            request.write(data)
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


@attrs.frozen
class _Route:
    """An admin endpoint: the methods it takes (the first names it in a 405;
    none: any) and its handler."""

    methods: tuple[bytes, ...]
    handler: Callable[[AdminAPI, Any], Any]


_ROUTES: dict[bytes, _Route] = {
    b"/admin/gc": _Route((b"POST",), AdminAPI._gc),
    b"/admin/du": _Route((b"GET", b"HEAD"), AdminAPI._du),
    b"/admin/info": _Route((), AdminAPI._info),
    b"/admin/import": _Route((b"POST",), AdminAPI._import),
    b"/admin/pin": _Route((b"POST",), AdminAPI._pin),
    b"/admin/export-store": _Route((b"POST",), AdminAPI._export_store),
    b"/admin/import-store": _Route((b"POST",), AdminAPI._import_store),
}
