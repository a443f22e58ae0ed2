"""The shared store on Azure Blob Storage (and Azurite).

Endpoint and credentials are the ``azure://`` downloader's
(:func:`proxy.fetch.azure.azure_target`: ``AZURE_STORAGE_CONNECTION_STRING``),
and every request is signed by its :class:`~proxy.fetch.azure.BlobAccount`
(SharedKey over the headers sent, or a SAS). Small objects are one Put Blob;
a file larger than ``block_size`` is uploaded as blocks (Put Block,
``parallel`` at a time, each streamed from the file) committed by one Put
Block List.

Conditional writes: ``If-None-Match: *`` (create only: Azure answers 409
``BlobAlreadyExists``, or 412) and ``If-Match: <etag>`` (412
``ConditionNotMet``) on Put Blob and Delete Blob.
"""

from __future__ import annotations

import base64
import os
from typing import Any
from xml.sax.saxutils import escape

from twisted.web.iweb import IBodyProducer

from proxy.fetch import objects
from proxy.fetch.azure import (
    AzureUrl,
    BlobAccount,
    azure_error,
    azure_target,
    blob_request,
    parse_listing,
)
from proxy.fetch.base import Job
from proxy.fetch.transfer import HttpClient, header
from proxy.shared.location import StoreLocation, listed_key, name_prefix
from proxy.shared.store import (
    MAX_LIST,
    MAX_SMALL,
    Listed,
    ObjectInfo,
    SharedStoreError,
    Small,
    etag_of,
    object_info,
    range_body,
    refused,
    small_object,
)
from proxy.shared.wire import BytesBody, Detached, FileBody, Sender, Sink

MAX_BLOCKS = 50_000


class AzureStore:
    """A :class:`~proxy.shared.store.SharedStore` on one Azure container and prefix."""

    def __init__(
        self,
        location: StoreLocation,
        client: HttpClient,
        sender: Sender,
        block_size: int = 64 * 1024 * 1024,
        parallel: int = 4,
    ) -> None:
        assert location.account is not None
        self.location = location
        self.client = client
        self.sender = sender
        self.block_size = block_size
        self.parallel = parallel

    def _api(self) -> BlobAccount:
        account = self.location.account or ""
        ref = AzureUrl(account, self.location.bucket, "")
        return BlobAccount(ref, azure_target(account, None))

    def _what(self, key: str) -> str:
        loc = self.location
        return f"azure://{loc.account}/{loc.bucket}/{loc.object_name(key)}"

    async def _small(
        self, method: str, key: str | None, query: dict[str, str] | None, job: Job
    ) -> Any:
        """A body-less request for a blob (``key``) or the container, retried."""
        api = self._api()
        url = api.url(self.location.object_name(key) if key else None, query)
        return await blob_request(self.client, api, method, url, job)

    async def _put(
        self,
        key: str,
        query: dict[str, str] | None,
        headers: dict[bytes, bytes],
        body: Any,
        length: int,
        job: Job,
    ) -> Any:
        """A PUT with a body (``body()`` makes a fresh producer per attempt)."""
        api = self._api()
        url = api.url(self.location.object_name(key), query)

        async def prepare() -> tuple[str, str, dict[bytes, bytes], IBodyProducer | None]:
            sent = {**headers, b"Content-Length": str(length).encode()}
            signed, private = api.sign("PUT", url, sent)
            return "PUT", signed, {**headers, **private}, body()

        return await self.sender.retrying(prepare, job)

    async def _fail(self, key: str, response: Any) -> SharedStoreError:
        return await refused(self.client, response, azure_error(self._what(key)))

    # -- the interface -------------------------------------------------------------

    async def head(self, key: str, job: Job | None = None) -> ObjectInfo | None:
        response = await self._small("HEAD", key, None, job or Detached())
        if response.code not in (200, 404):
            raise await self._fail(key, response)
        return object_info(self.client, response, self._what(key))

    async def read_small(
        self, key: str, limit: int = MAX_SMALL, job: Job | None = None
    ) -> Small | None:
        response = await self._small("GET", key, None, job or Detached())
        if response.code == 404:
            self.client.discard(response)
            return None
        if response.code != 200:
            raise await self._fail(key, response)
        return await small_object(self.client, response, limit, self._what(key))

    async def get_range(
        self, key: str, first: int, last: int, sink: Sink, job: Job | None = None
    ) -> int:
        if first < 0 or last < first:
            raise ValueError(f"bad range {first}-{last}")
        job = job or Detached()
        api = self._api()
        url = api.url(self.location.object_name(key))
        ranged = {b"Range": f"bytes={first}-{last}".encode()}
        response = await blob_request(self.client, api, "GET", url, job, ranged)
        if response.code != 206:
            raise await self._fail(key, response)
        return await range_body(self.client, response, first, last, sink, self._what(key))

    async def put_file(self, key: str, path: str, job: Job | None = None) -> ObjectInfo:
        job = job or Detached()
        size: int = (await self.client.thread(os.stat, path)).st_size
        threads = self.client.reactor
        if size <= self.block_size:
            response = await self._put(
                key,
                None,
                {b"x-ms-blob-type": b"BlockBlob"},
                lambda: FileBody(threads, path, 0, size),
                size,
                job,
            )
            if response.code != 201:
                raise await self._fail(key, response)
            self.client.discard(response)
            return ObjectInfo(size, header(response, b"ETag") or "")
        block = max(self.block_size, -(-size // MAX_BLOCKS))
        count = -(-size // block)
        ids = [base64.b64encode(f"block-{n:08d}".encode()).decode() for n in range(count)]

        async def one(n: int) -> None:
            offset = n * block
            length = min(block, size - offset)
            r = await self._put(
                key,
                {"comp": "block", "blockid": ids[n]},
                {},
                lambda: FileBody(threads, path, offset, length),
                length,
                job,
            )
            if r.code != 201:
                raise await self._fail(key, r)
            self.client.discard(r)

        failures = await objects.each_parallel(range(count), one, self.parallel)
        if failures:
            raise failures[0]  # uncommitted blocks are dropped by the store after a week
        doc = '<?xml version="1.0" encoding="utf-8"?><BlockList>'
        doc += "".join(f"<Latest>{escape(i)}</Latest>" for i in ids) + "</BlockList>"
        data = doc.encode()
        response = await self._put(
            key,
            {"comp": "blocklist"},
            {b"Content-Type": b"application/xml"},
            lambda: BytesBody(data),
            len(data),
            job,
        )
        if response.code != 201:
            raise await self._fail(key, response)
        self.client.discard(response)
        return ObjectInfo(size, header(response, b"ETag") or "")

    async def _conditional(
        self, key: str, data: bytes, condition: dict[bytes, bytes], job: Job | None
    ) -> str | None:
        headers = {b"x-ms-blob-type": b"BlockBlob", **condition}
        response = await self._put(
            key, None, headers, lambda: BytesBody(data), len(data), job or Detached()
        )
        if response.code not in (201, 404, 409, 412):
            raise await self._fail(key, response)
        self.client.discard(response)
        if response.code != 201:
            return None
        return etag_of(response, self._what(key))

    async def create_if_absent(self, key: str, data: bytes, job: Job | None = None) -> str | None:
        return await self._conditional(key, data, {b"If-None-Match": b"*"}, job)

    async def replace_if_match(
        self, key: str, data: bytes, etag: str, job: Job | None = None
    ) -> str | None:
        return await self._conditional(key, data, {b"If-Match": etag.encode("latin-1")}, job)

    async def list(self, prefix: str, limit: int = 1000, job: Job | None = None) -> list[Listed]:
        job = job or Detached()
        limit = max(0, min(limit, MAX_LIST))
        name = name_prefix(self.location, prefix)
        found: list[Listed] = []
        marker: str | None = None
        while len(found) < limit:
            query = {
                "restype": "container",
                "comp": "list",
                "maxresults": str(min(5000, limit - len(found))),
            }
            if name:
                query["prefix"] = name
            if marker:
                query["marker"] = marker
            response = await self._small("GET", None, query, job)
            if response.code != 200:
                raise await self._fail(prefix, response)
            body = await self.client.read_small(response, 16 * 1024 * 1024)
            try:
                blobs, marker = await self.client.thread(parse_listing, body)
            except Exception:
                raise SharedStoreError(f"{self._what(prefix)}: unreadable listing") from None
            for b in blobs:
                rel = listed_key(self.location, b.name, prefix)
                if rel is not None and b.size is not None:
                    found.append(Listed(rel, b.size, b.etag))
            if not marker:
                break
        return sorted(found, key=lambda o: o.key)[:limit]

    async def delete(self, key: str, etag: str | None = None, job: Job | None = None) -> bool:
        job = job or Detached()
        api = self._api()
        url = api.url(self.location.object_name(key))
        condition = {b"If-Match": etag.encode("latin-1")} if etag else {}
        response = await blob_request(self.client, api, "DELETE", url, job, condition)
        if response.code not in (202, 404, 412):
            raise await self._fail(key, response)
        self.client.discard(response)
        deleted: bool = response.code == 202
        return deleted
