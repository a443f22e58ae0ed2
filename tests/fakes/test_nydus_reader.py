"""``tests.support.nydus_reader`` against a real registry and small misbehaving servers.

The real CNCF registry shows the model reads correctly (sizes, exact ranges, a concurrent
stress run); the standard-library servers on 127.0.0.1 show it judges bad answers as nydusd
does (bodies longer or shorter than asked, cut bodies, redirects, timeouts) and reproduces
nydusd's forward-proxy mode (absolute-form targets, fallback, ping).
"""

from __future__ import annotations

import base64
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.support.images import Blobs, digest_of, push_image_tree, random_bytes
from tests.support.nydus_reader import (
    CLIENT_ID,
    USER_AGENT,
    NydusReader,
    NydusReadError,
    NydusShortRead,
    NydusTimeout,
    RequestRecord,
    nydus_parse_auth,
)
from tests.support.registry import Registry, TokenServer

REPO = "nydus/test"


# -- a scripted HTTP server on 127.0.0.1 -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    peer_port: int
    """The client's source port: one per TCP connection."""

    @property
    def path(self) -> str:
        """The path, whether the target was origin-form or absolute-form."""
        if self.target.startswith("http://") or self.target.startswith("https://"):
            return "/" + self.target.split("/", 3)[3]
        return self.target


@dataclasses.dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    content_length: int | None = None
    """Announced Content-Length (default ``len(body)``); if larger, the connection is cut."""
    delay: float = 0.0
    """Seconds to wait before the status line."""
    chunked: bool = False
    """Send the body with ``Transfer-Encoding: chunked`` (in 1000-byte chunks)."""
    stall: float = 0.0
    """Seconds to pause after the first half of the body."""


class FakeServer:
    """``ThreadingHTTPServer`` answering every request with ``handler(seen)``."""

    def __init__(self, handler: Callable[[Seen], Reply]) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length") or 0)
                if length:
                    self.rfile.read(min(length, 1 << 20))
                seen = Seen(self.command, self.path, headers, self.client_address[1])
                with server._lock:
                    server.seen.append(seen)
                reply = server.handler(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                announced = (
                    len(reply.body) if reply.content_length is None else reply.content_length
                )
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif "Content-Length" not in reply.headers:
                    self.send_header("Content-Length", str(announced))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.chunked:
                    for i in range(0, len(reply.body), 1000):
                        piece = reply.body[i : i + 1000]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                half = len(reply.body) // 2
                self.wfile.write(reply.body[:half])
                if reply.stall:
                    self.wfile.flush()
                    time.sleep(reply.stall)
                self.wfile.write(reply.body[half:])
                if announced > len(reply.body):
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_WR)

            do_GET = _handle
            do_HEAD = _handle
            do_POST = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self.seen]

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_range(header: str) -> tuple[int, int]:
    assert header.startswith("bytes="), header
    start, _, end = header[len("bytes=") :].partition("-")
    return int(start), int(end)


BLOB = random_bytes(256 * 1024, seed=7)
DIGEST = digest_of(BLOB)
HEX = DIGEST.partition(":")[2]
BLOB_PATH = f"/v2/{REPO}/blobs/{DIGEST}"


def blob_reply(seen: Seen, data: bytes = BLOB, mode: str = "exact") -> Reply:
    """Answer a blob HEAD / ranged GET; ``mode`` picks the (mis)behaviour."""
    if seen.method == "HEAD":
        return Reply(200, {"Content-Length": str(len(data))})
    start, end = parse_range(seen.headers["range"])
    part = data[start : end + 1]
    if mode == "whole200":  # ignores Range: the whole blob
        return Reply(200, body=data)
    if mode == "plain200":  # the right bytes, but 200 instead of 206
        return Reply(200, body=part)
    if mode == "short":
        return Reply(206, body=part[:-10])
    if mode == "truncated":
        return Reply(206, body=part[: len(part) // 2], content_length=len(part))
    cr = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
    return Reply(206, {"Content-Range": cr}, part)


def registry_gets(reader: NydusReader) -> list[RequestRecord]:
    return [r for r in reader.records if r.method == "GET"]


# -- against a real registry ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, dict[str, bytes]]]:
    big = random_bytes(3 << 20, seed=1)
    small = random_bytes(100 << 10, seed=2)
    blobs = Blobs()
    big_desc = blobs.add_blob(big)
    small_desc = blobs.add_blob(small)
    top = blobs.image_manifest(blobs.config(), [big_desc, small_desc])
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        push_image_tree(reg.url, REPO, blobs, top, "v1")
        yield reg, {big_desc["digest"]: big, small_desc["digest"]: small}


def test_blob_size_from_registry(registry: tuple[Registry, dict[str, bytes]]) -> None:
    reg, data = registry
    with NydusReader("http", reg.host, REPO) as reader:
        for digest, content in data.items():
            assert reader.blob_size(digest) == len(content)
        heads = [r for r in reader.records if r.method == "HEAD"]
        assert [r.target for r in heads] == [f"/v2/{REPO}/blobs/{d}" for d in data]
        assert all(r.status == 200 and r.header("range") is None for r in heads)
        assert heads[0].header("host") == reg.host
        assert heads[0].header("user-agent") == USER_AGENT


def test_read_range_exact_from_registry(registry: tuple[Registry, dict[str, bytes]]) -> None:
    reg, data = registry
    with NydusReader("http", reg.host, REPO) as reader:
        for digest, content in data.items():
            size = len(content)
            ranges = [
                (0, 1),
                (0, 4096),
                (size - 1, 1),  # the last byte
                (size - 4096, 4096),
                (12345, min(size - 12345, 1 << 20)),
                (0, size),  # the whole blob, still as a closed range
            ]
            for offset, length in ranges:
                got = reader.read_range(digest, offset, length)
                assert got == content[offset : offset + length], (digest, offset, length)
        gets = registry_gets(reader)
        assert {r.status for r in gets} == {206}
        first_size = len(next(iter(data.values())))
        assert gets[2].header("range") == f"bytes={first_size - 1}-{first_size - 1}"
        assert gets[5].header("range") == f"bytes=0-{first_size - 1}"
        assert all(r.target.startswith(f"/v2/{REPO}/blobs/sha256:") for r in gets)
        assert not reader.notes


def test_stress_against_registry(registry: tuple[Registry, dict[str, bytes]]) -> None:
    reg, data = registry
    with NydusReader("http", reg.host, REPO) as reader:
        result = reader.stress(data, requests=300, concurrency=8, seed=1)
    assert result.failures == [], result.summary()
    assert result.ok == 300
    assert len(result.latencies) == 300
    assert result.bytes_read > 0


def test_bearer_token_flow_against_registry(tmp_path: Path) -> None:
    content = random_bytes(50_000, seed=3)
    blobs = Blobs()
    desc = blobs.add_blob(content)
    top = blobs.image_manifest(blobs.config(), [desc])
    with (
        TokenServer(tmp_path / "ts", users={"alice": "s3cret"}) as ts,
        Registry.for_token_server(tmp_path / "reg", ts) as reg,
    ):
        push_image_tree(reg.url, REPO, blobs, top, "v1", ts.bearer([f"repository:{REPO}:*"]))
        ts.clear()
        auth = base64.b64encode(b"alice:s3cret").decode()
        with NydusReader("http", reg.host, REPO, auth=auth) as reader:
            assert reader.read_range(desc["digest"], 100, 1000) == content[100:1100]
            assert reader.read_range(desc["digest"], 0, len(content)) == content
            assert reader.blob_size(desc["digest"]) == len(content)
            statuses = [r.status for r in reader.records if r.url.startswith(reg.url)]
        # 401, retry with the token; then the cached token works at once.
        assert statuses == [401, 206, 206, 200]
        (token_request,) = ts.requests
        assert token_request.method == "POST"
        assert token_request.headers["authorization"] == f"Basic {auth}"
        form = token_request.body.decode()
        assert f"client_id={CLIENT_ID}" in form
        assert "scope=repository%3Anydus%2Ftest%3Apull" in form


# -- misbehaving servers -------------------------------------------------------------------------


def test_200_with_exactly_the_range_is_accepted() -> None:
    with (
        FakeServer(lambda s: blob_reply(s, mode="plain200")) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        assert reader.read_range(DIGEST, 10, 1000, retries=0) == BLOB[10:1010]
        assert registry_gets(reader)[0].status == 200


def test_body_longer_than_asked_fails() -> None:
    with (
        FakeServer(lambda s: blob_reply(s, mode="whole200")) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        with pytest.raises(NydusReadError) as err:
            reader.try_read(DIGEST, 0, 4096)
        assert err.value.kind == "overflow"
        with pytest.raises(NydusReadError) as err:
            reader.read_range(DIGEST, 4096, 4096, retries=0)
        assert err.value.kind == "overflow"
        # The only exact answer: the range that is the whole blob.
        assert reader.read_range(DIGEST, 0, len(BLOB), retries=0) == BLOB


def test_short_body_is_short_data_for_try_read_and_an_error_for_read() -> None:
    with (
        FakeServer(lambda s: blob_reply(s, mode="short")) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        assert reader.try_read(DIGEST, 0, 4096) == BLOB[: 4096 - 10]
        with pytest.raises(NydusShortRead) as err:
            reader.read_range(DIGEST, 0, 4096, retries=0)
        assert err.value.expected == 4096
        assert err.value.data == BLOB[: 4096 - 10]
        assert err.value.status == 206


def test_short_read_is_retried_like_retry_op() -> None:
    with (
        FakeServer(lambda s: blob_reply(s, mode="short")) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        with pytest.raises(NydusShortRead) as err:
            reader.read_range(DIGEST, 0, 4096)  # on-demand: 3 retries
        assert len(err.value.attempts) == 3
        assert len(srv.seen) == 4


def test_cut_body_is_a_transport_error() -> None:
    with (
        FakeServer(lambda s: blob_reply(s, mode="truncated")) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        with pytest.raises(NydusReadError) as err:
            reader.try_read(DIGEST, 0, 65536)
        assert err.value.kind == "transport"


def test_error_status_fails_with_the_body() -> None:
    with (
        FakeServer(lambda s: Reply(404, body=b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        with pytest.raises(NydusReadError) as err:
            reader.read_range(DIGEST, 0, 10, retries=0)
        assert err.value.kind == "status"
        assert err.value.status == 404
        assert "BLOB_UNKNOWN" in str(err.value)


def test_timeout_before_the_response_head() -> None:
    def slow(seen: Seen) -> Reply:
        return dataclasses.replace(blob_reply(seen), delay=1.0)

    with FakeServer(slow) as srv, NydusReader("http", srv.host, REPO, timeout=0.3) as reader:
        t0 = time.monotonic()
        with pytest.raises(NydusTimeout):
            reader.try_read(DIGEST, 0, 10)
        assert time.monotonic() - t0 < 0.9


def test_chunked_bodies_are_judged_like_sized_ones() -> None:
    def handler(seen: Seen) -> Reply:
        mode = "whole200" if seen.headers["range"].startswith("bytes=4096-") else "exact"
        return dataclasses.replace(blob_reply(seen, mode=mode), chunked=True)

    with FakeServer(handler) as srv, NydusReader("http", srv.host, REPO) as reader:
        assert reader.read_range(DIGEST, 10, 20_000, retries=0) == BLOB[10:20_010]
        assert reader.read_range(DIGEST, 0, 1, retries=0) == BLOB[:1]
        with pytest.raises(NydusReadError) as err:
            reader.read_range(DIGEST, 4096, 4096, retries=0)
        assert err.value.kind == "overflow"


def test_timeout_applies_to_each_body_read() -> None:
    def stalling(seen: Seen) -> Reply:
        return dataclasses.replace(blob_reply(seen), stall=1.0)

    with FakeServer(stalling) as srv, NydusReader("http", srv.host, REPO, timeout=0.3) as reader:
        t0 = time.monotonic()
        with pytest.raises(NydusTimeout):
            reader.try_read(DIGEST, 0, 100_000)
        assert time.monotonic() - t0 < 0.9


def test_connections_are_kept_alive_and_reused() -> None:
    with FakeServer(blob_reply) as srv, NydusReader("http", srv.host, REPO) as reader:
        for i in range(5):
            assert reader.read_range(DIGEST, i, 100, retries=0) == BLOB[i : i + 100]
        assert len(srv.seen) == 5
    assert len({s.peer_port for s in srv.seen}) == 1  # one TCP connection served all five


def test_307_redirect_is_followed_once_without_authorization_and_cached() -> None:
    deny_storage = {"once": False}

    def handler(seen: Seen) -> Reply:
        if seen.path == BLOB_PATH:
            location = f"http://{seen.headers['host']}/storage/{HEX}?sig=1"
            return Reply(307, {"Location": location})
        if seen.path.startswith("/storage/"):
            if deny_storage["once"]:
                deny_storage["once"] = False
                return Reply(403, body=b"expired")
            return blob_reply(seen)
        return Reply(404)

    with (
        FakeServer(handler) as srv,
        NydusReader("http", srv.host, REPO, registry_token="t0ken") as reader,
    ):
        assert reader.read_range(DIGEST, 100, 5000, retries=0) == BLOB[100:5100]
        registry_hit, storage_hit = srv.seen
        assert registry_hit.headers["authorization"] == "Bearer t0ken"
        assert "authorization" not in storage_hit.headers
        assert storage_hit.headers["range"] == "bytes=100-5099"
        assert storage_hit.headers["user-agent"] == USER_AGENT
        assert reader.cached_redirect(DIGEST) == f"{srv.url}/storage/{HEX}?sig=1"

        # Cached: the next read goes straight to the storage URL.
        assert reader.read_range(DIGEST, 0, 10, retries=0) == BLOB[:10]
        assert srv.paths()[2:] == [f"/storage/{HEX}?sig=1"]

        # 403 from the cached URL: evicted, and the read restarts at the registry once.
        deny_storage["once"] = True
        assert reader.read_range(DIGEST, 7, 7, retries=0) == BLOB[7:14]
        assert srv.paths()[3:] == [f"/storage/{HEX}?sig=1", BLOB_PATH, f"/storage/{HEX}?sig=1"]


def test_relative_location_fails_but_follow_mode_resolves_it() -> None:
    def handler(seen: Seen) -> Reply:
        if seen.path == BLOB_PATH:
            return Reply(307, {"Location": f"/storage/{HEX}"})
        return blob_reply(seen)

    with FakeServer(handler) as srv:
        with NydusReader("http", srv.host, REPO) as reader:
            with pytest.raises(NydusReadError) as err:
                reader.read_range(DIGEST, 0, 10, retries=0)
            assert err.value.kind == "url"
        with NydusReader("http", srv.host, REPO, redirect_mode="follow") as reader:
            assert reader.read_range(DIGEST, 0, 10, retries=0) == BLOB[:10]


def test_head_redirect_is_not_followed() -> None:
    def handler(seen: Seen) -> Reply:
        if seen.path == BLOB_PATH:
            return Reply(307, {"Location": f"{srv.url}/storage/{HEX}", "Content-Length": "0"})
        return blob_reply(seen)

    with FakeServer(handler) as srv:
        with NydusReader("http", srv.host, REPO) as reader:
            assert reader.blob_size(DIGEST) == 0  # the 307's own Content-Length
        with NydusReader("http", srv.host, REPO, redirect_mode="follow") as reader:
            assert reader.blob_size(DIGEST) == len(BLOB)  # nydus v2.3.4 - v2.4.2


def test_head_without_content_length_fails() -> None:
    with (
        FakeServer(lambda s: Reply(200, {"Content-Length": "abc"})) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        with pytest.raises(NydusReadError) as err:
            reader.blob_size(DIGEST)
        assert err.value.kind in ("content-length", "transport")


def test_stress_collects_every_failure() -> None:
    with (
        FakeServer(lambda s: blob_reply(s, mode="short")) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        result = reader.stress({DIGEST: BLOB}, requests=20, concurrency=4, max_len=8192)
    assert result.ok == 0
    assert result.failed == 20
    assert result.failure_kinds() == {"short": 20}
    assert [f.index for f in result.failures] == list(range(20))


def test_stress_against_a_correct_fake_server() -> None:
    with (
        FakeServer(blob_reply) as srv,
        NydusReader("http", srv.host, REPO) as reader,
    ):
        result = reader.stress({DIGEST: BLOB}, requests=60, concurrency=6, max_len=65536)
    assert result.failures == [], result.summary()
    assert result.ok == 60


# -- forward-proxy mode --------------------------------------------------------------------------


def test_proxy_gets_absolute_form_target_and_registry_host() -> None:
    registry_host = f"127.0.0.1:{closed_port()}"  # never contacted: the proxy answers
    with (
        FakeServer(blob_reply) as proxy,
        NydusReader(
            "http", registry_host, REPO, proxy_url=proxy.url, proxy_fallback=False
        ) as reader,
    ):
        assert reader.read_range(DIGEST, 5, 500) == BLOB[5:505]
        assert reader.blob_size(DIGEST) == len(BLOB)
    get, head = proxy.seen
    assert get.target == f"http://{registry_host}/v2/{REPO}/blobs/{DIGEST}"
    assert get.headers["host"] == registry_host
    assert get.headers["range"] == "bytes=5-504"
    assert get.headers["user-agent"] == USER_AGENT
    assert get.headers["x-dragonfly-priority"] == "6"
    assert get.headers["x-dragonfly-use-p2p"] == "true"
    assert get.headers["x-dragonfly-prefetch"] == "true"
    assert head.method == "HEAD"
    assert head.target == get.target


def test_proxy_5xx_and_refused_fall_back_to_the_registry() -> None:
    with FakeServer(blob_reply) as origin, FakeServer(lambda s: Reply(502)) as proxy:
        with NydusReader("http", origin.host, REPO, proxy_url=proxy.url) as reader:
            assert reader.read_range(DIGEST, 0, 100, retries=0) == BLOB[:100]
        assert len(proxy.seen) == 1
        assert origin.seen[0].target == BLOB_PATH  # origin-form when direct
        assert origin.seen[0].headers["x-dragonfly-priority"] == "6"  # same headers resent

        refused = f"http://127.0.0.1:{closed_port()}"
        with NydusReader("http", origin.host, REPO, proxy_url=refused) as reader:
            assert reader.read_range(DIGEST, 0, 100, retries=0) == BLOB[:100]
            assert [r.via_proxy for r in reader.records] == [True, False]


def test_proxy_4xx_is_not_a_fallback() -> None:
    with FakeServer(blob_reply) as origin, FakeServer(lambda s: Reply(404)) as proxy:
        reader = NydusReader("http", origin.host, REPO, proxy_url=proxy.url)
        with reader, pytest.raises(NydusReadError) as err:
            reader.read_range(DIGEST, 0, 100, retries=0)
        assert err.value.status == 404
        assert origin.seen == []


def test_proxy_without_fallback_returns_5xx() -> None:
    with FakeServer(blob_reply) as origin, FakeServer(lambda s: Reply(503)) as proxy:
        reader = NydusReader("http", origin.host, REPO, proxy_url=proxy.url, proxy_fallback=False)
        with reader, pytest.raises(NydusReadError) as err:
            reader.read_range(DIGEST, 0, 100, retries=0)
        assert err.value.status == 503
        assert origin.seen == []


def test_proxy_ping_marks_it_unhealthy() -> None:
    with (
        FakeServer(blob_reply) as origin,
        FakeServer(blob_reply) as proxy,
        FakeServer(lambda s: Reply(500)) as ping,
    ):
        common: dict[str, Any] = dict(
            proxy_url=proxy.url, proxy_ping_url=f"{ping.url}/healthy", proxy_check_interval=60
        )
        with NydusReader("http", origin.host, REPO, **common) as reader:
            assert reader.ping_proxy() is False
            assert reader.read_range(DIGEST, 0, 100, retries=0) == BLOB[:100]
        with NydusReader("http", origin.host, REPO, proxy_fallback=False, **common) as reader:
            assert reader.ping_proxy() is False
            with pytest.raises(NydusReadError) as err:
                reader.read_range(DIGEST, 0, 100, retries=0)
            assert err.value.kind == "proxy-unhealthy"
        assert proxy.seen == []
        assert len(origin.seen) == 1
        assert {s.target for s in ping.seen} == {"/healthy"}
        assert all("x-dragonfly-priority" not in s.headers for s in ping.seen)


def test_proxy_use_http_rewrites_https_targets() -> None:
    with FakeServer(blob_reply) as proxy:
        reader = NydusReader(
            "https",
            "127.0.0.1:5443",
            REPO,
            proxy_url=proxy.url,
            proxy_use_http=True,
            proxy_fallback=False,
        )
        with reader:
            assert reader.read_range(DIGEST, 0, 10, retries=0) == BLOB[:10]
    assert proxy.seen[0].target == f"http://127.0.0.1:5443/v2/{REPO}/blobs/{DIGEST}"


def test_dragonfly_forbidden_is_not_retried() -> None:
    def handler(seen: Seen) -> Reply:
        return Reply(403, {"X-Dragonfly-Error-Type": "proxy"}, b"blocked")

    with FakeServer(blob_reply) as origin, FakeServer(handler) as proxy:
        reader = NydusReader("http", origin.host, REPO, proxy_url=proxy.url)
        with reader, pytest.raises(NydusReadError) as err:
            reader.read_range(DIGEST, 0, 10)
        assert err.value.kind == "proxy-forbidden"
        assert len(proxy.seen) == 1
        assert origin.seen == []


def test_parse_auth_matches_nydus() -> None:
    challenge = 'Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull"'
    assert nydus_parse_auth(challenge) == (
        "Bearer",
        {"realm": "http://127.0.0.1:1/token", "service": "reg", "scope": "repository:a/b:pull"},
    )
    assert nydus_parse_auth('Basic realm="x"') == ("Basic", {"realm": "x"})
    assert nydus_parse_auth('Bearer realm="r"') is None  # service is required
    # The naive '=' split keeps only the text before a second '='.
    quirky = nydus_parse_auth('Bearer realm="http://h/t?a=b",service="s"')
    assert quirky is not None and quirky[1]["realm"] == "http://h/t?a"
