"""The OCI distribution API over the cache (read-only): ``/v2/...``.

Routes (``GET`` and ``HEAD``)::

    /v2/                              200 {}
    /v2/_catalog?n=&last=             repository names, paginated
    /v2/<name>/tags/list?n=&last=     tags of a name, paginated
    /v2/<name>/manifests/<tag|digest> the stored manifest bytes
    /v2/<name>/blobs/<digest>         the blob, with single byte ranges
    /v2/<name>/referrers/<digest>     the manifests whose subject it is, as an
                                      image index (proxy.api.referrers)

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

import functools
import logging
import os
import re
import stat
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, version

from proxy.api.answers import finish_with_length, json_answer
from proxy.api.content import display_path
from proxy.api.errors import OciError, error_body, oci_error
from proxy.api.fill import FillWriter
from proxy.api.paging import BadPage, next_link, paginate
from proxy.api.referrers import FILTERS_APPLIED, Referrers
from proxy.cache import artifact
from proxy.cache.catalog import Catalog
from proxy.cache.layout import Layout, NotAManifest
from proxy.errors import StorageError
from proxy.logs import log_access
from proxy.naming import NAME_RE, TAG_RE
from proxy.service.mirror import Denied, Mirror
from proxy.service.sources import BlobHandle, BlobSource, BlobWant, GrowingBlob, StoredBlob
from proxy.types import (
    ALGORITHMS,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Digest,
    InvalidDigest,
)
from proxy.web import fastpath
from proxy.web.admission import OCI_API_VERSION
from proxy.web.fastpath import FastRequest, HttpDate
from proxy.web.ranges import Unsatisfiable, answer_range, parse_range
from proxy.web.sendfile import SENDFILE_MIN, BlobSender

if TYPE_CHECKING:
    from proxy.api.push import PushAPI
    from proxy.web.channel import PlainHTTPChannel

log = logging.getLogger(__name__)

_DIGEST_GRAMMAR_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
API_VERSION = OCI_API_VERSION


# The fast path (see proxy.web.channel and proxy.web.fastpath): the targets it
# answers. (``?ns=`` only picks the registry a miss is filled from: a hit is
# the same blob.)
_FAST_TARGET_RE = re.compile(
    rb"/v2/([a-z0-9._/-]{1,255})/blobs/sha256:([a-f0-9]{64})(?:\?ns=[A-Za-z0-9.:-]{1,255})?"
)
# Larger GETs take the ordinary way (sendfile from a worker thread): the fast
# path may read what the socket does not take at once into memory.
FAST_SENDFILE_MAX = 2 * 1024 * 1024
FAST_MEMO = 1024  # entries of each of the fast path's memos (least recently used go)

# The headers of every blob answer, both ways (the fast path and twisted.web):
# fixed ones, and templates of those that depend on the request (filled with
# the digest, the Host and the repository name).
_BLOB_FIXED = (
    (b"Content-Type", b"application/octet-stream"),
    (b"Accept-Ranges", b"bytes"),
    (b"Cache-Control", b"max-age=31536000, immutable"),
    API_VERSION,
)
_BLOB_VARIABLE = (
    (b"Docker-Content-Digest", b"%(digest)s"),
    (b"ETag", b'"%(digest)s"'),
    (b"Location", b"http://%(host)s/v2/%(name)s/blobs/%(digest)s"),
)
# The same, as header lines the fast path writes (one %-format per answer).
_FAST_FIELDS = b"".join(
    [b"Server: " + version + b"\r\n"]
    + [key + b": " + value + b"\r\n" for key, value in _BLOB_FIXED + _BLOB_VARIABLE]
)


@functools.lru_cache(maxsize=FAST_MEMO)
def _fast_name_ok(name: bytes) -> bool:
    """Whether ``name`` (ASCII, from :data:`_FAST_TARGET_RE`) is a valid
    repository name; remembered, as the fast path asks for every request."""
    return NAME_RE.fullmatch(name.decode("ascii")) is not None


@functools.lru_cache(maxsize=FAST_MEMO)
def _fast_fields(name: bytes, hex_: bytes, host: bytes) -> bytes:
    """The header lines of a fast blob answer; remembered per blob and Host."""
    return _FAST_FIELDS % {b"digest": b"sha256:" + hex_, b"host": host, b"name": name}


def check_name(name: str) -> None:
    """A repository name in the distribution grammar, or NAME_INVALID."""
    if len(name) > 255 or not NAME_RE.fullmatch(name):
        raise OciError("NAME_INVALID", f"invalid repository name {name[:100]!r}")


def v2_rest(path: bytes) -> str:
    """What follows ``/v2/`` in a request path, or NAME_INVALID (percent-escapes,
    or not ASCII)."""
    if b"%" in path:
        raise OciError("NAME_INVALID", "percent-encoded characters are not allowed here")
    try:
        return path[len(b"/v2/") :].decode("ascii")
    except UnicodeDecodeError:
        raise OciError("NAME_INVALID", "path is not ASCII") from None


def _digest(text: str, unknown: str) -> Digest:
    if not _DIGEST_GRAMMAR_RE.fullmatch(text):
        raise OciError("DIGEST_INVALID", f"invalid digest {text[:100]!r}")
    if text.split(":", 1)[0] not in ALGORITHMS:
        # A valid digest of an algorithm this cache never stores.
        raise OciError(unknown, f"{text[:100]} is not in this cache")
    try:
        return Digest.parse(text)
    except InvalidDigest:
        raise OciError(
            "DIGEST_INVALID",
            "a sha256 digest has 64 lowercase hex digits, a sha512 digest 128",
        ) from None


def _paginate(items: list[str], args: dict[bytes, list[bytes]]) -> tuple[list[str], str | None]:
    try:
        return paginate(items, args)
    except BadPage as e:
        raise OciError("UNSUPPORTED", str(e), 400) from None


class RegistryAPI:
    """Serves /v2 from a cache layout and its catalog; blobs from one
    :class:`proxy.service.sources.BlobSource` (the chain built in ``proxy.server``)."""

    # With --allow-push: blob uploads and manifest PUTs (proxy.api.push).
    push: PushAPI | None = None

    def __init__(
        self,
        layout: Layout,
        catalog: Catalog,
        sender: BlobSender,
        blobs: BlobSource,
        mirror: Mirror | None = None,
    ) -> None:
        self.layout = layout
        self.catalog = catalog
        self.sender = sender  # sendfile(2) answers
        self.blobs = blobs  # where a blob is found: the cache first, then any fill
        self.mirror = mirror  # pull-through manifest fills; None = offline

        self._blobs_dir = str(layout.blobs_dir) + os.sep
        self._date = HttpDate()
        self._touch = catalog.touch_blob  # a read is a use of every entry holding the blob
        self.referrers = Referrers(layout)

    def fast_blob(self, channel: PlainHTTPChannel, head: bytes) -> bool:
        """Answer a plain ``HEAD``, or a small ``GET``, of a cached blob, with
        the very headers :meth:`_blob` sends; False (nothing written) for
        anything else, which then takes the ordinary way. Blocking reads as
        the sender's small answers do (one ``stat`` or ``pread``)."""
        request = fastpath.parse(head)
        if request is None:
            return False
        m = _FAST_TARGET_RE.fullmatch(request.target)
        if m is None:
            return False
        name, hex_ = m.group(1, 2)
        if not _fast_name_ok(name):
            return False
        answered = self._fast_answer(channel, request, name, hex_)
        if answered is None:
            return False
        self._touch(hex_.decode("ascii"))
        target = request.target
        log_access(
            channel.peer_host,
            request.method.decode("ascii"),
            display_path(target) if b"?" in target else target.decode("ascii"),
            "HTTP/1.1",
            answered[0],
            answered[1],
            0.0,
            "v2_blob",
        )
        return True

    def _fast_answer(
        self, channel: PlainHTTPChannel, request: FastRequest, name: bytes, hex_: bytes
    ) -> tuple[int, int] | None:
        """Send the answer; (status, body bytes sent), or None (nothing sent)."""
        path = self._blobs_dir + hex_.decode("ascii")
        head_only = request.method == b"HEAD"
        fd = -1
        try:
            if head_only and request.range is None:
                st = os.stat(path)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            size = st.st_size
            wanted = request.range
            try:
                span = fastpath.simple_range(wanted, size) if wanted else None
                if span is None and wanted:
                    byte_range = parse_range(wanted.decode("latin-1"), size)
                    span = None if byte_range is None else (byte_range.start, byte_range.end)
            except Unsatisfiable:
                return None  # the ordinary way answers 416
            fields = _fast_fields(name, hex_, request.host)
            if span is None:
                status, offset, length = 200, 0, size
                head = fastpath.answer_head(fields, self._date.now(), length)
            else:
                status, offset, length = 206, span[0], span[1] - span[0] + 1
                head = fastpath.answer_head(fields, self._date.now(), length, (*span, size))
            if head_only:
                channel.send(head)
                return status, 0
            if length < SENDFILE_MIN:
                body = os.pread(fd, length, offset)
                if len(body) != length:
                    return None  # shorter than it was: the ordinary way deals with it
                channel.send(head + body)
                return status, length
            if length > FAST_SENDFILE_MAX or not channel.send_file(head, fd, offset, length):
                return None
            return status, length
        except OSError:
            return None
        finally:
            if fd >= 0:
                os.close(fd)

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
        finish_with_length(request, result)
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
        rest = v2_rest(path)
        args: dict[bytes, list[bytes]] = request.args or {}
        ns_raw = args.get(b"ns", [b""])[0].decode("ascii", "replace")
        ns = proxied_host or ns_raw or None
        if rest == "_catalog":
            return self._catalog(request, args, ns_raw or None)
        if rest.endswith("/tags/list"):
            name = rest[: -len("/tags/list")]
            check_name(name)
            return self._tags(request, name, args, ns)
        i = rest.rfind("/referrers/")
        if i > 0:
            name, ref = rest[:i], rest[i + len("/referrers/") :]
            check_name(name)
            return self._referrers(request, name, ref, args, ns)
        for marker, handler in (("/manifests/", self._manifest), ("/blobs/", self._blob)):
            i = rest.rfind(marker)
            if i > 0:
                name, ref = rest[:i], rest[i + len(marker) :]
                check_name(name)
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
            request.setHeader(b"Link", next_link("/v2/_catalog", next_last, args))
        return self._json(request, {"repositories": names})

    def _tags(self, request: Any, name: str, args: dict[bytes, list[bytes]], ns: str | None) -> Any:
        registry = self._upstream(ns)
        if registry is None or self.mirror is None:
            return self._tag_list(request, name, args, self.catalog.tags(name, ns))
        # A mirror lists upstream's tags too (the cached ones when it fails).
        cached = self.catalog.tags(name, ns)

        def listed(upstream: list[str] | None) -> None:
            tags = (
                None
                if upstream is None and cached is None
                else {*(upstream or ()), *(cached or ())}
            )
            self._finish_tags(request, name, args, sorted(tags) if tags is not None else None)

        def failed(f: Failure) -> None:
            log.warning("tag list of %s from %s failed: %s", name, registry, f.getErrorMessage())
            self._finish_tags(request, name, args, cached)

        self.mirror.tags(registry, name).addCallbacks(listed, failed)
        return NOT_DONE_YET

    def _finish_tags(
        self, request: Any, name: str, args: dict[bytes, list[bytes]], tags: list[str] | None
    ) -> None:
        if request.finished or request._disconnected:
            return
        try:
            data = self._tag_list(request, name, args, tags)
        except OciError as e:
            self._fail(request, e)
            return
        finish_with_length(request, data)

    def _tag_list(
        self, request: Any, name: str, args: dict[bytes, list[bytes]], tags: list[str] | None
    ) -> bytes:
        if tags is None:
            raise OciError("NAME_UNKNOWN", f"repository {name} is not in this cache")
        tags, next_last = _paginate(tags, args)
        if next_last is not None:
            request.setHeader(b"Link", next_link(f"/v2/{name}/tags/list", next_last, args))
        return self._json(request, {"name": name, "tags": tags})

    # -- referrers -------------------------------------------------------------

    def _referrers(
        self, request: Any, name: str, ref: str, args: dict[bytes, list[bytes]], ns: str | None
    ) -> Any:
        subject = _digest(ref, "MANIFEST_UNKNOWN")
        wanted = args.get(b"artifactType", [None])[0]
        artifact_type = wanted.decode("utf-8", "replace") if wanted else None
        manifests = self.catalog.manifests_of(name, ns)
        d = deferToThreadPool(
            self.sender.threads,
            self.sender.pool,
            self.referrers.index,
            manifests,
            subject,
            artifact_type,
        )

        def send(index: dict[str, Any]) -> None:
            if request.finished or request._disconnected:
                return
            data = self._json(request, index)
            request.setHeader(b"Content-Type", MEDIA_TYPE_IMAGE_INDEX.encode())
            if artifact_type is not None:
                request.setHeader(FILTERS_APPLIED, b"artifactType")
            if request.method == b"GET":
                request.write(data)
            request.finish()

        def failed(f: Failure) -> None:
            log.error("referrers of %s in %s: %s", subject, name, f.getErrorMessage())
            self._fail(request, OciError("UNKNOWN", "referrers could not be listed", 500))

        d.addCallback(send).addErrback(failed)
        return NOT_DONE_YET

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
            here = self.layout.has_blob(digest) or digest.algorithm != "sha256"
            registry = None if here else self._upstream(ns)  # mirrors fill by sha256 only
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
        d = deferToThreadPool(
            self.sender.threads, self.sender.pool, self._read_manifest, digest, known
        )

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
        for key, value in _BLOB_FIXED:
            request.setHeader(key, value)
        host = (request.getHeader(b"host") or b"").strip(b" \t") or b"localhost"
        values = {b"digest": str(digest).encode(), b"host": host, b"name": name.encode()}
        for key, template in _BLOB_VARIABLE:
            request.setHeader(key, template % values)

    def _blob(self, request: Any, name: str, ref: str, ns: str | None) -> Any:
        digest = _digest(ref, "BLOB_UNKNOWN")
        d = self.blobs.open(BlobWant(digest, name, ns))
        if d.called:  # found (or not) at once, as a hit in the cache is: answer now
            now: list[BlobHandle | Failure | None] = []
            d.addBoth(now.append)
            found = now[0]
            if isinstance(found, Failure):
                if found.check(Denied):
                    raise OciError("DENIED", found.getErrorMessage())
                found.raiseException()
            assert not isinstance(found, Failure)
            return self._answer_blob(request, name, digest, found)
        d.addCallback(self._answer_later, request, name, digest)
        d.addErrback(self._blob_failed, request, digest)
        return NOT_DONE_YET

    def answer_found(
        self, found: Deferred[BlobHandle | None], request: Any, name: str, digest: Digest
    ) -> Any:
        """Answer ``request`` with the blob ``found`` fires with (404 for None;
        an OciError it fails with is the answer, any other failure cuts the
        connection)."""
        found.addCallback(self._answer_later, request, name, digest)
        found.addErrback(self._blob_failed, request, digest)
        return NOT_DONE_YET

    def _answer_later(
        self, handle: BlobHandle | None, request: Any, name: str, digest: Digest
    ) -> None:
        if request.finished or request._disconnected:
            if isinstance(handle, StoredBlob):
                os.close(handle.fd)
                handle.release()
            elif handle is not None:
                handle.close()
            return
        result = self._answer_blob(request, name, digest, handle)
        if result is not NOT_DONE_YET:
            if request.responseHeaders.getRawHeaders(b"content-length") is None:
                request.setHeader(b"Content-Length", str(len(result)).encode())
            request.write(result)
            request.finish()

    def _blob_failed(self, f: Failure, request: Any, digest: Digest) -> None:
        if f.check(Denied):
            self._fail(request, OciError("DENIED", f.getErrorMessage()))
        elif isinstance(f.value, OciError):
            self._fail(request, f.value)
        else:
            # Upstream told no size in time, or the fill broke before an answer.
            log.warning("aborting a client of %s: %s", digest, f.getErrorMessage())
            transport = request.channel.transport if request.channel else None
            if transport is not None:
                transport.abortConnection()

    def _answer_blob(
        self, request: Any, name: str, digest: Digest, handle: BlobHandle | None
    ) -> Any:
        """The answer from what the chain found (bytes, or NOT_DONE_YET)."""
        if handle is None:
            raise OciError("BLOB_UNKNOWN", f"{digest} is not in this cache")
        if isinstance(handle, StoredBlob):
            return self._send_stored(request, name, digest, handle)
        return self._send_growing(request, name, digest, handle)

    def _send_stored(self, request: Any, name: str, digest: Digest, blob: StoredBlob) -> Any:
        fd, size = blob.fd, blob.size
        try:
            self._blob_headers(request, name, digest)
            if _not_modified(request, digest):
                request.setResponseCode(304)
                request.setHeader(b"Content-Length", str(size).encode())
                byte_range = None
            else:
                byte_range = answer_range(request, _range_header(request, digest), size)
            if byte_range is None or request.method == b"HEAD":  # 304, 416, HEAD
                os.close(fd)
                blob.release()
                return b""
        except BaseException:
            os.close(fd)
            blob.release()
            raise
        # Not evicted while it is being sent (its file stays whole anyway).
        request.notifyFinish().addBoth(lambda _: blob.release())
        self.sender.send(request, fd, byte_range.start, byte_range.length)
        return NOT_DONE_YET

    def _send_growing(self, request: Any, name: str, digest: Digest, stream: GrowingBlob) -> Any:
        """Answer from a fill still being written."""
        self._blob_headers(request, name, digest)
        byte_range = answer_range(request, _range_header(request, digest), stream.size)
        if byte_range is None or request.method == b"HEAD" or byte_range.length <= 0:
            stream.close()
            return b""
        FillWriter(request, stream, byte_range, str(digest)).start()
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
