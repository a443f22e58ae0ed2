"""The origin of the cache-array benchmark: a loopback HTTP server behind a WAN link.

Serves the files it is given (GET and HEAD, one ``Range`` each, ``ETag`` and
``Last-Modified``) from a thread per connection, every body byte paid for from one token
bucket that all connections share, so the total rate is capped (100 MiB/s: a data centre's
share of a link to the Hugging Face Hub or a registry) however many nodes ask at once. It
counts what it served: body bytes and requests per file, the figures the benchmark reports
as the origin's egress.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from email.utils import formatdate
from pathlib import Path
from typing import cast

from tests.support.loopback_http import LoopbackHTTPServer, TrackedHandler

CHUNK = 64 * 1024  # bytes per socket write (and per token withdrawal)
BURST = 256 * 1024  # the bucket's depth: how far above the rate a short burst may go


class TokenBucket:
    """A rate of ``rate`` bytes/s shared by every caller of :meth:`take`.

    A withdrawal may run the balance into debt; the caller then sleeps until the debt is
    paid, so concurrent callers queue fairly and the total never exceeds
    ``rate * seconds + BURST``.
    """

    def __init__(self, rate: float, burst: int = BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


@dataclasses.dataclass
class Served:
    """What the origin sent: body bytes in all, and per file; GET and HEAD requests per file."""

    bytes: int = 0
    bytes_by_file: Counter[str] = dataclasses.field(default_factory=Counter)
    gets: Counter[str] = dataclasses.field(default_factory=Counter)
    heads: Counter[str] = dataclasses.field(default_factory=Counter)


def _range(value: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` of a ``bytes=first-[last]`` header; None: send it all."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first_s, _, last_s = value[len("bytes=") :].strip().partition("-")
    if not first_s.isdigit() or (last_s and not last_s.isdigit()):
        return None
    first, last = int(first_s), int(last_s) if last_s else size - 1
    if first >= size or last < first:
        return None
    return first, min(last, size - 1)


class _Handler(TrackedHandler):
    def _file(self) -> tuple[str, Path] | None:
        origin = cast(_Server, self.server).origin
        name = self.path.split("?", 1)[0].lstrip("/")
        path = origin.files.get(name)
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return name, path

    def _head(self, path: Path) -> tuple[int, int, int]:
        stat = path.stat()
        size = stat.st_size
        span = _range(self.headers.get("Range"), size)
        first, last = span if span is not None else (0, size - 1)
        self.send_response(206 if span is not None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{stat.st_ino:x}-{size:x}"')
        self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
        if span is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        return size, first, last

    def do_HEAD(self) -> None:
        found = self._file()
        if found is None:
            return
        name, path = found
        cast(_Server, self.server).origin.count_head(name)
        self._head(path)

    def do_GET(self) -> None:
        found = self._file()
        if found is None:
            return
        name, path = found
        origin = cast(_Server, self.server).origin
        origin.count_get(name)
        _, first, last = self._head(path)
        left = last - first + 1
        with path.open("rb") as f:
            f.seek(first)
            while left > 0 and not origin.stopping.is_set():
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                origin.bucket.take(len(chunk))
                self.wfile.write(chunk)
                origin.count_bytes(name, len(chunk))
                left -= len(chunk)


class _Server(LoopbackHTTPServer):
    origin: WanOrigin


class WanOrigin:
    """``with WanOrigin(rate) as origin: origin.add(name, path); origin.url(name)``."""

    def __init__(self, rate: float, host: str = "127.0.0.1") -> None:
        self.bucket = TokenBucket(rate)
        self.rate = rate
        self.host = host
        self.files: dict[str, Path] = {}
        self.stopping = threading.Event()
        self._served = Served()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def add(self, name: str, path: Path) -> None:
        self.files[name] = path

    def url(self, name: str) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_port}/{name}"

    def count_get(self, name: str) -> None:
        with self._lock:
            self._served.gets[name] += 1

    def count_head(self, name: str) -> None:
        with self._lock:
            self._served.heads[name] += 1

    def count_bytes(self, name: str, n: int) -> None:
        with self._lock:
            self._served.bytes += n
            self._served.bytes_by_file[name] += n

    def take_counts(self) -> Served:
        """What was served since the last call (the counters start again at zero)."""
        with self._lock:
            served, self._served = self._served, Served()
        return served

    def start(self) -> WanOrigin:
        server = _Server((self.host, 0), _Handler)
        server.origin = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True, name="wan")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.close(self._thread)
        self._server = None

    def __enter__(self) -> WanOrigin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
