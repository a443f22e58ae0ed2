"""The http:// and https:// downloader.

One file per URL. Credentials become the Authorization header (Bearer by
default, or Basic with base64 ``user:pass``) and are sent only to the URL's
own origin: a redirect to another scheme, host or port drops them. Redirects
are followed by hand (at most :data:`MAX_REDIRECTS`, loops refused) so that
every hop is checked by the reach policy at connect time.

Resume: the partial file in ``ingest/`` is continued with ``Range`` and
``If-Range`` (the strong ETag, else Last-Modified, recorded when the download
started); a server that answers 200 instead starts the file over. Without a
validator a partial file is not trusted and the download starts over.
Transient failures (connection cut, stalled body, 5xx) are retried a bounded
number of times with exponential backoff, resuming each time.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import attrs
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import Layout, ingest_key, is_disk_full
from proxy.errors import (
    BadContent,
    BadRequest,
    DiskFull,
    StorageError,
    TargetDenied,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.fetch.base import FetchRequest, FetchResult, Job
from proxy.fetch.reach import GuardedEndpointFactory, ReachPolicy
from proxy.fetch.stream import BodyCut, stream_body
from proxy.redact import redact_url
from proxy.types import ANNOTATION_TITLE, MEDIA_TYPE_OCTET, Descriptor, Digest

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
USER_AGENT = b"storage-manager/0.1 (+https://github.com/aifoundry-org/storage-manager)"
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@attrs.frozen
class HttpOptions:
    idle_timeout: float = 60.0
    connect_timeout: float = 30.0
    attempts: int = 4
    backoff: float = 0.5  # first retry delay; doubles each time


def origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return (p.scheme.lower(), (p.hostname or "").lower(), port)


def title_from_url(url: str) -> str:
    path = urlsplit(url).path
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name or (urlsplit(url).hostname or "index")


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


class _Retry(Exception):
    """Internal: the attempt failed in a way worth another try."""

    def __init__(self, cause: StorageError) -> None:
        super().__init__(cause.message)
        self.cause = cause


class HttpFetcher:
    """Downloads http(s) URLs into the cache."""

    schemes: tuple[str, ...] = ("http", "https")

    def __init__(
        self,
        reactor: Any,
        layout: Layout,
        policy: ReachPolicy,
        options: HttpOptions | None = None,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        import treq.client

        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._threads: IReactorThreads = reactor
        self.layout = layout
        self.policy = policy
        self.options = options or HttpOptions()
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8
        agent = Agent.usingEndpointFactory(
            reactor, GuardedEndpointFactory(reactor, policy, self.options.connect_timeout), pool
        )
        self._client = treq.client.HTTPClient(agent)

    def validate(self, request: FetchRequest) -> None:
        parts = urlsplit(request.url)
        if not parts.hostname:
            raise BadRequest(f"URL has no host: {request.url}")
        self.policy.check_host(parts.hostname)

    def _thread(self, f: Any, *a: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threads.getThreadPool(), f, *a)

    # -- the request, with redirects -----------------------------------------

    async def _get(self, request: FetchRequest, headers: dict[bytes, bytes], job: Job) -> Any:
        url = request.url
        home = origin(url)
        seen: set[str] = set()
        for _hop in range(MAX_REDIRECTS + 1):
            h = Headers({b"User-Agent": [USER_AGENT], **{k: [v] for k, v in headers.items()}})
            if request.credentials is not None and origin(url) == home:
                h.setRawHeaders(b"Authorization", [request.credentials.authorization()])
            self.policy.check_host(urlsplit(url).hostname or "")
            d = self._client.request("GET", url, headers=h, allow_redirects=False, unbuffered=True)
            job.on_abort(d.cancel)
            try:
                response = await d
            except UpstreamUnreachable as e:
                job.check_cancelled()
                raise _Retry(e) from None
            except StorageError:
                raise
            except Exception as e:
                job.check_cancelled()
                cause = e
                if isinstance(e, ResponseFailed) and e.reasons:
                    cause = e.reasons[0].value
                if isinstance(cause, StorageError):
                    raise cause from None
                if isinstance(cause, SSL.Error):
                    # Certificate or protocol problems do not go away on retry.
                    tls = UpstreamUnreachable(f"TLS with {urlsplit(url).netloc} failed: {cause}")
                    raise tls from None
                raise _Retry(UpstreamUnreachable(f"{urlsplit(url).netloc}: {cause}")) from None
            finally:
                job.on_abort(None)
            if response.code in (301, 302, 303, 307, 308):
                location = _header(response, b"Location")
                response.deliverBody(_Discard())
                if not location:
                    raise UpstreamError(f"redirect without Location from {url}", response.code)
                seen.add(url)
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise TargetDenied(f"redirect to a non-http URL scheme: {urlsplit(url).scheme}")
                if url in seen:
                    raise UpstreamError(f"redirect loop at {url}", response.code)
                log.debug("redirected to %s", redact_url(url))
                continue
            return response
        raise UpstreamError(f"more than {MAX_REDIRECTS} redirects", 310)

    # -- one attempt -----------------------------------------------------------

    async def _attempt(self, request: FetchRequest, ingest: IngestFile, job: Job) -> IngestState:
        blob = job.progress.blobs[0]
        state: IngestState | None = await self._thread(ingest.read_state)
        offset = 0
        headers: dict[bytes, bytes] = {b"Accept-Encoding": b"identity"}
        if state is not None and state.url == request.url:
            validator = state.etag if state.etag and not state.etag.startswith("W/") else None
            validator = validator or state.last_modified
            on_disk = await self._thread(ingest.bytes_on_disk)
            if validator and on_disk > 0:
                offset = on_disk
                headers[b"Range"] = f"bytes={offset}-".encode()
                headers[b"If-Range"] = validator.encode("latin-1")
        response = await self._get(request, headers, job)
        code = response.code
        etag = _header(response, b"ETag")
        last_modified = _header(response, b"Last-Modified")
        length = _header(response, b"Content-Length")
        if code == 206 and offset > 0:
            m = _CONTENT_RANGE_RE.fullmatch(_header(response, b"Content-Range") or "")
            if m is None or int(m.group(1)) != offset:
                response.deliverBody(_Discard())
                await self._thread(ingest.discard)
                raise _Retry(UpstreamError("server answered a different range; starting over"))
            assert state is not None
            if m.group(3) != "*":
                state.total = int(m.group(3))
            await self._thread(ingest.open, True)
            log.info("resuming %s at byte %d", redact_url(request.url), offset)
        elif code == 416 and offset > 0:
            response.deliverBody(_Discard())
            m = re.fullmatch(r"bytes \*/(\d+)", _header(response, b"Content-Range") or "")
            assert state is not None
            if m is not None and int(m.group(1)) == offset:
                await self._thread(ingest.open, True)
                state.total = offset
                blob.total = blob.done = offset
                return state
            await self._thread(ingest.discard)
            raise _Retry(UpstreamError("partial download no longer matches; starting over"))
        elif code == 200:
            total = int(length) if length and length.isdigit() else None
            state = IngestState(
                url=request.url,
                etag=etag,
                last_modified=last_modified,
                total=total,
                expected=str(request.expected) if request.expected else None,
            )
            await self._thread(ingest.write_state, state)
            await self._thread(ingest.open, False)
        else:
            response.deliverBody(_Discard())
            phrase = response.phrase.decode("latin-1", "replace")
            msg = f"{urlsplit(request.url).netloc} answered {code} {phrase}"
            if 500 <= code < 600 or code == 429:
                raise _Retry(UpstreamError(msg, code))
            raise UpstreamError(msg, code)
        blob.total = state.total
        blob.done = ingest.offset

        def on_bytes(n: int) -> None:
            blob.done += n

        try:
            framed = await stream_body(
                response,
                self._clock,
                self._threads,
                ingest,
                self.options.idle_timeout,
                on_bytes,
                job.on_abort,
            )
        except BodyCut as e:
            job.check_cancelled()
            cut = UpstreamUnreachable(f"connection lost after {blob.done} bytes: {e}")
            raise _Retry(cut) from None
        except UpstreamTimeout as e:
            job.check_cancelled()
            raise _Retry(e) from None
        finally:
            job.on_abort(None)
        job.check_cancelled()
        if not framed:
            log.debug("%s: body ended by connection close", redact_url(request.url))
        return state

    # -- the download ----------------------------------------------------------

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        title = title_from_url(request.url)
        ingest = IngestFile(self.layout, ingest_key(request.url))
        blob = job.progress.add(title)

        def done(digest: Digest, size: int) -> FetchResult:
            blob.digest, blob.done, blob.total, blob.state = digest, size, size, "complete"
            desc = Descriptor(MEDIA_TYPE_OCTET, digest, size, {ANNOTATION_TITLE: title})
            return FetchResult(files=(desc,), primary=desc, kind="file")

        # Content already cached under the expected digest: nothing to fetch.
        if request.expected is not None:
            size = await job.hold_existing(request.expected)
            if size is not None:
                job.after_commit(ingest.discard)
                return done(request.expected, size)
        # A previous run verified the data and stopped before the entry was stored.
        state = await self._thread(ingest.read_state)
        if state is not None and state.verified and state.url == request.url:
            size = await job.hold_existing(Digest.parse(state.verified))
            if size is not None:
                job.after_commit(ingest.discard)
                return done(Digest.parse(state.verified), size)

        delay = self.options.backoff
        attempt = 0
        while True:
            attempt += 1
            job.check_cancelled()
            try:
                state = await self._attempt(request, ingest, job)
                break
            except _Retry as r:
                await self._thread(ingest.close)
                if attempt >= self.options.attempts:
                    raise r.cause from None
                log.warning(
                    "%s: %s; retry %d/%d in %.1f s",
                    redact_url(request.url),
                    r.cause.message,
                    attempt,
                    self.options.attempts - 1,
                    delay,
                )
                await self._sleep(delay, job)
                delay *= 2
            except OSError as e:
                await self._thread(ingest.close)
                if is_disk_full(e):
                    await self._thread(ingest.discard)
                    raise DiskFull(f"no space left in the cache for {title}") from None
                raise
            except BaseException:
                await self._thread(ingest.close)
                raise
        digest, size = await self._thread(ingest.finish)
        if state.total is not None and size != state.total:
            await self._thread(ingest.close)
            raise UpstreamUnreachable(f"body ended after {size} of {state.total} bytes")
        if request.expected is not None and digest != request.expected:
            await self._thread(ingest.discard)
            raise BadContent(
                f"{title}: content has digest {digest}, expected {request.expected}; discarded"
            )
        state.verified = str(digest)
        await self._thread(ingest.write_state, state)
        await job.commit(ingest, digest)
        return done(digest, size)

    def _sleep(self, seconds: float, job: Job) -> Deferred[None]:
        d: Deferred[None] = deferLater(self._clock, seconds, lambda: None)
        job.on_abort(d.cancel)

        def cleared(r: Any) -> Any:
            job.on_abort(None)
            job.check_cancelled()
            return r

        return d.addBoth(cleared)


class _Discard:
    """A body protocol that drops the body (to free the connection)."""

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
