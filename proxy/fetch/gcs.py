"""The ``gs://`` downloader: objects of Google Cloud Storage (JSON API).

``gs://<bucket>/<object>`` is one object; ``gs://<bucket>/<prefix>/`` (a
trailing slash, or just ``gs://<bucket>/``) is every object under the prefix,
stored as one artifact manifest with one layer per object, titled with its
name relative to the prefix (as ``s3://``). Percent-escapes in the URL are
decoded (``gs://b/a%20b`` is the object ``a b``).

Endpoint: ``https://storage.googleapis.com``, or ``STORAGE_EMULATOR_HOST``
(``host:port`` or a URL, what google-cloud-storage reads) for an emulator.
Requests are the JSON API's: ``GET /storage/v1/b/<bucket>/o/<object>``
(metadata), ``GET /download/storage/v1/b/<bucket>/o/<object>?alt=media``
(the body, streamed with the shared :class:`HttpClient` into the ingest
writer) and ``GET /storage/v1/b/<bucket>/o?prefix=...&pageToken=...``.

Credentials: a POST's ``credentials`` is an OAuth 2 access token (for
example ``gcloud auth print-access-token``), sent as ``Authorization:
Bearer`` to the endpoint's origin only, for that download only. Without one,
``GOOGLE_APPLICATION_CREDENTIALS`` naming a service-account key file (what
modelkit and google-cloud-storage read) gives a read-only token through
``google-auth`` (the signed-JWT grant to the key's ``token_uri``, refreshed
before it expires; blocking, so in a thread); with neither, requests are
anonymous (public objects, emulators).

An object is pinned to the generation its metadata names: the body is asked
for with ``ifGenerationMatch=<generation>``, so an object replaced meanwhile
answers 412 and is started over (:class:`SourceChanged`). The bytes of one
generation never change, so an interrupted download resumes with a plain
``Range`` from the bytes kept under that generation. A store that ignores
the precondition (the emulator does) is caught anyway: the metadata is read
again after the body, and a new generation, or a body whose length is not
the object's, starts the object over. There is no sha256 in GCS: the sha256
is computed while streaming (``digest`` in the POST is enforced); the
store's MD5 and CRC32C would need a second pass over the data and are only
recorded. Generation, ETag, MD5 and size are kept in the layer annotations.
Errors are mapped by status and name the store's ``reason``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from twisted.internet.defer import Deferred

from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout, ingest_key
from proxy.errors import BadContent, BadRequest, SourceChanged, StorageError, UpstreamError
from proxy.fetch import objects as store
from proxy.fetch.base import FetchResult, Job
from proxy.fetch.transfer import HttpClient, Wanted, download
from proxy.request import Credentials, FetchRequest
from proxy.types import (
    ANNOTATION_GCS_BUCKET,
    ANNOTATION_GCS_ENDPOINT,
    ANNOTATION_GCS_ETAG,
    ANNOTATION_GCS_GENERATION,
    ANNOTATION_GCS_MD5,
    ANNOTATION_GCS_OBJECT,
    ANNOTATION_GCS_SIZE,
    ANNOTATION_TITLE,
    MEDIA_TYPE_OCTET,
    Descriptor,
)

ARTIFACT_TYPE = "application/vnd.nekko.storage-manager.gcs.v1"
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
# Bucket names as GCS accepts them (dotted names up to 222 characters).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# When an error answer has no document (the emulator's), the reason GCS would give.
_STATUS_REASON = {400: "invalid", 401: "required", 403: "forbidden", 404: "notFound"}


@attrs.frozen
class GcsUrl:
    bucket: str
    name: str  # the object, or the prefix ending in "/" ("" = the whole bucket)

    @property
    def is_prefix(self) -> bool:
        return store.is_prefix(self.name)


def parse_gcs_url(url: str) -> GcsUrl:
    return GcsUrl(*store.split_url(url, "gs", _BUCKET_RE, "GCS bucket name"))


def gcs_endpoint() -> str:
    """``STORAGE_EMULATOR_HOST`` (a scheme-less value is http://) or the real API."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if not emulator:
        return DEFAULT_ENDPOINT
    return emulator if "://" in emulator else f"http://{emulator}"


SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
SCOPE_READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"  # the shared store


class ServiceAccount:
    """Access tokens from ``GOOGLE_APPLICATION_CREDENTIALS`` (blocking: threads only)."""

    def __init__(self, scope: str = SCOPE) -> None:
        self.scope = scope
        self._lock = threading.Lock()
        self._creds: Any = None
        self._path: str | None = None

    def token(self) -> str | None:
        path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
        if not path:
            return None
        import google.auth.exceptions
        import google.auth.transport.requests
        from google.oauth2 import service_account

        with self._lock:
            try:
                if self._creds is None or self._path != path:
                    self._creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                        path, scopes=[self.scope]
                    )
                    self._path = path
                if not self._creds.valid:
                    self._creds.refresh(google.auth.transport.requests.Request())
            except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as e:
                # Messages name the file or the grant's error, never the key.
                raise UpstreamError(f"GOOGLE_APPLICATION_CREDENTIALS: {e}", 401) from None
            token: str = self._creds.token
            return token


def gcs_authorization(creds: Credentials | None) -> dict[bytes, bytes]:
    """The headers a POST's credentials (an OAuth 2 access token) add."""
    if creds is None:
        return {}
    if creds.kind != "Bearer":
        raise BadRequest("gs:// credentials are an OAuth 2 access token (credentialsType Bearer)")
    return {b"Authorization": creds.authorization()}


@attrs.frozen
class GcsObject:
    name: str
    size: int | None
    generation: str
    etag: str | None = None
    md5: str | None = None


def object_of(item: Any) -> GcsObject:
    size = item.get("size")
    return GcsObject(
        name=str(item.get("name", "")),
        size=int(size) if isinstance(size, (str, int)) and str(size).isdigit() else None,
        generation=str(item.get("generation") or ""),
        etag=item.get("etag"),
        md5=item.get("md5Hash"),
    )


def object_url(bucket: str, name: str) -> str:
    """The gs:// URL of one object (for messages and ingest state)."""
    return f"gs://{bucket}/{quote(name)}"


class GcsFetcher:
    schemes: tuple[str, ...] = ("gs",)
    kind = "gcs"

    def __init__(
        self,
        client: HttpClient,
        layout: Layout,
        parallel: int = 4,
        account: ServiceAccount | None = None,
    ) -> None:
        self.account = account or ServiceAccount()
        self.client = client
        self.layout = layout
        self.parallel = parallel

    def validate(self, request: FetchRequest) -> None:
        parse_gcs_url(request.url)
        gcs_authorization(request.credentials)

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        ref = parse_gcs_url(request.url)
        auth = gcs_authorization(request.credentials)
        if not auth:
            token = await self.client.thread(self.account.token)
            if token:
                auth = {b"Authorization": b"Bearer " + token.encode("latin-1")}
        api = GcsApi(gcs_endpoint(), ref.bucket, auth)
        common = {ANNOTATION_GCS_BUCKET: ref.bucket, ANNOTATION_GCS_ENDPOINT: api.endpoint}

        async def fetch(name: str, title: str) -> Descriptor:
            if not ref.is_prefix:
                await store.mark_interrupted(self.client, self.layout, request.url, self.kind, job)
            return await self._object(api, name, title, request, job)

        return await store.entry(
            *(self.client, self.layout, request, job, self.kind, ref.name),
            lambda: self._list(api, ref, job),
            lambda o: o.name,
            fetch,
            self.parallel,
            common,
            {ANNOTATION_GCS_OBJECT: ref.name},
            ARTIFACT_TYPE,
        )

    async def _get(self, api: GcsApi, url: str, job: Job) -> Any:
        async def prepare() -> tuple[str, str, dict[bytes, bytes]]:
            return "GET", url, api.auth

        return await store.small_request(self.client, job, prepare)

    async def _json(self, api: GcsApi, url: str, what: str, job: Job) -> Any:
        response = await self._get(api, url, job)
        body = await self.client.read_small(response, 64 * 1024 * 1024)
        if response.code != 200:
            raise gcs_error(what)(response, body)
        try:
            return await self.client.thread(json.loads, body)
        except ValueError:
            raise UpstreamError(f"{what}: the store answered with invalid JSON") from None

    async def _list(self, api: GcsApi, ref: GcsUrl, job: Job) -> list[GcsObject]:
        what = f"gs://{ref.bucket}/{ref.name}"

        async def page(token: str | None) -> tuple[list[GcsObject], str | None]:
            query = {"prefix": ref.name, "maxResults": "1000"}
            if token:
                query["pageToken"] = token
            doc = await self._json(api, api.listing(query), what, job)
            found = []
            for item in doc.get("items") or []:
                o = object_of(item)
                if o.name.endswith("/") and not o.size:
                    continue  # a console "folder"
                found.append(o)
            more = doc.get("nextPageToken")
            return found, str(more) if more else None

        objects = await store.list_pages(what, page)
        store.check_names(what, ref.name, [o.name for o in objects])
        return sorted(objects, key=lambda o: o.name)

    async def _object(
        self, api: GcsApi, name: str, title: str, request: FetchRequest, job: Job
    ) -> Descriptor:
        url = object_url(api.bucket, name)
        what = f"gs://{api.bucket}/{name}"
        blob = job.progress.add(title)
        expected = request.expected if not parse_gcs_url(request.url).is_prefix else None

        async def attempt() -> tuple[GcsObject, Descriptor]:
            meta = object_of(await self._json(api, api.metadata(name), what, job))
            if not meta.generation:
                raise UpstreamError(f"{what}: the store gave no generation")
            blob.total = meta.size
            media = api.media(name)

            async def prepare(headers: dict[bytes, bytes]) -> tuple[str, dict[bytes, bytes]]:
                generation = headers.pop(b"If-Match").decode("latin-1")
                return f"{media}&{urlencode({'ifGenerationMatch': generation})}", api.auth

            want = Wanted(
                url=media,
                name=url,
                expected=expected,
                size=meta.size,
                # One generation's bytes never change: resume with a plain Range.
                immutable=True,
                if_match=meta.generation,
                prepare=prepare,
                error=gcs_error(what),
            )
            ingest = IngestFile(self.layout, ingest_key(f"{url}#generation={meta.generation}"))
            try:
                digest, size = await download(self.client, ingest, want, job, blob)
            except BadContent:
                await self._check_generation(api, name, meta, what, job)
                raise
            await self._check_generation(api, name, meta, what, job)
            return meta, Descriptor(MEDIA_TYPE_OCTET, digest, size, {})

        meta, desc = await store.restarting(what, attempt)
        annotations = {
            ANNOTATION_TITLE: title,
            ANNOTATION_GCS_OBJECT: name,
            ANNOTATION_GCS_GENERATION: meta.generation,
            ANNOTATION_GCS_SIZE: str(desc.size),
        }
        if meta.etag:
            annotations[ANNOTATION_GCS_ETAG] = str(meta.etag)
        if meta.md5:
            annotations[ANNOTATION_GCS_MD5] = str(meta.md5)
        return Descriptor(MEDIA_TYPE_OCTET, desc.digest, desc.size, annotations)

    async def _check_generation(
        self, api: GcsApi, name: str, meta: GcsObject, what: str, job: Job
    ) -> None:
        """SourceChanged when the object is no longer the generation fetched."""
        try:
            now = object_of(await self._json(api, api.metadata(name), what, job))
        except UpstreamError as e:
            if e.upstream_status == 404:
                raise SourceChanged(f"{what} was removed while it was fetched") from None
            raise
        if now.generation != meta.generation:
            raise SourceChanged(f"{what} changed while it was being fetched")


@attrs.frozen
class GcsApi:
    """The JSON API's URLs for one bucket, and the headers for its origin only."""

    endpoint: str
    bucket: str
    auth: dict[bytes, bytes] = attrs.field(repr=False)

    def _object_path(self, name: str) -> str:
        return f"/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}"

    def metadata(self, name: str) -> str:
        return f"{self.endpoint}/storage/v1{self._object_path(name)}"

    def media(self, name: str) -> str:
        return f"{self.endpoint}/download/storage/v1{self._object_path(name)}?alt=media"

    def listing(self, query: dict[str, str]) -> str:
        return f"{self.endpoint}/storage/v1/b/{quote(self.bucket, safe='')}/o?{urlencode(query)}"

    def upload(self, query: dict[str, str]) -> str:
        bucket = quote(self.bucket, safe="")
        return f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?{urlencode(query)}"


def gcs_error(what: str) -> Any:
    """Builds the error of a non-success answer from its JSON error document."""

    def build(response: Any, body: bytes) -> StorageError:
        reason, message = "", ""
        try:
            err = json.loads(body)["error"]
            message = str(err.get("message") or "")
            errors = err.get("errors") or [{}]
            reason = str(errors[0].get("reason") or err.get("status") or "")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            pass
        reason = reason or _STATUS_REASON.get(response.code, "")
        detail = store.error_detail(reason, message, response.code)
        return UpstreamError(f"{what}: {detail} (status {response.code})", response.code)

    return build
