"""HTTP transfers into the cache, shared by every downloader that speaks HTTP.

:class:`HttpClient` sends GETs through the reach guard (every hop checked at
connect time), follows redirects by hand (at most :data:`MAX_REDIRECTS`,
loops refused) and sends the Authorization header only to the origin it was
meant for: a redirect to another scheme, host or port drops it.

:func:`download` streams one body into an ingest file and makes it a
verified blob. It resumes from the bytes already on disk: for content named
by its digest (``immutable``) with a plain ``Range`` -- the digest check at
the end catches any mix -- and otherwise with ``Range`` + ``If-Range`` on the
strong ETag or Last-Modified recorded when the transfer began (a server that
answers 200 starts the file over; without a validator nothing is resumed).
Cuts, stalls, 429 and 5xx are retried a bounded number of times with
exponential backoff, resuming each time.

A blob whose digest is known before it is fetched may come from somewhere
nearer than its origin first: the client's :class:`BlobRoute` (the cache
array's owner of the digest, :mod:`proxy.service.peerroute`). While it is
written, the blob is announced to the job's writers (readers follow it as it
grows: a peer's request, a mirror client).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol
from urllib.parse import urljoin, urlsplit

import attrs
import treq
import treq.client
from hyperlink import EncodedURL
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import blob_ingest_key, is_disk_full
from proxy.errors import (
    BadContent,
    DiskFull,
    Redirected,
    SourceChanged,
    StorageError,
    TargetDenied,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.fetch.base import BlobProgress, Job
from proxy.fetch.outbound import OutboundAgent
from proxy.fetch.proxyenv import ProxyConfig
from proxy.fetch.reach import ReachPolicy
from proxy.fetch.stream import BodyCut, stream_body
from proxy.metrics import INGESTED, ORIGIN_BYTES, PEER_BYTES
from proxy.redact import redact_url
from proxy.types import Digest

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
MAX_BACKOFF = 30.0  # seconds: the longest pause between two attempts
USER_AGENT = b"storage-manager/0.1"
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REDIRECTS = (301, 302, 303, 307, 308)


class _IPv6LiteralURL(EncodedURL):
    """A URL whose host is an IPv6 literal: treq makes every URL ASCII with
    hyperlink's ``to_uri``, whose IDNA encoding of the host refuses the
    colons of ``[::1]`` (a 500 for any such URL); the host is kept as it is,
    the path and query are encoded as usual."""

    def to_uri(self) -> EncodedURL:
        host = self.host
        ascii_url: EncodedURL = EncodedURL.to_uri(self.replace(host="ipv6-literal.invalid"))
        return ascii_url.replace(host=host)


@attrs.frozen
class TransferOptions:
    idle_timeout: float = 60.0
    connect_timeout: float = 30.0
    attempts: int = 4
    backoff: float = 0.5  # first retry delay; doubles each time, up to MAX_BACKOFF

    def pause(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return float(min(self.backoff * 2**attempt, MAX_BACKOFF))


def gave_up(error: StorageError, attempts: int) -> StorageError:
    """``error``, its message saying how many attempts were made before giving up."""
    if attempts > 1:
        error.message = f"{error.message} (gave up after {attempts} attempts)"
        error.args = (error.message,)
    return error


class Retryable(Exception):
    """An attempt failed in a way worth another try (after a pause)."""

    def __init__(self, cause: StorageError) -> None:
        super().__init__(cause.message)
        self.cause = cause


async def retried(
    client: HttpClient, job: Job, attempt: Callable[[], Awaitable[T]], tries: int = 3
) -> T:
    """``attempt()``, made again after a pause (``client.options.pause``) when
    it raises :class:`Retryable`, ``tries`` times at most; then its cause,
    saying how many attempts were made."""
    for n in range(tries):
        try:
            return await attempt()
        except Retryable as r:
            if n == tries - 1:
                raise gave_up(r.cause, n + 1) from None
            await client.sleep(client.options.pause(n), job)
    raise AssertionError("unreachable")


def origin(url: str) -> tuple[str, str, int]:
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return (p.scheme.lower(), (p.hostname or "").lower(), port)


def header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def content_length(response: Any) -> int | None:
    """The body length a response announced.

    Twisted keeps Content-Length out of ``response.headers`` (it is a
    connection-control header) and gives it as ``response.length`` instead.
    """
    value = header(response, b"Content-Length")
    if value is not None and value.isdigit():
        return int(value)
    method = getattr(getattr(response, "request", None), "method", None)
    length = getattr(response, "length", None)
    return length if isinstance(length, int) and method != b"HEAD" else None


def upstream_error(url: str, response: Any, body: bytes = b"") -> UpstreamError:
    """An error for a non-success answer, with the server's own message if it
    sent one in the OCI error format."""
    phrase = response.phrase.decode("latin-1", "replace")
    msg = f"{urlsplit(url).netloc} answered {response.code} {phrase}"
    try:
        errors = json.loads(body)["errors"]
        detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors[:3])
        if detail:
            msg += f" ({detail})"
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return UpstreamError(msg, response.code)


class BlobRoute(TypingProtocol):
    """Where a blob of known digest is fetched before its origin."""

    async def fetch(
        self, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
    ) -> tuple[Digest, int] | None:
        """The blob, verified and committed through ``job``; None: fetch it
        from its origin (``ingest`` then holds whatever bytes arrived)."""


class SharedTierRoute(TypingProtocol):
    """The shared store as a tier (:class:`proxy.service.sharedtier.SharedTier`)."""

    async def fetch(
        self, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
    ) -> tuple[Digest, int] | None:
        """The blob from the store, verified and committed; None: not there."""

    async def before_origin(
        self, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
    ) -> tuple[tuple[Digest, int] | None, Any]:
        """Cluster single flight: (the blob, if another node's fetch put it
        in the store meanwhile; the lease taken, or None)."""

    def renewing(self, lease: Any) -> Callable[[], Any]:
        """Keep ``lease`` alive until the returned function is called."""

    def fetched(self, lease: Any, ok: bool) -> None:
        """The origin fetch under ``lease`` ended (uploads it, then releases)."""


class HttpClient:
    """Outbound HTTP for the fetchers (treq over :class:`OutboundAgent`: the
    reach guard, and the environment's forward proxy)."""

    # With --peers: blobs of known digest are asked of their owner first.
    route: BlobRoute | None = None
    # With --shared-store: blobs of known digest are looked up there before
    # the route and the origin (proxy.service.sharedtier.SharedTier).
    tier: SharedTierRoute | None = None

    def __init__(
        self,
        reactor: Any,
        policy: ReachPolicy,
        options: TransferOptions | None = None,
        pool: HTTPConnectionPool | None = None,
        proxies: ProxyConfig | None = None,
        trust: Any = None,
    ) -> None:
        self.reactor = reactor
        self.policy = policy
        self.options = options or TransferOptions()
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8
        agent = OutboundAgent(
            reactor, policy, proxies or ProxyConfig(), pool, self.options.connect_timeout, trust
        )
        self._treq = treq.client.HTTPClient(agent)

    def thread(self, f: Any, *a: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *a)

    async def get(
        self,
        url: str,
        job: Job,
        headers: dict[bytes, bytes] | None = None,
        authorization: bytes | None = None,
        method: str = "GET",
        cross_origin_redirects: bool = True,
        private: dict[bytes, bytes] | None = None,
    ) -> Any:
        """Send a request, following redirects; return the final response
        (any status). ``authorization`` and the ``private`` headers (a
        request signature, a session token) go only to ``url``'s own origin.
        With ``cross_origin_redirects=False`` a redirect to another origin is
        returned as it is (its headers may be what the caller wants)."""
        home = origin(url)
        seen: set[str] = set()
        for _hop in range(MAX_REDIRECTS + 1):
            h = Headers({b"User-Agent": [USER_AGENT]})
            for k, v in (headers or {}).items():
                h.setRawHeaders(k, [v])
            if origin(url) == home:
                if authorization is not None:
                    h.setRawHeaders(b"Authorization", [authorization])
                for k, v in (private or {}).items():
                    h.setRawHeaders(k, [v])
            self.policy.check_host(urlsplit(url).hostname or "", origin(url)[2])
            response = await self._send(method, url, h, job)
            if response.code not in _REDIRECTS:
                return response
            location = header(response, b"Location")
            other_origin = location and origin(urljoin(url, location)) != origin(url)
            if other_origin and not cross_origin_redirects:
                return response
            self.discard(response)
            if not location:
                raise UpstreamError(f"redirect without Location from {url}", response.code)
            seen.add(url)
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise TargetDenied(f"redirect to a non-http URL scheme: {urlsplit(url).scheme}")
            if url in seen:
                raise UpstreamError(f"redirect loop at {redact_url(url)}", response.code)
            log.debug("redirected to %s", redact_url(url))
        raise UpstreamError(f"more than {MAX_REDIRECTS} redirects", 310)

    async def _send(self, method: str, url: str, h: Headers, job: Job) -> Any:
        target: str | EncodedURL = url
        if ":" in (urlsplit(url).hostname or ""):
            target = _IPv6LiteralURL.from_text(url)
        d = self._treq.request(method, target, headers=h, allow_redirects=False, unbuffered=True)
        remove = job.abortable(d.cancel)
        netloc = urlsplit(url).netloc
        # An upstream that accepts the request and never answers is as stalled as a body
        # that stops: the idle timeout covers the wait for the status line and headers too.
        idle = self.options.idle_timeout
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.reactor.callLater(idle, expire)
        try:
            return await self._answer(d, netloc, job)
        except Exception:
            if expired:
                job.check_cancelled()
                raise Retryable(UpstreamTimeout(f"{netloc}: no answer for {idle:g} s")) from None
            raise
        finally:
            if timer.active():
                timer.cancel()
            remove()

    async def _answer(self, d: Deferred[Any], netloc: str, job: Job) -> Any:
        """The response ``d`` gives, its failures mapped to errors (Retryable or not)."""
        try:
            return await d
        except UpstreamUnreachable as e:
            job.check_cancelled()
            raise Retryable(e) from None
        except StorageError:
            raise
        except Exception as e:
            job.check_cancelled()
            cause: BaseException = e
            if isinstance(e, ResponseFailed) and e.reasons:
                cause = e.reasons[0].value
            if isinstance(cause, StorageError):
                raise cause from None
            if isinstance(cause, (SSL.Error, VerificationError)):
                # Certificate (also its name) or protocol problems do not go away on retry.
                raise UpstreamUnreachable(f"TLS with {netloc} failed: {cause}") from None
            raise Retryable(UpstreamUnreachable(f"{netloc}: {cause}")) from None

    def discard(self, response: Any) -> None:
        """Drop a body we do not want (frees the connection)."""
        response.deliverBody(_Discard())

    async def read_small(self, response: Any, limit: int) -> bytes:
        """Read a small body (manifest, token, error) into memory, at most ``limit``."""
        length = content_length(response)
        if length is not None and length > limit:
            self.discard(response)
            raise UpstreamError(f"answer of {length} bytes is larger than {limit}")
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > limit:
                raise UpstreamError(f"answer larger than {limit} bytes")
            chunks.append(data)

        if response.length == 0:
            return b""
        idle = self.options.idle_timeout
        receiver = _SmallBody(self.reactor, idle, collect)
        response.deliverBody(receiver)
        try:
            await receiver.done
        except ResponseFailed as e:
            raise Retryable(UpstreamUnreachable(f"connection lost while reading: {e}")) from None
        if receiver.timed_out:
            uri = getattr(getattr(response, "request", None), "absoluteURI", None) or b""
            where = urlsplit(bytes(uri).decode("latin-1")).netloc or "upstream"
            raise Retryable(UpstreamTimeout(f"{where}: no data for {idle:g} s")) from None
        return b"".join(chunks)

    def sleep(self, seconds: float, job: Job) -> Deferred[None]:
        return cancellable_sleep(self.reactor, seconds, job)


def cancellable_sleep(clock: IReactorTime, seconds: float, job: Job) -> Deferred[None]:
    """A pause of ``seconds`` on ``clock`` that cancelling ``job`` cuts short
    (then :class:`~proxy.errors.Cancelled`, by ``job.check_cancelled``)."""
    d: Deferred[None] = deferLater(clock, seconds, lambda: None)
    remove = job.abortable(d.cancel)

    def cleared(r: Any) -> Any:
        remove()
        job.check_cancelled()
        return r

    return d.addBoth(cleared)


@attrs.frozen
class Wanted:
    """What to download: the URL, its credentials, what it must turn out to be."""

    url: str
    authorization: bytes | None = None
    expected: Digest | None = None
    size: int | None = None
    immutable: bool = False  # named by its digest: resume without validators
    name: str | None = None  # what ingest state records instead of a secret-bearing url
    # Object stores: every request carries If-Match on the ETag the object had when
    # the download began, resumes need that ETag, and 412 (changed) is SourceChanged.
    if_match: str | None = None
    # Builds the error of a non-success answer (e.g. from an S3 error document).
    error: Callable[[Any, bytes], StorageError] | None = attrs.field(default=None, eq=False)
    # Signs each attempt once its headers (Range, If-Match) are known: returns the
    # URL to send it to and the headers only that origin may see.
    prepare: Callable[[dict[bytes, bytes]], Awaitable[tuple[str, dict[bytes, bytes]]]] | None = (
        attrs.field(default=None, eq=False)
    )
    # Whether the client's BlobRoute may serve it first (False: a peer's own
    # request, or what a peer asked of this node: one hop).
    via_peers: bool = True
    source: str = "origin"  # where the bytes come from, as counted: origin | peer
    # False: a redirect to another origin is the answer (raised as Redirected).
    follow_redirects: bool = True

    @property
    def recorded(self) -> str:
        return self.name or self.url


async def _attempt(
    client: HttpClient, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
) -> IngestState:
    """One request for ``want``, resuming from the bytes on disk when the
    source can be trusted to send the rest of the same file; its body
    streamed into ``ingest``. Retryable when another attempt may succeed."""
    state, offset, headers = await _resume_point(client, ingest, want)
    url, private = want.url, None
    if want.prepare is not None:
        url, private = await want.prepare(headers)
    response = await client.get(
        url,
        job,
        headers,
        want.authorization,
        private=private,
        cross_origin_redirects=want.follow_redirects,
    )
    code = response.code
    if code == 412 and want.if_match is not None:
        client.discard(response)
        await client.thread(ingest.discard)
        raise SourceChanged(f"{want.recorded} changed while it was being fetched")
    if code == 206 and offset > 0 and state is not None:
        await _resumed(client, ingest, want, response, state, offset)
    elif code == 416 and offset > 0 and state is not None:
        await _past_the_end(client, ingest, response, state, offset)
        state.total = blob.total = blob.done = offset
        return state  # the bytes on disk were already the whole file
    elif code == 200:
        state = await _from_the_start(client, ingest, want, response, offset)
    else:
        raise await _refused(client, want, response)
    await _check_size_and_reserve(client, ingest, want, job, blob, response, state)
    await _stream(client, ingest, job, blob, response, state, want.source)
    return state


async def _resume_point(
    client: HttpClient, ingest: IngestFile, want: Wanted
) -> tuple[IngestState | None, int, dict[bytes, bytes]]:
    """(what ingest recorded, the offset to resume at, the request headers):
    a resume needs the same source (or content named by its digest) and a
    validator for ``If-Range`` (or the object store's ``If-Match``)."""
    state: IngestState | None = await client.thread(ingest.read_state)
    offset = 0
    headers: dict[bytes, bytes] = {b"Accept-Encoding": b"identity"}
    if state is not None and (want.immutable or state.url == want.recorded):
        on_disk: int = await client.thread(ingest.bytes_on_disk)
        if want.immutable:
            validator = None
            resumable = on_disk > 0
        elif want.if_match is not None:
            validator = None  # If-Match goes on every request, below
            resumable = on_disk > 0 and state.etag == want.if_match
        else:
            validator = state.etag if state.etag and not state.etag.startswith("W/") else None
            validator = validator or state.last_modified
            resumable = bool(validator) and on_disk > 0
        if resumable:
            offset = on_disk
            headers[b"Range"] = f"bytes={offset}-".encode()
            if validator:
                headers[b"If-Range"] = validator.encode("latin-1")
    if want.if_match is not None:
        headers[b"If-Match"] = want.if_match.encode("latin-1")
    return state, offset, headers


async def _resumed(
    client: HttpClient,
    ingest: IngestFile,
    want: Wanted,
    response: Any,
    state: IngestState,
    offset: int,
) -> None:
    """A 206 to a resume: the rest of the same file, appended; else start over."""
    m = _CONTENT_RANGE_RE.fullmatch(header(response, b"Content-Range") or "")
    etag = header(response, b"ETag")
    changed = state.etag is not None and etag is not None and etag != state.etag
    if m is None or int(m.group(1)) != offset or changed:
        # Another range, or (If-Range ignored) another version of the file.
        client.discard(response)
        await client.thread(ingest.discard)
        raise Retryable(UpstreamError("server answered another range; starting over"))
    if m.group(3) != "*":
        state.total = int(m.group(3))
    await client.thread(ingest.open, True)
    log.info("resuming %s at byte %d", redact_url(want.recorded), offset)


async def _past_the_end(
    client: HttpClient, ingest: IngestFile, response: Any, state: IngestState, offset: int
) -> None:
    """A 416 to a resume: fine when the file is exactly what is on disk
    (``bytes */<offset>``); else start over."""
    client.discard(response)
    m = re.fullmatch(r"bytes \*/(\d+)", header(response, b"Content-Range") or "")
    if m is not None and int(m.group(1)) == offset:
        await client.thread(ingest.open, True)
        return
    await client.thread(ingest.discard)
    raise Retryable(UpstreamError("partial download no longer matches; starting over"))


async def _from_the_start(
    client: HttpClient, ingest: IngestFile, want: Wanted, response: Any, offset: int
) -> IngestState:
    """A 200: the whole file, written from byte 0 with its validators recorded."""
    if offset > 0:
        log.warning(
            "%s: the source sent the whole content instead of resuming at byte %d; "
            "starting over from byte 0",
            redact_url(want.recorded),
            offset,
        )
    state = IngestState(
        url=want.recorded,
        etag=header(response, b"ETag"),
        last_modified=header(response, b"Last-Modified"),
        total=content_length(response),
        expected=str(want.expected) if want.expected else None,
    )
    await client.thread(ingest.write_state, state)
    await client.thread(ingest.open, False)
    return state


async def _refused(client: HttpClient, want: Wanted, response: Any) -> Exception:
    """The error of any other answer: Retryable for 5xx and 429."""
    location = header(response, b"Location")
    if response.code in _REDIRECTS and location and not want.follow_redirects:
        client.discard(response)
        where = urljoin(want.url, location)
        return Redirected(f"{want.recorded}: redirected", response.code, where)
    body = b""
    with contextlib.suppress(StorageError, Retryable):
        body = await client.read_small(response, 64 * 1024)
    if want.error is not None:
        error = want.error(response, body)
    else:
        error = upstream_error(want.url, response, body)
    if response.code >= 500 or response.code == 429:
        return Retryable(error)
    return error


async def _check_size_and_reserve(
    client: HttpClient,
    ingest: IngestFile,
    want: Wanted,
    job: Job,
    blob: BlobProgress,
    response: Any,
    state: IngestState,
) -> None:
    """Refuse a size other than the one expected; reserve the room still needed."""
    if want.size is not None and state.total is not None and state.total != want.size:
        client.discard(response)
        await client.thread(ingest.discard)
        raise BadContent(f"{redact_url(want.url)} is {state.total} bytes, expected {want.size}")
    blob.total = state.total if state.total is not None else want.size
    blob.done = blob.written = ingest.offset
    blob.changed()
    if blob.total is not None and blob.total > ingest.offset:
        try:
            await job.reserve(blob.total - ingest.offset)  # evicts, or DiskFull (507)
        except BaseException:
            client.discard(response)
            raise


async def _stream(
    client: HttpClient,
    ingest: IngestFile,
    job: Job,
    blob: BlobProgress,
    response: Any,
    state: IngestState,
    source: str,
) -> None:
    """The body into ``ingest``, counted in ``blob``; a cut or a stall is Retryable."""
    counter = PEER_BYTES.labels("received") if source == "peer" else ORIGIN_BYTES

    def on_bytes(n: int) -> None:
        blob.done += n
        INGESTED.inc(n)
        counter.inc(n)

    def on_written(offset: int) -> None:
        blob.written = offset
        blob.changed()

    try:
        await stream_body(
            response,
            client.reactor,
            client.reactor,
            ingest,
            client.options.idle_timeout,
            on_bytes,
            job.abortable,
            on_written,
        )
    except BodyCut as e:
        job.check_cancelled()
        cut = UpstreamUnreachable(f"connection lost after {blob.done} bytes: {e}")
        raise Retryable(cut) from None
    except UpstreamTimeout as e:
        job.check_cancelled()
        raise Retryable(e) from None
    job.check_cancelled()
    if state.total is not None and ingest.offset < state.total:
        # Framed as complete, yet short of the total the answer named (a 206's
        # Content-Range, say, with a smaller Content-Length): a cut like any other.
        short = f"body ended after {ingest.offset} of {state.total} bytes"
        raise Retryable(UpstreamUnreachable(short))


async def download(
    client: HttpClient, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
) -> tuple[Digest, int]:
    """Make ``want`` a verified blob in the cache; return its digest and size.

    The blob is committed through ``job`` (kept alive until the entry is
    stored); the partial file stays in ingest/ on failure, for a later resume.
    One writer at a time per ingest directory: a second download of the same
    digest waits, then finds the blob already cached.
    """
    lock = job.ingest_lock(ingest.dir.name)
    await lock.acquire()
    try:
        adopted = await _adopt_verified(client, ingest, want, job, blob)
        if adopted is not None:
            return adopted
        if want.expected is None:
            return await _download(client, ingest, want, job, blob)
        return await _known(client, ingest, want, job, blob)
    finally:
        lock.release()


async def _known(
    client: HttpClient, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
) -> tuple[Digest, int]:
    """A blob of known digest: one writer per digest, whatever ingest file it
    goes to (a file's is keyed by its URL); announced while it is written;
    from the client's route first."""
    assert want.expected is not None
    key = blob_ingest_key(want.expected)
    same = job.ingest_lock(key) if key != ingest.dir.name else None
    if same is not None:
        await same.acquire()  # always after the ingest's own lock: no cycle
    try:
        size = await job.hold_existing(want.expected)
        if size is not None:
            blob.complete(want.expected, size)
            blob.written = size
            blob.source = "cache"
            blob.changed()
            return want.expected, size
        end = job.writing(want.expected, blob, ingest.data_path)
        try:
            tier = client.tier
            if tier is not None:
                stored = await tier.fetch(ingest, want, job, blob)
                if stored is not None:
                    return stored
            if client.route is not None and want.via_peers:
                routed = await client.route.fetch(ingest, want, job, blob)
                if routed is not None:
                    return routed
            if tier is None:
                return await _download(client, ingest, want, job, blob)
            return await _leased(client, tier, ingest, want, job, blob)
        finally:
            end()
    finally:
        if same is not None:
            same.release()


async def _leased(
    client: HttpClient,
    tier: SharedTierRoute,
    ingest: IngestFile,
    want: Wanted,
    job: Job,
    blob: BlobProgress,
) -> tuple[Digest, int]:
    """From the origin under the cluster's lease on the digest (or from the
    store, when the node holding it put it there meanwhile)."""
    stored, lease = await tier.before_origin(ingest, want, job, blob)
    if stored is not None:
        return stored
    if lease is None:
        return await _download(client, ingest, want, job, blob)
    stop = tier.renewing(lease)
    ok = False
    try:
        got = await _download(client, ingest, want, job, blob)
        ok = True
        return got
    finally:
        tier.fetched(stop(), ok)


async def transfer(
    client: HttpClient, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
) -> tuple[Digest, int]:
    """:func:`download`'s transfer alone, from ``want``'s URL (no lock, no
    route, no adoption): the caller holds the ingest lock."""
    return await _download(client, ingest, want, job, blob)


async def _adopt_verified(
    client: HttpClient, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
) -> tuple[Digest, int] | None:
    """Finish a download that a crash stopped after its content was verified.

    The ingest state names the verified digest; the process died before the
    rename into ``blobs/`` (the data is still here: re-hash it, then commit)
    or before the entry reached ``index.json`` (the blob is already there).
    Either way nothing is fetched again. None when there is nothing to adopt.
    """
    state: IngestState | None = await client.thread(ingest.read_state)
    if state is None or state.verified is None:
        return None
    if not (want.immutable or state.url == want.recorded):
        return None
    digest = Digest.parse(state.verified)
    if want.expected is not None and digest != want.expected:
        return None
    size: int | None = await job.hold_existing(digest)
    if size is not None:
        job.after_commit(ingest.discard)  # its data is in blobs/ already
    elif await client.thread(ingest.bytes_on_disk) > 0:
        await client.thread(ingest.open, True)
        got, length = await client.thread(ingest.finish)
        if got == digest:
            await job.commit(ingest, digest)
            size = length
        else:
            await client.thread(ingest.discard)
    if size is None:
        return None
    if want.size is not None and size != want.size:
        return None
    log.info("%s: adopted %s verified before a restart", redact_url(want.url), digest)
    blob.digest, blob.done, blob.total, blob.state = digest, size, size, "complete"
    blob.written = size
    blob.changed()
    return digest, size


async def _download(
    client: HttpClient, ingest: IngestFile, want: Wanted, job: Job, blob: BlobProgress
) -> tuple[Digest, int]:
    attempt = 0
    while True:
        attempt += 1
        job.check_cancelled()
        try:
            state = await _attempt(client, ingest, want, job, blob)
            break
        except Retryable as r:
            await client.thread(ingest.close)
            if attempt >= client.options.attempts:
                raise gave_up(r.cause, attempt) from None
            delay = client.options.pause(attempt - 1)
            log.warning(
                "%s: %s; retry %d/%d in %.1f s",
                redact_url(want.url),
                r.cause.message,
                attempt,
                client.options.attempts - 1,
                delay,
            )
            await client.sleep(delay, job)
        except OSError as e:
            await client.thread(ingest.close)
            if is_disk_full(e):
                await client.thread(ingest.discard)
                raise DiskFull("no space left in the cache") from None
            raise
        except BaseException:
            await client.thread(ingest.close)
            raise
    digest, size = await client.thread(ingest.finish)
    if state.total is not None and size != state.total:
        await client.thread(ingest.close)
        raise UpstreamUnreachable(f"body ended after {size} of {state.total} bytes")
    if want.expected is not None and digest != want.expected:
        await client.thread(ingest.discard)
        if ingest.resumed_from > 0:
            # The bytes kept from before may be what is wrong: once more, from zero.
            ingest.resumed_from = 0
            log.warning("%s: resumed content did not verify; starting over", redact_url(want.url))
            return await _download(client, ingest, want, job, blob)
        raise BadContent(
            f"{redact_url(want.url)}: content has digest {digest}, "
            f"expected {want.expected}; discarded"
        )
    if want.size is not None and size != want.size:
        await client.thread(ingest.discard)
        raise BadContent(f"{redact_url(want.url)}: {size} bytes, expected {want.size}; discarded")
    state.verified = str(digest)
    await client.thread(ingest.write_state, state)
    await job.commit(ingest, digest)
    blob.digest, blob.done, blob.total, blob.state = digest, size, size, "complete"
    blob.written = size
    blob.source = want.source
    blob.changed()
    return digest, size


class _SmallBody(Protocol):
    """Collects a body like ``treq.collect``, and aborts it when no byte came for
    ``idle`` seconds (``timed_out`` is then set and ``done`` fires with None)."""

    def __init__(self, clock: Any, idle: float, collect: Callable[[bytes], None]) -> None:
        self.done: Deferred[None] = Deferred()
        self.timed_out = False
        self._clock = clock
        self._idle = idle
        self._collect = collect
        self._timer: Any = None
        self._failed: Failure | None = None

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle, self._expire)

    def _expire(self) -> None:
        self.timed_out = True
        self._stop()

    def _stop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._failed is not None or self.timed_out:
            return
        try:
            self._collect(data)
        except Exception:
            self._failed = Failure()
            self._stop()
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.done.called:
            return
        if self._failed is not None:
            self.done.errback(self._failed)
        elif self.timed_out or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class _Discard:
    """A body protocol that drops the body."""

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
