"""A local, loopback-only HTTP "source" server: the upstream a downloader fetches from in tests.

Standard library only. Files are held in memory and served with GET/HEAD over HTTP/1.1
(keep-alive), with single-range requests, ``If-Range``, and per-path misbehaviours (auth,
redirects, failures, cut, reset or stalled bodies, corrupted bytes, a wrong ``Content-Length``,
ignored ranges, slow trickles) that tests switch on.

Typical use::

    @pytest.fixture
    def source() -> Iterator[Source]:
        with Source() as src:
            yield src

    def test_x(source: Source) -> None:
        source.add_file("/blob", b"data")
        source.cut_after("/blob", 2)
        ...  # fetch source.url("/blob")
        assert len(source.requests_for("/blob")) == 2

Paths are matched first exactly (including any query string), then without the query string,
so ``add_file("/blob", ...)`` also answers ``/blob?sig=abc``. Per-path behaviours are checked
in this order: ``require_auth``, ``fail_status``, ``redirect``, then the file (404 if none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
import threading
import time
from email.message import Message
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import TypeVar, cast
from urllib.parse import urlsplit

from tests.support.loopback_http import LoopbackHTTPServer, TrackedHandler

__all__ = ["CHUNK_SIZE", "MAX_CHUNK_DELAY", "MAX_STALL", "RecordedRequest", "Source"]

CHUNK_SIZE = 64 * 1024
"""Bytes per body write, unless ``set_delay`` chose another chunk size."""

MAX_STALL = 60.0
"""Upper bound, in seconds, for ``stall_after``."""

MAX_CHUNK_DELAY = 10.0
"""Upper bound, in seconds, for the per-chunk pause of ``set_delay``."""

IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection is kept open."""

_AUTO = "auto"
_BASE_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z, the automatic Last-Modified

_T = TypeVar("_T")
_C = TypeVar("_C", bound="_Countdown")


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the source received it."""

    method: str
    path: str
    """The request target, query string included."""
    headers: dict[str, str]
    """Header names in lower case; repeated headers are joined with ``", "``."""
    at: float = 0.0
    """When it arrived (``time.monotonic()``)."""


@dataclasses.dataclass
class _File:
    data: bytes
    etag: str | None
    last_modified: str | None
    content_type: str
    auto_etag: bool
    auto_last_modified: bool
    generation: int


@dataclasses.dataclass
class _Failure:
    status: int
    remaining: int | None
    body: bytes
    stall: float = 0.0


@dataclasses.dataclass
class _Countdown:
    remaining: int
    """Responses still to be affected."""


@dataclasses.dataclass
class _Cut(_Countdown):
    nbytes: int


@dataclasses.dataclass
class _Stall(_Countdown):
    nbytes: int
    seconds: float


@dataclasses.dataclass
class _HeaderStall(_Countdown):
    seconds: float


@dataclasses.dataclass
class _Reset(_Countdown):
    nbytes: int


@dataclasses.dataclass
class _Corrupt(_Countdown):
    offset: int


@dataclasses.dataclass
class _Misannounce(_Countdown):
    delta: int


@dataclasses.dataclass(frozen=True)
class _Delay:
    seconds: float
    chunk: int


class _RangeNotSatisfiable(Exception):
    pass


def _auto_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def _auto_last_modified(generation: int) -> str:
    return formatdate(_BASE_MTIME + generation, usegmt=True)


def _quote_etag(value: str) -> str:
    if value.startswith(('"', 'W/"')):
        return value
    return f'"{value}"'


def _is_digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Parse a ``Range`` value into an inclusive ``(first, last)`` pair.

    Returns None when the header is to be ignored (bad syntax, other unit, several ranges:
    RFC 9110 §14.2 lets a server ignore those) and raises ``_RangeNotSatisfiable``.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = spec.split(",")
    if len(specs) != 1:
        return None
    first_s, dash, last_s = specs[0].strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash:
        return None
    if not first_s:  # suffix range: the last N bytes
        if not _is_digits(last_s):
            return None
        suffix = int(last_s)
        if suffix == 0:
            raise _RangeNotSatisfiable
        if size == 0:
            return None  # nothing to select from; send the (empty) whole representation
        return max(size - suffix, 0), size - 1
    if not _is_digits(first_s) or (last_s and not _is_digits(last_s)):
        return None
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid byte-range-spec
    if first >= size:
        raise _RangeNotSatisfiable
    return first, min(last, size - 1)


def _if_range_matches(value: str | None, etag: str | None, last_modified: str | None) -> bool:
    """True if the Range may be honoured: no ``If-Range``, or it matches (strongly)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return etag is not None and not etag.startswith("W/") and value == etag
    if last_modified is None:
        return False
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False


def _path_keys(target: str) -> tuple[str, ...]:
    path = urlsplit(target).path
    return (target,) if path == target else (target, path)


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")


def _check_times(times: int | None) -> None:
    if times is not None and times < 1:
        raise ValueError(f"times must be at least 1, got {times}")


class _Server(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], source: Source):
        self.source = source
        super().__init__(address, _Handler)


class _Handler(TrackedHandler):
    server_version = "test-source/1.0"
    timeout = IDLE_TIMEOUT

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self._server.source._record(self.command, self.path, self.headers)
        return ok

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # -- responses ---------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        head: bool,
        headers: tuple[tuple[str, str], ...] = (),
        content_type: str = "text/plain",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, *, head: bool) -> None:
        if self._has_request_body():
            self.close_connection = True  # the body is not read, so the connection is unusable
        source = self._server.source
        keys = _path_keys(self.path)

        header_stall = source._take_countdown(source._header_stalls, keys)
        if header_stall is not None:
            source._sleep(header_stall.seconds)
            if source._stopping.is_set():
                self.close_connection = True
                return

        expected = source._lookup(source._auth, keys)
        if expected is not None:
            given = self.headers.get("Authorization")
            if given is None:
                scheme = expected.split(" ", 1)[0] if " " in expected else "Basic"
                challenge = (("WWW-Authenticate", f'{scheme} realm="source"'),)
                self._send(HTTPStatus.UNAUTHORIZED, b"unauthorized", head=head, headers=challenge)
                return
            if given != expected:
                self._send(HTTPStatus.FORBIDDEN, b"forbidden", head=head)
                return

        failure = source._take_failure(keys)
        if failure is not None:
            status, body, stall_s = failure
            if stall_s and not head:
                # The status line and headers now, the body after a pause.
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                source._sleep(stall_s)
                if source._stopping.is_set():
                    self.close_connection = True
                    return
                self.wfile.write(body)
                return
            self._send(status, body, head=head)
            return

        redirect = source._lookup(source._redirects, keys)
        if redirect is not None:
            status, location = redirect
            self._send(status, b"", head=head, headers=(("Location", location),))
            return

        file = source._snapshot(keys)
        if file is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found", head=head)
            return
        self._serve_file(file, keys, head=head)

    def _serve_file(self, file: _File, keys: tuple[str, ...], *, head: bool) -> None:
        source = self._server.source
        size = len(file.data)
        ranges = not source._in(source._no_range, keys)
        common: list[tuple[str, str]] = [("Accept-Ranges", "bytes" if ranges else "none")]
        if file.etag is not None:
            common.append(("ETag", file.etag))
        if file.last_modified is not None:
            common.append(("Last-Modified", file.last_modified))

        selected: tuple[int, int] | None = None
        range_header = self.headers.get("Range")
        # RFC 9110 §14.2: Range is only defined for GET; a failed If-Range means "send it all".
        if (
            not head
            and ranges
            and range_header is not None
            and _if_range_matches(self.headers.get("If-Range"), file.etag, file.last_modified)
        ):
            try:
                selected = _parse_range(range_header, size)
            except _RangeNotSatisfiable:
                common.append(("Content-Range", f"bytes */{size}"))
                self._send(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    b"range not satisfiable",
                    head=head,
                    headers=tuple(common),
                )
                return

        if selected is None:
            status, first, length = HTTPStatus.OK, 0, size
        else:
            first, last = selected
            status, length = HTTPStatus.PARTIAL_CONTENT, last - first + 1
            common.append(("Content-Range", f"bytes {selected[0]}-{selected[1]}/{size}"))

        cut = stall = delay = reset = corrupt = misannounce = None
        if not head:
            cut = source._take_countdown(source._cuts, keys)
            stall = source._take_countdown(source._stalls, keys)
            delay = source._lookup(source._delays, keys)
            reset = source._take_countdown(source._resets, keys)
            corrupt = source._take_countdown(source._corrupts, keys)
            misannounce = source._take_countdown(source._misannounces, keys)

        announced = length if misannounce is None else max(length + misannounce.delta, 0)
        self.send_response(status)
        self.send_header("Content-Type", file.content_type)
        self.send_header("Content-Length", str(announced))
        for name, value in common:
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        body = memoryview(file.data)[first : first + length]
        if corrupt is not None and first <= corrupt.offset < first + length:
            changed = bytearray(body)
            changed[corrupt.offset - first] ^= 0xFF
            body = memoryview(bytes(changed))
        if reset is not None and cut is None:
            cut = _Cut(remaining=0, nbytes=reset.nbytes)
        if misannounce is not None and misannounce.delta > 0 and cut is None:
            # More was announced than there is: the body ends by closing the connection.
            cut = _Cut(remaining=0, nbytes=len(body))
        self._write_body(body, cut=cut, stall=stall, delay=delay, reset=reset is not None)

    def _write_body(
        self,
        body: memoryview,
        *,
        cut: _Cut | None,
        stall: _Stall | None,
        delay: _Delay | None,
        reset: bool = False,
    ) -> None:
        source = self._server.source
        limit = len(body) if cut is None else min(cut.nbytes, len(body))
        stall_at = None if stall is None else min(stall.nbytes, limit)
        chunk = CHUNK_SIZE if delay is None else delay.chunk
        pos = 0
        while True:
            if stall is not None and pos == stall_at:
                source._sleep(stall.seconds)
                stall_at = None
            if pos >= limit:
                break
            end = min(pos + chunk, limit)
            if stall_at is not None and pos < stall_at < end:
                end = stall_at
            self.wfile.write(body[pos:end])
            pos = end
            if delay is not None and pos < limit:
                source._sleep(delay.seconds)
        if reset:
            self._reset()
        elif cut is not None:
            self._abort()

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0, then close)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            # close() would wait for rfile's reference to go; closing the descriptor
            # itself sends the RST now (the socket object is left without one).
            os.close(self.connection.detach())

    def _abort(self) -> None:
        """Close the connection now, whatever the announced length."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _has_request_body(self) -> bool:
        if self.headers.get("Transfer-Encoding") is not None:
            return True
        length = self.headers.get("Content-Length")
        return length is not None and length.strip() not in ("", "0")


class Source:
    """An in-memory HTTP/1.1 file server on a loopback address and an ephemeral port."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be a loopback IP address, got {host!r}") from None
        if not address.is_loopback:
            raise ValueError(f"host must be a loopback IP address, got {host!r}")
        self._host = host
        self._tls = tls
        self._family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._files: dict[str, _File] = {}
        self._auth: dict[str, str] = {}
        self._redirects: dict[str, tuple[int, str]] = {}
        self._failures: dict[str, _Failure] = {}
        self._cuts: dict[str, _Cut] = {}
        self._stalls: dict[str, _Stall] = {}
        self._no_range: set[str] = set()
        self._delays: dict[str, _Delay] = {}
        self._resets: dict[str, _Reset] = {}
        self._header_stalls: dict[str, _HeaderStall] = {}
        self._corrupts: dict[str, _Corrupt] = {}
        self._misannounces: dict[str, _Misannounce] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Source:
        """Bind to ``host`` on an ephemeral port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("source already started")
        self._stopping.clear()
        server = _Server((self._host, 0), self)
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"test-source:{server.server_port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and wake any stalled response. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.close(thread)
        self._server = self._thread = None

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._server is None:
            raise RuntimeError("source not started")
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self._server.server_port}"

    def url(self, path: str) -> str:
        _check_path(path)
        return self.base_url + path

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open right now."""
        server = self._server
        if server is None:
            return 0
        with server.connections_lock:
            return len(server.connections)

    # -- content -----------------------------------------------------------------------------

    def add_file(
        self,
        path: str,
        data: bytes,
        *,
        etag: str | None = _AUTO,
        last_modified: str | None = _AUTO,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Serve ``data`` at ``path``.

        ``etag``: "auto" for a strong ETag derived from ``data``, None for no ETag, or a value
        (quoted if it is not already). ``last_modified``: "auto" for a fixed RFC 1123 date, None
        for no Last-Modified, or a value sent as given.
        """
        _check_path(path)
        with self._lock:
            previous = self._files.get(path)
            generation = 0 if previous is None else previous.generation + 1
            self._files[path] = _File(
                data=bytes(data),
                etag=None if etag is None else _quote_etag(etag),
                last_modified=last_modified,
                content_type=content_type,
                auto_etag=etag == _AUTO,
                auto_last_modified=last_modified == _AUTO,
                generation=generation,
            )
            self._refresh_validators(self._files[path])

    def replace_file(self, path: str, data: bytes) -> None:
        """Change the content at ``path``; automatic validators change with it."""
        with self._lock:
            file = self._files.get(path)
            if file is None:
                raise KeyError(f"no file at {path!r}")
            file.data = bytes(data)
            file.generation += 1
            self._refresh_validators(file)

    @staticmethod
    def _refresh_validators(file: _File) -> None:
        if file.auto_etag:
            file.etag = _auto_etag(file.data)
        if file.auto_last_modified:
            file.last_modified = _auto_last_modified(file.generation)

    # -- recorded requests -------------------------------------------------------------------

    def requests_for(self, path_prefix: str) -> list[RecordedRequest]:
        """The requests so far whose target starts with ``path_prefix``, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def _record(self, method: str, path: str, headers: Message) -> None:
        recorded: dict[str, str] = {}
        for name, value in headers.items():
            key = name.lower()
            recorded[key] = f"{recorded[key]}, {value}" if key in recorded else value
        with self._lock:
            self.requests.append(RecordedRequest(method, path, recorded, time.monotonic()))

    # -- behaviours --------------------------------------------------------------------------

    def require_auth(self, path: str, authorization: str) -> None:
        """401 (with WWW-Authenticate) without an Authorization header, 403 if it is not
        exactly ``authorization``."""
        _check_path(path)
        with self._lock:
            self._auth[path] = authorization

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        """Answer ``status`` with ``Location: location`` (absolute or relative)."""
        _check_path(path)
        if not 300 <= status <= 399:
            raise ValueError(f"not a redirect status: {status}")
        with self._lock:
            self._redirects[path] = (status, location)

    def fail_status(
        self,
        path: str,
        status: int,
        times: int | None = None,
        body: bytes = b"error",
        stall_body: float = 0.0,
    ) -> None:
        """Answer ``status`` for the next ``times`` requests (None: always), then normally.

        ``stall_body``: seconds (at most MAX_STALL) between the headers and the body of a GET.
        """
        _check_path(path)
        _check_times(times)
        if not 300 <= status <= 599:
            raise ValueError(f"not a failure status: {status}")
        if not 0 <= stall_body <= MAX_STALL:
            raise ValueError(f"stall_body must be within [0, {MAX_STALL}], got {stall_body}")
        with self._lock:
            self._failures[path] = _Failure(status, times, bytes(body), stall_body)

    def cut_after(self, path: str, nbytes: int, times: int = 1) -> None:
        """For the next ``times`` GETs, send full headers but close after ``nbytes`` of body."""
        _check_path(path)
        _check_times(times)
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, got {nbytes}")
        with self._lock:
            self._cuts[path] = _Cut(remaining=times, nbytes=nbytes)

    def stall_after(self, path: str, nbytes: int, seconds: float, times: int = 1) -> None:
        """For the next ``times`` GETs, pause ``seconds`` (at most MAX_STALL; stop() ends the
        pause early) after ``nbytes`` of body, then go on (or close, with ``cut_after``)."""
        _check_path(path)
        _check_times(times)
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, got {nbytes}")
        if not 0 <= seconds <= MAX_STALL:
            raise ValueError(f"seconds must be within [0, {MAX_STALL}], got {seconds}")
        with self._lock:
            self._stalls[path] = _Stall(remaining=times, nbytes=nbytes, seconds=seconds)

    def stall_headers(self, path: str, seconds: float, times: int = 1) -> None:
        """For the next ``times`` requests, wait ``seconds`` (at most MAX_STALL; stop() ends
        the wait and closes the connection) before any answer is sent, status line included."""
        _check_path(path)
        _check_times(times)
        if not 0 <= seconds <= MAX_STALL:
            raise ValueError(f"seconds must be within [0, {MAX_STALL}], got {seconds}")
        with self._lock:
            self._header_stalls[path] = _HeaderStall(remaining=times, seconds=seconds)

    def reset_after(self, path: str, nbytes: int, times: int = 1) -> None:
        """For the next ``times`` GETs, send full headers and ``nbytes`` of body, then abort
        the connection with a TCP RST (``SO_LINGER`` 0) instead of a clean close."""
        _check_path(path)
        _check_times(times)
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, got {nbytes}")
        with self._lock:
            self._resets[path] = _Reset(remaining=times, nbytes=nbytes)

    def corrupt(self, path: str, offset: int, times: int = 1) -> None:
        """For the next ``times`` GETs, flip every bit of the byte at ``offset`` of the file
        (when the answer's range includes it); headers and lengths stay as they were."""
        _check_path(path)
        _check_times(times)
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        with self._lock:
            self._corrupts[path] = _Corrupt(remaining=times, offset=offset)

    def misannounce(self, path: str, delta: int, times: int = 1) -> None:
        """For the next ``times`` GETs, announce ``Content-Length`` = real length + ``delta``.

        ``delta > 0``: the whole body is sent, then the connection is closed (a short body).
        ``delta < 0``: the whole body is sent on a kept-alive connection, so the bytes past
        the announced length are left over on it.
        """
        _check_path(path)
        _check_times(times)
        if delta == 0:
            raise ValueError("delta must not be 0")
        with self._lock:
            self._misannounces[path] = _Misannounce(remaining=times, delta=delta)

    def no_range(self, path: str) -> None:
        """Ignore Range for ``path``: always 200 with the whole body (``Accept-Ranges: none``)."""
        _check_path(path)
        with self._lock:
            self._no_range.add(path)

    def set_delay(self, path: str, seconds_per_chunk: float, chunk: int = CHUNK_SIZE) -> None:
        """Trickle bodies at ``path``: ``chunk`` bytes, then a pause, and so on."""
        _check_path(path)
        if not 0 <= seconds_per_chunk <= MAX_CHUNK_DELAY:
            raise ValueError(
                f"seconds_per_chunk must be within [0, {MAX_CHUNK_DELAY}], got {seconds_per_chunk}"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        with self._lock:
            self._delays[path] = _Delay(seconds_per_chunk, chunk)

    # -- used by the handler -----------------------------------------------------------------

    def _lookup(self, table: dict[str, _T], keys: tuple[str, ...]) -> _T | None:
        with self._lock:
            for key in keys:
                if key in table:
                    return table[key]
        return None

    def _in(self, paths: set[str], keys: tuple[str, ...]) -> bool:
        with self._lock:
            return any(key in paths for key in keys)

    def _snapshot(self, keys: tuple[str, ...]) -> _File | None:
        with self._lock:
            for key in keys:
                file = self._files.get(key)
                if file is not None:
                    return dataclasses.replace(file)
        return None

    def _take_failure(self, keys: tuple[str, ...]) -> tuple[int, bytes, float] | None:
        with self._lock:
            for key in keys:
                failure = self._failures.get(key)
                if failure is None:
                    continue
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        del self._failures[key]
                return failure.status, failure.body, failure.stall
        return None

    def _take_countdown(self, table: dict[str, _C], keys: tuple[str, ...]) -> _C | None:
        """Use up one of a cut's or stall's turns."""
        with self._lock:
            for key in keys:
                entry = table.get(key)
                if entry is None:
                    continue
                entry.remaining -= 1
                if entry.remaining <= 0:
                    del table[key]
                return entry
        return None

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)
