"""The root resource: sends each request to the API that owns its path.

``/content`` → :class:`proxy.api.content.ContentAPI`; ``/healthz`` and
``/readyz`` → health checks. Everything else is 404 with a JSON error.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from proxy.api.content import ContentAPI
from proxy.api.errors import json_error


class Root(Resource):
    isLeaf = True

    def __init__(self, content: ContentAPI) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._content = content.app.resource()
        self._layout = content.layout

    def render(self, request: IRequest) -> Any:
        path: bytes = request.path
        if path == b"/content" or path.startswith(b"/content/"):
            try:
                unquote_to_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                # Klein would answer this in plain text; keep errors JSON.
                return json_error(request, 400, "BAD_REQUEST", "the path is not UTF-8")
            return self._content.render(request)
        if path == b"/healthz":
            return self._json(request, 200, {"status": "ok"})
        if path == b"/readyz":
            ok = self._layout.index_path.exists()
            return self._json(request, 200 if ok else 503, {"ready": ok})
        return json_error(request, 404, "NOT_FOUND", "no such endpoint")

    @staticmethod
    def _json(request: IRequest, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode() + b"\n"
