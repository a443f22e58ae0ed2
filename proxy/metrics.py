"""Prometheus metrics (``GET /metrics``), with ``prometheus-client``.

Requests are counted where their access-log line is written (every answer,
the fast blob path included), so no request path pays twice; hits and misses
are read off the same answers: a ``/v2`` blob or manifest answered from the
cache is a hit, a 404 a miss, and a ``/content`` POST that found its URL
cached (200) a hit, one that downloaded (201) a miss. Cache size, entries
and running downloads are read from the server when scraped.

Every label value that comes from a request is one of a fixed set: a method
or URL scheme outside the known ones is counted as ``other``, a path is
reduced to its route, so a client cannot grow the number of series (each
costs memory for the life of the process, and bytes in every scrape).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry(auto_describe=True)
if not MULTIPROCESS:
    ProcessCollector(registry=REGISTRY)

REQUESTS = Counter(
    "storage_manager_http_requests",
    "HTTP requests answered, by route, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
SERVED = Counter(
    "storage_manager_served_bytes",
    "Bytes of answers sent, by route",
    ["route"],
    registry=REGISTRY,
)
CACHE = Counter(
    "storage_manager_cache_requests",
    "Cache lookups: /v2 blobs and manifests, /content POSTs; result hit or miss",
    ["kind", "result"],
    registry=REGISTRY,
)
INGESTED = Counter(
    "storage_manager_ingested_bytes",
    "Bytes received from upstreams and written to the cache",
    registry=REGISTRY,
)
DOWNLOADS = Histogram(
    "storage_manager_download_duration_seconds",
    "Downloads (one POSTed URL, all its blobs) from start to end, by scheme and result",
    ["scheme", "result"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf")),
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "storage_manager_upstream_errors",
    "Downloads that failed, by scheme and error code",
    ["scheme", "code"],
    registry=REGISTRY,
)
ORIGIN_BYTES = Counter(
    "storage_manager_origin_bytes",
    "Bytes of blobs received from their origins (registries, hubs, buckets, servers), "
    "not from peers",
    registry=REGISTRY,
)
PEER_BYTES = Counter(
    "storage_manager_peer_bytes",
    "Bytes of blobs exchanged with peers of the cache array: received from them, served to them",
    ["direction"],
    registry=REGISTRY,
)
PEER_FAILURES = Counter(
    "storage_manager_peer_failures",
    "Requests to peers that failed (unreachable, refused, or wrong bytes)",
    registry=REGISTRY,
)
SHARED_BYTES = Counter(
    "storage_manager_shared_store_bytes",
    "Bytes of blobs read from the shared store (--shared-store) and written to it",
    ["direction"],
    registry=REGISTRY,
)
SHARED_MISMATCHES = Counter(
    "storage_manager_shared_store_mismatches",
    "Objects of the shared store not used because their bytes or size did not match their name",
    registry=REGISTRY,
)
SHARED_UPLOAD_FAILURES = Counter(
    "storage_manager_shared_store_upload_failures",
    "Write-backs to the shared store that failed (each is retried with backoff)",
    registry=REGISTRY,
)
SHARED_DOWN = Counter(
    "storage_manager_shared_store_down",
    "Times the shared store failed or timed out and was left out of downloads for a while",
    registry=REGISTRY,
)
EVICTIONS = Counter(
    "storage_manager_evictions",
    "Entries evicted to keep the cache under --max-cache-size",
    registry=REGISTRY,
)
EVICTED = Counter(
    "storage_manager_evicted_bytes",
    "Bytes freed by eviction",
    registry=REGISTRY,
)
ACTIVE = Gauge(
    "storage_manager_active_downloads",
    "Downloads running or queued",
    registry=REGISTRY,
    multiprocess_mode="livesum",  # only the writer sets it: the others count 0
)
ENTRIES = Gauge(
    "storage_manager_cache_entries",
    "Entries in the cache",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
SIZE = Gauge(
    "storage_manager_cache_size_bytes",
    "Bytes of the blobs the cache's entries reference (shared blobs once)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
UNSYNCED = Gauge(
    "storage_manager_unsynced_blobs",
    "Blobs committed and served whose data is still being fsync'd",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
_bound: list[tuple[Gauge, Callable[[], int]]] = []

# Several processes: each writes its own process_* figures (resident and
# virtual memory, descriptors) into gauges every process reads; a scrape
# shows the sum over the serving processes (the earliest start time).
_OWN = ProcessCollector(registry=None)
_PROCESS_MODES: dict[str, Literal["livesum", "livemax", "livemin"]] = {
    "process_resident_memory_bytes": "livesum",
    "process_virtual_memory_bytes": "livesum",
    "process_open_fds": "livesum",
    "process_max_fds": "livemax",
    "process_start_time_seconds": "livemin",
}
_PROCESS = (
    {
        name: Gauge(
            name,
            f"{name}, summed over the serving processes",
            registry=REGISTRY,
            multiprocess_mode=mode,
        )
        for name, mode in _PROCESS_MODES.items()
    }
    if MULTIPROCESS
    else {}
)


def bind(
    active: Callable[[], int],
    entries: Callable[[], int],
    size: Callable[[], int],
    unsynced: Callable[[], int] = lambda: 0,
) -> None:
    """Read the gauges from the running server when scraped (several
    processes: when :func:`refresh` is called)."""
    _bound[:] = [(ACTIVE, active), (ENTRIES, entries), (SIZE, size), (UNSYNCED, unsynced)]
    if not MULTIPROCESS:
        for gauge, read in _bound:
            gauge.set_function(read)


def refresh() -> None:
    """Several processes: write the bound gauges' values (the writer's) and
    this process's own figures where every process reads them."""
    for gauge, read in _bound:
        gauge.set(read())
    if _PROCESS:
        for family in _OWN.collect():
            for sample in family.samples:
                own = _PROCESS.get(sample.name)
                if own is not None:
                    own.set(sample.value)


def process_ended(pid: int) -> None:
    """A serving process is gone: its gauges no longer count (its counters do)."""
    if MULTIPROCESS:
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


OTHER = "other"
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
SCHEMES = frozenset(
    {"http", "https", "oci", "oci-blob", "ollama", "hf", "huggingface", "file", "s3", "gs", "azure"}
)


def method_label(method: str) -> str:
    """``method`` if it is a standard HTTP method, else ``other``."""
    return method if method in METHODS else OTHER


def scheme_label(scheme: str) -> str:
    """``scheme`` if it is one this server downloads from, else ``other``."""
    return scheme if scheme in SCHEMES else OTHER


def status_label(code: int) -> str:
    """A status code as a label: only the 100-599 this server can send."""
    return str(code) if 100 <= code <= 599 else OTHER


def route_of(path: str) -> str:
    """A low-cardinality name for a request path."""
    if path.startswith("/v2"):
        if "/blobs/uploads" in path:
            return "v2_upload"
        if "/blobs/" in path:
            return "v2_blob"
        if "/manifests/" in path:
            return "v2_manifest"
        if path.endswith("/tags/list") or "/tags/list?" in path:
            return "v2_tags"
        if path.startswith("/v2/_catalog"):
            return "v2_catalog"
        return "v2"
    if path.startswith("http://") or path.startswith("https://"):
        return "forward_proxy"
    if path.startswith("/peer/v1/blobs/"):
        return "peer_blob"
    if path.startswith("/peer/"):
        return "peer"
    for prefix in ("/content", "/admin", "/metrics", "/healthz", "/readyz", "/hf"):
        if path.startswith(prefix):
            return prefix[1:]
    return "other"


# (route, method label, status) -> the counters one answer increments: its
# request count, its bytes, and the cache hit or miss it is (or None).
_children: dict[tuple[str, str, int], tuple[Counter, Counter, Counter | None]] = {}
_flushers: list[Callable[[], None]] = []


def observe_download(scheme: str, result: str, seconds: float, code: str | None = None) -> None:
    """Count one download that ended: ``stored``, or ``failed`` with its error code."""
    scheme = scheme_label(scheme)
    DOWNLOADS.labels(scheme, result).observe(seconds)
    if code is not None:
        UPSTREAM_ERRORS.labels(scheme, code).inc()


def observe_request(method: str, path: str, code: int, sent: int) -> None:
    """Count one answered request (cheap: children are cached)."""
    count_answers(route_of(path), method_label(method), code, 1, sent)


def count_answers(route: str, method: str, code: int, answers: int, sent: int) -> None:
    """Count ``answers`` answers of one route, method label and status that
    sent ``sent`` bytes in all (:mod:`proxy.logs` adds up a reactor turn's)."""
    key = (route, method, code)
    child = _children.get(key)
    if child is None:
        requests = REQUESTS.labels(route, method, status_label(code))
        child = (requests, SERVED.labels(route), _cache_lookup(route, method, code))
        if len(_children) < 10_000:  # bounded anyway; the labels already are
            _children[key] = child
    child[0].inc(answers)
    if sent:
        child[1].inc(sent)
    if child[2] is not None:
        child[2].inc(answers)
    if route == "peer_blob" and sent:
        PEER_BYTES.labels("served").inc(sent)


def _cache_lookup(route: str, method: str, code: int) -> Counter | None:
    """The cache hit or miss an answer is, if it is one."""
    if route in ("v2_blob", "v2_manifest") and method in ("GET", "HEAD"):
        if code in (200, 206, 304, 416):
            return CACHE.labels(route[3:], "hit")
        if code == 404:
            return CACHE.labels(route[3:], "miss")
    elif route == "content" and method == "POST" and code in (200, 201):
        return CACHE.labels("content", "hit" if code == 200 else "miss")
    return None


def before_exposition(flush: Callable[[], None]) -> None:
    """Have ``flush`` (counts held back, see :mod:`proxy.logs`) run before
    every ``/metrics`` answer this process makes."""
    _flushers.append(flush)


def exposition() -> tuple[bytes, bytes]:
    """The body and Content-Type of ``GET /metrics``."""
    for flush in _flushers:
        flush()
    if MULTIPROCESS:
        refresh()
        summed = CollectorRegistry()
        MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
        return generate_latest(summed), CONTENT_TYPE_LATEST.encode()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST.encode()
