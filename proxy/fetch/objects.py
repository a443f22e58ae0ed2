"""What the object-store downloaders (``s3://``, ``gs://``, ``azure://``) share.

Each of them maps a URL to one object, or to every object under a prefix
(one artifact manifest, one layer per object titled with its name relative
to the prefix). This module has the parts that do not depend on the store:
the URL's object/prefix split, the paging loop of a listing, the check that
listed names are safe relative file paths, the per-object restart loop when
an object changes mid-download (:class:`SourceChanged`), the parallel
download of a prefix's objects, the "interrupted" marker of a multi-object
download, and a small request retried on 5xx and cuts; :func:`each_parallel`
also serves the shared stores' multipart uploads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import DeferredList, DeferredSemaphore

from proxy.cache import grammar
from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import Layout, ingest_key
from proxy.errors import BadRequest, SourceChanged, StorageError, UpstreamError
from proxy.fetch.base import FetchResult, Job
from proxy.fetch.transfer import HttpClient, Retryable, gave_up
from proxy.request import FetchRequest
from proxy.types import ANNOTATION_TITLE, MEDIA_TYPE_OCTET, Descriptor

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 10_000
MAX_RESTARTS = 3

T = TypeVar("T")
R = TypeVar("R")


def is_prefix(key: str) -> bool:
    """A key naming every object under it: empty (the whole bucket) or ending in ``/``."""
    return key == "" or key.endswith("/")


def base_name(key: str) -> str:
    return grammar.safe_name(key.rsplit("/", 1)[-1])


def check_names(what: str, prefix: str, names: Sequence[str]) -> None:
    """Refuse a listing whose names, relative to ``prefix``, are not safe file paths."""
    for name in names:
        rel = name[len(prefix) :]
        if not grammar.is_title(rel):
            raise UpstreamError(f"{what}: the key {name[:200]!r} is not a safe file path")


async def list_pages(
    what: str, page: Callable[[str | None], Awaitable[tuple[list[T], str | None]]]
) -> list[T]:
    """Every item of a paged listing: ``page(token)`` gives the items and the
    next token (None at the end). An empty listing is a 404."""
    items: list[T] = []
    token: str | None = None
    for _ in range(MAX_LIST_PAGES):
        found, token = await page(token)
        items.extend(found)
        if not token:
            break
    if not items:
        raise UpstreamError(f"{what}: no objects under this prefix", 404)
    return items


async def restarting(what: str, attempt: Callable[[], Awaitable[R]]) -> R:
    """Run ``attempt`` (look the object up, then download it) again when the
    object changed while it was fetched, a few times at most."""
    for restart in range(MAX_RESTARTS + 1):
        try:
            return await attempt()
        except SourceChanged:
            if restart == MAX_RESTARTS:
                raise
            log.info("%s changed while it was fetched; starting over", what)
    raise AssertionError("unreachable")


async def each_parallel(
    items: Iterable[T], one: Callable[[T], Awaitable[None]], parallel: int
) -> list[BaseException]:
    """``one(item)`` for every item, ``parallel`` at a time, in order; after a
    failure those not yet started are not. The failures, as they happened."""
    failures: list[BaseException] = []
    slots = DeferredSemaphore(parallel)

    async def run(item: T) -> None:
        if failures:
            return
        try:
            await one(item)
        except BaseException as e:
            failures.append(e)
            raise

    await DeferredList([slots.run(run, item) for item in items], consumeErrors=True)
    return failures


async def download_all(
    objects: Sequence[T], one: Callable[[T], Awaitable[Descriptor]], parallel: int
) -> list[Descriptor]:
    """``one(o)`` for every object, ``parallel`` at a time, in order; the first
    failure stops those not yet started and is raised (a StorageError first)."""
    results: dict[int, Descriptor] = {}

    async def run(i: int) -> None:
        results[i] = await one(objects[i])

    failures = await each_parallel(range(len(objects)), run, parallel)
    if failures:
        raise next((f for f in failures if isinstance(f, StorageError)), failures[0])
    return [results[i] for i in range(len(objects))]


async def mark_interrupted(
    client: HttpClient, layout: Layout, url: str, kind: str, job: Job
) -> None:
    """Record ``url`` in ingest/ so a download stopped half-way shows as
    interrupted; removed once the entry is stored."""
    marker = IngestFile(layout, ingest_key(url))
    await client.thread(marker.write_state, IngestState(url=url, kind=kind))
    job.after_commit(marker.discard)


def error_detail(code: str, message: str, status: int) -> str:
    """What a store's error answer says: its code and message, whichever it
    gave, else its status."""
    return f"{code}: {message}" if message else code or f"status {status}"


Prepare = Callable[[], Awaitable[tuple[str, str, dict[bytes, bytes]]]]


async def small_request(client: HttpClient, job: Job, prepare: Prepare) -> Any:
    """A small request (listing, HEAD, metadata), retried on 5xx and cuts;
    ``prepare()`` gives its method, URL and the headers only that origin may
    see, anew for each attempt (a fresh signature)."""
    attempts = client.options.attempts
    for attempt in range(attempts):
        method, url, private = await prepare()
        try:
            response = await client.get(
                url, job, {b"Accept-Encoding": b"identity"}, method=method, private=private
            )
        except Retryable as r:
            if attempt == attempts - 1:
                raise gave_up(r.cause, attempts) from None
        else:
            if response.code < 500 or attempt == attempts - 1:
                return response
            client.discard(response)
        await client.sleep(client.options.backoff * 2**attempt, job)
    raise AssertionError("unreachable")


def split_url(
    url: str, scheme: str, authority: re.Pattern[str] | None = None, what: str = "bucket name"
) -> tuple[str, str]:
    """The authority (checked against ``authority``) and the decoded path
    (without its leading ``/``, at most 1024 bytes) of an object-store URL; no
    query or fragment, no CR, LF or NUL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != scheme:
        raise BadRequest(f"not an {scheme}:// URL: {url[:100]}")
    if parts.query or parts.fragment:
        raise BadRequest(f"{scheme}:// URLs take no query or fragment")
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if any(c in path for c in "\r\n\0"):
        raise BadRequest(f"{scheme}:// object names cannot contain CR, LF or NUL")
    if len(path.encode()) > 1024:
        raise BadRequest(f"{scheme}:// object names are at most 1024 bytes")
    if authority is not None and (not authority.fullmatch(parts.netloc) or ".." in parts.netloc):
        raise BadRequest(f"invalid {what} {parts.netloc[:80]!r}")
    return parts.netloc, path


async def one_object(
    request: FetchRequest,
    job: Job,
    kind: str,
    name: str,
    common: dict[str, str],
    fetch: Callable[[], Awaitable[Descriptor]],
) -> FetchResult:
    """The entry of one object ``name``: nothing fetched when the expected
    digest is cached already; the layer's annotations (but its title) are the
    entry's too."""
    title = base_name(name)
    if request.expected is not None:
        size = await job.hold_existing(request.expected)
        if size is not None:
            desc = Descriptor(MEDIA_TYPE_OCTET, request.expected, size, {ANNOTATION_TITLE: title})
            return FetchResult(files=(desc,), primary=desc, kind=kind)
    desc = await fetch()
    ann = {k: v for k, v in desc.annotations.items() if k != ANNOTATION_TITLE}
    return FetchResult(files=(desc,), primary=desc, kind=kind, annotations={**common, **ann})


async def all_objects(
    client: HttpClient,
    layout: Layout,
    request: FetchRequest,
    job: Job,
    kind: str,
    listed: Awaitable[Sequence[T]],
    one: Callable[[T], Awaitable[Descriptor]],
    parallel: int,
    annotations: dict[str, str],
    artifact_type: str,
) -> FetchResult:
    """The entry of every object under a prefix (``listed``), ``parallel`` at a time."""
    if request.expected is not None:
        raise BadRequest("an expected digest can only be given for one object")
    objects = await listed
    await mark_interrupted(client, layout, request.url, kind, job)
    files = await download_all(objects, one, parallel)
    return FetchResult(
        files=tuple(files),
        primary=None,  # a set of objects: the entry's manifest
        kind=kind,
        annotations=annotations,
        artifact_type=artifact_type,
    )


async def entry(
    client: HttpClient,
    layout: Layout,
    request: FetchRequest,
    job: Job,
    kind: str,
    name: str,
    listing: Callable[[], Awaitable[Sequence[T]]],
    name_of: Callable[[T], str],
    fetch: Callable[[str, str], Awaitable[Descriptor]],
    parallel: int,
    common: dict[str, str],
    prefix_annotations: dict[str, str],
    artifact_type: str,
) -> FetchResult:
    """The entry of ``name``: one object, or (a prefix) every object ``listing()``
    gives; ``fetch(name, title)`` stores one object."""
    if not is_prefix(name):
        return await one_object(
            request, job, kind, name, common, lambda: fetch(name, base_name(name))
        )

    def one(o: T) -> Awaitable[Descriptor]:
        return fetch(name_of(o), name_of(o)[len(name) :])

    return await all_objects(
        client,
        layout,
        request,
        job,
        kind,
        listing(),
        one,
        parallel,
        {**common, **prefix_annotations},
        artifact_type,
    )
