"""The test HTTP source itself: ranges, validators, auth, redirects and injected faults."""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.source import Source

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def src() -> Iterator[Source]:
    with Source() as s:
        s.add_file("/f", DATA)
        yield s


def connect(source: Source) -> http.client.HTTPConnection:
    parts = urlsplit(source.base_url)
    assert parts.hostname is not None and parts.port is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)


def get(
    source: Source, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = connect(source)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_full_get_and_head(src: Source) -> None:
    response, body = get(src, "/f")
    assert response.status == 200 and body == DATA
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Accept-Ranges"] == "bytes"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert response.headers["Last-Modified"].endswith(" GMT")

    response, body = get(src, "/f", {"Range": "bytes=0-9"}, method="HEAD")
    assert response.status == 200 and body == b""  # Range is defined for GET only
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["ETag"] == etag


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, len(DATA) - 1),
        ("bytes=-16", len(DATA) - 16, len(DATA) - 1),
        ("bytes=10000-99999", 10000, len(DATA) - 1),
        ("bytes=-999999", 0, len(DATA) - 1),
        ("BYTES = 5-5", 5, 5),
    ],
)
def test_single_ranges(src: Source, range_header: str, first: int, last: int) -> None:
    response, body = get(src, "/f", {"Range": range_header})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert body == DATA[first : last + 1]


@pytest.mark.parametrize("range_header", [f"bytes={len(DATA)}-", "bytes=99999-100000", "bytes=-0"])
def test_unsatisfiable_range(src: Source, range_header: str) -> None:
    response, _ = get(src, "/f", {"Range": range_header})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("range_header", ["bytes=5-2", "items=0-1", "bytes=0-1,4-5", "bytes=x-"])
def test_unusable_range_is_ignored(src: Source, range_header: str) -> None:
    response, body = get(src, "/f", {"Range": range_header})
    assert response.status == 200 and body == DATA


def test_if_range(src: Source) -> None:
    head, _ = get(src, "/f", method="HEAD")
    etag, last_modified = head.headers["ETag"], head.headers["Last-Modified"]
    for validator in (etag, last_modified):
        response, body = get(src, "/f", {"Range": "bytes=10-", "If-Range": validator})
        assert response.status == 206 and body == DATA[10:]
    for stale in ('"other"', f"W/{etag}", "Sun, 01 Jan 2023 00:00:00 GMT"):
        response, body = get(src, "/f", {"Range": "bytes=10-", "If-Range": stale})
        assert response.status == 200 and body == DATA

    src.replace_file("/f", b"new content")
    response, body = get(src, "/f", {"Range": "bytes=1-", "If-Range": etag})
    assert response.status == 200 and body == b"new content"
    assert response.headers["ETag"] != etag
    assert response.headers["Last-Modified"] != last_modified


def test_configured_validators(src: Source) -> None:
    src.add_file("/none", b"x", etag=None, last_modified=None, content_type="text/plain")
    response, _ = get(src, "/none")
    assert response.headers["ETag"] is None and response.headers["Last-Modified"] is None
    assert response.headers["Content-Type"] == "text/plain"
    src.add_file("/given", b"x", etag="abc", last_modified="Tue, 02 Jan 2024 00:00:00 GMT")
    response, _ = get(src, "/given")
    assert response.headers["ETag"] == '"abc"'
    assert response.headers["Last-Modified"] == "Tue, 02 Jan 2024 00:00:00 GMT"


def test_unknown_path_and_query(src: Source) -> None:
    assert get(src, "/missing")[0].status == 404
    response, body = get(src, "/f?sig=1")
    assert response.status == 200 and body == DATA
    assert [r.path for r in src.requests_for("/f?")] == ["/f?sig=1"]


def test_auth(src: Source) -> None:
    src.require_auth("/f", "Bearer tok")
    response, _ = get(src, "/f")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert get(src, "/f", {"Authorization": "Bearer nope"})[0].status == 403
    response, body = get(src, "/f", {"Authorization": "Bearer tok"})
    assert response.status == 200 and body == DATA


def test_redirect(src: Source) -> None:
    src.redirect("/old", "/f", status=307)
    response, _ = get(src, "/old")
    assert response.status == 307 and response.headers["Location"] == "/f"
    with urllib.request.urlopen(src.url("/old"), timeout=5) as followed:
        assert followed.read() == DATA


def test_fail_status_times(src: Source) -> None:
    src.fail_status("/f", 503, times=2, body=b"busy")
    for _ in range(2):
        response, body = get(src, "/f")
        assert response.status == 503 and body == b"busy"
    assert get(src, "/f")[0].status == 200
    src.fail_status("/f", 500)
    assert [get(src, "/f")[0].status for _ in range(3)] == [500, 500, 500]


def test_cut_after_is_a_short_read(src: Source) -> None:
    src.cut_after("/f", 1000)
    conn = connect(src)
    conn.request("GET", "/f")
    response = conn.getresponse()
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(DATA))
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert info.value.partial == DATA[:1000]
    conn.close()
    response, body = get(src, "/f")  # only once
    assert response.status == 200 and body == DATA


def test_cut_after_a_range_keeps_its_content_range(src: Source) -> None:
    src.cut_after("/f", 10)
    conn = connect(src)
    conn.request("GET", "/f", headers={"Range": "bytes=100-"})
    response = conn.getresponse()
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}"
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert info.value.partial == DATA[100:110]
    conn.close()


def test_stall_and_delay(src: Source) -> None:
    src.stall_after("/f", 100, seconds=0.2)
    start = time.monotonic()
    _, body = get(src, "/f")
    assert body == DATA and time.monotonic() - start >= 0.2

    src.set_delay("/f", 0.05, chunk=4096)  # 3 chunks, 2 pauses
    start = time.monotonic()
    _, body = get(src, "/f")
    assert body == DATA and time.monotonic() - start >= 0.1


def test_no_range(src: Source) -> None:
    src.no_range("/f")
    response, body = get(src, "/f", {"Range": "bytes=0-9"})
    assert response.status == 200 and body == DATA
    assert response.headers["Accept-Ranges"] == "none"


def test_keep_alive_and_recording(src: Source) -> None:
    conn = connect(src)
    try:
        conn.request("GET", "/f", headers={"Range": "bytes=0-0", "X-Test": "yes"})
        assert conn.getresponse().read() == DATA[:1]
        first_socket = conn.sock
        conn.request("GET", "/f", headers={"Range": "bytes=1-1", "X-Test": "yes"})
        assert conn.getresponse().read() == DATA[1:2]
        assert conn.sock is first_socket  # the connection was kept alive
    finally:
        conn.close()
    recorded = src.requests_for("/f")
    assert [(r.method, r.headers["range"], r.headers["x-test"]) for r in recorded] == [
        ("GET", "bytes=0-0", "yes"),
        ("GET", "bytes=1-1", "yes"),
    ]


def test_large_file_streams(src: Source) -> None:
    data = os.urandom(16 * 1024 * 1024)
    src.add_file("/big", data)
    with urllib.request.urlopen(src.url("/big"), timeout=10) as response:
        assert response.read() == data


def test_loopback_only_and_stop() -> None:
    for host in ("0.0.0.0", "localhost", "192.0.2.1"):
        with pytest.raises(ValueError):
            Source(host)
    source = Source().start()
    url = source.url("/")
    source.stop()
    source.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=1)
