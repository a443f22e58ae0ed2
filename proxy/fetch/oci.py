"""The ``oci://`` downloader: an image or artifact from a distribution registry.

It pulls the way containerd does: resolve the reference to a manifest
(accepting OCI and Docker schema 2 manifests and indexes), pick the child for
the wanted platform out of an index (the node's own unless the URL says
``?platform=``), and fetch the config and layers that are not cached yet, a
few at a time, each streamed to ``ingest/`` and verified against its digest.
Manifests are stored byte for byte; a manifest named by tag is checked
against the ``Docker-Content-Digest`` the registry reports.

Loopback registries and those the operator lists as insecure are spoken to
over plain HTTP; all others over HTTPS.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from proxy.cache import artifact
from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import Layout, blob_ingest_key, ingest_key
from proxy.errors import (
    BadContent,
    BadRequest,
    PlatformUnavailable,
    StorageError,
    UpstreamError,
)
from proxy.fetch.auth import RegistryAuth
from proxy.fetch.base import BlobProgress, FetchResult, Job
from proxy.fetch.ociref import ImageReference, Platform, parse_oci_url
from proxy.fetch.reach import is_loopback_host
from proxy.fetch.transfer import (
    HttpClient,
    Wanted,
    download,
    header,
    retried,
    upstream_error,
)
from proxy.request import Credentials, FetchRequest
from proxy.types import (
    ANNOTATION_TITLE,
    MAX_MANIFEST,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_OCTET,
    Descriptor,
    Digest,
)

log = logging.getLogger(__name__)

MAX_TAGS = 4 * 1024 * 1024  # the largest tag list read from a registry

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({MEDIA_TYPE_IMAGE_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_TYPE_IMAGE_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join(
    [MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_IMAGE_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
).encode()
MAX_CONFIG = 4 * 1024 * 1024  # an image config read to check its platform
CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
ANNOTATION_PLATFORM = "io.nekko.storage-manager.platform"


@attrs.frozen
class Manifest:
    descriptor: Descriptor
    data: bytes
    doc: dict[str, Any] = attrs.field(eq=False)


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    """The manifest's media type: its own ``mediaType`` field, else the header,
    else inferred from its shape (OCI allows omitting the field)."""
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    ct = (content_type or "").split(";", 1)[0].strip()
    if ct in INDEX_TYPES or ct in MANIFEST_TYPES:
        return ct
    return MEDIA_TYPE_IMAGE_INDEX if "manifests" in doc else MEDIA_TYPE_IMAGE_MANIFEST


class OciFetcher:
    """Pulls images and artifacts from registries into the cache."""

    schemes: tuple[str, ...] = ("oci",)
    kind = "oci"

    def __init__(
        self,
        client: HttpClient,
        layout: Layout,
        insecure: frozenset[str] = frozenset(),
        parallel: int = 4,
        platform: Platform | None = None,
    ) -> None:
        self.client = client
        self.layout = layout
        self.insecure = insecure
        self.parallel = parallel
        self.platform = platform or Platform.running()

    def parse(self, url: str) -> ImageReference:
        """The reference a URL names (BadRequest when invalid)."""
        return parse_oci_url(url)

    def primary(self, top: Descriptor, blobs: list[Descriptor]) -> Descriptor:
        """What /content calls the entry's ``digest``: the manifest the registry named."""
        return top

    def validate(self, request: FetchRequest) -> None:
        ref = self.parse(request.url)
        self.client.policy.check_host(ref.hostname)

    def base_url(self, ref: ImageReference) -> str:
        plain = is_loopback_host(ref.hostname) or ref.endpoint in self.insecure
        plain = plain or ref.hostname in self.insecure
        return f"{'http' if plain else 'https'}://{ref.endpoint}"

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    # -- requests with registry auth ---------------------------------------------

    async def get(
        self,
        auth: RegistryAuth,
        url: str,
        job: Job,
        headers: dict[bytes, bytes],
        method: str = "GET",
    ) -> Any:
        """A request that answers the registry's 401 challenges (token flow)."""
        for _ in range(3):
            response = await self.client.get(url, job, headers, auth.authorization, method)
            if response.code != 401:
                return response
            self.client.discard(response)
            if not await auth.challenged(response, job):
                raise UpstreamError(f"{url.split('/v2/', 1)[0]} refused the credentials", 401)
        raise UpstreamError("registry kept asking for authentication", 401)

    async def fetch_manifest(
        self,
        auth: RegistryAuth,
        base: str,
        ref: ImageReference,
        target: str,
        job: Job,
        known: Descriptor | None = None,
    ) -> Manifest:
        """The manifest ``target`` names (a tag or a digest). ``known``: its
        descriptor in the index that named it; then, in a cache array, it
        comes through its owner as any blob of known digest does."""
        url = f"{base}/v2/{ref.repository}/manifests/{target}"
        if known is not None and self.client.route is not None and known.size <= MAX_MANIFEST:
            return await self._routed_manifest(auth, url, ref, known, job)
        response, data = await self._get_small(auth, url, job, {b"Accept": ACCEPT}, MAX_MANIFEST)
        return self._manifest_of(
            ref,
            target,
            data,
            header(response, b"Docker-Content-Digest"),
            header(response, b"Content-Type"),
        )

    async def _routed_manifest(
        self, auth: RegistryAuth, url: str, ref: ImageReference, known: Descriptor, job: Job
    ) -> Manifest:
        """A manifest by digest and size, fetched as a blob (through its owner,
        verified, committed), then read back."""
        accept = {b"Accept": ACCEPT}

        async def prepare(headers: dict[bytes, bytes]) -> tuple[str, dict[bytes, bytes]]:
            return url, accept

        want = Wanted(
            url=url,
            authorization=auth.authorization,
            expected=known.digest,
            size=known.size,
            immutable=True,
            prepare=prepare,
            name=f"{ref.name}@{known.digest}",
        )
        ingest = IngestFile(self.layout, blob_ingest_key(known.digest))
        progress = BlobProgress(f"manifest {known.digest.hex[:12]}", known.size)
        await download(self.client, ingest, want, job, progress)
        data = await self.client.thread(self.layout.blob_path(known.digest).read_bytes)
        return self._manifest_of(ref, str(known.digest), data, None, known.media_type)

    def _manifest_of(
        self,
        ref: ImageReference,
        target: str,
        data: bytes,
        reported: str | None,
        content_type: str | None,
    ) -> Manifest:
        digest = Digest(hashlib.sha256(data).hexdigest())
        if target.startswith("sha256:") and str(digest) != target:
            raise BadContent(f"manifest {target} has digest {digest}; rejected")
        if reported is not None and reported != str(digest):
            raise BadContent(f"manifest digest {digest} differs from the reported {reported}")
        try:
            doc = artifact.load_json(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise BadContent(f"manifest {target} is not JSON: {e}") from None
        if doc.get("schemaVersion") == 1:
            raise UpstreamError(f"{ref.name}: Docker schema 1 manifests are not supported", 415)
        media_type = _media_type(doc, content_type)
        if media_type not in INDEX_TYPES and media_type not in MANIFEST_TYPES:
            raise UpstreamError(f"{ref.name}: unsupported manifest type {media_type!r}", 415)
        return Manifest(Descriptor(media_type, digest, len(data)), data, doc)

    # -- what a mirror asks for (one request each, nothing stored) --------------------

    async def _get_small(
        self, auth: RegistryAuth, url: str, job: Job, headers: dict[bytes, bytes], limit: int
    ) -> tuple[Any, bytes]:
        """A small document (a manifest, a config) read whole, up to ``limit``
        bytes, with up to three attempts; an answer other than 200 raises."""

        async def read() -> tuple[Any, bytes]:
            response = await self.get(auth, url, job, headers)
            return response, await self.client.read_small(response, limit)

        response, data = await retried(self.client, job, read)
        if response.code != 200:
            raise upstream_error(url, response, data)
        return response, data

    def auth(self, ref: ImageReference, credentials: Credentials | None) -> RegistryAuth:
        """The token flow for one repository of one registry."""
        return RegistryAuth(self.client, ref.hostname, ref.repository, credentials)

    async def blob_range(
        self, ref: ImageReference, auth: RegistryAuth, first: int, last: int, job: Job
    ) -> Any:
        """The registry's response to a Range request for bytes ``first..last``
        of the blob ``ref`` names (its body unread: the caller relays it)."""
        url = f"{self.base_url(ref)}/v2/{ref.repository}/blobs/{ref.manifest_ref}"
        rng = {b"Range": f"bytes={first}-{last}".encode(), b"Accept-Encoding": b"identity"}
        return await self.get(auth, url, job, rng)

    async def manifest_digest(
        self, ref: ImageReference, auth: RegistryAuth, job: Job
    ) -> str | None:
        """The digest the registry reports for a manifest (a HEAD); None unless it answers 200."""
        url = f"{self.base_url(ref)}/v2/{ref.repository}/manifests/{ref.manifest_ref}"
        head = await self.get(auth, url, job, {b"Accept": ACCEPT}, "HEAD")
        self.client.discard(head)
        return header(head, b"Docker-Content-Digest") if head.code == 200 else None

    async def tags(self, ref: ImageReference, auth: RegistryAuth, job: Job) -> list[str] | None:
        """The tags the registry lists for ``ref``'s repository (its first
        page), or None when it has no such repository (404)."""
        url = f"{self.base_url(ref)}/v2/{ref.repository}/tags/list"
        try:
            _, data = await self._get_small(
                auth, url, job, {b"Accept": b"application/json"}, MAX_TAGS
            )
        except UpstreamError as e:
            if e.upstream_status == 404:
                return None
            raise
        try:
            doc = artifact.load_json(data)
        except ValueError as e:
            raise BadContent(
                f"{ref.registry}/{ref.repository}: tag list is not JSON: {e}"
            ) from None
        tags = doc.get("tags") if isinstance(doc, dict) else None
        return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    async def manifest(self, ref: ImageReference, auth: RegistryAuth, job: Job) -> Manifest:
        """The manifest ``ref`` names, checked (digest, schema, media type)."""
        return await self.fetch_manifest(auth, self.base_url(ref), ref, ref.manifest_ref, job)

    # -- the pull --------------------------------------------------------------------

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        ref = self.parse(request.url)
        base = self.base_url(ref)
        auth = RegistryAuth(self.client, ref.hostname, ref.repository, request.credentials)
        platform = ref.platform or self.platform
        top = await self.fetch_manifest(auth, base, ref, ref.manifest_ref, job)
        if request.expected is not None and top.descriptor.digest != request.expected:
            raise BadContent(f"{ref.name} is {top.descriptor.digest}, not {request.expected}")
        # Marks the pull as interrupted if it stops; removed once the entry is stored.
        marker = IngestFile(self.layout, ingest_key(request.url))
        await self.client.thread(marker.write_state, IngestState(url=request.url, kind=self.kind))
        job.after_commit(marker.discard)
        manifests = [top]
        current = top
        for _depth in range(2):
            if current.descriptor.media_type not in INDEX_TYPES:
                break
            child = self._select(current, platform, ref)
            current = await self.fetch_manifest(auth, base, ref, str(child.digest), job, child)
            if current.descriptor.digest != child.digest:
                raise BadContent(f"child manifest {child.digest} has another digest")
            manifests.append(current)
        if current.descriptor.media_type not in MANIFEST_TYPES:
            raise UpstreamError(f"{ref.name}: nested indexes deeper than 2 are not supported")
        try:
            blobs = artifact.children(current.descriptor.media_type, current.data)
        except ValueError as e:
            raise BadContent(f"{ref.name}: unusable manifest: {e}") from None
        blobs = [b for b in blobs if b.media_type not in artifact.MANIFEST_MEDIA_TYPES]
        if ref.platform is not None and len(manifests) == 1:
            # No index to choose from: the image's config says what platform it is.
            await self._check_platform(auth, base, ref, ref.platform, current, job)
        for m in manifests:
            await job.put_blob(m.data)
        await self._fetch_blobs(auth, base, ref, blobs, job)
        files = tuple([m.descriptor for m in manifests] + _unique(blobs))
        annotations = {ANNOTATION_PLATFORM: str(platform)} if len(manifests) > 1 else {}
        return FetchResult(
            files=files,
            primary=self.primary(top.descriptor, blobs),
            kind=self.kind,
            manifest=top.descriptor,
            reference=ref.name,
            annotations=annotations,
        )

    async def _check_platform(
        self,
        auth: RegistryAuth,
        base: str,
        ref: ImageReference,
        platform: Platform,
        manifest: Manifest,
        job: Job,
    ) -> None:
        """PlatformUnavailable when a single image's config names another platform
        (as ``docker pull --platform``); a config without one (an artifact) passes."""
        config = manifest.doc.get("config")
        try:
            desc = Descriptor.from_json(config)
        except ValueError:
            return
        if desc.media_type not in CONFIG_TYPES:
            return
        if desc.size > MAX_CONFIG:
            raise UpstreamError(
                f"{ref.name}: its config ({desc.size} bytes) is too large to check its platform"
            )
        data = await self._small_blob(auth, base, ref, desc, job)
        try:
            doc = artifact.load_json(data)
        except ValueError:
            raise BadContent(f"{ref.name}: config {desc.digest} is not JSON") from None
        if not isinstance(doc, dict) or not doc.get("architecture") or not doc.get("os"):
            return
        found = {k: doc.get(k) for k in ("os", "architecture", "variant") if doc.get(k)}
        if not platform.matches(found):
            have = "/".join(str(v) for v in found.values())
            raise PlatformUnavailable(
                f"{ref.name} is {have} only: it does not match the specified platform {platform}"
            )
        await job.put_blob(data)  # checked: kept, not fetched again

    async def _small_blob(
        self, auth: RegistryAuth, base: str, ref: ImageReference, desc: Descriptor, job: Job
    ) -> bytes:
        """A small blob (a config) in memory, verified against its digest."""
        url = f"{base}/v2/{ref.repository}/blobs/{desc.digest}"
        _, data = await self._get_small(auth, url, job, {}, MAX_CONFIG)
        if hashlib.sha256(data).hexdigest() != desc.digest.hex:
            raise BadContent(f"{ref.name}: config {desc.digest} has another digest; rejected")
        return data

    def _select(self, index: Manifest, platform: Platform, ref: ImageReference) -> Descriptor:
        available = []
        for item in index.doc.get("manifests") or []:
            try:
                desc = Descriptor.from_json(item)
            except ValueError as e:
                raise BadContent(f"{ref.name}: bad index entry: {e}") from None
            plat = item.get("platform") if isinstance(item, dict) else None
            if isinstance(plat, dict):
                available.append(
                    "/".join(
                        str(plat.get(k)) for k in ("os", "architecture", "variant") if plat.get(k)
                    )
                )
            if platform.matches(plat):
                return desc
        raise PlatformUnavailable(
            f"{ref.name} does not match the specified platform {platform}: "
            f"no manifest for it in the index (it has: {', '.join(available) or 'none'})"
        )

    async def _fetch_blobs(
        self, auth: RegistryAuth, base: str, ref: ImageReference, blobs: list[Descriptor], job: Job
    ) -> None:
        todo: list[Descriptor] = []
        for b in _unique(blobs):
            size = await job.hold_existing(b.digest)
            if size is None:
                todo.append(b)
            elif size != b.size:
                raise BadContent(f"cached blob {b.digest} has {size} bytes, manifest says {b.size}")
            else:
                p = job.progress.add(_title(b), b.size)
                p.complete(b.digest, size)
        slots = DeferredSemaphore(self.parallel)
        failures: list[BaseException] = []

        async def one(desc: Descriptor) -> None:
            if failures:
                return
            try:
                await self._blob(auth, base, ref, desc, job)
            except BaseException as e:
                failures.append(e)
                raise

        ds = [slots.run(one, desc) for desc in todo]
        await DeferredList(ds, consumeErrors=True)
        if failures:
            # The first failure explains; cancelled siblings follow from it.
            first = next((f for f in failures if isinstance(f, StorageError)), failures[0])
            raise first

    async def _blob(
        self, auth: RegistryAuth, base: str, ref: ImageReference, desc: Descriptor, job: Job
    ) -> None:
        await self.blob(auth, base, ref, desc.digest, desc.size, _title(desc), job)

    async def blob(
        self,
        auth: RegistryAuth,
        base: str,
        ref: ImageReference,
        digest: Digest,
        size: int | None,
        title: str,
        job: Job,
    ) -> int:
        """Fetch one blob into blobs/ (verified); return its size."""
        url = f"{base}/v2/{ref.repository}/blobs/{digest}"
        ingest = IngestFile(self.layout, blob_ingest_key(digest))
        progress = job.progress.add(title, size)
        for attempt in range(2):
            if attempt > 0:
                # The token expired mid-pull: a HEAD answers the new challenge.
                auth.reset()
                response = await self.get(auth, url, job, {}, method="HEAD")
                self.client.discard(response)
            want = Wanted(
                url=url,
                authorization=auth.authorization,
                expected=digest,
                size=size,
                immutable=True,
            )
            try:
                _, got = await download(self.client, ingest, want, job, progress)
                return got
            except UpstreamError as e:
                if e.upstream_status != 401:
                    raise
        raise UpstreamError(f"registry refused blob {digest}", 401)


def _unique(descs: list[Descriptor]) -> list[Descriptor]:
    seen: set[Digest] = set()
    out = []
    for d in descs:
        if d.digest not in seen:
            seen.add(d.digest)
            out.append(d)
    return out


def _title(desc: Descriptor) -> str:
    title = desc.annotations.get("org.opencontainers.image.title")
    return title or f"{desc.media_type.rsplit('.', 1)[-1]} {desc.digest.hex[:12]}"


class OciBlobFetcher(OciFetcher):
    """One blob by digest: ``oci-blob://<registry>/<repository>@sha256:<hex>``.

    What the mirror fills when a client asks for a blob the cache lacks
    (nydusd reads blobs without ever fetching a manifest); as an entry it is a
    one-file artifact, so it is listed, deleted and collected like the rest.
    """

    schemes: tuple[str, ...] = ("oci-blob",)
    kind = "blob"

    def parse(self, url: str) -> ImageReference:
        if not url.startswith("oci-blob://"):
            raise BadRequest("not an oci-blob:// URL")
        ref = parse_oci_url("oci://" + url[len("oci-blob://") :])
        if ref.digest is None or ref.tag is not None or ref.platform is not None:
            raise BadRequest(
                "oci-blob:// names one blob: oci-blob://<registry>/<repo>@sha256:<hex>"
            )
        return ref

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        ref = self.parse(request.url)
        assert ref.digest is not None
        auth = RegistryAuth(self.client, ref.hostname, ref.repository, request.credentials)
        title = str(ref.digest)
        size = await job.hold_existing(ref.digest)
        if size is None:
            size = await self.blob(auth, self.base_url(ref), ref, ref.digest, None, title, job)
        desc = Descriptor(MEDIA_TYPE_OCTET, ref.digest, size, {ANNOTATION_TITLE: title})
        return FetchResult(files=(desc,), primary=desc, kind=self.kind)
