"""Logging: levels from ``--verbose``, Twisted's log bridged into ``logging``,
and one access-log line per request with secrets removed; text lines, or
with ``--log-format json`` one JSON object per line.

The access line shows the path as the site's ``display_path`` spells it
(:mod:`proxy.web.site`): for /content, its base64 decoded (so an operator
reads the URL) and redacted: no userinfo password, no signature or token
query values, ever.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import sys
import time
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import STDLibLogObserver, globalLogBeginner
from twisted.python.threadable import isInIOThread

from proxy import metrics
from proxy.metrics import count_answers, method_label, observe_request, route_of

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
access_log = logging.getLogger("proxy.access")


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _AccessLines:
    """Access-log lines, formatted as :data:`FORMAT` would format them, written to
    the handler :func:`setup` installed once per reactor turn rather than one
    ``write(2)`` and one ``LogRecord`` per request (at thousands of requests a
    second the logging module was a fifth of the time of a blob ``HEAD``).
    The turn's end is a ``callLater(0)`` on ``clock`` (the reactor, given by
    :func:`setup`); without one, lines go through ``logging`` one by one.

    The answers' metrics are added up the same way: a turn's answers of one
    route, method and status become one increment of each counter at the
    turn's end (in several processes each increment is a write to a shared
    file: three of them per request were a tenth of a blob ``HEAD``). A
    ``/metrics`` answer applies what is held first."""

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self.clock = clock
        self.handler: logging.StreamHandler[Any] | None = None
        self._pending: list[str] = []
        # (route, method label, status) -> [answers, bytes sent]
        self._answers: dict[tuple[str, str, int], list[int]] = {}
        self._scheduled = False
        self._batching: bool | None = None  # usable(), as found this turn
        self._second = -1
        self._stamp = ""

    def usable(self) -> bool:
        handlers = logging.root.handlers
        return (
            self.handler is not None
            and self.clock is not None
            and len(handlers) == 1
            and handlers[0] is self.handler
            and not access_log.handlers
            and access_log.propagate
            and not access_log.disabled
            and isInIOThread()
        )

    def batching(self) -> bool:
        """:meth:`usable`, asked once a turn (called on the reactor's thread:
        logging is configured before the reactor runs, and :func:`setup`
        flushes, which asks again)."""
        if self._batching is None:
            self._batching = self.usable()
        return self._batching

    def count(self, route: str, method: str, code: int, sent: int) -> None:
        """Count one answer, on the reactor's thread, at the turn's end."""
        key = (route, method, code)
        held = self._answers.get(key)
        if held is None:
            self._answers[key] = [1, sent]
        else:
            held[0] += 1
            held[1] += sent
        if not self._scheduled and self.clock is not None:
            self._scheduled = True
            self.clock.callLater(0, self.flush)

    def count_now(self) -> None:
        """Apply the answers counted so far to the metrics."""
        answers, self._answers = self._answers, {}
        for (route, method, code), (n, sent) in answers.items():
            count_answers(route, method, code, n, sent)

    def add(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        msecs = int((now - second) * 1000)
        self._pending.append(f"{self._stamp},{msecs:03d} INFO proxy.access: {message}\n")
        if not self._scheduled and self.clock is not None:
            self._scheduled = True
            self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._batching = None
        if self._answers:
            self.count_now()
        handler = self.handler
        if not self._pending or handler is None:
            return
        text = "".join(self._pending)
        self._pending.clear()
        with handler.lock or contextlib.nullcontext(), contextlib.suppress(OSError, ValueError):
            handler.stream.write(text)
            handler.stream.flush()


_access = _AccessLines()
atexit.register(_access.flush)
metrics.before_exposition(_access.count_now)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, with the access lines still pending written first (order kept)."""

    def emit(self, record: logging.LogRecord) -> None:
        if _access.handler is self:
            _access.flush()
        super().emit(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; access lines carry their
    fields (peer, method, path, status, bytes, seconds) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}"
            + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "access", None) or {})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(verbose: int, json_lines: bool = False, clock: IReactorTime | None = None) -> None:
    """Log to stderr at the level of ``verbose``; access lines batched once
    per turn of ``clock`` (the reactor; None: written one by one)."""
    level = {0: logging.INFO, 1: logging.DEBUG}.get(verbose, TRACE)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(FORMAT))
    _access.flush()
    # The batched access lines are text lines: JSON ones go through logging.
    _access.handler = None if json_lines else handler
    _access.clock = clock
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Twisted's own chatter (connection setup, factories) only at trace level.
    logging.getLogger("twisted").setLevel(logging.INFO if level <= TRACE else logging.WARNING)
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)


def log_access(
    peer: str,
    method: str,
    path: str,
    proto: str,
    code: int,
    sent: int,
    duration: float,
    route: str | None = None,
) -> None:
    """The access-log line of one answered request (and its metrics);
    ``route``, when the caller knows it, is :func:`proxy.metrics.route_of`
    of ``path``."""
    on_reactor = _access.clock is not None and isInIOThread()
    if on_reactor:
        _access.count(route or route_of(path), method_label(method), code, sent)
    else:
        observe_request(method, path, code, sent)
    if not access_log.isEnabledFor(logging.INFO):
        return
    if on_reactor and _access.batching():
        _access.add(f'{peer} "{method} {path} {proto}" {code} {sent} {duration:.3f}s')
    else:
        fields = {
            "peer": peer,
            "method": method,
            "path": path,
            "protocol": proto,
            "status": code,
            "bytes": sent,
            "seconds": round(duration, 6),
        }
        access_log.info(
            '%s "%s %s %s" %d %d %.3fs',
            peer,
            method,
            path,
            proto,
            code,
            sent,
            duration,
            extra={"access": fields},
        )
