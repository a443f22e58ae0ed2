"""In-process building blocks for unit tests: a real cache in a temp dir,
real twisted.web requests over a recording transport, and fakes for what
cannot run in-process (the sendfile worker reactor)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel

from proxy.api.registry import RegistryAPI
from proxy.cache.catalog import Catalog
from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.service.sources import BlobSource
from proxy.types import Digest
from proxy.web.sendfile import BlobSender


class Threads:
    """IReactorFromThreads for tests: runs what a worker hands back at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class Transport(DummyChannel.TCP):  # type: ignore[misc]
    """A recording transport that can also be aborted."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnected = True


def cache(tmp_path: Path) -> tuple[Layout, Store, Catalog]:
    layout = Layout(tmp_path / "cache")
    layout.create()
    store = Store(layout, Clock())  # type: ignore[arg-type]  # no thread is used here
    return layout, store, Catalog(store)


def put_blob(layout: Layout, data: bytes) -> Digest:
    return layout.put_small_blob(data)


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def registry(layout: Layout, catalog: Catalog, blobs: BlobSource, clock: Clock) -> RegistryAPI:
    pool = ThreadPool(minthreads=0, maxthreads=1)  # never started: small answers need none
    return RegistryAPI(layout, catalog, BlobSender(clock, Threads(), pool), blobs)


def request(method: bytes, path: bytes, headers: dict[bytes, bytes] | None = None) -> Request:
    channel = DummyChannel()
    channel.transport = Transport()
    r = Request(channel, False)
    r.method, r.uri, r.path, r.clientproto = method, path, path, b"HTTP/1.1"
    r.args = {}
    for key, value in (headers or {}).items():
        r.requestHeaders.setRawHeaders(key, [value])
    return r


def render(api: RegistryAPI, r: Request) -> Request:
    result = api.render(r, r.path)
    assert result is NOT_DONE_YET
    return r


def answer(r: Request) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers (lowercase names) and de-chunked body written so far."""
    raw: bytes = r.transport.written.getvalue()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
    if fields.get(b"transfer-encoding") == b"chunked":
        out = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            n = int(size_line, 16)
            out, body = out + body[:n], body[n + 2 :]
        body = out
    return status, fields, body
