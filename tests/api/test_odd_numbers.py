"""Numbers of any length and URLs ``urlsplit`` refuses are answered with a
4xx or per RFC 9110, never a 500: Python's ``int()`` refuses over 4300
digits, which every numeric header and query parameter used to reach."""

from __future__ import annotations

import base64
import http.client
import socket
from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess
from tests.support.source import Source

BLOB = bytes(range(100))
BIG = "9" * 5000
ZEROS = "0" * 5000


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("numbers")
    with Source() as src:
        src.add_file("/b", BLOB)
        with ServerProcess(root / "cache", "--allow-push") as srv, srv.client() as c:
            r = c.post("/content/", json={"url": src.url("/b")})
            assert r.status_code == 201, r.text
            yield srv, r.json()["digest"]
            assert "Traceback" not in srv.log()


def ask(
    srv: ServerProcess, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.base_url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("value", "status", "content_range"),
    [
        (f"bytes={BIG}-", 416, "bytes */100"),
        (f"bytes={BIG}-{BIG}", 416, "bytes */100"),
        (f"bytes=-{BIG}", 206, "bytes 0-99/100"),
        (f"bytes=0-{BIG}", 206, "bytes 0-99/100"),
        (f"bytes={ZEROS}5-{ZEROS}7", 206, "bytes 5-7/100"),
        (f"bytes=-{ZEROS}", 416, "bytes */100"),
        (f"bytes={BIG}-{BIG[1:]}", 416, "bytes */100"),  # last < first: no byte
    ],
)
@pytest.mark.parametrize("way", ["fast", "twisted"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_long_range_numerals(
    stocked: tuple[ServerProcess, str],
    value: str,
    status: int,
    content_range: str | None,
    way: str,
    method: str,
) -> None:
    srv, digest = stocked
    headers = {"Range": value}
    if way == "twisted":
        headers["Connection"] = "close"  # the fast path declines it
    got, answer, body = ask(srv, method, f"/v2/x/blobs/{digest}", headers)
    assert got == status, (got, body[:200])
    assert answer.get("content-range") == content_range
    if method == "GET" and status == 206:
        a, b = (int(x) for x in content_range.split(" ")[1].split("/")[0].split("-"))  # type: ignore[union-attr]
        assert body == BLOB[a : b + 1]


def test_long_n_of_tag_and_catalog_lists(stocked: tuple[ServerProcess, str]) -> None:
    srv, _ = stocked
    for target in (f"/v2/_catalog?n={BIG}", f"/v2/x/tags/list?n={BIG}", f"/v2/_catalog?n={ZEROS}1"):
        status, _, body = ask(srv, "GET", target)
        assert status < 500, (target[:40], status, body[:200])


def test_long_content_length_is_413(stocked: tuple[ServerProcess, str]) -> None:
    srv, _ = stocked
    host, port = srv.base_url.split("://", 1)[1].rsplit(":", 1)
    for length in (BIG, ZEROS + "1", "1" + "0" * 30):
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.sendall(
                f"POST /content/ HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n".encode()
            )
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_long_content_range_of_a_push_chunk(stocked: tuple[ServerProcess, str]) -> None:
    srv, _ = stocked
    with srv.client() as c:
        r = c.post("/v2/a/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        for value in (f"0-{BIG}", f"{BIG}-{BIG}", f"{BIG}-0"):
            r = c.patch(location, content=b"abcd", headers={"Content-Range": value})
            assert 400 <= r.status_code < 500, (value[:20], r.status_code, r.text)
        # Zero-padded numerals are read by their value.
        r = c.patch(location, content=b"abcd", headers={"Content-Range": f"{ZEROS}-{ZEROS}3"})
        assert r.status_code == 202, r.text
        assert r.headers["range"] == "0-3"


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://[::1]:99999/x", "http://h:x/", "http://[zz]/"]
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_content_paths_of_urls_urlsplit_refuses(
    stocked: tuple[ServerProcess, str], url: str, method: str
) -> None:
    srv, _ = stocked
    status, _, body = ask(
        srv, method, "/content/" + base64.urlsafe_b64encode(url.encode()).decode()
    )
    assert status == 400, (status, body[:200])
