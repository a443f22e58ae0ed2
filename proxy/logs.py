"""Logging: levels from ``--verbose``, Twisted's log bridged into ``logging``,
and one access-log line per request with secrets removed.

The access line shows the /content path with its base64 decoded (so an
operator reads the URL) and redacted: no userinfo password, no signature or
token query values, ever.
"""

from __future__ import annotations

import logging
import sys
import time

from twisted.logger import STDLibLogObserver, globalLogBeginner
from twisted.web import http
from twisted.web.server import Request, Site

from proxy.api.channel import PlainHTTPChannel
from proxy.redact import redact_url

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
access_log = logging.getLogger("proxy.access")


def setup(verbose: int) -> None:
    level = {0: logging.INFO, 1: logging.DEBUG}.get(verbose, TRACE)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Twisted's own chatter (connection setup, factories) only at trace level.
    logging.getLogger("twisted").setLevel(logging.INFO if level <= TRACE else logging.WARNING)
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)


def display_path(raw: bytes) -> str:
    """The request path as an operator should read it (decoded, redacted)."""
    path = raw.decode("latin-1")
    if path.startswith("/content/") and len(path) > len("/content/"):
        from proxy.api.content import decode_url
        from proxy.errors import BadRequest

        try:
            return "/content/" + redact_url(decode_url(raw.split(b"/content/", 1)[1]))
        except BadRequest:
            return path
    if "?" in path:
        head, _, _query = path.partition("?")
        return head + "?" + redact_url("http://x/?" + _query).split("?", 1)[1]
    return path


class TimedRequest(Request):
    """A request that remembers when it started."""

    started_at: float | None = None

    def gotLength(self, length: int | None) -> None:
        # Called once the request line and headers are in: the request's start.
        self.started_at = time.monotonic()
        super().gotLength(length)  # type: ignore[no-untyped-call]


class LoggingSite(Site):
    """A Site whose access log is one redacted line per request."""

    requestFactory = TimedRequest
    protocol = PlainHTTPChannel  # type: ignore[assignment]  # HTTP/1.1 only, by choice
    noisy = False

    def log(self, request: http.Request) -> None:
        started = request.started_at if isinstance(request, TimedRequest) else None
        duration = time.monotonic() - started if started is not None else 0.0
        client = request.getClientAddress()
        peer = getattr(client, "host", None) or "unix"
        access_log.info(
            '%s "%s %s %s" %d %d %.3fs',
            peer,
            request.method.decode("latin-1"),
            display_path(request.uri),
            request.clientproto.decode("latin-1"),
            request.code,
            request.sentLength,
            duration,
        )
