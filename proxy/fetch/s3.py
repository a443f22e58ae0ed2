"""The ``s3://`` downloader: objects of S3 and S3-compatible stores (MinIO, Ceph...).

``s3://<bucket>/<key>`` is one object; ``s3://<bucket>/<prefix>/`` (a
trailing slash, or just ``s3://<bucket>/``) is every object under the prefix,
stored as one artifact manifest with one layer per object, titled with its
key relative to the prefix.

Requests are built and SigV4-signed by botocore itself -- an operation is
called on a botocore client whose ``before-send`` hook takes the prepared,
signed request instead of sending it, so the endpoint, region, addressing
style, key encoding and signed headers are exactly what the AWS SDKs send --
and then sent with the shared :class:`HttpClient`, so bodies stream to disk
through the ingest writer, every hop passes the reach policy, and the
signature and session token go only to the store's own origin. Each attempt
is signed anew (its ``Range`` and ``If-Match`` are signed). botocore also
parses ``ListObjectsV2`` and error documents. It never runs on the reactor:
making clients, resolving credentials and signing happen in a thread.

Where things come from, as with the AWS CLI: endpoint ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or modelkit's ``S3_ENDPOINT``; region ``AWS_REGION``,
``AWS_DEFAULT_REGION`` or the profile's; credentials ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the
shared config files (botocore's chain). A POST's ``credentials`` of
``<access key>:<secret key>[:<session token>]`` are used instead, for that
download only. Addressing: ``--s3-addressing-style`` (``path`` for MinIO).

Each object is fetched after a ``HEAD`` with ``If-Match`` on the ETag it had
then, so a resumed download (``Range``) can only continue the same object;
an object that changes meanwhile is started over (a few times at most).
``x-amz-checksum-sha256`` of a whole object, when the store has one, is the
expected digest. ETag, size and version id are kept in the annotations.
Errors are mapped by the S3 error ``Code``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

import attrs
from twisted.internet.defer import Deferred

from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout, ingest_key
from proxy.errors import BadRequest, StorageError, UpstreamError
from proxy.fetch import objects as store
from proxy.fetch.base import FetchResult, Job
from proxy.fetch.transfer import HttpClient, Wanted, download, header
from proxy.request import Credentials, FetchRequest
from proxy.types import (
    ANNOTATION_S3_BUCKET,
    ANNOTATION_S3_ENDPOINT,
    ANNOTATION_S3_ETAG,
    ANNOTATION_S3_KEY,
    ANNOTATION_S3_VERSION,
    ANNOTATION_TITLE,
    MEDIA_TYPE_OCTET,
    Descriptor,
    Digest,
)

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.nekko.storage-manager.s3.v1"
EXPIRES = 12 * 3600  # pre-signed URLs outlive any retry of one download
# Bucket names as S3 and MinIO accept them (legacy upper case and _ included).
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")

# S3 error Code -> the status our client gets (the rest: S3's own status).
CODE_STATUS = {
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchVersion": 404,
    "AccessDenied": 403,
    "AllAccessDisabled": 403,
    "AccountProblem": 403,
    "InvalidAccessKeyId": 401,
    "SignatureDoesNotMatch": 401,
    "ExpiredToken": 401,
    "InvalidToken": 401,
    "TokenRefreshRequired": 401,
}


@attrs.frozen
class S3Url:
    bucket: str
    key: str  # the object, or the prefix ending in "/" ("" = the whole bucket)

    @property
    def is_prefix(self) -> bool:
        return store.is_prefix(self.key)


def parse_s3_url(url: str) -> S3Url:
    return S3Url(*store.split_url(url, "s3", _BUCKET_RE, "S3 bucket name"))


def parse_s3_credentials(creds: Credentials | None) -> tuple[str, str, str | None] | None:
    """``access:secret[:token]`` from a POST's credentials."""
    if creds is None:
        return None
    secret = creds.secret
    if creds.kind == "Basic":  # base64 of access:secret, as a user:password URL gives it
        try:
            secret = base64.b64decode(secret, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest("s3 credentials are access-key:secret-key[:session-token]") from None
    access, sep, rest = secret.partition(":")
    secret_key, _, token = rest.partition(":")
    if not sep or not access or not secret_key:
        raise BadRequest("s3 credentials are access-key:secret-key[:session-token]")
    return access, secret_key, token or None


@attrs.frozen
class S3Object:
    key: str
    size: int | None
    etag: str | None
    version: str | None = None
    sha256: Digest | None = None


class Signer:
    """botocore clients, one per endpoint/region/credentials (blocking: threads only)."""

    def __init__(self, addressing_style: str = "auto") -> None:
        self.addressing_style = addressing_style
        self._lock = threading.Lock()
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._session: Any = None

    def _get_session(self) -> Any:
        import botocore.session

        if self._session is None:
            self._session = botocore.session.get_session()
        return self._session

    def client(self, creds: tuple[str, str, str | None] | None) -> Any:
        from botocore.exceptions import BotoCoreError

        try:
            return self._client(creds)
        except BotoCoreError as e:  # a missing profile, unreadable config, no credentials
            raise UpstreamError(f"AWS configuration: {e}", 401) from None

    def _client(self, creds: tuple[str, str, str | None] | None) -> Any:
        from botocore.config import Config

        with self._lock:
            session = self._get_session()
            endpoint = (
                os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("S3_ENDPOINT")
                or None
            )
            region = (
                os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
                or session.get_config_variable("region")
                or "us-east-1"
            )
            cache_key = (endpoint, region, creds)
            found = self._clients.get(cache_key)
            if found is not None:
                return found
            kwargs: dict[str, Any] = {}
            if creds is not None:
                kwargs = {
                    "aws_access_key_id": creds[0],
                    "aws_secret_access_key": creds[1],
                    "aws_session_token": creds[2],
                }
            elif session.get_credentials() is None:
                raise UpstreamError("no AWS credentials (environment, profile or POST)", 401)
            config = Config(
                signature_version="s3v4",
                s3={"addressing_style": self.addressing_style},
                retries={"max_attempts": 0},
            )
            client = session.create_client(
                "s3", region_name=region, endpoint_url=endpoint, config=config, **kwargs
            )
            client.meta.events.register("before-send.s3", _capture)
            self._clients[cache_key] = client
            return client

    def prepare(
        self, client: Any, operation: str, params: dict[str, Any]
    ) -> tuple[str, str, dict[bytes, bytes]]:
        """(method, URL, signed headers) of the request botocore would send."""
        method, url, headers, _ = self.prepare_with_body(client, operation, params)
        return method, url, headers

    def prepare_with_body(
        self, client: Any, operation: str, params: dict[str, Any]
    ) -> tuple[str, str, dict[bytes, bytes], bytes | None]:
        """:meth:`prepare`, and the body botocore made (a document such as
        CompleteMultipartUpload's; None when the body is a stream the caller
        gave, which botocore has read to sign and the caller sends itself)."""
        from botocore.exceptions import BotoCoreError, ParamValidationError

        try:
            getattr(client, operation)(**params)
        except ParamValidationError as e:
            raise BadRequest(f"S3 request: {e}") from None
        except BotoCoreError as e:  # credentials that cannot be resolved or refreshed
            raise UpstreamError(f"AWS credentials: {e}", 401) from None
        except _Captured as c:
            r = c.request
            headers = {
                k.encode("latin-1"): v if isinstance(v, bytes) else str(v).encode("latin-1")
                for k, v in r.headers.items()
                if k.lower() not in ("user-agent", "amz-sdk-invocation-id", "amz-sdk-request")
            }
            body = r.body
            data = (
                body
                if isinstance(body, bytes)
                else body.encode()
                if isinstance(body, str)
                else None
            )
            return str(r.method), str(r.url), headers, data
        raise AssertionError("botocore sent a request by itself")

    @staticmethod
    def parse(client: Any, operation: str, status: int, headers: Any, body: bytes) -> Any:
        """botocore's own parse of an answer (the output shape, or ``Error``)."""
        from botocore import parsers

        model = client.meta.service_model.operation_model(operation)
        parser = parsers.create_parser(client.meta.service_model.protocol)
        response = {"status_code": status, "headers": headers, "body": body}
        return parser.parse(response, model.output_shape)


class _Captured(Exception):
    """Carries botocore's prepared request out of its send path."""

    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def _capture(request: Any, **_: Any) -> None:
    raise _Captured(request)


def raw_headers(response: Any) -> dict[str, str]:
    """An answer's headers as botocore's parsers take them (lower-case names)."""
    return {
        k.decode("latin-1").lower(): v[0].decode("latin-1")
        for k, v in response.headers.getAllRawHeaders()
    }


async def signed_request(
    client: HttpClient, signer: Signer, s3: Any, operation: str, params: dict[str, Any], job: Job
) -> Any:
    """A request without a body (listing, HEAD, error probe), signed for each
    attempt (in a thread) and retried on 5xx and cuts."""

    async def prepare() -> tuple[str, str, dict[bytes, bytes]]:
        signed: tuple[str, str, dict[bytes, bytes]]
        signed = await client.thread(signer.prepare, s3, operation, params)
        return signed

    return await store.small_request(client, job, prepare)


def s3_error(signer: Signer, s3: Any, what: str, operation: str) -> Any:
    """Builds the error of a non-success answer from its S3 error document."""

    def build(response: Any, body: bytes) -> StorageError:
        code, message = "", ""
        try:
            parsed = signer.parse(s3, operation, response.code, raw_headers(response), body)
            err = parsed.get("Error") or {}
            code, message = str(err.get("Code") or ""), str(err.get("Message") or "")
        except Exception:  # noqa: S110 - an unreadable error document: use the status
            pass
        if not code and response.code == 404:
            code = "NoSuchKey" if operation != "ListObjectsV2" else "NoSuchBucket"
        detail = store.error_detail(code, message, response.code)
        return UpstreamError(f"{what}: {detail}", CODE_STATUS.get(code, response.code))

    return build


class S3Fetcher:
    schemes: tuple[str, ...] = ("s3",)
    kind = "s3"

    def __init__(
        self, client: HttpClient, layout: Layout, signer: Signer | None = None, parallel: int = 4
    ) -> None:
        self.client = client
        self.layout = layout
        self.signer = signer or Signer()
        self.parallel = parallel

    def validate(self, request: FetchRequest) -> None:
        parse_s3_url(request.url)
        parse_s3_credentials(request.credentials)

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        ref = parse_s3_url(request.url)
        creds = parse_s3_credentials(request.credentials)
        s3 = await self.client.thread(self.signer.client, creds)
        endpoint = str(s3.meta.endpoint_url)
        common = {ANNOTATION_S3_BUCKET: ref.bucket, ANNOTATION_S3_ENDPOINT: endpoint}

        def fetch(key: str, title: str) -> Awaitable[Descriptor]:
            return self._object(s3, ref, key, title, request, job)

        return await store.entry(
            *(self.client, self.layout, request, job, self.kind, ref.key),
            lambda: self._list(s3, ref, job),
            lambda o: o.key,
            fetch,
            self.parallel,
            common,
            {ANNOTATION_S3_KEY: ref.key},
            ARTIFACT_TYPE,
        )

    # -- errors --------------------------------------------------------------------

    def _error(self, s3: Any, what: str, operation: str) -> Any:
        return s3_error(self.signer, s3, what, operation)

    # -- listing -----------------------------------------------------------------

    async def _list(self, s3: Any, ref: S3Url, job: Job) -> list[S3Object]:
        what = f"s3://{ref.bucket}/{ref.key}"

        async def page(token: str | None) -> tuple[list[S3Object], str | None]:
            params: dict[str, Any] = {"Bucket": ref.bucket, "Prefix": ref.key}
            if token:
                params["ContinuationToken"] = token
            response = await self._retrying(s3, "list_objects_v2", params, job)
            body = await self.client.read_small(response, 64 * 1024 * 1024)
            if response.code != 200:
                raise self._error(s3, what, "ListObjectsV2")(response, body)
            parsed = await self.client.thread(
                self.signer.parse, s3, "ListObjectsV2", 200, raw_headers(response), body
            )
            encoded = parsed.get("EncodingType") == "url"
            found = []
            for item in parsed.get("Contents") or []:
                key = str(item.get("Key", ""))
                key = unquote(key) if encoded else key
                if key.endswith("/") and not item.get("Size"):
                    continue  # a "folder" marker
                found.append(S3Object(key, item.get("Size"), item.get("ETag")))
            more = parsed.get("IsTruncated") and parsed.get("NextContinuationToken")
            return found, str(more) if more else None

        objects = await store.list_pages(what, page)
        store.check_names(what, ref.key, [o.key for o in objects])
        return sorted(objects, key=lambda o: o.key)

    def _retrying(self, s3: Any, operation: str, params: dict[str, Any], job: Job) -> Any:
        return signed_request(self.client, self.signer, s3, operation, params, job)

    # -- objects -----------------------------------------------------------------

    async def _head(self, s3: Any, ref: S3Url, key: str, job: Job) -> S3Object:
        what = f"s3://{ref.bucket}/{key}"
        params = {"Bucket": ref.bucket, "Key": key, "ChecksumMode": "ENABLED"}
        response = await self._retrying(s3, "head_object", params, job)
        self.client.discard(response)
        if response.code != 200:
            # A HEAD answer has no error document: ask GET for the Code.
            get = {"Bucket": ref.bucket, "Key": key}
            answer = await self._retrying(s3, "get_object", get, job)
            body = await self.client.read_small(answer, 64 * 1024)
            if answer.code in (200, 206):
                raise UpstreamError(f"{what}: HEAD answered {response.code}", response.code)
            raise self._error(s3, what, "GetObject")(answer, body)
        length = header(response, b"Content-Length")
        sha = header(response, b"x-amz-checksum-sha256")
        kind = header(response, b"x-amz-checksum-type")
        digest = None
        if sha and "-" not in sha and kind in (None, "FULL_OBJECT"):
            try:
                raw = base64.b64decode(sha, validate=True)
                digest = Digest(raw.hex()) if len(raw) == 32 else None
            except (binascii.Error, ValueError):
                digest = None
        return S3Object(
            key,
            int(length) if length and length.isdigit() else None,
            header(response, b"ETag"),
            header(response, b"x-amz-version-id"),
            digest,
        )

    def _signer_for(
        self, s3: Any, params: dict[str, Any]
    ) -> Callable[[dict[bytes, bytes]], Awaitable[tuple[str, dict[bytes, bytes]]]]:
        """Sign each GetObject attempt with the Range and If-Match it carries."""

        async def prepare(headers: dict[bytes, bytes]) -> tuple[str, dict[bytes, bytes]]:
            call = {**params, **_range_params(headers)}
            _, url, signed = await self.client.thread(self.signer.prepare, s3, "get_object", call)
            return url, signed

        return prepare

    async def _object(
        self, s3: Any, ref: S3Url, key: str, title: str, request: FetchRequest, job: Job
    ) -> Descriptor:
        what = f"s3://{ref.bucket}/{key}"
        blob = job.progress.add(title)

        async def attempt() -> tuple[S3Object, Digest, int]:
            head = await self._head(s3, ref, key, job)
            blob.total = head.size
            expected = request.expected if not ref.is_prefix else None
            if head.sha256 is not None:
                if expected is not None and expected != head.sha256:
                    raise UpstreamError(
                        f"{what}: the store says its sha256 is {head.sha256}, not {expected}"
                    )
                expected = head.sha256
            params: dict[str, Any] = {"Bucket": ref.bucket, "Key": key}
            if head.version:
                params["VersionId"] = head.version
            want = Wanted(
                url=object_url(ref.bucket, key),
                prepare=self._signer_for(s3, params),
                name=request.url if not ref.is_prefix else object_url(ref.bucket, key),
                expected=expected,
                size=head.size,
                if_match=head.etag,
                error=self._error(s3, what, "GetObject"),
            )
            ingest = IngestFile(self.layout, ingest_key(want.recorded))
            digest, size = await download(self.client, ingest, want, job, blob)
            return head, digest, size

        head, digest, size = await store.restarting(what, attempt)
        annotations = {ANNOTATION_TITLE: title, ANNOTATION_S3_KEY: key}
        if head.etag:
            annotations[ANNOTATION_S3_ETAG] = head.etag
        if head.version:
            annotations[ANNOTATION_S3_VERSION] = head.version
        return Descriptor(MEDIA_TYPE_OCTET, digest, size, annotations)


def _range_params(headers: dict[bytes, bytes]) -> dict[str, str]:
    """GetObject parameters for the conditional headers a transfer attempt wants."""
    params = {}
    if b"Range" in headers:
        params["Range"] = headers.pop(b"Range").decode("latin-1")
    if b"If-Match" in headers:
        params["IfMatch"] = headers.pop(b"If-Match").decode("latin-1")
    return params


def object_url(bucket: str, key: str) -> str:
    """The s3:// URL of one object (for messages and tests)."""
    return f"s3://{bucket}/{quote(key)}"
