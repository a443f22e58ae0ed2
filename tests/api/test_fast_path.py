"""The channel's fast path for blob HEAD and small GETs answers exactly what
twisted.web's way answers, and hands everything unusual to it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.support.server import ServerProcess


@attrs.define
class Cached:
    server: ServerProcess
    digest: str
    data: bytes
    host: str
    port: int


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    cache = tmp_path_factory.mktemp("fast") / "cache"
    data = os.urandom(600_000)
    hex_ = hashlib.sha256(data).hexdigest()
    blobs = cache / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / hex_).write_bytes(data)
    (cache / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (cache / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    with ServerProcess(cache) as srv:
        host, port = srv.base_url.removeprefix("http://").rsplit(":", 1)
        yield Cached(srv, f"sha256:{hex_}", data, host, int(port))


def exchange(c: Cached, raw: bytes, answers: int, pieces: int = 1) -> list[tuple[bytes, bytes]]:
    """Send ``raw`` (in ``pieces`` writes) and read ``answers`` responses (head, body)."""
    with socket.create_connection((c.host, c.port), timeout=10) as s:
        step = -(-len(raw) // pieces)
        for i in range(0, len(raw), step):
            s.sendall(raw[i : i + step])
            time.sleep(0.05)
        buf = b""
        out: list[tuple[bytes, bytes]] = []
        while len(out) < answers:
            while b"\r\n\r\n" not in buf:
                more = s.recv(65536)
                assert more, f"connection closed after {len(out)} answers"
                buf += more
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = 0
            is_head = raw.split(b"\r\n\r\n")[len(out)].startswith(b"HEAD ")
            is_head = is_head or head.split(b" ", 2)[1] == b"304"  # no body either
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length" and not is_head:
                    length = int(v)
            while len(buf) < length:
                more = s.recv(65536)
                assert more
                buf += more
            out.append((head, buf[:length]))
            buf = buf[length:]
        return out


def headers_of(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        fields[k.strip().lower()] = v.strip()
    fields.pop(b"date")
    return lines[0], fields


def request(c: Cached, method: str, path: str, *extra: str, proto: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {proto}", f"Host: {c.host}:{c.port}", *extra, "", ""]
    return "\r\n".join(lines).encode()


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("HEAD", []),
        ("HEAD", ["?ns=docker.io"]),
        ("GET", ["?ns=registry.example:5000", "Range: bytes=0-99"]),
        ("HEAD", ["Range: bytes=5-99"]),
        ("GET", ["Range: bytes=100-4195"]),
        ("GET", ["Range: bytes=-10"]),
        ("GET", ["Range: bytes=0-0", "Connection: keep-alive"]),
        ("GET", ["Range: bytes=1000-400000"]),  # sendfile(2), then what the socket left
        ("GET", ["Range: items=0-5"]),  # ignored: the whole blob
    ],
)
def test_same_answer_both_ways(cached: Cached, method: str, extra: list[str]) -> None:
    path = f"/v2/some/repo/blobs/{cached.digest}"
    if extra and extra[0].startswith("?"):
        path, extra = path + extra[0], extra[1:]
    fast = request(cached, method, path, *extra)
    # If-Range without Range changes nothing, but makes the fast path decline.
    slow = request(cached, method, path, *extra, f'If-Range: "{cached.digest}"')
    (fast_head, fast_body), (slow_head, slow_body) = exchange(cached, fast + slow, 2)
    assert headers_of(fast_head) == headers_of(slow_head)
    assert fast_body == slow_body
    status, fields = headers_of(fast_head)
    if method == "GET":
        assert len(fast_body) == int(fields[b"content-length"])
        if status.startswith(b"HTTP/1.1 206"):
            first, last = fields[b"content-range"].split(b" ")[1].split(b"/")[0].split(b"-")
            assert fast_body == cached.data[int(first) : int(last) + 1]


def test_pipelined_mix_of_fast_and_ordinary(cached: Cached) -> None:
    blob = f"/v2/r/blobs/{cached.digest}"
    raw = b"".join(
        [
            request(cached, "HEAD", blob),
            request(cached, "GET", "/v2/"),
            request(cached, "GET", blob, "Range: bytes=10-19"),
            request(cached, "GET", f"/v2/r/blobs/sha256:{'0' * 64}"),
            request(cached, "GET", blob, "Range: bytes=20-29"),
        ]
    )
    for pieces in (1, 7):  # whole, and cut anywhere (heads split across reads)
        answers = exchange(cached, raw, 5, pieces)
        statuses = [headers_of(h)[0].split(b" ")[1] for h, _ in answers]
        assert statuses == [b"200", b"200", b"206", b"404", b"206"]
        assert answers[1][1] == b"{}"
        assert answers[2][1] == cached.data[10:20]
        assert json.loads(answers[3][1])["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert answers[4][1] == cached.data[20:30]


@pytest.mark.parametrize(
    "extra",
    [
        ["If-None-Match: *"],
        ["Range: bytes=999999999-"],
        ["Connection: close"],
        ["Host: a", "Host: b"],
        ["Bad Header: x"],
    ],
)
def test_declined_requests_get_the_ordinary_answer(cached: Cached, extra: list[str]) -> None:
    raw = request(cached, "GET", f"/v2/r/blobs/{cached.digest}", *extra)
    ((head, body),) = exchange(cached, raw, 1)
    status = head.split(b"\r\n", 1)[0]
    expected = {
        "If-None-Match: *": b"304",
        "Range: bytes=999999999-": b"416",
        "Connection: close": b"200",
        "Host: a": b"200",
        "Bad Header: x": b"400",
    }[extra[0]]
    assert status.split(b" ")[1] == expected, head
    if expected == b"200":
        assert body == cached.data


def test_http10_and_logged(cached: Cached) -> None:
    path = f"/v2/log/me/blobs/{cached.digest}"
    raw = request(cached, "HEAD", path, proto="HTTP/1.0")
    with socket.create_connection((cached.host, cached.port), timeout=10) as s:
        s.sendall(raw)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.0 200")
    assert b"Content-Length: 600000" in answer
    exchange(cached, request(cached, "HEAD", path), 1)
    deadline = time.monotonic() + 5
    want = f'"HEAD {path} HTTP/1.1" 200 0 '
    while not any(want in line for line in cached.server.lines):
        assert time.monotonic() < deadline, cached.server.log()
        time.sleep(0.05)
    assert any(f'"HEAD {path} HTTP/1.0" 200' in line for line in cached.server.lines)


def test_removed_blob_is_unknown(cached: Cached, tmp_path: Path) -> None:
    data = b"gone soon"
    hex_ = hashlib.sha256(data).hexdigest()
    blob = cached.server.cache_dir / "blobs" / "sha256" / hex_
    blob.write_bytes(data)
    raw = request(cached, "HEAD", f"/v2/r/blobs/sha256:{hex_}")
    assert headers_of(exchange(cached, raw, 1)[0][0])[0].endswith(b"200 OK")
    blob.unlink()
    assert b" 404 " in headers_of(exchange(cached, raw, 1)[0][0])[0]


def test_large_answer_to_a_slow_reader(cached: Cached) -> None:
    """What the socket does not take at once follows, in order, before the next answer."""
    blob = f"/v2/r/blobs/{cached.digest}"
    raw = request(cached, "GET", blob, "Range: bytes=7-599999") + request(
        cached, "GET", blob, "Range: bytes=0-9"
    )
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect((cached.host, cached.port))
        s.sendall(raw)
        time.sleep(0.3)  # the server's first sendfile(2) finds the socket full
        buf = b""

        def complete() -> bool:
            first = buf.find(b"\r\n\r\n")
            second = buf.find(b"\r\n\r\n", first + 4 + 599993)
            return first >= 0 and second >= 0 and len(buf) >= second + 4 + 10

        while not complete():
            more = s.recv(65536)
            assert more
            buf += more
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert b" 206 " in head.split(b"\r\n")[0]
    assert rest[:599993] == cached.data[7:600000]
    head2, body2 = rest[599993:].split(b"\r\n\r\n", 1)
    assert b"Content-Range: bytes 0-9/600000" in head2
    assert body2[:10] == cached.data[:10]
