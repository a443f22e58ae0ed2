"""The push half of the OCI distribution API (``--allow-push``).

Routes (``/v2/<name>/...``; everything else that is not a read stays 405)::

    POST   blobs/uploads/                    202: a new upload (Location,
                                             Docker-Upload-UUID, Range)
    POST   blobs/uploads/?digest=<d>         201: monolithic, the body is the blob
    POST   blobs/uploads/?mount=<d>&from=<r> 201 when <d> is in the cache (any
                                             repository: the cache is one store),
                                             else 202 as above
    GET    blobs/uploads/<uuid>              204: upload status (Range)
    PATCH  blobs/uploads/<uuid>              202: a chunk (Content-Range, in
                                             order; 416 for a wrong offset)
    PUT    blobs/uploads/<uuid>?digest=<d>   201: last chunk (optional), verify,
                                             store
    DELETE blobs/uploads/<uuid>              204: cancel
    PUT    manifests/<tag|digest>            201: validate, store as an entry
                                             (OCI-Subject when it has a subject)
    DELETE manifests/<tag|digest>            202: remove its entries
    DELETE blobs/<digest>                    202: remove an unreferenced blob
                                             (proxy.api.deletes)

With ``--api-token`` every push request needs the token (Bearer, or the
password of Basic after a ``WWW-Authenticate: Basic realm="storage-manager"``
challenge); reads stay as configured. Names, tags, upload ids and digests are
checked before anything touches the filesystem; a bad request changes
nothing. Bodies are copied and hashed in worker threads
(:mod:`proxy.cache.uploads`); a blob is renamed into ``blobs/`` only after it
matched its digest.

A pushed manifest becomes an ordinary entry: URL ``oci-push://<name>:<tag>``
(or ``oci-push://<name>@<digest>`` when pushed by digest), reference
``<name>:<tag>``, kind ``push``, so ``GET /content/`` lists it, ``DELETE
/content/<b64 of the URL>`` removes it (and the blobs only it uses), and
``/v2/<name>/manifests/<tag>`` serves it without ``?ns=``. Pushing a tag again
replaces its entry; blobs the old manifest alone used are removed, shared
ones kept.

Pushed names never meet the names of downloads (:mod:`proxy.naming`): an
upload or manifest for a name whose first component is a host (``<host>[-<port>]/...``,
the form of http(s) downloads' names) or for a name some download is served
under (any tag, any registry) is refused with 403 DENIED before anything is
written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from proxy.api.admission import is_push
from proxy.api.deletes import Deletes
from proxy.api.errors import OciError, error_body
from proxy.api.registry import API_VERSION, check_name, query_args, v2_rest
from proxy.cache import artifact
from proxy.cache.catalog import Catalog
from proxy.cache.layout import Layout, NotAManifest, is_disk_full
from proxy.cache.store import Entry, Store, new_entry
from proxy.cache.uploads import (
    BadChunk,
    BadOffset,
    DigestMismatch,
    Upload,
    Uploads,
    UploadUnknown,
)
from proxy.naming import PUSH_SCHEME, TAG_RE
from proxy.numerals import decimal_less, read_decimal
from proxy.threads import in_thread
from proxy.types import (
    MAX_MANIFEST,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
    Digest,
    InvalidDigest,
)
from proxy.units import human_size

log = logging.getLogger(__name__)

KIND = "push"
_UPLOADS_RE = re.compile(r"(.+)/blobs/uploads/?")
_SESSION_RE = re.compile(r"(.+)/blobs/uploads/([^/]+)")
_BLOB_RE = re.compile(r"(.+)/blobs/([^/]+)")
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")
# Layers a registry need not hold (their bytes live at their "urls").
_FOREIGN_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


def push_url(name: str, tag: str | None, digest: Digest) -> tuple[str, str]:
    """(entry URL, reference) of a manifest pushed as ``name:tag`` or by digest."""
    reference = f"{name}:{tag}" if tag is not None else f"{name}@{digest}"
    return PUSH_SCHEME + reference, reference


def _digest_arg(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as e:
        raise OciError(
            "DIGEST_INVALID", f"{e} (this registry stores sha256 and sha512)", 400
        ) from None


def _manifest_error(message: str) -> OciError:
    return OciError("MANIFEST_INVALID", message, 400)


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict) or not isinstance(obj.get("size"), int):
        raise _manifest_error(f"{where}: a descriptor needs mediaType, digest and size")
    if not isinstance(obj.get("mediaType"), str) or not obj["mediaType"]:
        raise _manifest_error(f"{where}: a descriptor needs a mediaType")
    try:
        return Descriptor.from_json(obj)
    except ValueError as e:
        raise _manifest_error(f"{where}: {e}") from None


@attrs.frozen
class Pushed:
    """What a pushed manifest is, once checked."""

    media_type: str
    required: list[Descriptor]  # the descriptors that must be present
    digest: Digest
    subject: Digest | None  # OCI 1.1: the manifest it refers to (need not be here)


def parse_manifest(data: bytes, content_type: str | None, algorithm: str = "sha256") -> Pushed:
    """What a pushed manifest is (its digest with ``algorithm``: the one of
    the digest it is pushed by, else sha256); OciError MANIFEST_INVALID when
    it is not one this cache serves. Blocking for large documents (runs in a
    thread)."""
    digest = Digest.of(data, algorithm)
    try:
        doc = artifact.load_json(data)
    except ValueError:
        raise _manifest_error("the manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise _manifest_error("a manifest is a JSON object with schemaVersion 2")
    declared = doc.get("mediaType")
    sent = (content_type or "").split(";")[0].strip().lower() or None
    if declared is not None and not isinstance(declared, str):
        raise _manifest_error("mediaType must be a string")
    media_type = declared
    if media_type is None and sent in artifact.MANIFEST_MEDIA_TYPES:
        media_type = sent
    if media_type is None:
        media_type = MEDIA_TYPE_IMAGE_INDEX if "manifests" in doc else MEDIA_TYPE_IMAGE_MANIFEST
    if media_type not in artifact.MANIFEST_MEDIA_TYPES:
        raise _manifest_error(
            f"unsupported manifest type {media_type[:100]!r} (OCI or Docker v2 image "
            "manifests and indexes; artifacts as image manifests with an artifactType)"
        )
    if declared is not None and sent in artifact.MANIFEST_MEDIA_TYPES and sent != declared:
        raise _manifest_error(f"Content-Type {sent} is not the manifest's mediaType {declared}")
    required: list[Descriptor] = []
    if media_type in artifact.INDEX_MEDIA_TYPES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise _manifest_error("an index needs a manifests list")
        for i, item in enumerate(manifests):
            required.append(_descriptor(item, f"manifests[{i}]"))
    else:
        required.append(_descriptor(doc.get("config"), "config"))
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise _manifest_error("an image manifest needs a layers list")
        for i, item in enumerate(layers):
            layer = _descriptor(item, f"layers[{i}]")
            if layer.media_type in _FOREIGN_LAYERS and item.get("urls"):
                continue
            required.append(layer)
    subject = None
    if "subject" in doc:
        subject = _descriptor(doc["subject"], "subject").digest  # it need not be here
    return Pushed(media_type, required, digest, subject)


def check_present(layout: Layout, required: list[Descriptor], index: bool = False) -> None:
    """Every descriptor's blob is in the cache with its size; blocking.

    An index is the exception, as in the cache itself: its children are
    alternatives (platforms), and an index pushed with only some of them --
    ``ctr push --platform``, a node's partial pull exported -- is accepted
    when at least one is here (or it lists none: an empty index); the ones
    that are here must match."""
    found = 0
    for desc in required:
        size = layout.blob_size(desc.digest)
        if size is None:
            if index:
                continue
            raise OciError("MANIFEST_BLOB_UNKNOWN", f"{desc.digest} is not in this registry", 400)
        if size != desc.size:
            raise _manifest_error(f"{desc.digest} has {size} bytes, the manifest says {desc.size}")
        if desc.media_type in artifact.MANIFEST_MEDIA_TYPES and size > MAX_MANIFEST:
            raise _too_large(desc.digest, size)
        found += 1
    if index and required and not found:
        # An empty index (no manifests at all) is a valid one, and is accepted.
        raise OciError("MANIFEST_BLOB_UNKNOWN", "none of the index's manifests is here", 400)


def _too_large(digest: Digest, size: int) -> OciError:
    return _manifest_error(
        f"{digest} is named as a manifest but has {size} bytes (a manifest has at most "
        f"{MAX_MANIFEST}): it is not one"
    )


def closure(layout: Layout, top: Descriptor, children: list[Descriptor]) -> list[Descriptor]:
    """``top``, its children and, through child manifests on disk, theirs: the
    present ones, in order (what the store finds when it loads the entry);
    blocking. A blob named as a manifest is read only when it is no larger
    than a manifest may be: MANIFEST_INVALID otherwise."""
    seen: dict[Digest, Descriptor] = {top.digest: top}
    todo = list(children)
    while todo:
        d = todo.pop(0)
        if d.digest in seen or not layout.has_blob(d.digest):
            continue
        seen[d.digest] = d
        if d.media_type in artifact.MANIFEST_MEDIA_TYPES:
            try:
                data = layout.read_manifest(d.digest)
                todo.extend(artifact.children(d.media_type, data))
            except NotAManifest:
                raise _too_large(d.digest, layout.blob_size(d.digest) or 0) from None
            except ValueError as e:
                log.warning("pushed manifest %s: child %s unreadable: %s", top.digest, d.digest, e)
    return list(seen.values())


def _read_small(body: IO[bytes], limit: int) -> bytes | None:
    """The whole body when it has at most ``limit`` bytes, else None; blocking."""
    body.seek(0)
    data = body.read(limit + 1)
    return None if len(data) > limit else data


class PushAPI:
    """Blob uploads and manifest PUTs into the store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        uploads: Uploads,
        reactor: Any,
        after_push: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.layout = store.layout
        self._catalog = Catalog(store)  # the names downloads are served under
        self.uploads = uploads
        self._reactor = reactor
        self._after_push = after_push  # e.g. eviction under --max-cache-size
        self.deletes = Deletes(store, uploads, self._catalog, reactor)

    def handles(self, method: bytes, path: bytes) -> bool:
        """Whether a /v2 request is a push request (everything but reads, and
        the upload-status GET); the ``/v2/`` ping is the registry's."""
        return is_push(method, path, token=False)

    def render(self, request: Any, path: bytes) -> Any:
        """Route a push request; OciError for what is refused at once.

        Whether it needs the token is not decided here: the route table
        (:class:`proxy.api.admission.Access`) decided it before, for
        :class:`proxy.api.root.Root` and, before a body was read, for the
        channel; it counts every push request, the ping included, as needing it."""
        rest = v2_rest(path)
        method = request.method
        args = query_args(request.uri)

        def arg(key: bytes) -> str | None:
            values = args.get(key)
            return values[0].decode("ascii", "replace") if values else None

        m = _UPLOADS_RE.fullmatch(rest)
        if m is not None:
            name = m.group(1)
            check_name(name)
            self._check_pushed_name(name)
            if method != b"POST":
                raise OciError("UNSUPPORTED", "start an upload with POST")
            return self._run(request, self._start(request, name, arg))
        m = _SESSION_RE.fullmatch(rest)
        if m is not None:
            name, upload_id = m.group(1), m.group(2)
            check_name(name)
            handlers = {
                b"GET": self._status,
                b"HEAD": self._status,
                b"PATCH": self._patch,
                b"PUT": self._put_blob,
                b"DELETE": self._cancel,
            }
            handler = handlers.get(method)
            if handler is None:
                raise OciError("UNSUPPORTED", "an upload takes GET, PATCH, PUT or DELETE")
            return self._run(request, handler(request, name, upload_id, arg))
        i = rest.rfind("/manifests/")
        if i > 0:
            name, ref = rest[:i], rest[i + len("/manifests/") :]
            check_name(name)
            self._check_pushed_name(name)
            if method not in (b"PUT", b"DELETE"):
                raise OciError("UNSUPPORTED", "a manifest takes GET, HEAD, PUT or DELETE")
            if ":" in ref:
                tag, ref_digest = None, _digest_arg(ref)
            elif TAG_RE.fullmatch(ref):
                tag, ref_digest = ref, None
            else:
                raise OciError("TAG_INVALID", f"invalid tag {ref[:140]!r}")
            if method == b"DELETE":
                return self._run(request, self._delete_manifest(request, name, tag, ref_digest))
            return self._run(request, self._put_manifest(request, name, tag, ref_digest))
        m = _BLOB_RE.fullmatch(rest)
        if m is not None and method == b"DELETE":
            name = m.group(1)
            check_name(name)
            digest = _digest_arg(m.group(2))
            return self._run(request, self._delete_blob(request, name, digest))
        raise OciError("UNSUPPORTED", "not an endpoint of the push API")

    def _check_pushed_name(self, name: str) -> None:
        """Refuse a name that is, or may become, the name of downloaded content."""
        reason = self._catalog.push_conflict(name)
        if reason is not None:
            raise OciError("DENIED", f"{reason}; push under another name")

    # -- answers -------------------------------------------------------------------

    def _run(self, request: Any, work: Coroutine[Any, Any, None]) -> Any:
        d = Deferred.fromCoroutine(work)

        def done(_: object) -> None:
            if not request.finished and not request._disconnected:
                request.finish()

        def failed(f: Failure) -> None:
            err = f.value
            if isinstance(err, OSError) and is_disk_full(err):
                err = OciError("BLOB_UPLOAD_INVALID", "no space left in the cache", 507)
            elif isinstance(err, UploadUnknown):
                err = OciError("BLOB_UPLOAD_UNKNOWN", "no such upload", 404)
            elif not isinstance(err, OciError):
                log.error("push request failed", exc_info=err)
                err = OciError("BLOB_UPLOAD_INVALID", "internal error", 500)
            if not request.finished and not request._disconnected:
                data = error_body(request, err)
                if request.method != b"HEAD":
                    request.write(data)
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    @staticmethod
    def _empty(request: Any, status: int) -> None:
        request.setResponseCode(status)
        request.setHeader(*API_VERSION)
        if status != 204:
            request.setHeader(b"Content-Length", b"0")

    def _upload_headers(self, request: Any, name: str, up: Upload, status: int) -> None:
        self._empty(request, status)
        request.setHeader(b"Location", f"/v2/{name}/blobs/uploads/{up.uuid}".encode())
        request.setHeader(b"Docker-Upload-UUID", up.uuid.encode())
        end = up.offset - 1 if up.offset > 0 else 0
        request.setHeader(b"Range", f"0-{end}".encode())

    def _blob_created(self, request: Any, name: str, digest: Digest) -> None:
        self._empty(request, 201)
        request.setHeader(b"Location", f"/v2/{name}/blobs/{digest}".encode())
        request.setHeader(b"Docker-Content-Digest", str(digest).encode())

    # -- blob uploads -----------------------------------------------------------------

    async def _start(self, request: Any, name: str, arg: Callable[[bytes], str | None]) -> None:
        mount, source, digest_text = arg(b"mount"), arg(b"from"), arg(b"digest")
        if mount is not None:
            digest = _digest_arg(mount)
            if source is not None:
                check_name(source)
            if await self.uploads.mount(digest) is not None:
                log.info("mounted %s into %s", digest, name)
                self._blob_created(request, name, digest)
                return
        expected = _digest_arg(digest_text) if digest_text is not None else None
        up = await self.uploads.start(name)
        if expected is None:
            self._upload_headers(request, name, up, 202)
            return
        await self._append(up, request, None, None)
        await self._finish(request, name, up, expected)

    async def _append(self, up: Upload, request: Any, start: int | None, end: int | None) -> int:
        try:
            return await self.uploads.append(up, request.content, start, end)
        except (BadOffset, BadChunk, UploadUnknown):
            raise  # nothing was written
        except BaseException:
            # A chunk that failed half-way: its bytes cannot be trusted.
            await self.uploads.cancel(up)
            raise

    async def _finish(self, request: Any, name: str, up: Upload, expected: Digest) -> None:
        try:
            await self.uploads.finish(up, expected)
        except DigestMismatch as e:
            raise OciError("DIGEST_INVALID", str(e), 400) from None
        self._blob_created(request, name, expected)

    async def _status(
        self, request: Any, name: str, upload_id: str, _arg: Callable[[bytes], str | None]
    ) -> None:
        up = await self.uploads.find(name, upload_id)
        self._upload_headers(request, name, up, 204)

    def _content_range(self, request: Any) -> tuple[int | None, int | None]:
        value = request.getHeader(b"content-range")
        if value is None:
            return None, None
        m = _CONTENT_RANGE_RE.fullmatch(value.decode("latin-1").strip())
        if m is None or decimal_less(m.group(2), m.group(1)):
            raise OciError("BLOB_UPLOAD_INVALID", "Content-Range is <start>-<end>", 400)
        return read_decimal(m.group(1)), read_decimal(m.group(2))

    async def _chunk(self, request: Any, name: str, up: Upload) -> None:
        start, end = self._content_range(request)
        try:
            await self._append(up, request, start, end)
        except BadOffset as e:
            self._upload_headers(request, name, up, 416)
            raise OciError("BLOB_UPLOAD_INVALID", str(e), 416) from None
        except BadChunk as e:
            raise OciError("BLOB_UPLOAD_INVALID", str(e), 400) from None

    async def _patch(
        self, request: Any, name: str, upload_id: str, _arg: Callable[[bytes], str | None]
    ) -> None:
        start, end = self._content_range(request)  # refused before the upload is looked up
        del start, end
        up = await self.uploads.find(name, upload_id)
        await self._chunk(request, name, up)
        self._upload_headers(request, name, up, 202)

    async def _put_blob(
        self, request: Any, name: str, upload_id: str, arg: Callable[[bytes], str | None]
    ) -> None:
        digest_text = arg(b"digest")
        if digest_text is None:
            raise OciError("DIGEST_INVALID", "finish an upload with PUT ...?digest=<digest>", 400)
        expected = _digest_arg(digest_text)
        self._content_range(request)
        up = await self.uploads.find(name, upload_id)
        await self._chunk(request, name, up)
        await self._finish(request, name, up, expected)

    async def _cancel(
        self, request: Any, name: str, upload_id: str, _arg: Callable[[bytes], str | None]
    ) -> None:
        up = await self.uploads.find(name, upload_id)
        await self.uploads.cancel(up)
        self._empty(request, 204)

    # -- deletes (proxy.api.deletes) ---------------------------------------------------

    async def _delete_manifest(
        self, request: Any, name: str, tag: str | None, digest: Digest | None
    ) -> None:
        if tag is not None:
            await self.deletes.tag(name, tag)
        else:
            assert digest is not None
            await self.deletes.manifest(name, digest)
        self._empty(request, 202)

    async def _delete_blob(self, request: Any, name: str, digest: Digest) -> None:
        await self.deletes.blob(name, digest)
        self._empty(request, 202)

    # -- manifests -------------------------------------------------------------------

    async def _put_manifest(
        self, request: Any, name: str, tag: str | None, ref_digest: Digest | None
    ) -> None:
        data = await in_thread(self._reactor, _read_small, request.content, MAX_MANIFEST)
        if data is None:
            raise OciError("SIZE_INVALID", f"a manifest has at most {MAX_MANIFEST} bytes", 413)
        content_type = request.getHeader(b"content-type")
        ctype = content_type.decode("latin-1") if content_type is not None else None
        algorithm = ref_digest.algorithm if ref_digest is not None else "sha256"
        pushed = await in_thread(self._reactor, parse_manifest, data, ctype, algorithm)
        media_type, required, digest = pushed.media_type, pushed.required, pushed.digest
        if ref_digest is not None and ref_digest != digest:
            raise OciError("DIGEST_INVALID", f"the manifest is {digest}, not {ref_digest}", 400)
        store = self.store
        held = [d.digest for d in required]
        for d in held:
            store.hold(d)
        try:
            # Under the blob lock: no GC or removal can take a blob between the
            # check and the entry that keeps it.
            is_index = media_type in artifact.INDEX_MEDIA_TYPES
            await store.blob_lock.run(
                in_thread, self._reactor, check_present, self.layout, required, is_index
            )
            manifest = Descriptor(media_type, digest, len(data))
            # Before the manifest is stored: a refused one leaves nothing behind.
            present = await in_thread(self._reactor, closure, self.layout, manifest, required)

            def put() -> Deferred[Digest]:
                return in_thread(self._reactor, self.layout.put_small_blob, data, algorithm)

            await store.blob_lock.run(put)
            store.hold(digest)
            held.append(digest)
            url, reference = push_url(name, tag, digest)
            entry = new_entry(
                url,
                KIND,
                manifest,
                present,
                manifest,
                blobs={d.digest for d in present},
                reference=reference,
            )
            old = store.get(url)
            await store.put(entry)
            self.uploads.settle(entry.blobs)
            if old is not None:
                await self._drop_orphans(old)
        finally:
            for d in held:
                store.release(d)
        log.info("pushed %s as %s (%s)", reference, digest, media_type)
        if self._after_push is not None:
            self._after_push()
        self._empty(request, 201)
        request.setHeader(b"Location", f"/v2/{name}/manifests/{digest}".encode())
        request.setHeader(b"Docker-Content-Digest", str(digest).encode())
        if pushed.subject is not None:
            # The referrers API lists it (proxy.api.referrers).
            request.setHeader(b"OCI-Subject", str(pushed.subject).encode())

    async def _drop_orphans(self, old: Entry) -> None:
        """Remove the blobs only a replaced entry used (shared ones stay)."""

        def locked() -> Deferred[int]:
            referenced = self.store.referenced()
            orphans = [b for b in old.blobs if b not in referenced]
            return in_thread(
                self._reactor, lambda: sum(self.layout.remove_blob(b) for b in orphans)
            )

        freed = await self.store.blob_lock.run(locked)
        if freed:
            log.info("replaced %s: %s freed", old.reference, human_size(freed))
