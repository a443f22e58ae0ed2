"""The shared store on Google Cloud Storage (JSON API).

Endpoint and credentials are the ``gs://`` downloader's
(:func:`proxy.fetch.gcs.gcs_endpoint`: ``STORAGE_EMULATOR_HOST`` or the real
API; a token from ``GOOGLE_APPLICATION_CREDENTIALS`` through
:class:`~proxy.fetch.gcs.ServiceAccount`, here with the read-write scope;
anonymous without). Objects up to ``chunk_size`` go up in one media upload
streamed from the file; larger ones in a resumable upload, ``chunk_size``
bytes (a multiple of 256 KiB) per request, continuing from what the store
says it has kept (its ``Range`` on each 308).

``etag`` is the object's generation: create-only is ``ifGenerationMatch=0``,
a conditional overwrite or delete ``ifGenerationMatch=<generation>``; 412 is
the condition failing. (gcp-storage-emulator ignores these conditions:
:func:`proxy.shared.lease.supports_conditional_writes` finds that out.)
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any
from urllib.parse import urlencode, urljoin

from twisted.web.iweb import IBodyProducer

from proxy.fetch import objects
from proxy.fetch.base import Job
from proxy.fetch.gcs import SCOPE_READ_WRITE, GcsApi, ServiceAccount, gcs_endpoint, gcs_error
from proxy.fetch.transfer import HttpClient, header, origin
from proxy.shared.location import StoreLocation, listed_key, name_prefix
from proxy.shared.store import (
    MAX_LIST,
    MAX_SMALL,
    Listed,
    ObjectInfo,
    SharedStoreError,
    Small,
    range_body,
    refused,
)
from proxy.shared.wire import BytesBody, Detached, FileBody, Sender, Sink

QUANTUM = 256 * 1024  # resumable chunks are multiples of this


def _generation(doc: Any) -> str:
    gen = doc.get("generation") if isinstance(doc, dict) else None
    if not isinstance(gen, (str, int)) or not str(gen).isdigit():
        raise SharedStoreError("the store's object metadata has no generation")
    return str(gen)


def _size(doc: Any) -> int:
    size = doc.get("size") if isinstance(doc, dict) else None
    if not isinstance(size, (str, int)) or not str(size).isdigit():
        raise SharedStoreError("the store's object metadata has no size")
    return int(size)


class GcsStore:
    """A :class:`~proxy.shared.store.SharedStore` on one GCS bucket and prefix."""

    def __init__(
        self,
        location: StoreLocation,
        client: HttpClient,
        sender: Sender,
        chunk_size: int = 64 * 1024 * 1024,
        account: ServiceAccount | None = None,
    ) -> None:
        if chunk_size <= 0 or chunk_size % QUANTUM:
            raise ValueError(f"GCS resumable chunks are multiples of {QUANTUM} bytes")
        self.location = location
        self.client = client
        self.sender = sender
        self.chunk_size = chunk_size
        self.account = account or ServiceAccount(SCOPE_READ_WRITE)

    async def _api(self) -> GcsApi:
        token = await self.client.thread(self.account.token)
        auth = {b"Authorization": b"Bearer " + token.encode("latin-1")} if token else {}
        return GcsApi(gcs_endpoint(), self.location.bucket, auth)

    def _what(self, key: str) -> str:
        return f"gs://{self.location.bucket}/{self.location.object_name(key)}"

    async def _small(
        self, method: str, url: str, job: Job, headers: dict[bytes, bytes] | None = None
    ) -> Any:
        api = await self._api()

        async def prepare() -> tuple[str, str, dict[bytes, bytes]]:
            return method, url, {**(headers or {}), **api.auth}

        return await objects.small_request(self.client, job, prepare)

    async def _send(
        self, method: str, url: str, headers: dict[bytes, bytes], body: Any, job: Job
    ) -> Any:
        """A request with a body (``body()`` makes a fresh producer per attempt)."""
        api = await self._api()

        async def prepare() -> tuple[str, str, dict[bytes, bytes], IBodyProducer | None]:
            return method, url, {**headers, **api.auth}, body()

        return await self.sender.retrying(prepare, job)

    async def _fail(self, key: str, response: Any) -> SharedStoreError:
        return await refused(self.client, response, gcs_error(self._what(key)))

    async def _json(self, response: Any) -> Any:
        body = await self.client.read_small(response, 1024 * 1024)
        try:
            return json.loads(body)
        except ValueError:
            raise SharedStoreError("the store answered with invalid JSON") from None

    async def _metadata(self, key: str, job: Job) -> Any:
        api = await self._api()
        response = await self._small("GET", api.metadata(self.location.object_name(key)), job)
        if response.code == 404:
            self.client.discard(response)
            return None
        if response.code != 200:
            raise await self._fail(key, response)
        return await self._json(response)

    # -- the interface -------------------------------------------------------------

    async def head(self, key: str, job: Job | None = None) -> ObjectInfo | None:
        doc = await self._metadata(key, job or Detached())
        return None if doc is None else ObjectInfo(_size(doc), _generation(doc))

    async def read_small(
        self, key: str, limit: int = MAX_SMALL, job: Job | None = None
    ) -> Small | None:
        job = job or Detached()
        api = await self._api()
        for _ in range(3):  # the object may be replaced between its metadata and its body
            doc = await self._metadata(key, job)
            if doc is None:
                return None
            generation = _generation(doc)
            url = f"{api.media(self.location.object_name(key))}&generation={generation}"
            response = await self._small("GET", url, job)
            if response.code == 404:
                self.client.discard(response)
                continue
            if response.code != 200:
                raise await self._fail(key, response)
            return Small(await self.client.read_small(response, limit), generation)
        return None

    async def get_range(
        self, key: str, first: int, last: int, sink: Sink, job: Job | None = None
    ) -> int:
        if first < 0 or last < first:
            raise ValueError(f"bad range {first}-{last}")
        api = await self._api()
        url = api.media(self.location.object_name(key))
        ranged = {b"Range": f"bytes={first}-{last}".encode()}
        response = await self._small("GET", url, job or Detached(), ranged)
        if response.code != 206:
            raise await self._fail(key, response)
        return await range_body(self.client, response, first, last, sink, self._what(key))

    async def put_file(self, key: str, path: str, job: Job | None = None) -> ObjectInfo:
        job = job or Detached()
        size: int = (await self.client.thread(os.stat, path)).st_size
        api = await self._api()
        name = self.location.object_name(key)
        threads = self.client.reactor
        octets = {b"Content-Type": b"application/octet-stream"}
        if size <= self.chunk_size:
            url = api.upload({"uploadType": "media", "name": name})
            response = await self._send(
                "POST", url, octets, lambda: FileBody(threads, path, 0, size), job
            )
            if response.code not in (200, 201):
                raise await self._fail(key, response)
            return ObjectInfo(size, _generation(await self._json(response)))
        start = {
            b"X-Upload-Content-Type": b"application/octet-stream",
            b"X-Upload-Content-Length": str(size).encode(),
            b"Content-Type": b"application/json",
        }
        url = api.upload({"uploadType": "resumable", "name": name})
        response = await self._send("POST", url, start, lambda: BytesBody(b"{}"), job)
        if response.code not in (200, 201):
            raise await self._fail(key, response)
        self.client.discard(response)
        session = urljoin(url, header(response, b"Location") or "")
        if origin(session) != origin(url):
            raise SharedStoreError(f"{self._what(key)}: the upload session is on another origin")
        return await self._resumable(key, session, path, size, job)

    async def _resumable(
        self, key: str, session: str, path: str, size: int, job: Job
    ) -> ObjectInfo:
        threads = self.client.reactor
        offset = 0
        for _ in range(3 * (-(-size // self.chunk_size)) + 3):
            end = min(offset + self.chunk_size, size) - 1
            span = {b"Content-Range": f"bytes {offset}-{end}/{size}".encode()}
            part = functools.partial(FileBody, threads, path, offset, end - offset + 1)
            response = await self._send("PUT", session, span, part, job)
            if response.code in (200, 201):
                return ObjectInfo(size, _generation(await self._json(response)))
            if response.code != 308:
                raise await self._fail(key, response)
            self.client.discard(response)
            kept = header(response, b"Range") or ""
            # "bytes=0-<last byte kept>"; none kept yet: no Range at all.
            tail = kept.removeprefix("bytes=0-")
            offset = int(tail) + 1 if kept.startswith("bytes=0-") and tail.isdigit() else 0
            if offset > size:
                raise SharedStoreError(f"{self._what(key)}: the store kept {kept!r} of {size}")
        raise SharedStoreError(f"{self._what(key)}: the resumable upload does not advance")

    async def _conditional(
        self, key: str, data: bytes, generation: str, job: Job | None
    ) -> str | None:
        api = await self._api()
        query = {
            "uploadType": "media",
            "name": self.location.object_name(key),
            "ifGenerationMatch": generation,
        }
        octets = {b"Content-Type": b"application/octet-stream"}
        response = await self._send(
            "POST", api.upload(query), octets, lambda: BytesBody(data), job or Detached()
        )
        if response.code in (404, 412):
            self.client.discard(response)
            return None
        if response.code not in (200, 201):
            raise await self._fail(key, response)
        return _generation(await self._json(response))

    async def create_if_absent(self, key: str, data: bytes, job: Job | None = None) -> str | None:
        return await self._conditional(key, data, "0", job)

    async def replace_if_match(
        self, key: str, data: bytes, etag: str, job: Job | None = None
    ) -> str | None:
        if not etag.isdigit() or etag == "0":
            return None  # not a generation: no object has it
        return await self._conditional(key, data, etag, job)

    async def list(self, prefix: str, limit: int = 1000, job: Job | None = None) -> list[Listed]:
        job = job or Detached()
        limit = max(0, min(limit, MAX_LIST))
        name = name_prefix(self.location, prefix)
        api = await self._api()
        found: list[Listed] = []
        token: str | None = None
        while len(found) < limit:
            query = {"prefix": name, "maxResults": str(min(1000, limit - len(found)))}
            if token:
                query["pageToken"] = token
            response = await self._small("GET", api.listing(query), job)
            if response.code != 200:
                raise await self._fail(prefix, response)
            doc = await self._json(response)
            items = doc.get("items") if isinstance(doc, dict) else None
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict):
                    continue
                rel = listed_key(self.location, str(item.get("name", "")), prefix)
                if rel is None:
                    continue
                try:
                    found.append(Listed(rel, _size(item), _generation(item)))
                except SharedStoreError:
                    continue
            more = doc.get("nextPageToken") if isinstance(doc, dict) else None
            if not more:
                break
            token = str(more)
        return sorted(found, key=lambda o: o.key)[:limit]

    async def delete(self, key: str, etag: str | None = None, job: Job | None = None) -> bool:
        api = await self._api()
        url = api.metadata(self.location.object_name(key))
        if etag is not None:
            if not etag.isdigit():
                return False
            url += "?" + urlencode({"ifGenerationMatch": etag})
        response = await self._small("DELETE", url, job or Detached())
        if response.code not in (200, 204, 404, 412):
            raise await self._fail(key, response)
        self.client.discard(response)
        deleted: bool = response.code in (200, 204)
        return deleted
