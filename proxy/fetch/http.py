"""The http:// and https:// downloader: one file per URL.

Credentials become the Authorization header (Bearer by default, or Basic with
base64 ``user:pass``) for the URL's own origin only. The transfer itself --
redirects, resume with ``If-Range``, retries, hashing -- is
:func:`proxy.fetch.transfer.download`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from proxy.cache import grammar
from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout, ingest_key
from proxy.errors import BadRequest
from proxy.fetch.base import FetchResult, Job
from proxy.fetch.transfer import HttpClient, Wanted, download
from proxy.request import FetchRequest
from proxy.types import ANNOTATION_TITLE, MEDIA_TYPE_OCTET, Descriptor, Digest


def title_from_url(url: str) -> str:
    parts = urlsplit(url)
    name = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return grammar.safe_name(name or (parts.hostname or "index"), "index")


class HttpFetcher:
    """Downloads http(s) URLs into the cache."""

    schemes: tuple[str, ...] = ("http", "https")

    def __init__(self, client: HttpClient, layout: Layout) -> None:
        self.client = client
        self.layout = layout

    def validate(self, request: FetchRequest) -> None:
        parts = urlsplit(request.url)
        if not parts.hostname:
            raise BadRequest(f"URL has no host: {request.url}")
        self.client.policy.check_host(parts.hostname)

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        title = title_from_url(request.url)
        ingest = IngestFile(self.layout, ingest_key(request.url))
        blob = job.progress.add(title)

        def done(digest: Digest, size: int) -> FetchResult:
            blob.complete(digest, size)
            desc = Descriptor(MEDIA_TYPE_OCTET, digest, size, {ANNOTATION_TITLE: title})
            return FetchResult(files=(desc,), primary=desc, kind="file")

        # Content already cached under the expected digest: nothing to fetch.
        if request.expected is not None:
            size = await job.hold_existing(request.expected)
            if size is not None:
                job.after_commit(ingest.discard)
                return done(request.expected, size)
        # A download verified before a crash is adopted by download() itself.
        creds = request.credentials
        want = Wanted(
            name=request.url,
            url=request.fetch_url,
            authorization=creds.authorization() if creds else None,
            expected=request.expected,
        )
        digest, size = await download(self.client, ingest, want, job, blob)
        return done(digest, size)
