"""The shared store on S3 and S3-compatible stores (MinIO, Ceph RGW).

Every request is built and SigV4-signed by botocore through the
downloaders' :class:`~proxy.fetch.s3.Signer` (same endpoint, region,
credentials and addressing style as ``s3://`` downloads; in a thread) and
sent by this project's HTTP stack: body-less ones by the shared
:class:`~proxy.fetch.transfer.HttpClient`, the others by a
:class:`~proxy.shared.wire.Sender` streaming the body from the file.
botocore reads a file body to sign it (its SHA-256 over plain HTTP, a
CRC32 checksum) in the thread too, a chunk at a time.

Conditional writes: ``If-None-Match: *`` (create only) and ``If-Match:
<etag>`` on PutObject and DeleteObject; 412 (and the 409 S3 gives two
conditional writes racing) is the condition failing. Files larger than
``part_size`` are uploaded as a multipart upload (``part_size`` parts,
``parallel`` at a time, each retried; the upload is aborted if a part
fails for good).
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.web.iweb import IBodyProducer

from proxy.fetch import objects
from proxy.fetch.base import Job
from proxy.fetch.s3 import Signer, raw_headers, s3_error, signed_request
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

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_PARTS = 10_000


class _Window(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, as a seekable file for
    botocore to hash (in a thread; never sent from here)."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset, self._length, self._pos = offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        n = left if size is None or size < 0 else min(size, left)
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def _signed_part(
    signer: Signer,
    s3: Any,
    operation: str,
    params: dict[str, Any],
    path: str,
    offset: int,
    size: int,
) -> tuple[str, str, dict[bytes, bytes]]:
    window = _Window(path, offset, size)
    try:
        method, url, headers, _ = signer.prepare_with_body(
            s3, operation, {**params, "Body": window}
        )
    finally:
        window.close()
    return method, url, headers


class S3Store:
    """A :class:`~proxy.shared.store.SharedStore` on one S3 bucket and prefix."""

    def __init__(
        self,
        location: StoreLocation,
        client: HttpClient,
        sender: Sender,
        signer: Signer,
        part_size: int = 64 * 1024 * 1024,
        parallel: int = 4,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"S3 parts are at least {MIN_PART} bytes")
        self.location = location
        self.client = client
        self.sender = sender
        self.signer = signer
        self.part_size = part_size
        self.parallel = parallel

    # -- plumbing ------------------------------------------------------------------

    async def _s3(self) -> Any:
        return await self.client.thread(self.signer.client, None)

    def _what(self, key: str) -> str:
        return f"s3://{self.location.bucket}/{self.location.object_name(key)}"

    def _params(self, key: str, **more: Any) -> dict[str, Any]:
        return {"Bucket": self.location.bucket, "Key": self.location.object_name(key), **more}

    async def _small(self, s3: Any, operation: str, params: dict[str, Any], job: Job) -> Any:
        """A request without a body, retried on 5xx and cuts."""
        return await signed_request(self.client, self.signer, s3, operation, params, job)

    async def _with_bytes(
        self, s3: Any, operation: str, params: dict[str, Any], data: bytes | None, job: Job
    ) -> Any:
        """A request with a small body: ``data``, or (None) the document botocore makes."""
        call = params if data is None else {**params, "Body": data}

        async def prepare() -> tuple[str, str, dict[bytes, bytes], IBodyProducer | None]:
            method, url, headers, body = await self.client.thread(
                self.signer.prepare_with_body, s3, operation, call
            )
            return method, url, headers, BytesBody(body if body is not None else data or b"")

        return await self.sender.retrying(prepare, job)

    async def _with_file(
        self,
        s3: Any,
        operation: str,
        params: dict[str, Any],
        path: str,
        offset: int,
        size: int,
        job: Job,
    ) -> Any:
        async def prepare() -> tuple[str, str, dict[bytes, bytes], IBodyProducer | None]:
            method, url, headers = await self.client.thread(
                _signed_part, self.signer, s3, operation, params, path, offset, size
            )
            return method, url, headers, FileBody(self.client.reactor, path, offset, size)

        return await self.sender.retrying(prepare, job)

    async def _fail(self, s3: Any, key: str, operation: str, response: Any) -> SharedStoreError:
        error = s3_error(self.signer, s3, self._what(key), operation)
        return await refused(self.client, response, error)

    async def _parse(self, s3: Any, operation: str, response: Any, limit: int) -> Any:
        body = await self.client.read_small(response, limit)
        return await self.client.thread(
            self.signer.parse, s3, operation, response.code, raw_headers(response), body
        )

    # -- the interface -------------------------------------------------------------

    async def head(self, key: str, job: Job | None = None) -> ObjectInfo | None:
        job = job or Detached()
        s3 = await self._s3()
        response = await self._small(s3, "head_object", self._params(key), job)
        if response.code != 200 and response.code != 404:
            raise await self._fail(s3, key, "HeadObject", response)
        return object_info(self.client, response, self._what(key))

    async def read_small(
        self, key: str, limit: int = MAX_SMALL, job: Job | None = None
    ) -> Small | None:
        job = job or Detached()
        s3 = await self._s3()
        response = await self._small(s3, "get_object", self._params(key), job)
        if response.code == 404:
            self.client.discard(response)
            return None
        if response.code != 200:
            raise await self._fail(s3, key, "GetObject", response)
        return await small_object(self.client, response, limit, self._what(key))

    async def get_range(
        self, key: str, first: int, last: int, sink: Sink, job: Job | None = None
    ) -> int:
        job = job or Detached()
        if first < 0 or last < first:
            raise ValueError(f"bad range {first}-{last}")
        s3 = await self._s3()
        params = self._params(key, Range=f"bytes={first}-{last}")
        response = await self._small(s3, "get_object", params, job)
        if response.code != 206:
            raise await self._fail(s3, key, "GetObject", response)
        return await range_body(self.client, response, first, last, sink, self._what(key))

    async def put_file(self, key: str, path: str, job: Job | None = None) -> ObjectInfo:
        job = job or Detached()
        s3 = await self._s3()
        size: int = (await self.client.thread(os.stat, path)).st_size
        if size <= self.part_size:
            params = self._params(key)
            response = await self._with_file(s3, "put_object", params, path, 0, size, job)
            if response.code != 200:
                raise await self._fail(s3, key, "PutObject", response)
            self.client.discard(response)
            return ObjectInfo(size, header(response, b"ETag") or "")
        return await self._multipart(s3, key, path, size, job)

    async def _multipart(self, s3: Any, key: str, path: str, size: int, job: Job) -> ObjectInfo:
        part = max(self.part_size, -(-size // MAX_PARTS))
        response = await self._small(s3, "create_multipart_upload", self._params(key), job)
        if response.code != 200:
            raise await self._fail(s3, key, "CreateMultipartUpload", response)
        upload_id = (await self._parse(s3, "CreateMultipartUpload", response, 64 * 1024)).get(
            "UploadId"
        )
        if not upload_id:
            raise SharedStoreError(f"{self._what(key)}: no UploadId in the answer")
        etags: dict[int, str] = {}

        async def one(number: int) -> None:
            offset = (number - 1) * part
            length = min(part, size - offset)
            params = self._params(key, PartNumber=number, UploadId=upload_id)
            r = await self._with_file(s3, "upload_part", params, path, offset, length, job)
            if r.code != 200:
                raise await self._fail(s3, key, "UploadPart", r)
            self.client.discard(r)
            etag = header(r, b"ETag")
            if not etag:
                raise SharedStoreError(f"{self._what(key)}: part {number} has no ETag")
            etags[number] = etag

        count = -(-size // part)
        failures = await objects.each_parallel(range(1, count + 1), one, self.parallel)
        try:
            if failures:
                raise failures[0]
            parts = [{"ETag": etags[n], "PartNumber": n} for n in range(1, count + 1)]
            params = self._params(key, UploadId=upload_id, MultipartUpload={"Parts": parts})
            r = await self._with_bytes(s3, "complete_multipart_upload", params, None, job)
            if r.code != 200:
                raise await self._fail(s3, key, "CompleteMultipartUpload", r)
            # A 200 may still carry an error document.
            done = await self._parse(s3, "CompleteMultipartUpload", r, 1024 * 1024)
            if "Error" in done or not done.get("ETag"):
                err = done.get("Error") or {}
                raise SharedStoreError(f"{self._what(key)}: {err.get('Code', 'no ETag')}")
            return ObjectInfo(size, str(done["ETag"]))
        except BaseException:
            try:
                aborted = await self._small(
                    s3, "abort_multipart_upload", self._params(key, UploadId=upload_id), Detached()
                )
                self.client.discard(aborted)
            except Exception:  # noqa: S110 - the store's lifecycle rules clean up the rest
                pass
            raise

    async def _conditional(
        self, key: str, data: bytes, condition: dict[str, str], job: Job | None
    ) -> str | None:
        job = job or Detached()
        s3 = await self._s3()
        params = self._params(key, **condition)
        response = await self._with_bytes(s3, "put_object", params, data, job)
        if response.code != 200 and response.code not in (404, 409, 412):
            raise await self._fail(s3, key, "PutObject", response)
        self.client.discard(response)
        if response.code != 200:
            return None
        return etag_of(response, self._what(key))

    async def create_if_absent(self, key: str, data: bytes, job: Job | None = None) -> str | None:
        return await self._conditional(key, data, {"IfNoneMatch": "*"}, job)

    async def replace_if_match(
        self, key: str, data: bytes, etag: str, job: Job | None = None
    ) -> str | None:
        return await self._conditional(key, data, {"IfMatch": etag}, job)

    async def list(self, prefix: str, limit: int = 1000, job: Job | None = None) -> list[Listed]:
        job = job or Detached()
        limit = max(0, min(limit, MAX_LIST))
        s3 = await self._s3()
        name = name_prefix(self.location, prefix)
        found: list[Listed] = []
        token: str | None = None
        while len(found) < limit:
            params: dict[str, Any] = {
                "Bucket": self.location.bucket,
                "Prefix": name,
                "MaxKeys": min(1000, limit - len(found)),
            }
            if token:
                params["ContinuationToken"] = token
            response = await self._small(s3, "list_objects_v2", params, job)
            if response.code != 200:
                raise await self._fail(s3, prefix, "ListObjectsV2", response)
            page = await self._parse(s3, "ListObjectsV2", response, 16 * 1024 * 1024)
            for item in page.get("Contents") or []:
                rel = listed_key(self.location, str(item.get("Key", "")), prefix)
                size = item.get("Size")
                if rel is not None and isinstance(size, int):
                    found.append(Listed(rel, size, item.get("ETag")))
            more = page.get("IsTruncated") and page.get("NextContinuationToken")
            if not more:
                break
            token = str(more)
        return sorted(found, key=lambda o: o.key)[:limit]

    async def delete(self, key: str, etag: str | None = None, job: Job | None = None) -> bool:
        job = job or Detached()
        s3 = await self._s3()
        if etag is None and await self.head(key, job) is None:
            return False
        params = self._params(key, **({"IfMatch": etag} if etag else {}))
        response = await self._small(s3, "delete_object", params, job)
        if response.code not in (200, 204, 404, 412):
            raise await self._fail(s3, key, "DeleteObject", response)
        self.client.discard(response)
        return response.code in (200, 204)
