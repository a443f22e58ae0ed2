"""The OCI distribution API over the cache (read-only): ``/v2/...``.

Routes (``GET`` and ``HEAD``)::

    /v2/                              200 {}
    /v2/_catalog?n=&last=             repository names, paginated
    /v2/<name>/tags/list?n=&last=     tags of a name, paginated
    /v2/<name>/manifests/<tag|digest> the stored manifest bytes
    /v2/<name>/blobs/<digest>         the blob, with single byte ranges

Names, tags and digests are checked against the distribution grammar before
anything touches the filesystem (a ``%`` anywhere in the path is refused, so
encoded slashes and dots never reach a path). Blobs are found by digest alone:
``<name>`` is not checked against them (nydusd's ``repo`` is arbitrary). Only
``blobs/`` is read, so nothing still in ``ingest/`` is ever served. Writes
answer 405 ``UNSUPPORTED``.

Requests with an absolute-form target (``GET http://<registry>/v2/...``, as
nydusd sends to its forward proxy) are served the same way from the cache,
with ``<registry>`` as the namespace; a miss answers 502 so nydusd, with
``fallback: true``, reads from the registry itself.

This path is kept lean on purpose (no Klein routing): per-request overhead is
what limits small range reads.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.http import datetimeToString
from twisted.web.server import NOT_DONE_YET, version

from proxy.api.answers import json_answer
from proxy.api.content import display_path
from proxy.api.errors import OciError, error_body, oci_error
from proxy.api.fill import FillReader
from proxy.cache import artifact
from proxy.cache.catalog import Catalog
from proxy.cache.layout import Layout, NotAManifest
from proxy.errors import StorageError
from proxy.logs import log_access
from proxy.naming import NAME_RE, TAG_RE
from proxy.numerals import read_decimal
from proxy.service.mirror import Denied, Mirror
from proxy.types import MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST, Digest, InvalidDigest
from proxy.web.admission import OCI_API_VERSION
from proxy.web.ranges import Unsatisfiable, answer_range, parse_range
from proxy.web.sendfile import SENDFILE_MIN, send_blob

if TYPE_CHECKING:
    from proxy.api.push import PushAPI
    from proxy.web.channel import PlainHTTPChannel

log = logging.getLogger(__name__)

_DIGEST_GRAMMAR_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
API_VERSION = OCI_API_VERSION


# The fast path (see proxy.web.channel): what it answers, and the request
# headers that make it decline (twisted.web's own handling, or a conditional).
# (``?ns=`` only picks the registry a miss is filled from: a hit is the same blob.)
_FAST_TARGET_RE = re.compile(
    rb"/v2/([a-z0-9._/-]{1,255})/blobs/sha256:([a-f0-9]{64})(?:\?ns=[A-Za-z0-9.:-]{1,255})?"
)
_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CTL = b"\x00\r\n"
# Larger GETs take the ordinary way (sendfile from a worker thread): the fast
# path may read what the socket does not take at once into memory.
FAST_SENDFILE_MAX = 2 * 1024 * 1024
_FAST_DECLINE = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"connection",
        b"upgrade",
        b"if-none-match",
        b"if-range",
    }
)
_FAST_HEADERS = (
    b"Server: " + version + b"\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"Cache-Control: max-age=31536000, immutable\r\n"
    b"Docker-Distribution-Api-Version: registry/2.0\r\n"
)


def _check_name(name: str) -> None:
    if len(name) > 255 or not NAME_RE.fullmatch(name):
        raise OciError("NAME_INVALID", f"invalid repository name {name[:100]!r}")


def _digest(text: str, unknown: str) -> Digest:
    if not _DIGEST_GRAMMAR_RE.fullmatch(text):
        raise OciError("DIGEST_INVALID", f"invalid digest {text[:100]!r}")
    if not text.startswith("sha256:"):
        # A valid digest of an algorithm this cache never stores.
        raise OciError(unknown, f"{text[:100]} is not in this cache")
    try:
        return Digest.parse(text)
    except InvalidDigest:
        raise OciError("DIGEST_INVALID", "a sha256 digest has 64 lowercase hex digits") from None


def _paginate(items: list[str], args: dict[bytes, list[bytes]]) -> tuple[list[str], str | None]:
    last = args.get(b"last", [b""])[0].decode("utf-8", "replace")
    if last:
        items = [i for i in items if i > last]
    n_raw = args.get(b"n", [b""])[0]
    if n_raw:
        if not n_raw.isdigit():
            raise OciError("UNSUPPORTED", "n must be a non-negative number", 400)
        n = read_decimal(n_raw.decode("ascii"))
        if len(items) > n:
            return items[:n], items[n - 1] if n > 0 else None
    return items, None


class RegistryAPI:
    """Serves /v2 from a cache layout and its catalog."""

    # With --allow-push: blob uploads and manifest PUTs (proxy.api.push).
    push: PushAPI | None = None

    def __init__(
        self, layout: Layout, catalog: Catalog, pool: ThreadPool, mirror: Mirror | None = None
    ) -> None:
        self.layout = layout
        self.catalog = catalog
        self.pool = pool  # sendfile(2) workers
        self.mirror = mirror  # pull-through fills; None = offline

        self._blobs_dir = str(layout.blobs_dir) + os.sep
        self._date = (0, b"")
        self._touch = catalog.touch_blob  # a read is a use of every entry holding the blob

    def _http_date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, datetimeToString(now))
        return self._date[1]

    def fast_blob(self, channel: PlainHTTPChannel, head: bytes) -> bool:
        """Answer a plain ``HEAD``, or a ``GET`` of fewer than
        :data:`SENDFILE_MIN` bytes, of a cached blob, with the very headers
        :meth:`_blob` sends; False (nothing written) for anything else, which
        then takes the ordinary way. Blocking reads as :func:`send_blob`'s
        small answers do (one ``stat`` or ``pread``)."""
        lines = head.split(b"\r\n")
        request_line = lines[0].split(b" ")
        if len(request_line) != 3:
            return False
        method, target, proto = request_line
        if proto != b"HTTP/1.1" or (method != b"HEAD" and method != b"GET"):
            return False
        m = _FAST_TARGET_RE.fullmatch(target)
        if m is None:
            return False
        name, hex_ = m.group(1), m.group(2)
        host = b"localhost"
        wanted: bytes | None = None
        seen: set[bytes] = set()
        for line in lines[1:]:
            key, sep, value = line.partition(b":")
            if (
                not sep
                or not _TOKEN_RE.fullmatch(key)
                or len(line.translate(None, _CTL)) != len(line)
            ):
                return False  # malformed, or folded: twisted.web answers those
            key = key.lower()
            keep_alive = key == b"connection" and value.strip().lower() == b"keep-alive"
            if (key in _FAST_DECLINE or key in seen) and not keep_alive:
                return False
            seen.add(key)
            if key == b"host":
                host = value.strip(b" \t") or b"localhost"
            elif key == b"range":
                wanted = value.strip(b" \t")
        if len(name) > 255 or not NAME_RE.fullmatch(name.decode("ascii")):
            return False
        path = self._blobs_dir + hex_.decode("ascii")
        fd = -1
        try:
            if method == b"HEAD" and wanted is None:
                st = os.stat(path)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            size = st.st_size
            try:
                byte_range = parse_range(wanted.decode("latin-1"), size) if wanted else None
            except Unsatisfiable:
                return False
            if byte_range is None:
                offset, length = 0, size
                status = b"HTTP/1.1 200 OK\r\n"
            else:
                offset, length = byte_range.start, byte_range.length
                status = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n" % (
                    byte_range.start,
                    byte_range.end,
                    size,
                )
            digest = b"sha256:" + hex_
            head = b"".join(
                (
                    status,
                    _FAST_HEADERS,
                    b"Date: ",
                    self._http_date(),
                    b"\r\nDocker-Content-Digest: ",
                    digest,
                    b'\r\nETag: "',
                    digest,
                    b'"\r\nLocation: http://',
                    host,
                    b"/v2/",
                    name,
                    b"/blobs/",
                    digest,
                    b"\r\nContent-Length: %d\r\n\r\n" % length,
                )
            )
            sent = 0
            if method == b"HEAD":
                channel.send(head)
            elif length < SENDFILE_MIN:
                body = os.pread(fd, length, offset)
                if len(body) != length:
                    return False  # shorter than it was: the ordinary way deals with it
                channel.send(head + body)
                sent = length
            elif length > FAST_SENDFILE_MAX or not channel.send_file(head, fd, offset, length):
                return False
            else:
                sent = length
        except OSError:
            return False
        finally:
            if fd >= 0:
                os.close(fd)
        self._touch(hex_.decode("ascii"))
        log_access(
            channel.peer_host,
            method.decode("ascii"),
            display_path(target) if b"?" in target else target.decode("ascii"),
            "HTTP/1.1",
            200 if byte_range is None else 206,
            sent,
            0.0,
        )
        return True

    def render(self, request: Any, path: bytes, proxied_host: str | None = None) -> Any:
        """Answer a /v2 request; ``path`` is the raw path (no query)."""
        try:
            result = self._route(request, path, proxied_host)
        except OciError as e:
            if proxied_host is not None and e.status in (403, 404):
                # Forward-proxy miss: 502 makes nydusd fall back to the registry.
                e = OciError(e.code, e.message, 502)
            result = error_body(request, e)
        if result is NOT_DONE_YET:
            return result
        # Finish here rather than returning bytes: twisted.web would rewrite
        # Content-Length of a HEAD answer to the length of the (empty) body.
        if request.responseHeaders.getRawHeaders(b"content-length") is None:
            request.setHeader(b"Content-Length", str(len(result)).encode())
        request.write(result)
        request.finish()
        return NOT_DONE_YET

    def _route(self, request: Any, path: bytes, proxied_host: str | None) -> Any:
        method = request.method
        if self.push is not None and proxied_host is None and self.push.handles(method, path):
            return self.push.render(request, path)
        if method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            raise OciError("UNSUPPORTED", "this registry is read-only (push is not enabled)")
        if path in (b"/v2", b"/v2/"):
            return self._json(request, {})
        if b"%" in path:
            raise OciError("NAME_INVALID", "percent-encoded characters are not allowed here")
        try:
            rest = path[len(b"/v2/") :].decode("ascii")
        except UnicodeDecodeError:
            raise OciError("NAME_INVALID", "path is not ASCII") from None
        args: dict[bytes, list[bytes]] = request.args or {}
        ns_raw = args.get(b"ns", [b""])[0].decode("ascii", "replace")
        ns = proxied_host or ns_raw or None
        if rest == "_catalog":
            return self._catalog(request, args, ns_raw or None)
        if rest.endswith("/tags/list"):
            name = rest[: -len("/tags/list")]
            _check_name(name)
            return self._tags(request, name, args, ns)
        for marker, handler in (("/manifests/", self._manifest), ("/blobs/", self._blob)):
            i = rest.rfind(marker)
            if i > 0:
                name, ref = rest[:i], rest[i + len(marker) :]
                _check_name(name)
                return handler(request, name, ref, ns)
        if "/blobs/uploads" in rest:
            raise OciError("UNSUPPORTED", "this registry is read-only (push is not enabled)")
        raise OciError("NAME_UNKNOWN", "no such endpoint", 404)

    # -- listings ------------------------------------------------------------

    def _json(self, request: Any, body: Any) -> bytes:
        data = json_answer(request, body, newline=False)
        request.setHeader(b"Content-Length", str(len(data)).encode())
        request.setHeader(*API_VERSION)
        return data

    def _catalog(self, request: Any, args: dict[bytes, list[bytes]], ns: str | None) -> bytes:
        names, next_last = _paginate(self.catalog.names(ns), args)
        if next_last is not None:
            n = args[b"n"][0].decode()
            request.setHeader(
                b"Link", f'</v2/_catalog?last={next_last}&n={n}>; rel="next"'.encode()
            )
        return self._json(request, {"repositories": names})

    def _tags(
        self, request: Any, name: str, args: dict[bytes, list[bytes]], ns: str | None
    ) -> bytes:
        tags = self.catalog.tags(name, ns)
        if tags is None:
            raise OciError("NAME_UNKNOWN", f"repository {name} is not in this cache")
        tags, next_last = _paginate(tags, args)
        if next_last is not None:
            n = args[b"n"][0].decode()
            link = f'</v2/{name}/tags/list?last={next_last}&n={n}>; rel="next"'
            request.setHeader(b"Link", link.encode())
        return self._json(request, {"name": name, "tags": tags})

    # -- manifests -------------------------------------------------------------

    def _upstream(self, ns: str | None) -> str | None:
        """The registry a miss is filled from (None: offline, or no upstream)."""
        if self.mirror is None:
            return None
        try:
            return self.mirror.registry_for(ns)
        except Denied as e:
            raise OciError("DENIED", str(e)) from None

    def _manifest(self, request: Any, name: str, ref: str, ns: str | None) -> Any:
        if ":" in ref:
            digest = _digest(ref, "MANIFEST_UNKNOWN")
            registry = None if self.layout.has_blob(digest) else self._upstream(ns)
        else:
            if not TAG_RE.fullmatch(ref):
                raise OciError("TAG_INVALID", f"invalid tag {ref[:140]!r}")
            registry = self._upstream(ns)
            if registry is None:
                entry = self.catalog.resolve(name, ref, ns)
                if entry is None:
                    where = f" in {ns}" if ns else ""
                    raise OciError("MANIFEST_UNKNOWN", f"{name}:{ref}{where} is not in this cache")
                digest = entry.descriptor.digest
        if registry is not None and self.mirror is not None:
            d = self.mirror.manifest(registry, name, ref)

            def filled(found: Digest | None) -> None:
                if found is None:
                    self._fail(request, OciError("MANIFEST_UNKNOWN", f"{name}:{ref} is unknown"))
                else:
                    self._serve_manifest(request, found)

            def fill_failed(f: Failure) -> None:
                log.warning("mirror fill of %s:%s failed: %s", name, ref, f.getErrorMessage())
                self._fail(request, _fill_error(f, f"{name}:{ref}"))

            d.addCallbacks(filled, fill_failed)
            return NOT_DONE_YET
        return self._serve_manifest(request, digest)

    @staticmethod
    def _fail(request: Any, err: OciError) -> None:
        if not request.finished and not request._disconnected:
            data = error_body(request, err)
            request.write(data)
            request.finish()

    def _serve_manifest(self, request: Any, digest: Digest) -> Any:
        self._touch(digest.hex)
        known = self.catalog.known_media_type(digest)
        d = deferToThread(self._read_manifest, digest, known)

        def send(result: tuple[bytes, str]) -> None:
            data, media_type = result
            request.setHeader(b"Content-Type", media_type.encode())
            request.setHeader(b"Docker-Content-Digest", str(digest).encode())
            request.setHeader(b"ETag", f'"{digest}"'.encode())
            request.setHeader(b"Content-Length", str(len(data)).encode())
            request.setHeader(*API_VERSION)
            if _not_modified(request, digest):
                request.setResponseCode(304)
            elif request.method == b"GET":
                request.write(data)
            request.finish()

        def failed(f: Failure) -> None:
            err = f.value if isinstance(f.value, OciError) else None
            self._fail(request, err or OciError("MANIFEST_UNKNOWN", "manifest unreadable", 500))

        d.addCallback(send).addErrback(failed)
        return NOT_DONE_YET

    def _read_manifest(self, digest: Digest, known: str | None) -> tuple[bytes, str]:
        """(bytes, media type) of a manifest blob; blocking (runs in a thread)."""
        not_manifest = OciError("MANIFEST_UNKNOWN", f"{digest} is not a manifest")
        try:
            data = self.layout.read_manifest(digest)
        except FileNotFoundError:
            raise OciError("MANIFEST_UNKNOWN", f"{digest} is not in this cache") from None
        except NotAManifest:
            raise not_manifest from None
        try:
            doc = artifact.load_json(data)
        except ValueError:
            raise not_manifest from None
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            raise not_manifest
        media_type = doc.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            media_type = known if known in artifact.MANIFEST_MEDIA_TYPES else None
        if media_type is None:
            media_type = MEDIA_TYPE_IMAGE_INDEX if "manifests" in doc else MEDIA_TYPE_IMAGE_MANIFEST
        if media_type not in artifact.MANIFEST_MEDIA_TYPES:
            raise not_manifest
        return data, media_type

    # -- blobs -----------------------------------------------------------------

    @staticmethod
    def _blob_headers(request: Any, name: str, digest: Digest) -> None:
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Docker-Content-Digest", str(digest).encode())
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"ETag", f'"{digest}"'.encode())
        request.setHeader(b"Cache-Control", b"max-age=31536000, immutable")
        request.setHeader(*API_VERSION)
        host = _header(request, b"host") or "localhost"
        location = f"http://{host}/v2/{name}/blobs/{digest}"
        request.setHeader(b"Location", location.encode("latin-1", "replace"))

    def _fill(self, request: Any, registry: str, name: str, digest: Digest) -> Any:
        """Answer from the mirror's fill of a missing blob (started if needed)."""
        assert self.mirror is not None
        mirror = self.mirror
        job = mirror.fill_blob(registry, name, digest)

        def not_found() -> None:
            self._fail(request, OciError("BLOB_UNKNOWN", f"{digest} is unknown upstream"))

        FillReader(
            request,
            job,
            self.layout,
            digest,
            _range_header(request, digest),
            lambda _size: self._blob_headers(request, name, digest),
            not_found,
            lambda first, last: Deferred.fromCoroutine(
                mirror.pass_through(registry, name, digest, first, last)
            ),
        ).start()
        return NOT_DONE_YET

    def _blob(self, request: Any, name: str, ref: str, ns: str | None) -> Any:
        digest = _digest(ref, "BLOB_UNKNOWN")
        try:
            fd = os.open(self.layout.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            registry = self._upstream(ns)
            if registry is None or self.mirror is None:
                raise OciError("BLOB_UNKNOWN", f"{digest} is not in this cache") from None
            return self._fill(request, registry, name, digest)
        self._touch(digest.hex)
        try:
            size = os.fstat(fd).st_size
            self._blob_headers(request, name, digest)
            if _not_modified(request, digest):
                os.close(fd)
                request.setResponseCode(304)
                request.setHeader(b"Content-Length", str(size).encode())
                return b""
            byte_range = answer_range(request, _range_header(request, digest), size)
            if byte_range is None:  # 416
                os.close(fd)
                return b""
            offset, length = byte_range.start, byte_range.length
            if request.method == b"HEAD":
                os.close(fd)
                return b""
        except BaseException:
            os.close(fd)
            raise
        # Not evicted while it is being sent (its file stays whole anyway).
        release = self.catalog.reading(digest.hex)
        request.notifyFinish().addBoth(lambda _: release())
        send_blob(request, fd, offset, length, self.pool)
        return NOT_DONE_YET


def _fill_error(f: Failure, what: str) -> OciError:
    """The answer to a manifest fill that failed: the error table's (a failing
    upstream is a 5xx, never MANIFEST_UNKNOWN), or 500 UNKNOWN."""
    if isinstance(f.value, StorageError):
        return oci_error(f.value, "MANIFEST_UNKNOWN")
    return OciError("UNKNOWN", f"{what} could not be filled (see the server log)")


def _not_modified(request: Any, digest: Digest) -> bool:
    value = _header(request, b"if-none-match")
    if not value:
        return False
    tags = [t.strip().removeprefix("W/").strip('"') for t in value.split(",")]
    return "*" in tags or str(digest) in tags


def _range_header(request: Any, digest: Digest) -> str | None:
    """The Range header to honour: none if If-Range names another representation."""
    wanted = _header(request, b"range")
    if wanted is None:
        return None
    if_range = _header(request, b"if-range")
    if if_range is not None and if_range.strip().strip('"') != str(digest):
        return None
    return wanted


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def query_args(uri: bytes) -> dict[bytes, list[bytes]]:
    """Query arguments of a request target (used for absolute-form targets)."""
    _, _, query = uri.partition(b"?")
    return parse_qs(query) if query else {}
