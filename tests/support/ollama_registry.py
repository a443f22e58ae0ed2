"""A loopback fake of the Ollama model registry (``registry.ollama.ai``) and its blob CDN.

Two standard-library HTTP/1.1 servers (``ThreadingHTTPServer``, daemon threads):

* the **registry** on ``127.0.0.1:PORT`` (``reg.host`` / ``reg.url``): manifests, the blob
  redirector, a token realm and the chunksums endpoint;
* the **CDN** (``reg.cdn``) on ``127.0.0.2:PORT`` -- or on another port of 127.0.0.1 when
  127.0.0.2 cannot be bound -- standing in for the Cloudflare R2 bucket the real registry
  redirects every blob to.

Use it as a context manager::

    with OllamaRegistry() as reg:
        digest = reg.add_model(
            model="tinyllama",
            layers=[(MEDIA_TYPE_MODEL, gguf_bytes), (MEDIA_TYPE_TEMPLATE, b"{{ .Prompt }}")],
        )
        ...  # GET reg.url + "/v2/library/tinyllama/manifests/latest"
        assert reg.requests(server="cdn")[-1].headers["range"] == "bytes=0-99"

What is reproduced, and where it comes from (ollama sources read at commit ``fb30760``; the
removed "client2" at ``5208ae750^``; issue numbers are github.com/ollama/ollama unless noted):

Registry
    * ``GET /v2/`` answers ``404`` with Go's ``http.NotFound`` body ``404 page not found`` (no
      ping endpoint; ollama#6510, skopeo#2395). Any unknown route answers the same.
    * ``GET /v2/<ns>/<model>/manifests/<tag>`` answers the manifest bytes exactly as ollama pushed
      them (``json.Marshal`` of ``manifest.Manifest``: compact, key order ``schemaVersion,
      mediaType, config, layers``, Docker schema 2 media type; ``PushModel`` in
      ``server/images.go``) with ``Content-Type: text/plain; charset=utf-8`` (ollama#6470;
      configurable), **no** ``Content-Length`` -- the body is sent with ``Transfer-Encoding:
      chunked`` (oras-go#882) -- and **no** ``Docker-Content-Digest``. The ``Accept`` header is
      ignored: the same bytes are returned whatever it says. ``HEAD`` answers the same headers
      without a body.
    * Manifests by digest (``.../manifests/sha256:...``) are **not** served: ``404``
      ``MANIFEST_UNKNOWN``. The removed client2 (``Registry.Resolve``) fetched ``name@digest``
      manifests from ``/v2/<ns>/<model>/blobs/<digest>`` instead, so manifests are also
      reachable as blobs (``serve_manifest_blobs``).
    * Errors use the registry's JSON envelope ``{"errors":[{"code":"...","message":"..."}]}``
      (``Error.UnmarshalJSON`` in client2, which maps ``MANIFEST_UNKNOWN`` to "model not
      found"): ``MANIFEST_UNKNOWN`` for an unknown model *or* tag, ``BLOB_UNKNOWN`` for a blob
      not in the repository, ``UNAUTHORIZED`` (with a challenge) for a private model.
    * ``GET|HEAD /v2/<ns>/<model>/blobs/<digest>`` answers ``307 Temporary Redirect`` with an
      absolute ``Location`` on the CDN, shaped like the real R2 presigned URLs
      (``https://<account>.r2.cloudflarestorage.com/ollama/docker/registry/v2/blobs/sha256/<2
      hex>/<hex>/data?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Date=...
      &X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=...``; ollama#8231,
      #4992). Exactly 307: ``blobDownload.run`` (``server/download.go``) rejects anything but
      307 or 200, and a 200 without ``Location`` fails with "http: no Location header in
      response" (ollama#9737, #15512). A GET redirect carries Go's ``http.Redirect`` HTML body
      (``Content-Length`` of that body); a HEAD redirect carries no ``Content-Length`` -- so a
      client that does not follow the redirect learns nothing about the blob's size.
    * ``GET /v2/<ns>/<model>/chunksums/<digest>`` answers ``Content-Location: <CDN URL>`` and
      lines ``<sha256:chunk digest> <start>-<end>`` (inclusive), the protocol of client2's
      ``Registry.chunksums``; chunk size is ``chunksum_size``.
    * Private models (``add_model(private=True)``) answer ``401`` with ``WWW-Authenticate: Bearer
      realm="http://<registry host>/v2/token",service="ollama.com",scope="repository:<ns>/
      <model>:pull"``. The realm must be on the registry's own host and port:
      ``getAuthorizationToken`` (``server/auth.go``) refuses a realm whose host differs from
      the request's (ollama#13738). ``makeRequestWithRetry`` retries once with the token.
      Public models need no auth and ignore any ``Authorization`` header.
    * Token realm ``GET /v2/token?service=..&scope=..&ts=..&nonce=..`` answers
      ``{"token": "..."}`` (``api.TokenResponse``). It accepts anonymous requests (the token
      grants public repositories only), ``Authorization: Bearer <secret>`` or ``Basic
      <any user>:<secret>`` for a configured secret, and ollama's own signature
      ``Authorization: <ssh pubkey base64>:<ed25519 signature base64>`` over ``GET,<full token
      URL>,<base64(hex(sha256("")))>`` (``auth.Sign`` + ``getAuthorizationToken``), verified
      against keys registered with ``add_ollama_key``; an unknown but validly signed key is
      treated as anonymous. A bad secret or a bad signature answers ``401 UNAUTHORIZED``.
      Tokens are scoped: a token only opens the repositories named in its ``scope``.

CDN
    * Serves ``GET`` and ``HEAD`` of presigned URLs: ``Content-Length``, ``Accept-Ranges:
      bytes``, ``ETag`` (quoted md5), ``Last-Modified``, ``application/octet-stream``.
      ``blobDownload.Prepare`` HEADs the registry URL with Go's default redirect policy, so the
      HEAD lands here and ``Content-Length`` becomes the download's total; a HEAD without it
      would make ollama download zero bytes.
    * Single byte ranges ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` answer ``206`` with
      ``Content-Range`` (``downloadChunk`` sends ``bytes=<start>-<end>`` per part, up to 16
      parts of 100 MB..1 GB in parallel, and does **not** check the status: a ``200`` would be
      written at the part offset and corrupt the file; x/transfer resumes with ``bytes=N-``). A
      start past the end answers ``416`` with ``Content-Range: bytes */<size>``; multi-range or
      malformed ``Range`` headers are ignored (``200``, whole object), as S3 does. ``If-Range``
      is not implemented (ignored).
    * Presigned URLs are checked like SigV4 presigned URLs: the signature covers the method,
      the path, the query and the ``Host`` header (``X-Amz-SignedHeaders=host``). A wrong or
      missing signature answers ``403 SignatureDoesNotMatch`` / ``AccessDenied`` (S3-style XML
      body); an expired URL (``X-Amz-Expires`` elapsed, or signed before ``expire_urls()``)
      answers ``403 AccessDenied`` "Request has expired". With ``method_bound_urls`` (default)
      a URL handed out for a HEAD is not valid for a GET and vice versa: ollama never reuses
      the HEAD's URL, it GETs the registry again (with a ``CheckRedirect`` that stops at the
      first foreign *hostname*) to obtain the URL its ranged GETs use.
    * Faults, one response each: ``corrupt_once(digest)`` serves wrong bytes (same length),
      ``cut_once(digest, after=n)`` promises the full length then closes after ``n`` bytes.

Everything both servers receive is recorded (``reg.requests()``): method, target (path and
query), lower-cased headers and the ``Host`` header, in arrival order.

Differences from the real service worth knowing: plain HTTP, not HTTPS (ollama needs
``--insecure`` and the name ``127.0.0.1:PORT/<ns>/<model>:<tag>``); no push endpoints (PUT,
POST, PATCH and DELETE answer ``405 UNSUPPORTED``); names are matched case-sensitively.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qs, quote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.support.loopback_http import LoopbackHTTPServer, TrackedHandler

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "DEFAULT_MANIFEST_CONTENT_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MEDIA_TYPE_ADAPTER",
    "MEDIA_TYPE_LICENSE",
    "MEDIA_TYPE_MESSAGES",
    "MEDIA_TYPE_MODEL",
    "MEDIA_TYPE_PARAMS",
    "MEDIA_TYPE_PROJECTOR",
    "MEDIA_TYPE_SYSTEM",
    "MEDIA_TYPE_TEMPLATE",
    "MEDIA_TYPE_TENSOR",
    "OLLAMA_LAYER_MEDIA_TYPES",
    "OLLAMA_ZERO_SUM",
    "Layer",
    "OllamaCDN",
    "OllamaRegistry",
    "PublishedModel",
    "RecordedRequest",
    "ollama_signature_payload",
    "sha256_digest",
]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
"""The manifest ``mediaType`` ollama writes and the ``Accept`` header it pulls with."""

CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
"""The config blob's media type in ollama manifests."""

MEDIA_TYPE_MODEL = "application/vnd.ollama.image.model"
MEDIA_TYPE_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_TYPE_PARAMS = "application/vnd.ollama.image.params"
MEDIA_TYPE_LICENSE = "application/vnd.ollama.image.license"
MEDIA_TYPE_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_TYPE_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_TYPE_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TYPE_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_TYPE_TENSOR = "application/vnd.ollama.image.tensor"
"""Safetensors models: one layer per tensor, pulled by ``x/transfer`` instead of download.go."""

OLLAMA_LAYER_MEDIA_TYPES = frozenset(
    {
        MEDIA_TYPE_MODEL,
        MEDIA_TYPE_TEMPLATE,
        MEDIA_TYPE_PARAMS,
        MEDIA_TYPE_LICENSE,
        MEDIA_TYPE_SYSTEM,
        MEDIA_TYPE_PROJECTOR,
        MEDIA_TYPE_ADAPTER,
        MEDIA_TYPE_MESSAGES,
        MEDIA_TYPE_TENSOR,
        "application/vnd.ollama.image.json",
        "application/vnd.ollama.image.prompt",
        "application/vnd.ollama.image.embed",
        "application/vnd.ollama.image.draft",
    }
)

DEFAULT_MANIFEST_CONTENT_TYPE = "text/plain; charset=utf-8"
"""What registry.ollama.ai labels manifests with (ollama#6470)."""

OLLAMA_ZERO_SUM = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
"""Third field of the string ollama signs for the token realm (``server/auth.go``)."""

R2_ACCOUNT = "dd20bb891979d25aebc8bec07b2b3bbc"
"""The R2 account of the real CDN host, kept in the fake's URLs for recognisability."""

IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection is kept open."""

TOKEN_CLOCK_SKEW = 300
"""Seconds a signed token request's ``ts`` may differ from now."""

_WRITE_CHUNK = 64 * 1024
_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_ACCESS_KEY_ID = "66040c77ac1b787c3af820529859349a"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = r"(?P<name>[^/]+/[^/]+)"
_MANIFEST_RE = re.compile(rf"^/v2/{_NAME}/manifests/(?P<ref>[^/]+)$")
_BLOB_RE = re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>[^/]+)$")
_CHUNKSUMS_RE = re.compile(rf"^/v2/{_NAME}/chunksums/(?P<digest>[^/]+)$")
_CDN_PATH_RE = re.compile(
    r"^/ollama/docker/registry/v2/blobs/sha256/(?P<pre>[0-9a-f]{2})/(?P<hex>[0-9a-f]{64})/data$"
)
_SIGNED_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
)


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ollama_signature_payload(url: str) -> bytes:
    """The bytes ollama's ``auth.Sign`` signs for a token request to ``url`` (realm + query)."""
    return f"GET,{url},{OLLAMA_ZERO_SUM}".encode()


def _valid_part(kind: Literal["namespace", "model", "tag"], s: str) -> bool:
    # types/model/name.go isValidPart: 1..80 chars, first alnum or "_", then alnum "_" "-" ".",
    # no "." in a namespace, no ":" outside host and digest.
    if not 1 <= len(s) <= 80:
        return False
    for i, c in enumerate(s):
        alnum = c.isascii() and (c.isalnum() or c == "_")
        if i == 0:
            if not alnum:
                return False
        elif not (alnum or c == "-" or (c == "." and kind != "namespace")):
            return False
    return True


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the registry or the CDN received it."""

    seq: int
    """Arrival order across both servers."""
    server: Literal["registry", "cdn"]
    method: str
    target: str
    """The request target: path and query string."""
    headers: dict[str, str]
    """Header names in lower case; repeated headers joined with ``", "``."""
    host: str
    """The ``Host`` header ("" if none was sent)."""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclasses.dataclass(frozen=True)
class Layer:
    """A manifest descriptor as ollama writes it (``manifest.Layer``)."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    """A tag as published with ``add_model``."""

    namespace: str
    model: str
    tag: str
    manifest: bytes
    digest: str
    config: Layer
    layers: tuple[Layer, ...]
    private: bool

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"


@dataclasses.dataclass
class _Token:
    subject: str
    repositories: frozenset[str]


class _Server(LoopbackHTTPServer):
    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: object
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)


class _BaseHandler(TrackedHandler):
    server_version = "cloudflare"
    timeout = IDLE_TIMEOUT
    role: Literal["registry", "cdn"] = "registry"

    @property
    def _srv(self) -> _Server:
        return cast(_Server, self.server)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _log(self) -> _RequestLog:
        raise NotImplementedError

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            headers: dict[str, str] = {}
            for key, value in self.headers.items():
                k = key.lower()
                headers[k] = f"{headers[k]}, {value}" if k in headers else value
            self._log().add(self.role, self.command, self.path, headers, headers.get("host", ""))
        return ok

    def _has_body(self) -> bool:
        return "content-length" in self.headers or "transfer-encoding" in self.headers

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        *,
        content_type: str | None = None,
        length: bool = True,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        if self._has_body():
            # No endpoint reads a request body: do not leave it in the connection.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _go_not_found(self) -> None:
        # net/http.NotFound
        self._reply(
            404,
            b"404 page not found\n",
            [("X-Content-Type-Options", "nosniff")],
            content_type="text/plain; charset=utf-8",
        )


class _RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []
        self._seq = 0

    def add(
        self,
        server: Literal["registry", "cdn"],
        method: str,
        target: str,
        headers: dict[str, str],
        host: str,
    ) -> None:
        with self._lock:
            self._seq += 1
            self._items.append(RecordedRequest(self._seq, server, method, target, headers, host))

    def items(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode() + b"\n"


def _s3_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{html.escape(message)}</Message></Error>"
    ).encode()


def _canonical_query(params: dict[str, str]) -> str:
    return "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )


def _parse_range(value: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """Inclusive (start, end) of a single ``bytes=`` range; None to ignore the header."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if first == "":
        if not last.isdigit():
            return None
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _CDNHandler(_BaseHandler):
    role = "cdn"

    @property
    def _cdn(self) -> OllamaCDN:
        return cast(OllamaCDN, self._srv.owner)

    def _log(self) -> _RequestLog:
        return self._cdn._registry._log

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _unsupported(self) -> None:
        self._reply(
            405,
            _s3_error("MethodNotAllowed", "The specified method is not allowed."),
            content_type="application/xml",
        )

    do_PUT = do_POST = do_DELETE = do_PATCH = _unsupported

    def _serve(self) -> None:
        cdn = self._cdn
        split = urlsplit(self.path)
        match = _CDN_PATH_RE.match(split.path)
        if match is None or match["pre"] != match["hex"][:2]:
            self._reply(
                400,
                _s3_error("InvalidRequest", "Invalid object key."),
                content_type="application/xml",
            )
            return
        problem = cdn._check_signature(self.command, split.path, split.query, self.headers)
        if problem is not None:
            code, message = problem
            self._reply(403, _s3_error(code, message), content_type="application/xml")
            return
        digest = "sha256:" + match["hex"]
        data = cdn._registry._blob(digest)
        if data is None:
            self._reply(
                404,
                _s3_error("NoSuchKey", "The specified key does not exist."),
                content_type="application/xml",
            )
            return
        size = len(data)
        common = [
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'),
            ("Last-Modified", _LAST_MODIFIED),
        ]
        status, start, end = 200, 0, size - 1
        value = self.headers.get("Range")
        if value is not None:
            parsed = _parse_range(value, size)
            if parsed == "unsatisfiable":
                self._reply(
                    416,
                    _s3_error("InvalidRange", "The requested range is not satisfiable"),
                    [("Content-Range", f"bytes */{size}")],
                    content_type="application/xml",
                )
                return
            if parsed is not None:
                status, (start, end) = 206, parsed
                common.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for name, val in common:
            self.send_header(name, val)
        if self._has_body():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        fault = cdn._take_fault(digest)
        if fault is not None and fault[0] == "corrupt" and body:
            body = bytes(b ^ 0x5A for b in body[:16]) + body[16:]
        elif fault is not None and fault[0] == "cut":
            after = fault[1] if fault[1] is not None else len(body) // 2
            body = body[: max(0, min(after, len(body) - 1))]
            self.close_connection = True
        for offset in range(0, len(body), _WRITE_CHUNK):
            self.wfile.write(body[offset : offset + _WRITE_CHUNK])
        self.wfile.flush()
        if fault is not None and fault[0] == "cut":
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _RegistryHandler(_BaseHandler):
    role = "registry"

    @property
    def _reg(self) -> OllamaRegistry:
        return cast(OllamaRegistry, self._srv.owner)

    def _log(self) -> _RequestLog:
        return self._reg._log

    def _error(self, status: int, code: str, message: str, *, challenge: str = "") -> None:
        headers = [("WWW-Authenticate", challenge)] if challenge else []
        self._reply(
            status,
            _error_body(code, message),
            headers,
            content_type="application/json; charset=utf-8",
        )

    def _unsupported(self) -> None:
        self._error(405, "UNSUPPORTED", "the operation is unsupported")

    do_PUT = do_POST = do_DELETE = do_PATCH = _unsupported

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        reg = self._reg
        path = urlsplit(self.path).path
        if path == reg.realm_path:
            if self.command == "GET":
                self._token()
            else:
                self._unsupported()
            return
        for pattern, handler in (
            (_MANIFEST_RE, self._manifest),
            (_BLOB_RE, self._blob),
            (_CHUNKSUMS_RE, self._chunksums),
        ):
            match = pattern.match(path)
            if match is not None:
                handler(match["name"], match.group(2))
                return
        self._go_not_found()

    def _authorized(self, repository: str) -> bool:
        """True if ``repository`` is public or the request carries a token that opens it."""
        reg = self._reg
        if not reg._is_private(repository):
            return True
        scheme, _, credential = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        token = reg._token(credential.strip())
        return token is not None and repository in token.repositories

    def _challenge(self, repository: str) -> None:
        reg = self._reg
        host = self.headers.get("Host") or reg.host
        challenge = (
            f'Bearer realm="http://{host}{reg.realm_path}",service="{reg.service}",'
            f'scope="repository:{repository}:pull"'
        )
        self._error(401, "UNAUTHORIZED", "authentication required", challenge=challenge)

    def _manifest(self, repository: str, ref: str) -> None:
        reg = self._reg
        if not reg._repository_exists(repository):
            self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: model {repository!r}")
            return
        if not self._authorized(repository):
            self._challenge(repository)
            return
        published = reg._tag(repository, ref)
        if published is None:
            self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repository}:{ref}")
            return
        self.send_response(200)
        self.send_header("Content-Type", reg.manifest_content_type)
        chunked = self.request_version == "HTTP/1.1"
        if self.command != "HEAD":
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True  # HTTP/1.0: the end of the body is the close
        if self._has_body():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        body = published.manifest
        if not chunked:
            self.wfile.write(body)
            return
        for offset in range(0, len(body), reg.manifest_chunk):
            piece = body[offset : offset + reg.manifest_chunk]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _blob_lookup(self, repository: str, digest: str) -> bool:
        """Answer the error response and return False unless the blob may be served."""
        reg = self._reg
        if not reg._repository_exists(repository):
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return False
        if not self._authorized(repository):
            self._challenge(repository)
            return False
        if not _DIGEST_RE.match(digest) or not reg._repository_has_blob(repository, digest):
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return False
        return True

    def _blob(self, repository: str, digest: str) -> None:
        if not self._blob_lookup(repository, digest):
            return
        location = self._reg.cdn.sign_url(digest, method=self.command)
        if self.command == "HEAD":
            # Go's server sets no Content-Length on a HEAD whose handler wrote nothing.
            self._reply(
                307,
                headers=[("Location", location)],
                content_type="text/html; charset=utf-8",
                length=False,
            )
            return
        body = f'<a href="{html.escape(location)}">Temporary Redirect</a>.\n\n'.encode()
        self._reply(307, body, [("Location", location)], content_type="text/html; charset=utf-8")

    def _chunksums(self, repository: str, digest: str) -> None:
        if not self._blob_lookup(repository, digest):
            return
        reg = self._reg
        data = reg._blob(digest) or b""
        lines = []
        for start in range(0, len(data), reg.chunksum_size):
            piece = data[start : start + reg.chunksum_size]
            lines.append(f"{sha256_digest(piece)} {start}-{start + len(piece) - 1}\n")
        self._reply(
            200,
            "".join(lines).encode(),
            [("Content-Location", reg.cdn.sign_url(digest, method="GET"))],
            content_type="text/plain; charset=utf-8",
        )

    def _token(self) -> None:
        reg = self._reg
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        authorization = self.headers.get("Authorization", "").strip()
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        subject: str | None
        if not authorization:
            subject = "anonymous"
        elif scheme.lower() == "bearer":
            subject = "secret" if reg._has_secret(credential) else None
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            subject = "secret" if reg._has_secret(decoded.partition(":")[2]) else None
        elif not credential and authorization.count(":") == 1:
            # ollama's auth.Sign: "<ssh pubkey base64>:<signature base64>", no scheme.
            host = self.headers.get("Host") or reg.host
            subject = reg._check_ollama_signature(
                authorization, f"http://{host}{self.path}", query.get("ts", [""])[0]
            )
        else:
            subject = None
        if subject is None:
            self._error(401, "UNAUTHORIZED", "invalid credentials")
            return
        authorized = subject != "anonymous"
        granted = set()
        for scope in query.get("scope", []):
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or "pull" not in actions.split(","):
                    continue
                if reg._repository_exists(name) and (authorized or not reg._is_private(name)):
                    granted.add(name)
        token = reg._issue_token(subject, frozenset(granted))
        self._reply(
            200,
            json.dumps({"token": token}).encode(),
            content_type="application/json; charset=utf-8",
        )


class _ServerThread:
    """One listening server in a daemon thread."""

    def __init__(self, address: str, handler: type[BaseHTTPRequestHandler], owner: object):
        self.server = _Server((address, 0), handler, owner)
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ollama-fake:{address}:{self.server.server_port}",
            daemon=True,
        )
        self.thread.start()

    @property
    def host(self) -> str:
        return f"{self.server.server_name}:{self.server.server_port}"

    def stop(self) -> None:
        self.server.close(self.thread)


class OllamaCDN:
    """The fake R2 bucket: serves presigned blob URLs the registry redirects to."""

    def __init__(
        self,
        registry: OllamaRegistry,
        address: str = "127.0.0.2",
        url_ttl: int = 86400,
        method_bound_urls: bool = True,
    ) -> None:
        self._registry = registry
        self._address = address
        self.url_ttl = url_ttl
        """``X-Amz-Expires`` of new URLs, in seconds (the real registry used 1200, now 86400)."""
        self.method_bound_urls = method_bound_urls
        """Whether a URL signed for HEAD is refused for GET and vice versa (SigV4 semantics)."""
        self._lock = threading.Lock()
        self._keys = [secrets.token_bytes(32)]
        self._faults: dict[str, list[tuple[Literal["corrupt", "cut"], int | None]]] = {}
        self._server: _ServerThread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> OllamaCDN:
        if self._server is not None:
            raise RuntimeError("CDN already started")
        try:
            self._server = _ServerThread(self._address, _CDNHandler, self)
        except OSError:
            if self._address == "127.0.0.1":
                raise
            self._server = _ServerThread("127.0.0.1", _CDNHandler, self)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _running(self) -> _ServerThread:
        if self._server is None:
            raise RuntimeError("CDN not started")
        return self._server

    @property
    def host(self) -> str:
        """``ADDRESS:PORT`` of the CDN (the ``Host`` its presigned URLs are signed for)."""
        return self._running().host

    @property
    def hostname(self) -> str:
        return self._running().server.server_name

    @property
    def port(self) -> int:
        return self._running().server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def distinct_hostname(self) -> bool:
        """True when the CDN's hostname differs from the registry's (127.0.0.2).

        ollama's ``blobDownload.run`` follows redirects while the *hostname* (port ignored)
        stays the same, so with a CDN on 127.0.0.1 it would GET the whole blob while looking
        for the direct URL and then fail with "no Location header".
        """
        return self.hostname != self._registry._running().server.server_name

    # -- presigned URLs ---------------------------------------------------------------------

    @staticmethod
    def object_path(digest: str) -> str:
        hex_ = digest.removeprefix("sha256:")
        return f"/ollama/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"

    def sign_url(self, digest: str, method: str = "GET", now: float | None = None) -> str:
        """A fresh presigned URL for ``digest``, valid for ``method`` during ``url_ttl``."""
        stamp = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{_ACCESS_KEY_ID}/{stamp:%Y%m%d}/auto/s3/aws4_request",
            "X-Amz-Date": f"{stamp:%Y%m%dT%H%M%SZ}",
            "X-Amz-Expires": str(self.url_ttl),
            "X-Amz-SignedHeaders": "host",
        }
        path = self.object_path(digest)
        query = _canonical_query(params)
        with self._lock:
            key = self._keys[-1]
        signature = self._signature(key, method, path, query, self.host)
        return f"{self.url}{path}?{query}&X-Amz-Signature={signature}"

    def _signature(self, key: bytes, method: str, path: str, query: str, host: str) -> str:
        verb = method.upper() if self.method_bound_urls else "*"
        message = "\n".join([verb, path, query, f"host:{host}"]).encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def expire_urls(self) -> None:
        """Make every URL handed out so far answer 403 "Request has expired"."""
        with self._lock:
            self._keys.append(secrets.token_bytes(32))

    def _check_signature(
        self, method: str, path: str, query: str, headers: Any
    ) -> tuple[str, str] | None:
        """None if the presigned URL is valid now, else an S3 (code, message)."""
        params = parse_qs(query, keep_blank_values=True)
        if "X-Amz-Signature" not in params or any(p not in params for p in _SIGNED_PARAMS):
            return "AccessDenied", "Access Denied"
        if any(len(v) != 1 for v in params.values()):
            return "AuthorizationQueryParametersError", "Duplicate query parameters."
        # SigV4 signs the sorted query: parameter order does not matter, extra ones do.
        unsigned = _canonical_query({k: v[0] for k, v in params.items() if k != "X-Amz-Signature"})
        given = params["X-Amz-Signature"][0]
        host = headers.get("Host", "")
        with self._lock:
            keys = list(self._keys)
        matching = [
            i
            for i, key in enumerate(keys)
            if hmac.compare_digest(self._signature(key, method, path, unsigned, host), given)
        ]
        if not matching:
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if matching[-1] != len(keys) - 1:
            return "AccessDenied", "Request has expired"
        try:
            issued = datetime.datetime.strptime(params["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.UTC
            )
            ttl = int(params["X-Amz-Expires"][0])
        except ValueError:
            return "AuthorizationQueryParametersError", "Invalid X-Amz-Date or X-Amz-Expires."
        if time.time() > issued.timestamp() + ttl:
            return "AccessDenied", "Request has expired"
        return None

    # -- faults -----------------------------------------------------------------------------

    def corrupt_once(self, digest: str) -> None:
        """The next GET body of ``digest`` (whatever range) has wrong bytes, same length."""
        with self._lock:
            self._faults.setdefault(digest, []).append(("corrupt", None))

    def cut_once(self, digest: str, after: int | None = None) -> None:
        """The next GET of ``digest`` sends ``after`` bytes (default: half) then closes.

        The response headers still promise the full length, so the client sees a short read.
        """
        with self._lock:
            self._faults.setdefault(digest, []).append(("cut", after))

    def _take_fault(self, digest: str) -> tuple[Literal["corrupt", "cut"], int | None] | None:
        with self._lock:
            pending = self._faults.get(digest)
            if not pending:
                return None
            fault = pending.pop(0)
            if not pending:
                del self._faults[digest]
            return fault

    # -- recording --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests the CDN received, in arrival order."""
        return self._registry.requests(server="cdn")


class OllamaRegistry:
    """The fake ``registry.ollama.ai`` (see the module docstring for the behaviours)."""

    def __init__(
        self,
        *,
        manifest_content_type: str = DEFAULT_MANIFEST_CONTENT_TYPE,
        cdn_address: str = "127.0.0.2",
        url_ttl: int = 86400,
        method_bound_urls: bool = True,
        service: str = "ollama.com",
        realm_path: str = "/v2/token",
        secrets: Iterable[str] = (),
        chunksum_size: int = 64 << 20,
        manifest_chunk: int = 4096,
        serve_manifest_blobs: bool = True,
    ) -> None:
        if chunksum_size <= 0 or manifest_chunk <= 0:
            raise ValueError("chunk sizes must be positive")
        self.manifest_content_type = manifest_content_type
        self.service = service
        self.realm_path = realm_path
        self.chunksum_size = chunksum_size
        self.manifest_chunk = manifest_chunk
        """Bytes per chunk of the chunked manifest body."""
        self.serve_manifest_blobs = serve_manifest_blobs
        self._lock = threading.Lock()
        self._log = _RequestLog()
        self._blobs: dict[str, bytes] = {}
        self._repo_blobs: dict[str, set[str]] = {}
        self._tags: dict[tuple[str, str], PublishedModel] = {}
        self._private: set[str] = set()
        self._secrets: set[str] = set(secrets)
        self._keys: dict[bytes, str] = {}
        self._tokens: dict[str, _Token] = {}
        self._server: _ServerThread | None = None
        self.cdn = OllamaCDN(self, cdn_address, url_ttl, method_bound_urls)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> OllamaRegistry:
        """Start the registry on 127.0.0.1 and the CDN, each on an ephemeral port."""
        if self._server is not None:
            raise RuntimeError("registry already started")
        self._server = _ServerThread("127.0.0.1", _RegistryHandler, self)
        try:
            self.cdn.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers and close their connections. Idempotent."""
        self.cdn.stop()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> OllamaRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _running(self) -> _ServerThread:
        if self._server is None:
            raise RuntimeError("registry not started")
        return self._server

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the host part of model names (``<host>/<ns>/<model>:<tag>``)."""
        return self._running().host

    @property
    def port(self) -> int:
        return self._running().server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reference(
        self, namespace: str = "library", model: str = "tinyllama", tag: str = "latest"
    ) -> str:
        """The name to give ``ollama pull --insecure`` for this model."""
        return f"{self.host}/{namespace}/{model}:{tag}"

    # -- publishing -------------------------------------------------------------------------

    def add_model(
        self,
        namespace: str = "library",
        model: str = "tinyllama",
        tag: str = "latest",
        layers: Sequence[tuple[str, bytes]] = (),
        config: bytes | None = None,
        *,
        private: bool = False,
    ) -> str:
        """Publish ``<namespace>/<model>:<tag>`` and return its manifest digest.

        ``layers`` are ``(media type, bytes)`` in manifest order; media types must be ollama's
        (``application/vnd.ollama.image.*``). ``config`` defaults to what ``ollama create``
        wrote before August 2026 (``model.ConfigV2`` through ``json.Encoder``: trailing newline,
        ``rootfs.diff_ids`` listing the layer digests). Publishing a tag again moves it.
        ``private`` makes the whole repository require a token.
        """
        for kind, part in (("namespace", namespace), ("model", model), ("tag", tag)):
            if not _valid_part(cast(Literal["namespace", "model", "tag"], kind), part):
                raise ValueError(f"invalid {kind} {part!r} (types/model/name.go rules)")
        if not layers:
            raise ValueError("an ollama manifest needs at least one layer")
        descriptors = []
        for media_type, data in layers:
            if not media_type.startswith("application/vnd.ollama.image."):
                raise ValueError(f"not an ollama layer media type: {media_type!r}")
            descriptors.append(Layer(media_type, sha256_digest(data), len(data)))
        if config is None:
            config = _default_config([d.digest for d in descriptors])
        config_layer = Layer(CONFIG_MEDIA_TYPE, sha256_digest(config), len(config))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": config_layer.to_json(),
                "layers": [d.to_json() for d in descriptors],
            },
            separators=(",", ":"),
        ).encode()
        digest = sha256_digest(manifest)
        repository = f"{namespace}/{model}"
        published = PublishedModel(
            namespace, model, tag, manifest, digest, config_layer, tuple(descriptors), private
        )
        with self._lock:
            owned = self._repo_blobs.setdefault(repository, set())
            for (_, data), descriptor in zip(layers, descriptors, strict=True):
                self._blobs[descriptor.digest] = bytes(data)
                owned.add(descriptor.digest)
            self._blobs[config_layer.digest] = bytes(config)
            owned.add(config_layer.digest)
            self._blobs[digest] = manifest
            owned.add(digest)
            self._tags[(repository, tag)] = published
            if private:
                self._private.add(repository)
            else:
                self._private.discard(repository)
        return digest

    def remove_model(self, namespace: str, model: str, tag: str) -> None:
        """Untag ``<namespace>/<model>:<tag>`` (its blobs stay)."""
        with self._lock:
            del self._tags[(f"{namespace}/{model}", tag)]

    def model(
        self, namespace: str = "library", model: str = "tinyllama", tag: str = "latest"
    ) -> PublishedModel:
        with self._lock:
            return self._tags[(f"{namespace}/{model}", tag)]

    def blob(self, digest: str) -> bytes:
        """The stored bytes of a layer, config or manifest."""
        data = self._blob(digest)
        if data is None:
            raise KeyError(digest)
        return data

    def models_dir_layout(
        self,
        namespace: str = "library",
        model: str = "tinyllama",
        tag: str = "latest",
        host: str | None = None,
    ) -> dict[str, bytes]:
        """Files (POSIX paths relative to ``$OLLAMA_MODELS``) ``ollama pull`` would leave.

        ``manifests/<host>/<ns>/<model>/<tag>`` holds the manifest bytes as received
        (``PullModel``; ``model.Name.Filepath``), ``blobs/sha256-<hex>`` each layer and the
        config (``manifest.BlobsPath``). ``host`` defaults to this registry's ``host``.
        """
        published = self.model(namespace, model, tag)
        host = self.host if host is None else host
        files = {f"manifests/{host}/{namespace}/{model}/{tag}": published.manifest}
        for layer in (*published.layers, published.config):
            files["blobs/" + layer.digest.replace(":", "-")] = self.blob(layer.digest)
        return files

    # -- auth -------------------------------------------------------------------------------

    def add_secret(self, secret: str) -> None:
        """Accept ``Bearer <secret>`` / ``Basic <user>:<secret>`` at the token realm."""
        with self._lock:
            self._secrets.add(secret)

    def add_ollama_key(self, public_key: str) -> None:
        """Accept ollama signatures by this key (``ssh-ed25519 AAAA... [comment]`` or base64)."""
        blob = _ssh_key_blob(public_key)
        _ed25519_from_ssh_blob(blob)  # validates
        with self._lock:
            self._keys[blob] = public_key

    @property
    def issued_tokens(self) -> dict[str, frozenset[str]]:
        """Token -> repositories it opens."""
        with self._lock:
            return {t: v.repositories for t, v in self._tokens.items()}

    # -- faults (delegated to the CDN) ------------------------------------------------------

    def corrupt_blob_once(self, digest: str) -> None:
        self.cdn.corrupt_once(digest)

    def cut_blob_once(self, digest: str, after: int | None = None) -> None:
        self.cdn.cut_once(digest, after)

    # -- recording --------------------------------------------------------------------------

    def requests(self, server: Literal["registry", "cdn"] | None = None) -> list[RecordedRequest]:
        """Requests received by both servers (or one), in arrival order."""
        items = self._log.items()
        return items if server is None else [r for r in items if r.server == server]

    def clear_requests(self) -> None:
        self._log.clear()

    # -- internals used by the handlers -----------------------------------------------------

    def _blob(self, digest: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(digest)

    def _repository_exists(self, repository: str) -> bool:
        with self._lock:
            return any(repo == repository for repo, _ in self._tags)

    def _repository_has_blob(self, repository: str, digest: str) -> bool:
        with self._lock:
            if digest not in self._repo_blobs.get(repository, set()):
                return False
            if self.serve_manifest_blobs:
                return True
            return not any(p.digest == digest for p in self._tags.values())

    def _is_private(self, repository: str) -> bool:
        with self._lock:
            return repository in self._private

    def _tag(self, repository: str, ref: str) -> PublishedModel | None:
        with self._lock:
            return self._tags.get((repository, ref))

    def _has_secret(self, secret: str) -> bool:
        with self._lock:
            return bool(secret) and secret in self._secrets

    def _token(self, value: str) -> _Token | None:
        with self._lock:
            return self._tokens.get(value)

    def _issue_token(self, subject: str, repositories: frozenset[str]) -> str:
        value = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[value] = _Token(subject, repositories)
        return value

    def _check_ollama_signature(self, authorization: str, url: str, ts: str) -> str | None:
        """ "anonymous", "key:<pubkey>" or None (reject) for an ``<pubkey>:<sig>`` header."""
        pub_b64, _, sig_b64 = authorization.partition(":")
        try:
            blob = base64.b64decode(pub_b64, validate=True)
            signature = base64.b64decode(sig_b64, validate=True)
            key = _ed25519_from_ssh_blob(blob)
            key.verify(signature, ollama_signature_payload(url))
        except (binascii.Error, ValueError, InvalidSignature):
            return None
        if not ts.isdigit() or abs(time.time() - int(ts)) > TOKEN_CLOCK_SKEW:
            return None
        with self._lock:
            known = blob in self._keys
        return f"key:{pub_b64}" if known else "anonymous"


def _default_config(diff_ids: list[str]) -> bytes:
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "1.1B",
        "file_type": "Q4_0",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(config, separators=(",", ":")).encode() + b"\n"


def _ssh_key_blob(public_key: str) -> bytes:
    fields = public_key.split()
    if not fields:
        raise ValueError("empty public key")
    encoded = fields[1] if len(fields) >= 2 and fields[0].startswith("ssh-") else fields[0]
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not a base64 ssh public key: {public_key!r}") from exc


def _ed25519_from_ssh_blob(blob: bytes) -> Ed25519PublicKey:
    """Parse the SSH wire format ``string "ssh-ed25519" || string key``."""
    parts: list[bytes] = []
    offset = 0
    for _ in range(2):
        if offset + 4 > len(blob):
            raise ValueError("truncated ssh public key")
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        parts.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if parts[0] != b"ssh-ed25519" or len(parts[1]) != 32 or offset != len(blob):
        raise ValueError("not an ssh-ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(parts[1])
