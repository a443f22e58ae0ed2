"""A small GCS JSON API on loopback that honours ``ifGenerationMatch``.

gcp-storage-emulator ignores the precondition, so the code that depends on
it (create-only writes, conditional overwrites and deletes: the shared
store's leases) is tested against this fake instead. It keeps objects in
memory and implements only what :mod:`proxy.shared.gcs` sends besides
uploads of large files: object metadata, media download (``generation``,
``Range``), media upload, delete and a listing that pages (``maxResults``
is capped at ``page`` to make it page).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive, as the real service: an HTTP/1.0 answer closes its connection
    # without saying "Connection: close", so Twisted's pool kept it and a later
    # POST sent on it, before the close was read, failed ("closed cleanly").
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, doc: Any) -> None:
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def _route(self) -> tuple[str, str | None, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        for kind, head in (
            ("upload", f"/upload/storage/v1/b/{self.server.bucket}/o"),
            ("media", f"/download/storage/v1/b/{self.server.bucket}/o/"),
            ("object", f"/storage/v1/b/{self.server.bucket}/o/"),
            ("list", f"/storage/v1/b/{self.server.bucket}/o"),
        ):
            if path.startswith(head):
                rest = path[len(head) :]
                return kind, unquote(rest) if rest else None, query
        return "", None, query

    def _meta(self, name: str) -> dict[str, Any]:
        data, generation = self.server.objects[name]
        return {"name": name, "size": str(len(data)), "generation": str(generation)}

    def _precondition(self, name: str, query: dict[str, list[str]]) -> bool:
        if "ifGenerationMatch" not in query:
            return True
        want = int(query["ifGenerationMatch"][0])
        have = self.server.objects[name][1] if name in self.server.objects else 0
        return want == have

    def do_GET(self) -> None:
        kind, name, query = self._route()
        with self.server.lock:
            if kind == "list":
                prefix = query.get("prefix", [""])[0]
                size = min(int(query.get("maxResults", ["1000"])[0]), self.server.page)
                after = query.get("pageToken", [""])[0]
                names = sorted(n for n in self.server.objects if n.startswith(prefix) and n > after)
                doc: dict[str, Any] = {"items": [self._meta(n) for n in names[:size]]}
                if len(names) > size:
                    doc["nextPageToken"] = names[size - 1]
                return self._json(doc)
            if name is None or name not in self.server.objects:
                return self._send(404)
            if kind == "object":
                return self._json(self._meta(name))
            data, generation = self.server.objects[name]
            if "generation" in query and int(query["generation"][0]) != generation:
                return self._send(404)
            ranged = self.headers.get("Range")
            if ranged:
                first, _, last = ranged.removeprefix("bytes=").partition("-")
                a, b = int(first), min(int(last), len(data) - 1)
                if a >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                span = f"bytes {a}-{b}/{len(data)}"
                return self._send(206, data[a : b + 1], {"Content-Range": span})
            return self._send(200, data)

    def do_POST(self) -> None:
        kind, _, query = self._route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if kind != "upload" or query.get("uploadType") != ["media"]:
            return self._send(400)
        name = query["name"][0]
        with self.server.lock:
            if not self._precondition(name, query):
                return self._send(412)
            self.server.generation += 1
            self.server.objects[name] = (body, self.server.generation)
            return self._json(self._meta(name))

    def do_DELETE(self) -> None:
        kind, name, query = self._route()
        with self.server.lock:
            if kind != "object" or name is None or name not in self.server.objects:
                return self._send(404)
            if not self._precondition(name, query):
                return self._send(412)
            del self.server.objects[name]
            return self._send(204)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bucket: str, page: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bucket = bucket
        self.page = page
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 1_000_000


class GcsFake:
    """The fake on 127.0.0.1 (``endpoint``), one bucket."""

    def __init__(self, bucket: str, page: int = 3) -> None:
        self._server = _Server(bucket, page)
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.objects = self._server.objects

    def __enter__(self) -> GcsFake:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
