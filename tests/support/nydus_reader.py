"""A faithful Python model of how nydusd's *registry backend* reads blobs (tests only).

nydusd cannot be installed here, so this module reproduces, request by request, what its
registry backend puts on the wire and how it judges the answers, so tests can check that a
server (our cache serving ``/v2/``, directly or as nydusd's forward proxy) behaves as nydusd
needs. Source read: ``github.com/dragonflyoss/nydus`` master at 34e6071e (2026-07, same logic as
tag v2.4.4), with reqwest 0.12.28 / hyper-util (nydus' HTTP client). Paths below are relative
to the nydus repository; ``registry.rs``, ``connection.rs``, ``request.rs``, ``mod.rs`` are in
``storage/src/backend/``.

Behaviours reproduced (and where nydus implements them)
-------------------------------------------------------

Blob URL and requests
    * URL ``<scheme>://<host>/v2/<repo>/blobs/sha256:<hex>``: ``RegistryState::url`` and the
      ``format!("/blobs/sha256:{}", self.blob_id)`` in ``RegistryReader::_try_read`` /
      ``blob_size`` (registry.rs). Only sha256 blob ids exist in nydus.
    * Size: ``BlobReader::blob_size`` (registry.rs) sends ``HEAD`` through
      ``RegistryReader::request`` with ``catch_status = true`` and parses the response's
      ``Content-Length`` as u64; missing or unparsable -> "invalid content length". HEAD
      redirects are **not** followed (reqwest ``Policy::none()``, connection.rs
      ``Connection::build_connection``): any status in ``[200, 400)`` is "success"
      (``is_success_status``, request.rs), so a 3xx answer's own Content-Length is used.
    * Data: ``RegistryReader::_try_read`` sends ``GET`` with ``Range: bytes=<off>-<off+len-1>``
      (always a closed range, even for the whole blob). The status is **not** checked for 206:
      any ``[200, 400)`` non-redirect answer is accepted and its body copied
      (``respond(resp, true)``); ``>= 400`` fails with the body text as message.
    * Body: ``request::Response::copy_to`` (request.rs) is ``std::io::copy`` into the
      ``&mut [u8]`` of exactly the requested length: a body with even one byte more fails with
      ``WriteZero`` ("failed to write whole buffer", ``RegistryError::Transport``); a shorter body
      (honest Content-Length, or read-to-close) returns the short count; a body cut before its
      Content-Length / last chunk is a hyper error (transport).
    * Short reads: ``BlobReader::read_with_source`` (mod.rs) is strict for remote backends
      (``expect_exact_read() == true``): a short count is the error "expected N bytes, got M"
      and is retried; the cache layer also rejects it (``read_chunks_from_backend`` in
      storage/src/cache/mod.rs: "request for N bytes but got M bytes"). So nydusd never uses
      short data: ``read_range`` raises ``NydusShortRead`` (carrying the short data), while
      ``try_read`` (= ``BlobReader::try_read``) returns it.
    * Retries: ``retry_op`` (mod.rs): on-demand reads get 3 retries (4 attempts), prefetch 1
      (with a random 100 ms - 1 s sleep). No delay between on-demand retries, but the last one
      sets ``disable_proxy`` and waits on the process-wide 1-QPS ``BACKEND_QPS_LIMITER``.
      Proxy "forbidden" (403 + ``X-Dragonfly-Error-Type: proxy``) is never retried; proxy
      "rate limited" (429 + that header) is not retried for prefetch. ``retry_limit`` from the
      config is not used by this path. ``blob_size`` is not retried at all.
    * First request gate: ``First::handle_force`` (registry.rs): until one request of the
      backend has succeeded, requests run one at a time (so the first caches the auth token).
    * Headers: ``User-Agent: nydusd/1.0.0`` plus ``NYDUS_HEADER_<name>`` environment headers on
      every request (``parse_custom_headers_from_env``, request.rs); reqwest adds
      ``accept: */*`` and ``host`` (hyper-util ``set_host``: default ports omitted); no
      ``Accept-Encoding`` (no gzip feature), so bodies are taken raw. Names go out lower-case
      (hyper). The cached ``Authorization`` goes on registry requests only.
    * Timeouts: ``timeout`` and ``connect_timeout`` default to 5 s (``default_http_timeout``,
      api/src/config.rs). reqwest's *blocking* client (``blocking/client.rs``
      ``execute_request``, ``blocking/response.rs`` ``impl Read``) applies ``timeout`` twice:
      as a deadline from sending until the response head has arrived, then again to **each**
      body ``read()`` (``io::copy`` reads up to 8 KiB), i.e. an idle timeout while the body
      flows; there is no overall deadline for a slowly but steadily flowing body.
    * Connections: HTTP/1.1 keep-alive pool (reqwest); a pooled connection the server closed
      is replaced (hyper retries a request that never reached a closed pooled connection).

Redirects (GET only; ``RegistryReader::_try_read``)
    * A ``[300, 400)`` answer with ``Location`` is followed **once, by nydus itself**: the
      Location must be an absolute URL (``Url::parse``; a relative one fails with
      ``RegistryError::Url``), optionally rewritten by ``blob_url_scheme`` /
      ``blob_redirected_host``. The hop is a GET with the same ``Range`` (and User-Agent /
      Dragonfly headers) but **without** ``Authorization``, ``catch_status = true``: ``>= 400``
      fails, but another 3xx counts as success and its body is copied (so a second redirect
      fails the length check). A 3xx without Location has its own body copied.
    * The target URL is cached per blob (``cached_redirect``), process-wide for the backend;
      later reads of that blob go straight to it with ``catch_status = false``: 401/403 evicts
      it and the read restarts once from the registry; any other status (404, 500...) has its
      *body copied as data* (and fails the length check) while the cache entry stays.
    * nydus v2.3.4 - v2.4.2 instead used reqwest ``Policy::limited(10)`` (commit 67bf8b82,
      reverted by c4eb560b): every request, HEAD included, follows up to 10 redirects
      (301/302/303/307/308, relative Locations allowed), dropping ``Authorization`` when host
      or port change, adding ``Referer``; no redirect cache. ``redirect_mode="follow"``.

Authentication (``RegistryReader::request``, ``RegistryState::get_token``)
    * The cached ``Authorization`` (``registry_token`` -> ``Bearer <token>``) is sent; on 401 a
      request that carried it is re-sent without it to get a fresh challenge;
      ``parse_auth`` (a naive split on ``",`` and ``=``) reads ``WWW-Authenticate``. ``Basic``
      -> ``Basic <auth>`` (``auth`` is base64 ``user:password`` from the config). ``Bearer`` ->
      ``POST`` the realm with form ``service``, ``scope``, ``client_id=nydus-registry-client``
      and ``Authorization: Basic <auth>`` if configured, falling back to ``GET`` with the same
      query (remembered per host); the answer's ``token`` or ``access_token`` is used. Token
      requests always go direct, never through the proxy (``temp_disable_proxy``). The new
      header is cached only if the retried request got ``[200, 400)``.
      (Background token refresh is not reproduced.)

Forward-proxy mode (``proxy.url``; ``Connection::call_with_proxy_control``, connection.rs, and
``Request::call``, request.rs)
    * reqwest ``Proxy::all(proxy.url)``: for ``http://`` target URLs the request goes to the
      proxy with an **absolute-form** request target (``GET http://<registry>/v2/<repo>/blobs/
      sha256:<hex> HTTP/1.1``) and ``Host: <registry host[:port]>`` (hyper-util
      ``absolute_form`` / ``set_host``); the URL is *not* rewritten to the proxy's host.
      ``Proxy-Authorization: Basic`` is added if ``proxy.url`` has user info. ``https://``
      targets are tunnelled with ``CONNECT`` (opaque to a caching proxy; not reproduced here);
      ``proxy.use_http`` rewrites the first ``https`` in the URL to ``http`` so the proxy sees
      plain requests (``Proxy::try_use_http``; the decision is cached from the first URL).
    * With the ``backend-dragonfly-proxy`` feature (on for x86_64/aarch64 builds, Cargo.toml)
      proxied requests also carry ``X-Dragonfly-Prefetch: true``, ``X-Dragonfly-Priority: 6``
      (on-demand) or ``3`` (prefetch), ``X-Dragonfly-Use-P2P: true``; a response with
      ``X-Dragonfly-Error-Type: proxy`` becomes a typed error (429 -> rate limited, 403 ->
      forbidden, other -> error) whether it came from the proxy or the fallback.
    * Fallback (``proxy.fallback``, default true): if the proxy request fails at transport level
      (refused, reset, 5 s timeout before the response head...) or answers ``>= 500``, the same
      request (same headers) is sent directly to the registry. A 4xx from the proxy is returned
      as is (a 404 is *not* retried at the origin) -- except for requests made with
      ``catch_status = true`` (redirect hops; ``blob_size``'s HEAD re-sent after an auth
      challenge), where any ``>= 400`` is already an error and so also falls back. A body
      that breaks after the head arrived does not fall back (it is retried by ``retry_op``,
      through the proxy again).
      With ``fallback = false`` proxy errors and statuses are returned as they are.
    * Health (``start_proxy_health_thread``): only if ``ping_url`` is set, a thread does
      ``GET ping_url`` (plain reqwest client: no nydus headers, redirects followed, timeout =
      ``connect_timeout``) right away and then every ``check_interval`` (default 5 s) while the
      backend was active within ``check_pause_elapsed`` (300 s). ``[200, 400)`` is healthy;
      anything else or an error is unhealthy, and while unhealthy every request goes straight
      to the registry (``fallback``) or fails with "proxy is not healthy and fallback is
      disabled". Without ``ping_url`` the proxy is always considered healthy.
    * Quirk reproduced: ``retry_op``'s "retry via source" (``disable_proxy``) only drops the
      Dragonfly headers; ``Request::call`` passes ``temp_disable_proxy`` (false), not
      ``disable_proxy``, down to the connection, so the last retry still uses a healthy proxy.

Not reproduced: TLS-to-HTTP downgrade (``needs_fallback_http``, only with ``skip_verify``),
HTTP/2 over TLS (ALPN), ``CONNECT`` tunnels, the Dragonfly SDK path
(``dragonfly_scheduler_endpoint``), token refresh, streaming prefetch (``_stream_read``).
Deliberate harness limits (not nydus behaviour): only loopback hosts are ever contacted; error
bodies are read up to 64 KiB; a single exchange is capped at ``max_exchange_seconds``.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import random
import select
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Literal, TypeVar
from urllib.parse import unquote, urlencode, urljoin, urlsplit, urlunsplit

__all__ = [
    "CLIENT_ID",
    "USER_AGENT",
    "NydusReadError",
    "NydusReader",
    "NydusShortRead",
    "NydusTimeout",
    "RequestRecord",
    "StressFailure",
    "StressResult",
    "iter_records",
    "nydus_parse_auth",
]

USER_AGENT = "nydusd/1.0.0"
"""``HEADER_VALUE_USER_AGENT`` (request.rs)."""

CLIENT_ID = "nydus-registry-client"
"""``REGISTRY_CLIENT_ID`` (registry.rs), sent to token servers."""

_COPY_CHUNK = 8 * 1024  # std::io::copy's stack buffer: one body read() at a time
_HEAD_LIMIT = 64 * 1024
_TEXT_LIMIT = 64 * 1024
_MAX_IDLE_PER_HOST = 64
_MAX_REDIRECTS = 10  # reqwest Policy::limited(10) (v2.3.4 - v2.4.2)
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)

T = TypeVar("T")


# -- errors ---------------------------------------------------------------------------------------


class NydusReadError(Exception):
    """A request nydusd would see fail.

    ``kind`` says how: ``"status"`` (HTTP status judged an error), ``"transport"`` (connect,
    reset, truncated or malformed response), ``"timeout"``, ``"overflow"`` (body longer than
    the range asked for), ``"short"``, ``"url"`` (unusable redirect Location),
    ``"content-length"`` (HEAD without a usable Content-Length), ``"auth"``,
    ``"proxy-unhealthy"``, ``"proxy-forbidden"``, ``"proxy-limited"``, ``"proxy-error"``,
    ``"loopback"`` (this harness refused a non-loopback host).
    """

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.attempts: list[NydusReadError] = []
        """For ``read_range``: the errors of the earlier attempts, oldest first."""


class NydusTimeout(NydusReadError):
    """The 5 s (``timeout``) deadline for the response head, or idle time in the body, passed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


class NydusShortRead(NydusReadError):
    """The server sent fewer bytes than asked: nydusd treats this as an error (see module doc)."""

    def __init__(self, expected: int, data: bytes, status: int | None) -> None:
        super().__init__(
            f"expected {expected} bytes, got {len(data)} (status {status})", "short", status
        )
        self.expected = expected
        self.data = data


# -- records --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One HTTP exchange as sent on the wire (``Authorization`` values are redacted)."""

    method: str
    url: str
    """The logical URL (what nydus passed to reqwest)."""
    target: str
    """The request target on the request line (absolute-form when sent to a proxy)."""
    connect: str
    """``host:port`` the TCP connection went to."""
    via_proxy: bool
    headers: tuple[tuple[str, str], ...]
    status: int | None
    error: str | None
    elapsed: float
    note: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclasses.dataclass(frozen=True)
class StressFailure:
    index: int
    digest: str
    offset: int
    length: int
    kind: str
    error: str
    status: int | None
    latency: float


@dataclasses.dataclass
class StressResult:
    requests: int
    concurrency: int
    ok: int = 0
    bytes_read: int = 0
    elapsed: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    """Seconds per successful request."""
    failures: list[StressFailure] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def failure_kinds(self) -> collections.Counter[str]:
        return collections.Counter(f.kind for f in self.failures)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        mean = statistics.fmean(self.latencies) if self.latencies else 0.0
        text = (
            f"{self.ok}/{self.requests} ok at concurrency {self.concurrency}, "
            f"{self.bytes_read} bytes in {self.elapsed:.2f}s; latency mean {mean * 1000:.1f}ms "
            f"p50 {self.percentile(0.5) * 1000:.1f}ms p99 {self.percentile(0.99) * 1000:.1f}ms"
        )
        if self.failures:
            text += f"; failures {dict(self.failure_kinds())}, first: {self.failures[0]}"
        return text


# -- the process-wide QPS limiter of retry_op ------------------------------------------------------


class _QpsLimiter:
    """``qps::QpsLimiter`` (storage/src/backend/qps.rs): token bucket, capacity == rate."""

    def __init__(self, qps: float) -> None:
        self._rate = qps
        self._tokens = qps
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a token, waiting (at most ``1 / qps`` s per token) if needed; True if waited."""
        waited = False
        for _ in range(10_000):  # bounded: each round waits for the shortage, ~1 s at most
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                wait = (1.0 - self._tokens) / self._rate
            waited = True
            time.sleep(wait)
        return waited


_BACKEND_QPS_LIMITER = _QpsLimiter(1.0)


# -- parsing helpers ------------------------------------------------------------------------------


def nydus_parse_auth(value: str) -> tuple[str, dict[str, str]] | None:
    """``RegistryState::parse_auth`` exactly, quirks included: ``("Basic"|"Bearer", params)``.

    Splits the parameters on ``",`` and each on ``=`` keeping only the second field, so a
    realm whose URL has a query (``a=b``) is cut at its first ``=``.
    """
    parts = value.split(" ", 1)
    if len(parts) < 2:
        return None
    scheme = parts[0].strip()
    params: dict[str, str] = {}
    for pair in parts[1].strip().split('",'):
        fields = pair.strip().split("=")
        if len(fields) < 2:
            return None
        params[fields[0].strip()] = fields[1].strip().strip('"')
    if scheme == "Basic":
        return "Basic", {"realm": params.get("realm", "")}
    if scheme == "Bearer":
        if "realm" not in params or "service" not in params:
            return None
        return "Bearer", {
            "realm": params["realm"],
            "service": params["service"],
            "scope": params.get("scope", ""),
        }
    return None


def _hex_of(digest: str) -> str:
    algo, sep, hexd = digest.partition(":")
    if not sep:
        algo, hexd = "sha256", digest
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ValueError(f"nydus only reads sha256 blobs: {digest!r}")
    return hexd


def _split_hostport(netloc: str, default_port: int) -> tuple[str, int]:
    netloc = netloc.rpartition("@")[2]
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    return host, int(port) if port else default_port


def _host_header(scheme: str, netloc: str) -> str:
    """hyper-util ``set_host``: ``host[:port]``, the port omitted when it is the default."""
    host, port = _split_hostport(netloc, 443 if scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    if (scheme == "https" and port == 443) or (scheme == "http" and port == 80):
        return shown
    return f"{shown}:{port}"


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise NydusReadError(f"refusing to contact non-loopback host {host!r}", "loopback")


def _redact(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    secret = ("authorization", "proxy-authorization")
    return tuple((k, "<redacted>" if k in secret and v else v) for k, v in headers.items())


# -- a minimal HTTP/1.1 client (what reqwest + hyper do on the wire) -----------------------------


class _Conn:
    def __init__(self, sock: socket.socket, key: tuple[str, int, bool]) -> None:
        self.sock = sock
        self.key = key
        self.buf = bytearray()
        self.reused = False
        self.received = 0

    def fill(self, timeout: float) -> int:
        if timeout <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        self.buf += data
        self.received += len(data)
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Response:
    """A response whose body is read lazily, like ``reqwest::blocking::Response``."""

    def __init__(
        self,
        client: _Client,
        conn: _Conn,
        method: str,
        url: str,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        keep_alive: bool,
        via_proxy: bool,
    ) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self.via_proxy = via_proxy
        self._keep_alive = keep_alive
        self._framing: Literal["none", "length", "chunked", "close"]
        self._remaining = 0
        self._chunk_left = 0
        self._done = False
        te = (self.header("transfer-encoding") or "").lower()
        lengths = {v.strip() for k, v in headers if k == "content-length"}
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self._framing, self._done = "none", True
        elif te:
            if not te.endswith("chunked"):
                self._framing, self._keep_alive = "close", False
            else:
                self._framing = "chunked"
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise NydusReadError(f"invalid content-length {sorted(lengths)}", "transport")
            self._framing, self._remaining = "length", int(next(iter(lengths)))
            self._done = self._remaining == 0
        else:
            self._framing, self._keep_alive = "close", False
        if self._done:
            self._finish()

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # -- body ---------------------------------------------------------------------------------

    def _idle(self) -> float:
        return self._client.idle_timeout()

    def _need(self, conn: _Conn) -> None:
        if conn.fill(self._idle()) == 0:
            raise NydusReadError(
                "error decoding response body: end of file before message completed", "transport"
            )

    def _readline(self, conn: _Conn) -> bytes:
        for _ in range(_HEAD_LIMIT):
            idx = conn.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(conn.buf[:idx])
                del conn.buf[: idx + 2]
                return line
            if len(conn.buf) > _HEAD_LIMIT:
                break
            self._need(conn)
        raise NydusReadError("malformed chunked body", "transport")

    def read_some(self, limit: int) -> bytes:
        """One ``read()`` of at most ``limit`` bytes (``b""`` at the end of the body)."""
        conn = self._conn
        if self._done or conn is None:
            return b""
        try:
            if self._framing == "length":
                if not conn.buf:
                    self._need(conn)
                n = min(limit, self._remaining, len(conn.buf))
                data = bytes(conn.buf[:n])
                del conn.buf[:n]
                self._remaining -= n
                if self._remaining == 0:
                    self._done = True
                    self._finish()
                return data
            if self._framing == "close":
                if not conn.buf and conn.fill(self._idle()) == 0:
                    self._done = True
                    self._finish()
                    return b""
                data = bytes(conn.buf[:limit])
                del conn.buf[:limit]
                return data
            # chunked
            if self._chunk_left == 0:
                size_line = self._readline(conn).split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise NydusReadError(f"invalid chunk size {size_line!r}", "transport") from None
                if size == 0:
                    for _ in range(100):  # trailers, up to the empty line
                        if not self._readline(conn):
                            break
                    self._done = True
                    self._finish()
                    return b""
                self._chunk_left = size
            if not conn.buf:
                self._need(conn)
            n = min(limit, self._chunk_left, len(conn.buf))
            data = bytes(conn.buf[:n])
            del conn.buf[:n]
            self._chunk_left -= n
            if self._chunk_left == 0:
                for _ in range(3):
                    if len(conn.buf) >= 2:
                        break
                    self._need(conn)
                if bytes(conn.buf[:2]) != b"\r\n":
                    raise NydusReadError("malformed chunk terminator", "transport")
                del conn.buf[:2]
            return data
        except TimeoutError:
            self.close()
            raise NydusTimeout(f"operation timed out reading the body of {self.url}") from None
        except OSError as e:
            self.close()
            raise NydusReadError(f"error reading body of {self.url}: {e}", "transport") from e
        except NydusReadError:
            self.close()
            raise

    def copy_to(self, length: int) -> bytes:
        """``Response::copy_to`` into a ``length``-byte buffer: overflow is an error."""
        out = bytearray()
        hard = time.monotonic() + self._client.max_exchange_seconds
        for _ in range(length + 2):  # every read() returns >= 1 byte or ends the body
            if time.monotonic() > hard:
                self.close()
                raise NydusTimeout(f"body of {self.url} still flowing after the harness cap")
            chunk = self.read_some(_COPY_CHUNK)
            if not chunk:
                return bytes(out)
            if len(out) + len(chunk) > length:
                self.close()
                raise NydusReadError(
                    f"failed to write whole buffer: body of {self.url} (status {self.status}) "
                    f"is longer than the {length} bytes asked for",
                    "overflow",
                    self.status,
                )
            out += chunk
        self.close()
        raise NydusReadError("body did not end", "transport", self.status)

    def text(self, limit: int = _TEXT_LIMIT) -> str:
        out = bytearray()
        try:
            for _ in range(limit + 1):
                chunk = self.read_some(min(_COPY_CHUNK, limit - len(out) + 1))
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    break
        except NydusReadError as e:
            return f"failed to read response body: {e}"
        finally:
            self.close()
        return out[:limit].decode("utf-8", "replace")

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep_alive and not conn.buf:
            self._client.release(conn)
        else:
            if conn.buf:
                self._client.note(f"{len(conn.buf)} unexpected bytes after the body of {self.url}")
            conn.close()

    def close(self) -> None:
        """Drop the response; the connection is reused only if the body was complete."""
        if self._done:
            self._finish()
            return
        conn, self._conn = self._conn, None
        self._done = True
        if conn is not None:
            conn.close()


class _Client:
    """One reqwest ``Client`` (the direct one, or the one built with ``Proxy::all``)."""

    def __init__(
        self,
        owner: NydusReader,
        proxy: str | None,
        *,
        timeout: float,
        redirect_mode: Literal["nydus", "follow"],
    ) -> None:
        self._owner = owner
        self.timeout = timeout
        self.redirect_mode = redirect_mode
        self.max_exchange_seconds = owner.max_exchange_seconds
        self._proxy = urlsplit(proxy) if proxy else None
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._lock = threading.Lock()
        self._proxy_auth: str | None = None
        if self._proxy is not None:
            if self._proxy.scheme != "http":
                raise ValueError(f"only http:// forward proxies are reproduced: {proxy!r}")
            if self._proxy.username is not None:
                user = unquote(self._proxy.username)
                pair = f"{user}:{unquote(self._proxy.password or '')}"
                self._proxy_auth = "Basic " + base64.b64encode(pair.encode()).decode()

    def idle_timeout(self) -> float:
        """Per body ``read()`` (reqwest blocking); 0 means none, capped by the harness."""
        return self.timeout or self.max_exchange_seconds

    def note(self, text: str) -> None:
        self._owner._notes.append(text)

    # -- pool ----------------------------------------------------------------------------------

    def release(self, conn: _Conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < _MAX_IDLE_PER_HOST and not self._owner.closed:
                conn.reused = True
                idle.append(conn)
                return
        conn.close()

    def _checkout(self, key: tuple[str, int, bool]) -> _Conn | None:
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                conn = idle.pop()
                try:
                    readable, _, _ = select.select([conn.sock], [], [], 0)
                except (OSError, ValueError):
                    readable = [conn.sock]
                if readable:  # closed by the server (or junk): hyper drops such connections
                    conn.close()
                    continue
                return conn
        return None

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for conn in idle:
                    conn.close()
            self._idle.clear()

    def _connect(self, key: tuple[str, int, bool], deadline: float) -> _Conn:
        host, port, tls = key
        _check_loopback(host)
        remaining = deadline - time.monotonic()
        connect_timeout = self._owner.connect_timeout
        timeout = min(connect_timeout, remaining) if connect_timeout else remaining
        if timeout <= 0:
            raise TimeoutError("deadline passed before connecting")
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.create_default_context()
            for ca in self._owner.ca_cert_files:
                ctx.load_verify_locations(ca)
            if self._owner.skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
        return _Conn(sock, key)

    # -- requests ------------------------------------------------------------------------------

    def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> _Response:
        """``Client::request(...).send()``, following redirects only in ``"follow"`` mode."""
        if self.redirect_mode != "follow":
            return self._send_one(method, url, headers, body)
        hdrs = dict(headers)
        previous: list[str] = []
        for _ in range(_MAX_REDIRECTS + 1):
            resp = self._send_one(method, url, hdrs, body)
            location = resp.header("location")
            if resp.status not in _REDIRECT_STATUSES or location is None:
                return resp
            if len(previous) >= _MAX_REDIRECTS:
                resp.close()
                raise NydusReadError(
                    f"error following redirect for {url}: too many redirects", "transport"
                )
            resp.close()
            nxt = urljoin(url, location)
            a, b = urlsplit(url), urlsplit(nxt)
            a_port = a.port or (443 if a.scheme == "https" else 80)
            b_port = b.port or (443 if b.scheme == "https" else 80)
            if a.hostname != b.hostname or a_port != b_port:  # reqwest remove_sensitive_headers
                for name in ("authorization", "cookie", "cookie2", "proxy-authorization"):
                    hdrs.pop(name, None)
                hdrs.pop("www-authenticate", None)
            if not (a.scheme == "https" and b.scheme == "http"):
                hdrs["referer"] = urlunsplit((a.scheme, a.netloc, a.path, a.query, ""))
            if (resp.status == 303 and method != "HEAD") or (
                resp.status in (301, 302) and method == "POST"
            ):
                method, body = "GET", None
                hdrs.pop("content-type", None)
            previous.append(url)
            url = nxt
        raise NydusReadError("too many redirects", "transport")

    def _send_one(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> _Response:
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            raise NydusReadError(f"unsupported URL scheme in {url!r}", "url")
        if self._proxy is not None and scheme == "https":
            raise NotImplementedError("https through a forward proxy is a CONNECT tunnel")
        host, port = _split_hostport(parts.netloc, 443 if scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        wire: dict[str, str] = {"accept": "*/*"}  # reqwest's default header
        wire.update(headers)
        wire.setdefault("host", _host_header(scheme, parts.netloc))
        if self._proxy is not None:
            key = (self._proxy.hostname or "", self._proxy.port or 80, False)
            target = urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))
            if self._proxy_auth and "proxy-authorization" not in wire:
                wire["proxy-authorization"] = self._proxy_auth
        else:
            key = (host, port, scheme == "https")
            target = path
        if body is not None:
            wire["content-length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in wire.items()) + "\r\n"
        payload = head.encode("latin-1") + (body or b"")
        started = time.monotonic()

        def record(status: int | None, error: str | None) -> None:
            self._owner._record(
                RequestRecord(
                    method=method,
                    url=url,
                    target=target,
                    connect=f"{key[0]}:{key[1]}",
                    via_proxy=self._proxy is not None,
                    headers=_redact(wire),
                    status=status,
                    error=error,
                    elapsed=time.monotonic() - started,
                )
            )

        try:
            resp = self._exchange(key, payload, method, url)
        except NydusReadError as e:
            record(None, str(e))
            raise
        record(resp.status, None)
        return resp

    def _exchange(
        self, key: tuple[str, int, bool], payload: bytes, method: str, url: str
    ) -> _Response:
        # reqwest blocking: ``timeout`` bounds everything up to the response head.
        deadline = time.monotonic() + (self.timeout or self.max_exchange_seconds)
        for attempt in range(2):
            conn = self._checkout(key) if attempt == 0 else None
            fresh = conn is None
            try:
                if conn is None:
                    conn = self._connect(key, deadline)
                conn.received = 0
                conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                conn.sock.sendall(payload)
                return self._read_head(conn, method, url, deadline)
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise NydusTimeout(
                    f"error sending request for url ({url}): operation timed out"
                ) from None
            except (OSError, _ClosedBeforeResponse) as e:
                if conn is not None:
                    conn.close()
                # A pooled connection the server had closed: hyper retries on a fresh one.
                if attempt == 0 and not fresh and conn is not None and conn.received == 0:
                    continue
                raise NydusReadError(
                    f"error sending request for url ({url}): {e}", "transport"
                ) from None
            except NydusReadError:
                if conn is not None:
                    conn.close()
                raise
        raise NydusReadError(f"error sending request for url ({url})", "transport")

    def _read_head(self, conn: _Conn, method: str, url: str, deadline: float) -> _Response:
        for _ in range(8):  # skip up to 7 informational (1xx) heads
            for _ in range(_HEAD_LIMIT):
                end = conn.buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(conn.buf) > _HEAD_LIMIT:
                    raise NydusReadError("response head too large", "transport")
                if conn.fill(deadline - time.monotonic()) == 0:
                    if conn.received == 0:
                        raise _ClosedBeforeResponse("connection closed before message completed")
                    raise NydusReadError("connection closed before message completed", "transport")
            else:
                raise NydusReadError("response head too large", "transport")
            raw = bytes(conn.buf[:end]).decode("latin-1")
            del conn.buf[: end + 4]
            lines = raw.split("\r\n")
            status_line = lines[0].split(" ", 2)
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
                raise NydusReadError(f"invalid HTTP status line {lines[0]!r}", "transport")
            try:
                status = int(status_line[1])
            except ValueError:
                raise NydusReadError(f"invalid HTTP status {lines[0]!r}", "transport") from None
            reason = status_line[2] if len(status_line) > 2 else ""
            headers: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise NydusReadError(f"invalid header line {line!r}", "transport")
                headers.append((name.lower(), value.strip()))
            if 100 <= status < 200 and status != 101:
                continue
            connection = ",".join(v.lower() for k, v in headers if k == "connection")
            keep_alive = "close" not in connection
            if status_line[0] == "HTTP/1.0":
                keep_alive = "keep-alive" in connection
            return _Response(
                self,
                conn,
                method,
                url,
                status,
                reason,
                headers,
                keep_alive,
                self._proxy is not None,
            )
        raise NydusReadError("too many informational responses", "transport")


class _ClosedBeforeResponse(Exception):
    pass


# -- per-request context (BackendContext, mod.rs) ------------------------------------------------


@dataclasses.dataclass
class _Ctx:
    prefetch: bool = False
    disable_proxy: bool = False
    using_proxy: bool = False
    status: int | None = None


# -- the reader -----------------------------------------------------------------------------------


class NydusReader:
    """nydusd's registry backend for one ``host`` / ``repo`` (``Registry`` in registry.rs).

    Parameters mirror ``RegistryConfig`` / ``ProxyConfig`` (api/src/config.rs): ``scheme``,
    ``host`` (``"127.0.0.1:PORT"``), ``repo``, ``timeout`` / ``connect_timeout`` (seconds, 5 by
    default, 0 = none), ``auth`` (base64 ``user:password``), ``registry_token``,
    ``skip_verify`` / ``ca_cert_files`` (https), ``blob_url_scheme`` /
    ``blob_redirected_host``, and for forward-proxy mode ``proxy_url``, ``proxy_fallback``,
    ``proxy_ping_url``, ``proxy_check_interval``, ``proxy_check_pause_elapsed``,
    ``proxy_use_http``. ``dragonfly_headers`` reproduces the ``backend-dragonfly-proxy``
    build (x86_64/aarch64 default). ``extra_headers`` stands for ``NYDUS_HEADER_*``.
    ``redirect_mode="follow"`` reproduces nydus v2.3.4 - v2.4.2 (see module doc).

    Use as a context manager (or call ``close``) so the proxy health thread and idle
    connections are released. ``records`` holds the last ``record_limit`` exchanges.
    """

    def __init__(
        self,
        scheme: Literal["http", "https"],
        host: str,
        repo: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        auth: str | None = None,
        registry_token: str | None = None,
        proxy_url: str | None = None,
        proxy_fallback: bool = True,
        proxy_ping_url: str | None = None,
        proxy_check_interval: float = 5.0,
        proxy_check_pause_elapsed: float = 300.0,
        proxy_use_http: bool = False,
        dragonfly_headers: bool = True,
        extra_headers: Mapping[str, str] | None = None,
        redirect_mode: Literal["nydus", "follow"] = "nydus",
        blob_url_scheme: str = "",
        blob_redirected_host: str = "",
        skip_verify: bool = False,
        ca_cert_files: tuple[str, ...] = (),
        max_exchange_seconds: float = 120.0,
        max_health_checks: int = 10_000,
        record_limit: int = 20_000,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https: {scheme!r}")
        self.scheme = scheme
        self.host = host
        self.repo = repo
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.auth = auth.strip() if auth and auth.strip() else None
        if self.auth is not None:  # Registry::validate_authorization_info
            decoded = base64.b64decode(self.auth, validate=True).decode()
            if ":" not in decoded:
                raise ValueError("Invalid registry auth config")
        self.proxy_url = proxy_url or None
        self.proxy_fallback = proxy_fallback
        self.proxy_ping_url = proxy_ping_url or None
        self.proxy_check_interval = proxy_check_interval
        self.proxy_check_pause_elapsed = proxy_check_pause_elapsed
        self.proxy_use_http = proxy_use_http
        self.dragonfly_headers = dragonfly_headers
        self.redirect_mode = redirect_mode
        self.blob_url_scheme = blob_url_scheme
        self.blob_redirected_host = blob_redirected_host
        self.skip_verify = skip_verify
        self.ca_cert_files = ca_cert_files
        self.max_exchange_seconds = max_exchange_seconds
        self.closed = False
        self.records: collections.deque[RequestRecord] = collections.deque(maxlen=record_limit)
        self._notes: collections.deque[str] = collections.deque(maxlen=1000)
        self._custom_headers = {"user-agent": USER_AGENT}
        for name, value in (extra_headers or {}).items():
            self._custom_headers[name.lower()] = value
        token = registry_token.strip() if registry_token and registry_token.strip() else None
        self._cached_auth = f"Bearer {token}" if token else ""
        self._state_lock = threading.Lock()
        self._token_via_get: set[str] = set()
        self._redirects: dict[str, str] = {}
        self._first_lock = threading.Lock()
        self._first_done = False
        self._last_active = time.time()
        self._direct = _Client(self, None, timeout=timeout, redirect_mode=redirect_mode)
        self._proxy = (
            _Client(self, self.proxy_url, timeout=timeout, redirect_mode=redirect_mode)
            if self.proxy_url
            else None
        )
        self._replace_scheme: Literal["unset", "replace", "retain"] = "unset"
        self._proxy_healthy = True
        self._stop = threading.Event()
        self._health_thread: threading.Thread | None = None
        if self._proxy is not None and self.proxy_ping_url:
            self._health_thread = threading.Thread(
                target=self._health_loop,
                args=(max_health_checks,),
                daemon=True,
                name="nydus-reader-proxy-health",
            )
            self._health_thread.start()

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        self._stop.set()
        if self._health_thread is not None:
            self._health_thread.join(self.connect_timeout + 5)
        self._direct.close()
        if self._proxy is not None:
            self._proxy.close()

    def __enter__(self) -> NydusReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection --------------------------------------------------------------------------

    def blob_url(self, digest: str) -> str:
        """``RegistryState::url("/blobs/sha256:<hex>")``."""
        return f"{self.scheme}://{self.host}/v2/{self.repo}/blobs/sha256:{_hex_of(digest)}"

    @property
    def proxy_healthy(self) -> bool:
        return self._proxy_healthy

    @property
    def notes(self) -> list[str]:
        """Oddities seen on the wire that nydus tolerates (e.g. bytes after a body)."""
        return list(self._notes)

    def cached_redirect(self, digest: str) -> str | None:
        with self._state_lock:
            return self._redirects.get(_hex_of(digest))

    def _record(self, record: RequestRecord) -> None:
        self.records.append(record)

    # -- proxy health (Connection::start_proxy_health_thread) -----------------------------------

    def ping_proxy(self) -> bool:
        """One health check: ``GET ping_url``; ``[200, 400)`` marks the proxy healthy."""
        if self.proxy_ping_url is None:
            raise ValueError("no proxy_ping_url configured")
        # A plain reqwest Client::new(): default redirects, no nydus headers.
        pinger = _Client(self, None, timeout=self.connect_timeout, redirect_mode="follow")
        try:
            resp = pinger.send("GET", self.proxy_ping_url, {}, None)
            healthy = 200 <= resp.status < 400
            resp.close()
        except NydusReadError:
            healthy = False
        finally:
            pinger.close()
        self._proxy_healthy = healthy
        return healthy

    def _health_loop(self, limit: int) -> None:
        for _ in range(limit):
            if self._stop.is_set():
                return
            if time.time() - self._last_active <= self.proxy_check_pause_elapsed:
                self.ping_proxy()
            if self._stop.wait(self.proxy_check_interval):
                return

    # -- the request layers ---------------------------------------------------------------------

    def _respond(self, resp: _Response, catch_status: bool) -> _Response:
        """``respond()``: with ``catch_status``, a status outside ``[200, 400)`` is an error."""
        if not catch_status or 200 <= resp.status < 400:
            return resp
        text = resp.text()
        raise NydusReadError(
            f"HTTP {resp.status} for {resp.method} {resp.url}: {text[:500]}", "status", resp.status
        )

    def _client_call(
        self,
        client: _Client,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        catch_status: bool,
    ) -> _Response:
        """``Connection::call_inner``."""
        return self._respond(client.send(method, url, headers, body), catch_status)

    def _connection_call(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        catch_status: bool,
        skip_proxy: bool,
    ) -> _Response:
        """``Connection::call_with_proxy_control`` (connection.rs)."""
        self._last_active = time.time()
        if not skip_proxy and self._proxy is not None:
            if self._proxy_healthy:
                target = url
                if self.proxy_use_http:
                    target = self._try_use_http(url)
                try:
                    resp = self._client_call(
                        self._proxy, method, target, headers, body, catch_status
                    )
                    if not self.proxy_fallback or resp.status < 500:
                        return resp
                    resp.close()
                except NydusReadError:
                    if not self.proxy_fallback:
                        raise
                # "Request proxy server failed, fallback to original server"
            elif not self.proxy_fallback:
                raise NydusReadError(
                    "proxy is not healthy and fallback is disabled", "proxy-unhealthy"
                )
        return self._client_call(self._direct, method, url, headers, body, catch_status)

    def _try_use_http(self, url: str) -> str:
        """``Proxy::try_use_http``: the choice is made once, from the first URL seen."""
        with self._state_lock:
            if self._replace_scheme == "unset":
                if url.startswith("https:"):
                    self._replace_scheme = "replace"
                elif url.startswith("http:"):
                    self._replace_scheme = "retain"
            replace = self._replace_scheme == "replace"
        return url.replace("https", "http", 1) if replace else url

    def _call(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        catch_status: bool,
        ctx: _Ctx,
        body: bytes | None = None,
        temp_disable_proxy: bool = False,
    ) -> _Response:
        """``Request::call`` (request.rs): custom headers, Dragonfly headers, routing."""
        headers.update(self._custom_headers)
        ctx.using_proxy = False
        if temp_disable_proxy or ctx.disable_proxy or self._proxy is None:
            # NB: nydus passes temp_disable_proxy (not ctx.disable_proxy) down: a healthy
            # proxy is still used when only ctx.disable_proxy is set.
            resp = self._connection_call(
                method, url, headers, body, catch_status, temp_disable_proxy
            )
            ctx.status = resp.status
            return resp
        if self.dragonfly_headers:
            headers["x-dragonfly-prefetch"] = "true"
            ctx.using_proxy = True
            headers["x-dragonfly-priority"] = "3" if ctx.prefetch else "6"
            headers["x-dragonfly-use-p2p"] = "true"
        resp = self._connection_call(method, url, headers, body, catch_status, False)
        ctx.status = resp.status
        if self.dragonfly_headers and resp.header("x-dragonfly-error-type") == "proxy":
            text = resp.text()
            if resp.status == 429:
                raise NydusReadError(f"proxy rate limited: {text}", "proxy-limited", 429)
            if resp.status == 403:
                raise NydusReadError(f"proxy forbidden: {text}", "proxy-forbidden", 403)
            raise NydusReadError(
                f"unexpected proxy error status: {resp.status}", "proxy-error", resp.status
            )
        return resp

    def _registry_request(
        self, method: str, url: str, headers: dict[str, str], *, catch_status: bool, ctx: _Ctx
    ) -> _Response:
        """``RegistryReader::request`` (registry.rs): cached auth and the 401 challenge."""
        with self._state_lock:
            last_cached = self._cached_auth
        if last_cached:
            headers["authorization"] = last_cached
        resp = self._call(method, url, headers, catch_status=False, ctx=ctx)
        if resp.status == 401:
            if "authorization" in headers:
                resp.close()
                del headers["authorization"]
                resp = self._call(method, url, headers, catch_status=False, ctx=ctx)
            challenge = resp.header("www-authenticate")
            parsed = nydus_parse_auth(challenge) if challenge is not None else None
            if parsed is not None:
                resp.close()
                auth_header = self._auth_header(*parsed)
                headers["authorization"] = auth_header
                resp = self._call(method, url, headers, catch_status=catch_status, ctx=ctx)
                if 200 <= resp.status < 400:
                    with self._state_lock:
                        self._cached_auth = auth_header
                return self._respond(resp, catch_status)
        return self._respond(resp, catch_status)

    def _auth_header(self, scheme: str, params: dict[str, str]) -> str:
        """``RegistryState::get_auth_header``."""
        if scheme == "Basic":
            return f"Basic {self.auth or ''}"
        realm = params["realm"]
        host = urlsplit(realm).netloc
        with self._state_lock:
            use_get = host in self._token_via_get
        try:
            if use_get:
                resp = self._fetch_token(params, "GET")
            else:
                try:
                    resp = self._fetch_token(params, "POST")
                except NydusReadError:
                    resp = self._fetch_token(params, "GET")
                    with self._state_lock:
                        self._token_via_get.add(host)
            text = resp.text()
            answer = json.loads(text)
        except (NydusReadError, ValueError) as e:
            raise NydusReadError(f"failed to get auth token from registry: {e}", "auth") from e
        token = ""
        if isinstance(answer, dict):
            token = str(answer.get("token") or answer.get("access_token") or "")
        if not token:
            raise NydusReadError("failed to get auth token from registry", "auth")
        return f"Bearer {token}"

    def _fetch_token(self, params: dict[str, str], method: str) -> _Response:
        """``RegistryState::fetch_token``: always direct (``temp_disable_proxy = true``)."""
        headers: dict[str, str] = {}
        if self.auth:
            headers["authorization"] = f"Basic {self.auth}"
        fields = [
            ("service", params["service"]),
            ("scope", params["scope"]),
            ("client_id", CLIENT_ID),
        ]
        url = params["realm"]
        body = None
        if method == "GET":
            url += ("&" if urlsplit(url).query else "?") + urlencode(fields)
        else:
            body = urlencode(fields).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        return self._call(
            method, url, headers, catch_status=True, ctx=_Ctx(), body=body, temp_disable_proxy=True
        )

    def _first(self, fn: Callable[[], T]) -> T:
        """``First::handle_force``: calls run one at a time until one has succeeded."""
        if self._first_done:
            return fn()
        with self._first_lock:
            if not self._first_done:
                value = fn()
                self._first_done = True
                return value
        return fn()

    # -- blob operations ------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int:
        """``BlobReader::blob_size``: HEAD, Content-Length as u64 (no retry)."""
        url = self.blob_url(digest)

        def once() -> int:
            resp = self._registry_request("HEAD", url, {}, catch_status=True, ctx=_Ctx())
            value = resp.header("content-length")
            resp.close()
            if value is None:
                raise NydusReadError("invalid content length", "content-length", resp.status)
            text = value[1:] if value.startswith("+") else value
            if not text.isdigit() or not text.isascii() or int(text) >= 1 << 64:
                raise NydusReadError(
                    f"invalid content length: {value!r}", "content-length", resp.status
                )
            return int(text)

        return self._first(once)

    def try_read(self, digest: str, offset: int, length: int, *, prefetch: bool = False) -> bytes:
        """One ``BlobReader::try_read``: may return fewer than ``length`` bytes."""
        hexd = _hex_of(digest)
        self._check_range(offset, length)
        ctx = _Ctx(prefetch=prefetch)
        return self._first(lambda: self._try_read_once(hexd, offset, length, True, ctx))

    def read_range(
        self,
        digest: str,
        offset: int,
        length: int,
        *,
        prefetch: bool = False,
        retries: int | None = None,
    ) -> bytes:
        """``BlobReader::read_with_source``: ``retry_op`` around a strict ``try_read``.

        Returns exactly ``length`` bytes or raises the last attempt's ``NydusReadError``
        (``NydusShortRead`` for a short body) with ``attempts`` holding the earlier ones.
        ``retries`` overrides nydus' 3 (on-demand) / 1 (prefetch).
        """
        hexd = _hex_of(digest)
        self._check_range(offset, length)
        ctx = _Ctx(prefetch=prefetch)
        retry_count = retries if retries is not None else (1 if prefetch else 3)
        errors: list[NydusReadError] = []
        for _ in range(retry_count + 1):
            try:
                data = self._first(lambda: self._try_read_once(hexd, offset, length, True, ctx))
                if len(data) != length:
                    raise NydusShortRead(length, data, ctx.status)
                return data
            except NydusReadError as err:
                forbidden = err.kind == "proxy-forbidden"
                limited = err.kind == "proxy-limited"
                if retry_count > 0 and not forbidden and not (limited and prefetch):
                    errors.append(err)
                    retry_count -= 1
                    if (retry_count == 0 or limited) and not prefetch:
                        ctx.disable_proxy = True
                        _BACKEND_QPS_LIMITER.acquire()
                    else:
                        ctx.disable_proxy = False
                        if prefetch:
                            time.sleep(random.uniform(0.1, 1.0))
                    continue
                err.attempts = errors
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _check_range(offset: int, length: int) -> None:
        if offset < 0 or length < 1:
            raise ValueError(f"bad range: offset {offset}, length {length}")

    def _try_read_once(
        self, hexd: str, offset: int, length: int, allow_retry: bool, ctx: _Ctx
    ) -> bytes:
        """``RegistryReader::_try_read``."""
        url = f"{self.scheme}://{self.host}/v2/{self.repo}/blobs/sha256:{hexd}"
        headers = {"range": f"bytes={offset}-{offset + length - 1}"}
        with self._state_lock:
            cached = self._redirects.get(hexd)
        if cached is not None:
            resp = self._call("GET", cached, headers, catch_status=False, ctx=ctx)
            if allow_retry and resp.status in (401, 403):
                resp.close()
                with self._state_lock:
                    self._redirects.pop(hexd, None)
                return self._try_read_once(hexd, offset, length, False, ctx)
        else:
            resp = self._registry_request("GET", url, dict(headers), catch_status=False, ctx=ctx)
            if 300 <= resp.status < 400:
                location = resp.header("location")
                if location is not None:
                    resp.close()
                    target = self._redirect_target(location)
                    resp = self._call("GET", target, headers, catch_status=True, ctx=ctx)
                    with self._state_lock:
                        self._redirects[hexd] = target
            else:
                resp = self._respond(resp, True)
        return resp.copy_to(length)

    def _redirect_target(self, location: str) -> str:
        parts = urlsplit(location)
        if not parts.scheme or not parts.netloc:  # Url::parse: "relative URL without a base"
            raise NydusReadError(
                f"failed to parse URL {location}, relative URL without a base", "url"
            )
        scheme, netloc = parts.scheme, parts.netloc
        if self.blob_url_scheme:
            scheme = self.blob_url_scheme
        if self.blob_redirected_host:
            port = f":{parts.port}" if parts.port else ""
            netloc = self.blob_redirected_host + port
        return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))

    # -- load -----------------------------------------------------------------------------------

    def stress(
        self,
        digests_with_data: dict[str, bytes],
        requests: int,
        concurrency: int,
        min_len: int = 4096,
        max_len: int = 1 << 20,
        seed: int = 0,
        *,
        tail_fraction: float = 0.1,
        deadline: float = 300.0,
    ) -> StressResult:
        """``requests`` random closed-range reads (``concurrency`` at a time), each checked.

        Every request is one nydus attempt (``try_read`` plus the strict length check of
        ``read_with_source``, no retries, so nothing is papered over); its answer must equal
        the expected bytes exactly. Failures are collected, never fatal. ``tail_fraction`` of
        the ranges end on the blob's last byte. Requests not started ``deadline`` seconds
        after the run began are recorded as ``"skipped"`` failures.
        """
        if not digests_with_data or requests < 0 or concurrency < 1:
            raise ValueError("need blobs, requests >= 0 and concurrency >= 1")
        rng = random.Random(seed)
        names = sorted(digests_with_data)
        plan: list[tuple[int, str, int, int]] = []
        for index in range(requests):
            digest = rng.choice(names)
            size = len(digests_with_data[digest])
            hi = max(1, min(max_len, size))
            length = rng.randint(min(min_len, hi), hi)
            if rng.random() < tail_fraction:
                offset = size - length
            else:
                offset = rng.randint(0, size - length)
            plan.append((index, digest, offset, length))
        result = StressResult(requests=requests, concurrency=concurrency)
        lock = threading.Lock()
        start = time.monotonic()
        stop_at = start + deadline

        def one(item: tuple[int, str, int, int]) -> None:
            index, digest, offset, length = item
            if time.monotonic() > stop_at:
                with lock:
                    result.failures.append(
                        StressFailure(
                            index,
                            digest,
                            offset,
                            length,
                            "skipped",
                            "stress deadline passed",
                            None,
                            0.0,
                        )
                    )
                return
            hexd = _hex_of(digest)
            ctx = _Ctx()
            t0 = time.monotonic()
            try:
                data = self._first(lambda: self._try_read_once(hexd, offset, length, True, ctx))
                latency = time.monotonic() - t0
                expected = digests_with_data[digest][offset : offset + length]
                if len(data) != length:
                    raise NydusShortRead(length, data, ctx.status)
                if data != expected:
                    at = next(
                        i for i, (a, b) in enumerate(zip(data, expected, strict=True)) if a != b
                    )
                    raise NydusReadError(
                        f"content differs from byte {offset + at} (status {ctx.status})",
                        "content",
                        ctx.status,
                    )
            except NydusReadError as err:
                with lock:
                    result.failures.append(
                        StressFailure(
                            index,
                            digest,
                            offset,
                            length,
                            err.kind,
                            str(err),
                            err.status,
                            time.monotonic() - t0,
                        )
                    )
                return
            except Exception as err:  # a harness bug must show up as a failure, not a hang
                with lock:
                    result.failures.append(
                        StressFailure(
                            index,
                            digest,
                            offset,
                            length,
                            "harness",
                            repr(err),
                            None,
                            time.monotonic() - t0,
                        )
                    )
                return
            with lock:
                result.ok += 1
                result.bytes_read += length
                result.latencies.append(latency)

        with concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="nydus-stress"
        ) as pool:
            for future in [pool.submit(one, item) for item in plan]:
                future.result()
        result.elapsed = time.monotonic() - start
        result.failures.sort(key=lambda f: f.index)
        return result


def iter_records(reader: NydusReader, method: str | None = None) -> Iterator[RequestRecord]:
    """The reader's recorded exchanges, optionally only one method's."""
    for record in list(reader.records):
        if method is None or record.method == method:
            yield record
