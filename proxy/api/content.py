"""The /content API: ask for a URL, see whether it is here, remove it.

Routes translate HTTP to calls on :class:`proxy.service.downloads.Downloads` and its
store; they own no state. The URL in the path is base64 (standard or
URL-safe alphabet, padded or not); it is read from the raw request path so
``/`` and ``+`` in the encoding survive routing.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from proxy.api.answers import json_answer
from proxy.api.errors import json_error, render_error
from proxy.api.paging import BadPage, next_link, paginate
from proxy.api.requests import parse_post
from proxy.cache import modelviews, ollamaview, views
from proxy.cache.store import Entry
from proxy.errors import BadRequest, EntryUnknown, StorageError
from proxy.redact import redact_url
from proxy.request import entry_url
from proxy.service.downloads import Downloads
from proxy.service.failures import Failed
from proxy.service.jobs import Download, Interrupted
from proxy.types import Descriptor
from proxy.web.site import redacted_path

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
_B64_RE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


WATCH_INTERVAL = 0.5  # seconds between two progress documents of ?watch=1


def _rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _prefers_async(request: IRequest) -> bool:
    prefer = (request.getHeader(b"prefer") or b"").decode("latin-1").lower()
    return any(p.strip().split("=")[0] == "respond-async" for p in prefer.split(","))


def decode_url(encoded: bytes) -> str:
    """Decode the base64 URL of a /content path; raise BadRequest."""
    raw = unquote_to_bytes(encoded).strip()
    if not raw:
        raise BadRequest("missing base64-encoded URL in the path")
    std = raw.replace(b"-", b"+").replace(b"_", b"/")
    if not _B64_RE.fullmatch(std):
        raise BadRequest("the path is not base64 (standard or URL-safe alphabet)")
    std = std.rstrip(b"=")
    if len(std) % 4 == 1:
        raise BadRequest("the path is not valid base64 (bad length)")
    try:
        url = base64.b64decode(std + b"=" * (-len(std) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest("the path is not base64 of a UTF-8 URL") from None
    if "://" not in url or any(ord(c) < 0x20 for c in url):
        raise BadRequest("the path does not decode to a URL")
    try:
        _ = urlsplit(url).port  # also checks the host: "http://[::1" is refused here
        return entry_url(url, hidden_given=True)
    except ValueError as e:
        raise BadRequest(f"the path does not decode to a valid URL: {e}") from None


def display_path(raw: bytes) -> str:
    """A request target as an operator should read it: a /content path with
    its URL decoded, and every secret redacted (the access log's spelling)."""
    if raw.startswith(b"/content/") and len(raw) > len(b"/content/"):
        try:
            return "/content/" + redact_url(decode_url(raw.split(b"/content/", 1)[1]))
        except BadRequest:
            pass
    return redacted_path(raw)


class ContentAPI:
    """Klein routes for /content around an injected :class:`Downloads`."""

    app = Klein()
    # The base64 in a path may hold "//" (URLs with non-ASCII characters):
    # werkzeug must not redirect it to a "merged" path.
    app.url_map.merge_slashes = False

    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads
        self.layout = downloads.store.layout

    # -- answers ---------------------------------------------------------------

    def _path(self, desc: Descriptor) -> str:
        return str(self.layout.blob_path(desc.digest))

    def _blob_json(self, desc: Descriptor, state: str) -> dict[str, Any]:
        return {
            "title": desc.annotations.get("org.opencontainers.image.title"),
            "digest": str(desc.digest),
            "mediaType": desc.media_type,
            "size": desc.size,
            "bytesDone": desc.size if state == "complete" else 0,
            "state": state,
            "path": self._path(desc),
        }

    def describe_entry(self, entry: Entry) -> dict[str, Any]:
        state = "complete" if entry.complete else "incomplete"
        return {
            "url": entry.url,
            "digest": str(entry.primary.digest),
            "state": state,
            # The whole entry: every file in "blobs" (for one file, that file).
            "size": entry.size,
            "bytesDone": entry.size if entry.complete else 0,
            "fileCount": len(entry.files),
            "mediaType": entry.primary.media_type,
            "path": self._path(entry.primary),
            "manifestDigest": None if entry.legacy else str(entry.descriptor.digest),
            "reference": entry.reference,
            "kind": entry.kind,
            "created": entry.created or None,
            "lastUsed": _rfc3339(self.downloads.store.last_used(entry.url)),
            "pinned": entry.pinned,
            "blobs": [self._blob_json(f, state) for f in entry.files],
            **self._view_json(entry),
            **self._source_json(entry),
        }

    def _source_json(self, entry: Entry) -> dict[str, Any]:
        """For an entry rebuilt from the shared store's record (its origin was
        out of reach): so, and how old the record is."""
        record = self.downloads.from_store.get(entry.url)
        if record is None:
            return {}
        age = datetime.datetime.now(datetime.UTC) - record.written
        return {
            "source": "shared-store",
            "recordWrittenAt": record.written_at,
            "recordAgeSeconds": max(0, int(age.total_seconds())),
            "recordNode": record.node,
        }

    def _view_json(self, entry: Entry) -> dict[str, Any]:
        """Where the entry's files are by name: its directory (hf: a snapshot of
        a hub cache), Ollama's models directory, a ModelPack config's fields."""
        view = views.entry_view(self.layout, entry)
        if view is not None:
            hub_cache, snapshot = view
            return {"directory": str(snapshot), "hfHubCache": str(hub_cache)}
        out: dict[str, Any] = {}
        if entry.kind == "ollama":
            out["ollamaModels"] = str(ollamaview.models_dir(self.layout))
        name = modelviews.directory_name(entry)
        if name is None:
            return out
        built = self.downloads.entries.built
        if name in built.directories:
            out["directory"] = str(modelviews.models_dir(self.layout) / name)
        elif name in built.problems:
            out["directory"] = None
            out["directoryError"] = built.problems[name]
        if name in built.models:
            out["modelpack"] = built.models[name]
        return out

    def describe_download(self, job: Download) -> dict[str, Any]:
        progress = job.progress
        blobs = [
            {
                "title": b.title,
                "digest": str(b.digest) if b.digest else None,
                "size": b.total,
                "bytesDone": b.done,
                "state": b.state,
                "path": str(self.layout.blob_path(b.digest)) if b.digest else None,
            }
            for b in progress.blobs
        ]
        expected = job.request.expected
        return {
            "url": job.request.url,
            "digest": str(expected) if expected else None,
            "state": job.state,
            "size": progress.total,
            "bytesDone": progress.done,
            "clients": job.clients(),
            "blobs": blobs,
        }

    def describe_interrupted(self, it: Interrupted) -> dict[str, Any]:
        return {
            "url": it.url,
            "digest": None,
            "state": "interrupted",
            "size": it.total,
            "bytesDone": it.bytes_done,
            "blobs": [],
        }

    def describe_failed(self, failed: Failed, it: Interrupted | None) -> dict[str, Any]:
        """A download that failed: its last error; ``interrupted`` when it kept
        bytes a retry resumes from, else ``failed``."""
        base = (
            self.describe_interrupted(it)
            if it is not None
            else {
                "url": failed.url,
                "digest": None,
                "state": "failed",
                "size": None,
                "bytesDone": 0,
                "blobs": [],
            }
        )
        error = {"code": failed.code, "message": failed.message}
        return {**base, "error": error, "failedAt": _rfc3339(failed.at)}

    def describe(self, url: str) -> tuple[int, dict[str, Any]] | None:
        """The answer about ``url`` (a read: it does not count as a use)."""
        entry = self.downloads.store.get(url)
        if entry is not None and entry.complete:
            return 200, self.describe_entry(entry)
        job = self.downloads.running(url)
        if job is not None:
            return 206, self.describe_download(job)
        it = self.downloads.interrupted(url)
        failed = self.downloads.failed(url)
        if failed is not None:
            # 404 when nothing is kept (its body is also a valid error answer), else 206.
            return (206 if it is not None else 404), self.describe_failed(failed, it)
        if it is not None:
            return 206, self.describe_interrupted(it)
        if entry is not None:
            return 206, self.describe_entry(entry)
        return None

    @staticmethod
    def _encoded(request: IRequest) -> bytes:
        path: bytes = request.path  # raw, still percent-encoded
        return path.split(b"/content/", 1)[1]

    # -- routes ----------------------------------------------------------------

    @app.handle_errors(StorageError)
    def _storage_error(self, request: IRequest, failure: Any) -> bytes:
        return render_error(request, failure.value)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Any) -> bytes:
        """Klein's own answers (no such route, method not allowed), as JSON."""
        e = failure.value
        status = e.code or 400
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "BAD_REQUEST")
        if status == 405:
            request.setHeader(b"Allow", ", ".join(e.valid_methods or []).encode())
        return json_error(request, status, code, e.description or e.name)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Any) -> bytes:
        log.error("%s %s failed", request.method, request.path, exc_info=failure.value)
        return json_error(request, 500, "INTERNAL_ERROR", "internal error (see the server log)")

    @app.route("/content/", methods=["GET"])
    def list_all(self, request: IRequest) -> bytes:
        """Every entry and download, sorted by URL; paged by ``?n=`` and
        ``?last=`` as ``/v2/<name>/tags/list`` is (proxy.api.paging), with a
        ``Link: <...>; rel="next"`` while more remain."""
        args: dict[bytes, list[bytes]] = request.args
        try:
            urls, next_last = paginate(sorted(self.downloads.urls()), args)
        except BadPage as e:
            raise BadRequest(str(e)) from None
        if next_last is not None:
            request.setHeader(b"Link", next_link("/content/", next_last, args))
        items = []
        for url in urls:
            found = self.describe(url)
            if found is not None:
                items.append(found[1])
        return json_answer(request, {"entries": items}, 200)

    @app.route("/content/<path:_encoded>", methods=["GET", "HEAD"])
    def get(self, request: IRequest, _encoded: str) -> Any:
        url = decode_url(self._encoded(request))
        found = self.describe(url)
        if found is None:
            raise EntryUnknown(f"{url} is not in the cache")
        watch = request.args.get(b"watch", [b"0"])[0] not in (b"0", b"", b"false")
        if watch and request.method == b"GET":
            return Deferred.fromCoroutine(self._watch(request, url))
        return json_answer(request, found[1], found[0])

    async def _watch(self, request: Any, url: str) -> bytes | None:
        """Follow a download: one JSON document per change (at most every
        WATCH_INTERVAL), as NDJSON, or as Server-Sent Events when the client
        accepts ``text/event-stream``; the last one is the final state (with
        ``error`` when the download failed), then the answer ends."""
        sse = b"text/event-stream" in (request.getHeader(b"accept") or b"")
        request.setResponseCode(200)
        ctype = b"text/event-stream" if sse else b"application/x-ndjson"
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Cache-Control", b"no-store")
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        outcome: list[dict[str, Any]] = []
        watched: Download | None = None

        def failed(f: Failure) -> None:
            err = f.value
            if isinstance(err, StorageError):
                outcome.append({"code": err.code, "message": err.message})
            else:
                outcome.append({"code": "INTERNAL_ERROR", "message": "see the server log"})

        def send(body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            request.write(b"data: " + data + b"\n\n" if sse else data + b"\n")

        last: Any = None
        clock = self.downloads.clock
        while not gone:
            job = self.downloads.running(url)
            if job is not None and job is not watched:
                watched = job
                job.wait().addErrback(failed)
            found = self.describe(url)
            body = found[1] if found is not None else {"url": url, "state": "unknown"}
            if outcome and job is None:
                body = {**body, "state": "failed", "error": outcome[-1]}
            done = job is None
            if body != last or done:
                send(body)
                last = body
            if done:
                break
            await deferLater(clock, WATCH_INTERVAL, lambda: None)
        return None if gone else b""  # Klein finishes the answer

    @app.route("/content/", methods=["POST"])
    @app.route("/content", methods=["POST"])
    async def post(self, request: IRequest) -> bytes:
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return json_error(request, 413, "TOO_LARGE", f"body larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body is not JSON") from None
        fetch_request = parse_post(body)
        if fetch_request.scheme == "file":
            layout_path = await self.downloads.layout_at(fetch_request)
            if layout_path is not None:
                # An OCI layout (directory or tar): its entries, as `import` loads them.
                entries, added, skipped = await self.downloads.import_bundle(layout_path)
                answer = {
                    "url": fetch_request.url,
                    "kind": "oci-layout",
                    "state": "complete",
                    "imported": [self.describe_entry(e) for e in entries],
                    "blobsAdded": added,
                    "blobsSkipped": skipped,
                }
                return json_answer(request, answer, 201 if added else 200)
        pending = self.downloads.ensure(fetch_request)
        if not pending.called and _prefers_async(request):
            # RFC 7240: answer now; the client follows Location (?watch=1).
            pending.addErrback(lambda _: None)  # the download reports its own failure
            location = "/content/" + base64.urlsafe_b64encode(fetch_request.url.encode()).decode()
            request.setHeader(b"Location", location.encode())
            request.setHeader(b"Preference-Applied", b"respond-async")
            found = self.describe(fetch_request.url)
            return json_answer(request, found[1] if found else {"url": fetch_request.url}, 202)
        entry, created = await pending
        if not created:
            self.downloads.store.touch(entry.url)
        return json_answer(request, self.describe_entry(entry), 201 if created else 200)

    @app.route("/content/<path:_encoded>", methods=["DELETE"])
    async def delete(self, request: IRequest, _encoded: str) -> bytes:
        url = decode_url(self._encoded(request))
        await self.downloads.delete(url)
        request.setResponseCode(204)
        return b""
