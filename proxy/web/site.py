"""The twisted.web site: its requests (timed, their bodies kept within what
the channel admitted and spooled where the server says), and one access-log
line per answered request (:func:`proxy.logs.log_access`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.web import http
from twisted.web.server import Request, Site

from proxy.logs import log_access
from proxy.redact import redact_url
from proxy.web.admission import Admission, Limit
from proxy.web.channel import PlainHTTPChannel


def redacted_path(raw: bytes) -> str:
    """A request target as an operator may read it: query secrets redacted."""
    path = raw.decode("latin-1")
    if "?" in path:
        head, _, _query = path.partition("?")
        return head + "?" + redact_url("http://x/?" + _query).split("?", 1)[1]
    return path


IN_MEMORY = 100_000  # twisted.web's own threshold: smaller bodies stay in memory


class TimedRequest(Request):
    """A request that remembers when it started, and keeps its body within
    the limit the channel admitted it with (:mod:`proxy.web.admission`)."""

    started_at: float | None = None
    body_limit: Limit | None = None  # set by the channel before gotLength
    _received = 0

    def gotLength(self, length: int | None) -> None:
        # Called once the request line and headers are in: the request's start.
        self.started_at = time.monotonic()
        limit = self.body_limit
        small = limit is not None and limit.max_bytes is not None and limit.max_bytes < IN_MEMORY
        if (length is not None and length < IN_MEMORY) or small:
            self.content = BytesIO()
            return
        # A large body (a push, an import): on the cache's disk, not in /tmp.
        spool = getattr(getattr(self.channel, "site", None), "spool_dir", None)
        self.content = tempfile.TemporaryFile(dir=spool)  # noqa: SIM115  # closed with the request

    def handleContentChunk(self, data: bytes) -> None:
        limit = self.body_limit
        if limit is not None and limit.max_bytes is not None:
            # Only a chunked body can pass it: a Content-Length was checked before.
            self._received += len(data)
            if self._received > limit.max_bytes:
                channel: Any = self.channel
                if channel is not None:
                    channel.body_too_large(self)
                return
        assert self.content is not None
        self.content.write(data)


class LoggingSite(Site):
    """A Site whose access log is one redacted line per request."""

    requestFactory = TimedRequest
    protocol = PlainHTTPChannel  # type: ignore[assignment]  # HTTP/1.1 only, by choice
    noisy = False

    # Set by the server: answers HEAD and small GETs of cached blobs without
    # twisted.web's request machinery (see proxy.web.channel); None: off.
    fast_blobs: Any = None
    # Set in a reader of --workers (proxy.workers.reader): what it answers
    # itself, and the way to the writer for the rest; None: everything here.
    handoff: Any = None
    # Set by the server: which request bodies are taken (None: all, as
    # twisted.web does), and where large ones are spooled (None: /tmp).
    admission: Admission | None = None
    spool_dir: str | None = None
    # Set by the server: how a request target is shown in the access log
    # (the /content routes decode their base64); never with a secret in it.
    display_path: Callable[[bytes], str] = staticmethod(redacted_path)

    def log(self, request: http.Request) -> None:
        started = request.started_at if isinstance(request, TimedRequest) else None
        duration = time.monotonic() - started if started is not None else 0.0
        client = request.getClientAddress()
        peer = getattr(client, "host", None) or "unix"
        log_access(
            peer,
            request.method.decode("latin-1"),
            self.display_path(request.uri),
            request.clientproto.decode("latin-1"),
            request.code,
            request.sentLength,
            duration,
        )
