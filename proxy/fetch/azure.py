"""The ``azure://`` downloader: blobs of Azure Blob Storage (and Azurite).

``azure://<account>/<container>/<blob>`` is one blob;
``azure://<account>/<container>/<prefix>/`` (a trailing slash, or just
``azure://<account>/<container>``) is every blob under the prefix, stored as
one artifact manifest with one layer per blob titled with its name relative
to the prefix (as ``s3://``). Percent-escapes in the URL are decoded.

Endpoint and credentials from the environment come from
``AZURE_STORAGE_CONNECTION_STRING`` (what modelkit and the Azure SDKs and CLI
read) when its ``AccountName`` is the URL's account, or when it names no
account but a ``BlobEndpoint``: the blob endpoint is its ``BlobEndpoint``
(Azurite: ``http://127.0.0.1:10000/devstoreaccount1``), else
``<DefaultEndpointsProtocol>://<account>.blob.<EndpointSuffix>``;
``UseDevelopmentStorage=true`` is Azurite's well-known account on
127.0.0.1:10000. ``AccountKey`` means SharedKey signing,
``SharedAccessSignature`` a SAS token, neither anonymous access (public
containers). Any other account is ``https://<account>.blob.core.windows.net``,
anonymous. There is no other endpoint variable: a connection string of just
``BlobEndpoint=...`` is the explicit endpoint.

A POST's ``credentials`` (``credentialsType`` Bearer, the default) replace
those for that download: a SAS token (a query string with ``sig=``, a leading
``?`` allowed), appended to the URLs of the account's endpoint only, or the
account key (base64), used to sign each request with SharedKey. Neither is
stored or logged, nor sent to another origin.

SharedKey is a small HMAC-SHA256 over the documented string-to-sign (verb,
standard headers, canonicalized ``x-ms-`` headers and resource), computed on
the reactor without I/O; the Azure SDK's signer is a private pipeline policy
of ``azure-storage-blob`` and is not used. Each attempt is signed anew, with
the ``Range`` and ``If-Match`` it carries.

A blob is fetched after a ``HEAD`` (its ETag and size), then with
``If-Match`` on that ETag on every request, so a resumed download (``Range``)
continues the same blob and a blob changed meanwhile (412) starts over.
Azure has no sha256 of a blob: the sha256 is computed while streaming
(``digest`` in the POST is enforced). ETag and size are kept in the layer
annotations; errors are mapped by the ``x-ms-error-code`` the store sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

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
    ANNOTATION_AZURE_ACCOUNT,
    ANNOTATION_AZURE_BLOB,
    ANNOTATION_AZURE_CONTAINER,
    ANNOTATION_AZURE_ENDPOINT,
    ANNOTATION_AZURE_ETAG,
    ANNOTATION_AZURE_SIZE,
    ANNOTATION_TITLE,
    MEDIA_TYPE_OCTET,
    Descriptor,
)

ARTIFACT_TYPE = "application/vnd.nekko.storage-manager.azure.v1"
API_VERSION = "2021-12-02"
DEV_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret).
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
_ACCOUNT_RE = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER_RE = re.compile(r"\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")

# x-ms-error-code -> the status our client gets (the rest: the store's own status).
CODE_STATUS = {
    "BlobNotFound": 404,
    "ContainerNotFound": 404,
    "ResourceNotFound": 404,
    "AuthenticationFailed": 401,
    "NoAuthenticationInformation": 401,
    "InvalidAuthenticationInfo": 401,
    "AuthorizationFailure": 403,
    "AuthorizationPermissionMismatch": 403,
    "AuthorizationResourceTypeMismatch": 403,
    "AuthorizationSourceIPMismatch": 403,
    "AuthorizationProtocolMismatch": 403,
    "InsufficientAccountPermissions": 403,
    "PublicAccessNotPermitted": 403,
    "AccountIsDisabled": 403,
}
# Headers of the string-to-sign, in order, after the verb.
_SIGNED = (
    b"Content-Encoding",
    b"Content-Language",
    b"Content-Length",
    b"Content-MD5",
    b"Content-Type",
    b"Date",
    b"If-Modified-Since",
    b"If-Match",
    b"If-None-Match",
    b"If-Unmodified-Since",
    b"Range",
)


@attrs.frozen
class AzureUrl:
    account: str
    container: str
    name: str  # the blob, or the prefix ending in "/" ("" = the whole container)

    @property
    def is_prefix(self) -> bool:
        return store.is_prefix(self.name)


def parse_azure_url(url: str) -> AzureUrl:
    account, path = store.split_url(url, "azure", _ACCOUNT_RE, "Azure storage account name")
    container, _, name = path.partition("/")
    if not _CONTAINER_RE.fullmatch(container):
        raise BadRequest(f"invalid Azure container name {container[:80]!r}")
    return AzureUrl(account, container, name)


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` with case-insensitive keys (values may contain ``=``)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            out[key.strip().lower()] = value.strip()
    return out


@attrs.frozen(repr=False)
class AzureAuth:
    """How requests are authorized; ``repr`` never shows the secret."""

    key: bytes | None = None  # the decoded account key: SharedKey
    sas: str | None = None  # a SAS query string (no leading "?")

    def __repr__(self) -> str:
        kind = "SharedKey" if self.key else "SAS" if self.sas else "anonymous"
        return f"AzureAuth({kind})"

    __str__ = __repr__


def _key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise BadRequest("an Azure account key is base64 (or give a SAS token with sig=)")
    return key


def auth_of(secret: str) -> AzureAuth:
    """A SAS token (has ``sig=``) or an account key (base64)."""
    secret = secret.strip()
    if "sig=" in secret:
        return AzureAuth(sas=secret.lstrip("?"))
    return AzureAuth(key=_key(secret))


@attrs.frozen
class AzureTarget:
    endpoint: str  # the account's blob endpoint, without a trailing "/"
    auth: AzureAuth


def azure_target(account: str, creds: Credentials | None) -> AzureTarget:
    """The endpoint and credentials for ``account`` (see the module docstring)."""
    conn = parse_connection_string(os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""))
    if conn.get("usedevelopmentstorage", "").lower() == "true":
        proxy = conn.get("developmentstorageproxyuri")
        conn = {
            "accountname": DEV_ACCOUNT,
            "accountkey": DEV_KEY,
            "blobendpoint": f"{proxy.rstrip('/')}/{DEV_ACCOUNT}" if proxy else DEV_ENDPOINT,
        }
    named = conn.get("accountname")
    applies = named == account or (not named and bool(conn.get("blobendpoint")))
    if not applies:
        conn = {}
    protocol = conn.get("defaultendpointsprotocol", "https")
    suffix = conn.get("endpointsuffix", "core.windows.net")
    endpoint = conn.get("blobendpoint") or f"{protocol}://{account}.blob.{suffix}"
    if creds is not None:
        if creds.kind != "Bearer":
            raise BadRequest("azure:// credentials are a SAS token or the account key (Bearer)")
        auth = auth_of(creds.secret)
    elif conn.get("accountkey"):
        auth = AzureAuth(key=_key(conn["accountkey"]))
    elif conn.get("sharedaccesssignature"):
        auth = AzureAuth(sas=conn["sharedaccesssignature"].lstrip("?"))
    else:
        auth = AzureAuth()
    return AzureTarget(endpoint.rstrip("/"), auth)


def shared_key(
    account: str, key: bytes, method: str, url: str, headers: dict[bytes, bytes]
) -> bytes:
    """The ``Authorization`` value of a SharedKey-signed request (``headers``
    holds every header sent that the signature covers)."""
    lower = {k.lower(): v.decode("latin-1") for k, v in headers.items()}
    lines = [method.upper()]
    for name in _SIGNED:
        value = lower.get(name.lower(), "")
        lines.append("" if name == b"Content-Length" and value == "0" else value)
    ms = sorted((k.decode("latin-1"), v) for k, v in lower.items() if k.startswith(b"x-ms-"))
    canonical_headers = "".join(f"{k}:{' '.join(v.split())}\n" for k, v in ms)
    parts = urlsplit(url)
    resource = f"/{account}{parts.path or '/'}"
    params: dict[str, list[str]] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        params.setdefault(k.lower(), []).append(v)
    for k in sorted(params):
        resource += f"\n{k}:{','.join(sorted(params[k]))}"
    to_sign = "\n".join(lines) + "\n" + canonical_headers + resource
    mac = hmac.new(key, to_sign.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(mac).decode()}".encode()


@attrs.frozen
class AzureBlob:
    name: str
    size: int | None
    etag: str | None


class BlobAccount:
    """Signed requests to one account's blob endpoint."""

    def __init__(self, ref: AzureUrl, target: AzureTarget) -> None:
        self.ref = ref
        self.endpoint = target.endpoint
        self._auth = target.auth

    def url(self, name: str | None = None, query: dict[str, str] | None = None) -> str:
        """A container URL (``name`` None) or a blob URL, without any SAS."""
        path = f"{self.endpoint}/{quote(self.ref.container, safe='$')}"
        if name is not None:
            path += "/" + quote(name, safe="/")
        return f"{path}?{urlencode(query)}" if query else path

    def sign(
        self, method: str, url: str, sent: dict[bytes, bytes]
    ) -> tuple[str, dict[bytes, bytes]]:
        """The URL to send (with the SAS) and the headers only this origin sees."""
        private = {b"x-ms-version": API_VERSION.encode()}
        if self._auth.key is not None:
            private[b"x-ms-date"] = formatdate(usegmt=True).encode()
            private[b"Authorization"] = shared_key(
                self.ref.account, self._auth.key, method, url, {**sent, **private}
            )
        elif self._auth.sas:
            url += ("&" if "?" in url else "?") + self._auth.sas
        return url, private


async def blob_request(
    client: HttpClient,
    api: BlobAccount,
    method: str,
    url: str,
    job: Job,
    sent: dict[bytes, bytes] | None = None,
) -> Any:
    """A request without a body, with the headers ``sent``, signed for each
    attempt and retried on 5xx and cuts."""
    headers = sent or {}

    async def prepare() -> tuple[str, str, dict[bytes, bytes]]:
        signed, private = api.sign(method, url, headers)
        return method, signed, {**headers, **private}

    return await store.small_request(client, job, prepare)


def azure_error(what: str) -> Any:
    """Builds the error of a non-success answer from x-ms-error-code or the XML document."""

    def build(response: Any, body: bytes) -> StorageError:
        code, message = header(response, b"x-ms-error-code") or "", ""
        if body:
            try:
                doc = ET.fromstring(body)  # noqa: S314 - expat expands no external entities
                code = code or (doc.findtext("Code") or "")
                message = (doc.findtext("Message") or "").split("\n", 1)[0].strip()
            except ET.ParseError:
                pass
        detail = store.error_detail(code, message, response.code)
        return UpstreamError(f"{what}: {detail}", CODE_STATUS.get(code, response.code))

    return build


class AzureFetcher:
    schemes: tuple[str, ...] = ("azure",)
    kind = "azure"

    def __init__(self, client: HttpClient, layout: Layout, parallel: int = 4) -> None:
        self.client = client
        self.layout = layout
        self.parallel = parallel

    def validate(self, request: FetchRequest) -> None:
        ref = parse_azure_url(request.url)
        azure_target(ref.account, request.credentials)

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        ref = parse_azure_url(request.url)
        api = BlobAccount(ref, azure_target(ref.account, request.credentials))
        common = {
            ANNOTATION_AZURE_ACCOUNT: ref.account,
            ANNOTATION_AZURE_CONTAINER: ref.container,
            ANNOTATION_AZURE_ENDPOINT: api.endpoint,
        }

        def fetch(name: str, title: str) -> Awaitable[Descriptor]:
            return self._blob(api, name, title, request, job)

        return await store.entry(
            *(self.client, self.layout, request, job, self.kind, ref.name),
            lambda: self._list(api, job),
            lambda b: b.name,
            fetch,
            self.parallel,
            common,
            {ANNOTATION_AZURE_BLOB: ref.name},
            ARTIFACT_TYPE,
        )

    def _request(self, api: BlobAccount, method: str, url: str, job: Job) -> Any:
        return blob_request(self.client, api, method, url, job)

    async def _list(self, api: BlobAccount, job: Job) -> list[AzureBlob]:
        ref = api.ref
        what = f"azure://{ref.account}/{ref.container}/{ref.name}"

        async def page(marker: str | None) -> tuple[list[AzureBlob], str | None]:
            query = {"restype": "container", "comp": "list", "maxresults": "5000"}
            if ref.name:
                query["prefix"] = ref.name
            if marker:
                query["marker"] = marker
            response = await self._request(api, "GET", api.url(None, query), job)
            body = await self.client.read_small(response, 64 * 1024 * 1024)
            if response.code != 200:
                raise azure_error(what)(response, body)
            try:
                found, more = await self.client.thread(parse_listing, body)
            except ET.ParseError:
                raise UpstreamError(f"{what}: the store sent an unreadable listing") from None
            return found, more

        blobs = await store.list_pages(what, page)
        store.check_names(what, ref.name, [b.name for b in blobs])
        return sorted(blobs, key=lambda b: b.name)

    async def _head(self, api: BlobAccount, name: str, what: str, job: Job) -> AzureBlob:
        response = await self._request(api, "HEAD", api.url(name), job)
        self.client.discard(response)
        if response.code != 200:
            raise azure_error(what)(response, b"")
        length = header(response, b"Content-Length")
        return AzureBlob(
            name,
            int(length) if length and length.isdigit() else None,
            header(response, b"ETag"),
        )

    async def _blob(
        self, api: BlobAccount, name: str, title: str, request: FetchRequest, job: Job
    ) -> Descriptor:
        ref = api.ref
        url = f"azure://{ref.account}/{ref.container}/{quote(name)}"
        what = f"azure://{ref.account}/{ref.container}/{name}"
        blob = job.progress.add(title)

        async def attempt() -> tuple[AzureBlob, Descriptor]:
            head = await self._head(api, name, what, job)
            if not head.etag:
                raise UpstreamError(f"{what}: the store gave no ETag")
            blob.total = head.size
            plain = api.url(name)

            async def prepare(headers: dict[bytes, bytes]) -> tuple[str, dict[bytes, bytes]]:
                return api.sign("GET", plain, headers)

            want = Wanted(
                url=plain,
                name=request.url if not ref.is_prefix else url,
                expected=request.expected if not ref.is_prefix else None,
                size=head.size,
                if_match=head.etag,
                prepare=prepare,
                error=azure_error(what),
            )
            ingest = IngestFile(self.layout, ingest_key(want.recorded))
            digest, size = await download(self.client, ingest, want, job, blob)
            return head, Descriptor(MEDIA_TYPE_OCTET, digest, size, {})

        head, desc = await store.restarting(what, attempt)
        annotations = {
            ANNOTATION_TITLE: title,
            ANNOTATION_AZURE_BLOB: name,
            ANNOTATION_AZURE_SIZE: str(desc.size),
        }
        if head.etag:
            annotations[ANNOTATION_AZURE_ETAG] = head.etag
        return Descriptor(MEDIA_TYPE_OCTET, desc.digest, desc.size, annotations)


def parse_listing(body: bytes) -> tuple[list[AzureBlob], str | None]:
    """The blobs of one List Blobs page, and its NextMarker."""
    doc = ET.fromstring(body)  # noqa: S314 - expat expands no external entities
    found = []
    for item in doc.iter("Blob"):
        name = item.findtext("Name") or ""
        props = item.find("Properties")
        length = props.findtext("Content-Length") if props is not None else None
        size = int(length) if length and length.isdigit() else None
        if name.endswith("/") and not size:
            continue  # a "folder" marker
        etag = props.findtext("Etag") if props is not None else None
        found.append(AzureBlob(name, size, etag))
    marker = doc.findtext("NextMarker")
    return found, marker or None
