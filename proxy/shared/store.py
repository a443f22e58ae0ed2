"""The one interface to the shared store, whichever store it is.

A :class:`SharedStore` is bound to one :class:`~proxy.shared.location.StoreLocation`;
every key it takes or returns is a layout key relative to the location's
prefix (``blobs/sha256/<hex>``...). Its methods are coroutines on the
reactor; bodies stream (a blob is never held in memory whole), signing and
credential lookups run in threads.

``etag`` is what a conditional overwrite names: the ETag on S3 and Azure,
the object's *generation* on GCS (what ``ifGenerationMatch`` takes).

What each method answers for the ordinary outcomes (missing, a lost race)
is a value, never an exception; a store that cannot be reached or refuses
(credentials, a 5xx after the retries) raises :class:`SharedStoreError`,
which callers treat as "no store this time": the origin or the peers serve.

:func:`proxy.shared.opening.open_store` makes the store a location names, with the endpoint and
credentials the object-store downloaders use (``AWS_*``, ``S3_ENDPOINT``,
``--s3-addressing-style``; ``STORAGE_EMULATOR_HOST``,
``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_CONNECTION_STRING``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attrs
from twisted.web.client import HTTPConnectionPool

from proxy.errors import Cancelled, StorageError, UpstreamError
from proxy.fetch.base import Job
from proxy.fetch.outbound import OutboundAgent
from proxy.fetch.proxyenv import ProxyConfig
from proxy.fetch.transfer import HttpClient, header
from proxy.shared.location import StoreLocation
from proxy.shared.wire import Sender, Sink, receive

T = TypeVar("T")

MAX_LIST = 10_000  # the most keys one list() returns
MAX_SMALL = 1024 * 1024  # the largest object read_small() reads


class SharedStoreError(UpstreamError):
    """The shared store could not be used for this request."""


@attrs.frozen
class ObjectInfo:
    """One object: its size and the token of a conditional overwrite."""

    size: int
    etag: str


@attrs.frozen
class Listed:
    """One object of a listing, by its layout key."""

    key: str
    size: int
    etag: str | None


@attrs.frozen
class Small:
    """A small object read whole (a record, a lease)."""

    data: bytes = attrs.field(repr=False)
    etag: str


class SharedStore(Protocol):
    """An object store holding the layout of :mod:`proxy.shared.location`."""

    location: StoreLocation

    async def head(self, key: str, job: Job | None = None) -> ObjectInfo | None:
        """The object's size and etag; None when there is none."""

    async def read_small(
        self, key: str, limit: int = MAX_SMALL, job: Job | None = None
    ) -> Small | None:
        """The whole object (at most ``limit`` bytes, else an error); None when missing."""

    async def get_range(
        self, key: str, first: int, last: int, sink: Sink, job: Job | None = None
    ) -> int:
        """Bytes ``first``..``last`` (inclusive) of the object, streamed into
        ``sink`` as they arrive; the number of bytes (``last - first + 1``).
        A missing object or a range past its end is a :class:`SharedStoreError`."""

    async def put_file(self, key: str, path: str, job: Job | None = None) -> ObjectInfo:
        """Upload the file at ``path`` as the object, streamed from the file
        (multipart / resumable / blocks for large files), replacing any."""

    async def create_if_absent(self, key: str, data: bytes, job: Job | None = None) -> str | None:
        """Write ``data`` only if there is no such object; the new etag, or
        None when one existed (the condition failed)."""

    async def replace_if_match(
        self, key: str, data: bytes, etag: str, job: Job | None = None
    ) -> str | None:
        """Write ``data`` only if the object's etag is ``etag``; the new etag,
        or None when it is not (changed, or gone)."""

    async def list(self, prefix: str, limit: int = 1000, job: Job | None = None) -> list[Listed]:
        """Up to ``limit`` objects whose layout key starts with ``prefix``,
        in key order; objects whose names are not layout keys are left out."""

    async def delete(self, key: str, etag: str | None = None, job: Job | None = None) -> bool:
        """Delete the object (only if its etag is ``etag``, when given); False
        when it was not there or the condition failed."""


class Guarded:
    """A store whose every failure is a :class:`SharedStoreError` (a store
    that cannot be reached, times out or refuses), so a caller needs one
    ``except`` to fall back to the origin; a cancellation stays one."""

    def __init__(self, inner: SharedStore) -> None:
        self.inner = inner
        self.location = inner.location

    async def _guard(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except (SharedStoreError, Cancelled):
            raise
        except StorageError as e:
            raise SharedStoreError(f"shared store {self.location}: {what}: {e.message}") from None

    async def head(self, key: str, job: Job | None = None) -> ObjectInfo | None:
        return await self._guard(key, self.inner.head(key, job))

    async def read_small(
        self, key: str, limit: int = MAX_SMALL, job: Job | None = None
    ) -> Small | None:
        return await self._guard(key, self.inner.read_small(key, limit, job))

    async def get_range(
        self, key: str, first: int, last: int, sink: Sink, job: Job | None = None
    ) -> int:
        return await self._guard(key, self.inner.get_range(key, first, last, sink, job))

    async def put_file(self, key: str, path: str, job: Job | None = None) -> ObjectInfo:
        return await self._guard(key, self.inner.put_file(key, path, job))

    async def create_if_absent(self, key: str, data: bytes, job: Job | None = None) -> str | None:
        return await self._guard(key, self.inner.create_if_absent(key, data, job))

    async def replace_if_match(
        self, key: str, data: bytes, etag: str, job: Job | None = None
    ) -> str | None:
        return await self._guard(key, self.inner.replace_if_match(key, data, etag, job))

    async def list(self, prefix: str, limit: int = 1000, job: Job | None = None) -> list[Listed]:
        return await self._guard(prefix or "/", self.inner.list(prefix, limit, job))

    async def delete(self, key: str, etag: str | None = None, job: Job | None = None) -> bool:
        return await self._guard(key, self.inner.delete(key, etag, job))


def outbound(client: HttpClient, proxies: ProxyConfig | None = None) -> Sender:
    """A :class:`Sender` under ``client``'s reach policy and timeouts."""
    pool = HTTPConnectionPool(client.reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    agent = OutboundAgent(
        client.reactor,
        client.policy,
        proxies or ProxyConfig(),
        pool,
        client.options.connect_timeout,
    )
    return Sender(client, agent)


async def refused(
    client: HttpClient, response: Any, error: Callable[[Any, bytes], StorageError]
) -> SharedStoreError:
    """A store's refusal: the downloader's ``error(response, body)`` of the
    answer and its error document (up to 64 KiB), as a :class:`SharedStoreError`."""
    body = b""
    with contextlib.suppress(Exception):  # without its document, the status tells
        body = await client.read_small(response, 64 * 1024)
    e = error(response, body)
    return SharedStoreError(e.message, getattr(e, "upstream_status", response.code))


def object_info(client: HttpClient, response: Any, what: str) -> ObjectInfo | None:
    """A HEAD's 200 or 404: the object's size and ETag, None when there is none."""
    client.discard(response)
    if response.code == 404:
        return None
    length, etag = header(response, b"Content-Length"), header(response, b"ETag")
    if length is None or not length.isdigit() or not etag:
        raise SharedStoreError(f"{what}: no size or ETag in the answer")
    return ObjectInfo(int(length), etag)


def etag_of(response: Any, what: str) -> str:
    """The ETag of an answer that must have one (an object read or written)."""
    etag = header(response, b"ETag")
    if not etag:
        raise SharedStoreError(f"{what}: no ETag in the answer")
    return etag


async def small_object(client: HttpClient, response: Any, limit: int, what: str) -> Small:
    """A GET's 200: the whole object (at most ``limit`` bytes) and its ETag."""
    data = await client.read_small(response, limit)
    return Small(data, etag_of(response, what))


async def range_body(
    client: HttpClient, response: Any, first: int, last: int, sink: Sink, what: str
) -> int:
    """Check a 206's Content-Range is the range asked, then stream it to ``sink``."""
    wanted = last - first + 1
    content_range = header(response, b"Content-Range") or ""
    if not content_range.startswith(f"bytes {first}-{last}/"):
        client.discard(response)
        raise SharedStoreError(f"{what}: answered range {content_range!r}, not {first}-{last}")
    got = await receive(client, response, sink, wanted)
    if got != wanted:
        raise SharedStoreError(f"{what}: range ended after {got} of {wanted} bytes")
    return got
