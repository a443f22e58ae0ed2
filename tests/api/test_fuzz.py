"""Hostile input, fuzzed with hypothesis against the real server: every answer
is a 2xx RFC 9110 allows or a 4xx with a JSON error -- never a 5xx, never a
traceback -- and nothing outside the cache is created."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import ServerProcess
from tests.support.source import Source

SAFE = st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#?")
SEGMENT = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "%2e%2e",
            "%2f",
            "%00",
            "%",
            "sha256:",
            "blobs",
            "manifests",
            "tags",
            "list",
            "uploads",
            "_catalog",
            "a" * 300,
        ]
    ),
    st.text(SAFE, min_size=0, max_size=20),
)


# Numerals of any length: int() refuses over 4300 digits, leading zeros included.
NUMERAL = st.one_of(
    st.integers(0, 2**70).map(str),
    st.integers(4000, 6000).map(lambda n: "9" * n),
    st.builds(lambda z, d: "0" * z + d, st.integers(0, 5000), st.integers(0, 20_000).map(str)),
    st.sampled_from(["1" + "0" * 18, "9" * 18, "9" * 4301, "0" * 4301]),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    srv = ServerProcess(root / "cache", "--retries", "0", "--allow-upstream", "example.invalid")
    with srv:
        yield srv, root


def request(
    srv: ServerProcess,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    host, port = srv.base_url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def check(status: int, body: bytes, method: str) -> None:
    assert status < 500, (status, body[:300])
    assert b"Traceback" not in body
    if status >= 400 and method != "HEAD":
        doc = json.loads(body)
        assert "errors" in doc or "error" in doc


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(
    prefix=st.sampled_from(["/v2/", "/content/", "/"]),
    parts=st.lists(SEGMENT, max_size=6),
    method=st.sampled_from(["GET", "HEAD", "DELETE"]),
)
def test_paths(
    server: tuple[ServerProcess, Path], prefix: str, parts: list[str], method: str
) -> None:
    srv, _ = server
    status, body = request(srv, method, prefix + "/".join(parts))
    check(status, body, method)


@FUZZ
@given(
    value=st.one_of(
        st.text(SAFE, max_size=40),
        st.from_regex(
            r"bytes=-?[0-9]{0,25}-?[0-9]{0,25}(,[0-9]{0,5}-[0-9]{0,5}){0,30}", fullmatch=True
        ),
        st.builds(lambda a, b: f"bytes={a}-{b}", NUMERAL, NUMERAL),
    )
)
def test_range_headers(server: tuple[ServerProcess, Path], value: str) -> None:
    srv, _ = server
    digest = "sha256:" + "0" * 64
    status, body = request(srv, "GET", f"/v2/x/blobs/{digest}", headers={"Range": value})
    assert status == 404, (status, body)
    check(status, body, "GET")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=200),
        JSONISH.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "url": st.one_of(
                    st.text(max_size=60),
                    st.sampled_from(
                        [
                            "http://example.com/x",
                            "oci://example.com/a:1",
                            "hf:///o/r/f",
                            "ollama:///m",
                            "file:///etc/passwd",
                            "oci://[::1/a",
                            "http://[fe80::1]/x",
                        ]
                    ),
                )
            },
            optional={"credentials": JSONISH, "credentialsType": JSONISH, "digest": JSONISH},
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_post_bodies(server: tuple[ServerProcess, Path], body: bytes) -> None:
    srv, root = server
    status, answer = request(
        srv, "POST", "/content/", body=body, headers={"Content-Type": "application/json"}
    )
    check(status, answer, "POST")
    assert status != 201
    assert sorted(p.name for p in root.iterdir()) == ["cache"]


# -- against a cache with content: exact Range semantics, headers, base64 -------

SENTINEL = b"SENTINEL-outside-the-cache-7f3a"
BLOB = bytes(range(256)) * 40 + b"tail"  # 10 244 bytes, every offset distinguishable


@attrs.define
class Stocked:
    srv: ServerProcess
    root: Path
    digest: str
    url: str
    tree: list[str]


def snapshot(root: Path) -> list[str]:
    """Everything under ``root`` except the cache's own ingest area."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if "ingest" not in p.relative_to(root).parts
    )


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stocked]:
    root = tmp_path_factory.mktemp("fuzz-stocked")
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_bytes(SENTINEL)
    with Source() as src:
        src.add_file("/blob.bin", BLOB)
        srv = ServerProcess(root / "cache", "--retries", "0")
        with srv, srv.client() as c:
            r = c.post("/content/", json={"url": src.url("/blob.bin")})
            assert r.status_code == 201, r.text
            yield Stocked(srv, root, r.json()["digest"], src.url("/blob.bin"), snapshot(root))


def raw(
    srv: ServerProcess, method: str, target: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    host, port = srv.base_url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request(method, target, headers=headers or {})
    r = conn.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    conn.close()
    return r


def rfc_single_range(value: str, size: int) -> tuple[int, int] | str:
    """What RFC 9110 says of a header that is one plain ``bytes=`` range:
    (first, last), "416", or "ignore"; "other" for anything else."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", value)
    if m is None:
        return "other"
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return "ignore"
    if first == "":
        n = Decimal(last)  # exact at any length (int() refuses over 4300 digits)
        return "416" if n == 0 else (int(max(0, size - n)), size - 1)
    a = Decimal(first)
    if last != "" and Decimal(last) < a:
        return "416"  # last before first: no byte selected
    if a >= size:
        return "416"
    return (int(a), int(min(Decimal(last), size - 1)) if last != "" else size - 1)


def check_blob_answer(r: http.client.HTTPResponse, range_value: str | None, method: str) -> None:
    size = len(BLOB)
    body: bytes = r.body  # type: ignore[attr-defined]
    assert r.status in (200, 206, 304, 416), (r.status, body[:200])
    if r.status == 304:
        return
    expect = rfc_single_range(range_value, size) if range_value is not None else "ignore"
    if r.status == 200:
        assert expect in ("ignore", "other"), (range_value, expect)
        assert r.getheader("Content-Length") == str(size)
        assert body == (BLOB if method == "GET" else b"")
    elif r.status == 416:
        assert expect in ("416", "other"), (range_value, expect)
        assert r.getheader("Content-Range") == f"bytes */{size}"
    else:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.getheader("Content-Range") or "")
        assert m is not None, r.getheader("Content-Range")
        a, b = int(m.group(1)), int(m.group(2))
        assert int(m.group(3)) == size and 0 <= a <= b < size
        if expect != "other":
            assert (a, b) == expect, (range_value, expect)
        assert r.getheader("Content-Length") == str(b - a + 1)
        assert body == (BLOB[a : b + 1] if method == "GET" else b"")
    assert r.getheader("Content-Encoding") is None


RANGE_VALUES = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", NUMERAL | st.just(""), NUMERAL | st.just("")),
    st.from_regex(r"bytes=[0-9]{0,6}-[0-9]{0,6}", fullmatch=True),
    st.from_regex(
        r"bytes=-?[0-9]{0,30}-?[0-9]{0,30}(,[0-9]{0,5}-[0-9]{0,5}){0,40}", fullmatch=True
    ),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(-5, 20_000), st.integers(-5, 20_000)),
    st.sampled_from(
        [
            "bytes=0-0",
            "bytes=-1",
            "bytes=-0",
            "bytes=10244-",
            "bytes=10243-",
            "bytes=-99999999999999999999999",
            "bytes=99999999999999999999999-",
            "bytes=5-3",
            "bytes=--1",
            "bytes = 1 - 2",
            "BYTES=0-1",
            "items=0-1",
            "bytes=0-1,2-3",
            "bytes=" + ",".join(["0-0"] * 500),
            "bytes=",
            "=",
            "",
        ]
    ),
    st.text(SAFE, max_size=40),
)


@FUZZ
@given(value=RANGE_VALUES, method=st.sampled_from(["GET", "HEAD"]))
def test_ranges_of_a_cached_blob_follow_rfc_9110(stocked: Stocked, value: str, method: str) -> None:
    r = raw(stocked.srv, method, f"/v2/any/name/blobs/{stocked.digest}", {"Range": value})
    check_blob_answer(r, value, method)


HEADER_NAME = st.one_of(
    st.sampled_from(
        [
            "Range",
            "If-None-Match",
            "If-Range",
            "If-Modified-Since",
            "Authorization",
            "Accept",
            "Accept-Encoding",
            "Host",
            "Connection",
            "Expect",
            "Cookie",
            "X-Forwarded-For",
        ]
    ),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,30}", fullmatch=True).filter(
        lambda n: n.lower() not in ("content-length", "transfer-encoding")
    ),
)
HEADER_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.sampled_from(["*", '"' + "a" * 64 + '"', "Basic ###", "Bearer ", "bytes=0-1", "a" * 8000]),
)


@FUZZ
@given(
    headers=st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=6),
    route=st.sampled_from(["blob", "content", "manifest", "ping"]),
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_any_headers(stocked: Stocked, headers: dict[str, str], route: str, method: str) -> None:
    """Framing headers (Content-Length, Transfer-Encoding) are left out: a
    GET announcing a body makes the server wait for it, as it should."""
    target = {
        "blob": f"/v2/x/blobs/{stocked.digest}",
        "content": f"/content/{base64.b64encode(stocked.url.encode()).decode()}",
        "manifest": "/v2/x/manifests/latest",
        "ping": "/v2/",
    }[route]
    headers = {k: v.strip() for k, v in headers.items()}
    r = raw(stocked.srv, method, target, headers)
    body: bytes = r.body  # type: ignore[attr-defined]
    check(r.status, body, method)
    assert SENTINEL not in body
    if route == "blob" and r.status != 400:
        rng = next((v for k, v in headers.items() if k.lower() == "range"), None)
        if_range = next((v for k, v in headers.items() if k.lower() == "if-range"), None)
        if if_range is not None and if_range != f'"{stocked.digest}"' and r.status == 200:
            rng = None  # RFC 9110 13.1.5: a validator that does not match: the whole blob
        check_blob_answer(r, rng, method)
    assert snapshot(stocked.root) == stocked.tree


URL_SCHEME = st.sampled_from(
    ["http", "https", "HTTP", "oci", "hf", "s3", "gs", "azure", "file", "ollama", "a+b", "x-1", ""]
)
URL_HOST = st.one_of(
    st.sampled_from(
        [
            "[::1",
            "[::1]",
            "::1]",
            "[::1]:0",
            "[::1]:99999",
            "[fe80::1%25eth0]",
            "[64:ff9b::a9fe:a9fe]",
            "[2002:a9fe:a9fe::]",
            "[::ffff:169.254.169.254]",
            "[zz]",
            "[",
            "]",
            "[]",
            "h:",
            "h:x",
            "h:-1",
            "h:" + "9" * 5000,
            "user:pa%ss@h",
            "@",
            "%zz",
            "%00",
            "169.254.169.254",
            "0x7f.1",
            "",
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
)
URL_REST = st.one_of(
    st.sampled_from(
        ["", "/", "/x?key=a", "/%", "/%2e%2e/%2F", "?X-Amz-Algorithm=AWS4-HMAC-SHA256"]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
        lambda t: "/" + t
    ),
)
URLISH = st.builds(lambda s, h, r: f"{s}://{h}{r}", URL_SCHEME, URL_HOST, URL_REST)


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=120),
        URLISH.map(str.encode),
        st.text(max_size=80).map(str.encode),
        st.sampled_from(
            [
                b"file:///etc/passwd",
                b"../../../../etc/passwd",
                b"file://" + b"/outside/secret.txt",
                b"http://127.0.0.1:1/x\x00.txt",
                b"oci://localhost/../../etc:passwd",
            ]
        ),
    ),
    alphabet=st.sampled_from(["std", "url", "nopad", "percent", "garbage"]),
    method=st.sampled_from(["GET", "HEAD", "DELETE"]),
)
def test_base64_paths(stocked: Stocked, payload: bytes, alphabet: str, method: str) -> None:
    if alphabet == "url":
        enc = base64.urlsafe_b64encode(payload).decode()
    elif alphabet == "nopad":
        enc = base64.b64encode(payload).decode().rstrip("=")
    elif alphabet == "percent":
        enc = quote(base64.b64encode(payload).decode(), safe="")
    elif alphabet == "garbage":
        enc = quote(payload.decode("latin-1"), safe="/=+")
    else:
        enc = base64.b64encode(payload).decode()
    index = (stocked.root / "cache" / "index.json").read_bytes()
    r = raw(stocked.srv, method, "/content/" + enc)
    body: bytes = r.body  # type: ignore[attr-defined]
    check(r.status, body, method)
    if enc == "":
        assert r.status in (200, 405), (r.status, body[:200])  # the listing
    else:  # "/content//" too names nothing: 4xx, as "/content//A==" does below
        assert r.status in (400, 404), (r.status, body[:200])
    assert SENTINEL not in body
    assert (stocked.root / "cache" / "index.json").read_bytes() == index
    assert snapshot(stocked.root) == stocked.tree


def test_over_long_and_nul_targets(stocked: Stocked) -> None:
    for target in (
        "/v2/" + "a/" * 4_000 + "blobs/" + stocked.digest,
        "/content/" + "QUFB" * 3_000,
        "/v2/x/blobs/sha256:%00" + "0" * 60,
        "/content/%00",
        "/content//A==",  # werkzeug would "merge" the slashes with a 308
        "/v2/x%00/manifests/latest",
        "/" + "%2e%2e/" * 50 + "outside/secret.txt",
    ):
        r = raw(stocked.srv, "GET", target)
        body: bytes = r.body  # type: ignore[attr-defined]
        assert 400 <= r.status < 500, (target[:80], r.status)
        assert b"Traceback" not in body and SENTINEL not in body
    assert snapshot(stocked.root) == stocked.tree


def test_over_long_request_and_header_lines_are_answered(stocked: Stocked) -> None:
    """Longer than Twisted's 16 KiB line limit: a 414 / 431 with a JSON error,
    not a connection closed without an answer."""
    for headers, target, status in [
        ({}, "/v2/" + "a/" * 40_000 + "blobs/" + stocked.digest, 414),
        ({}, "/content/" + "QUFB" * 30_000, 414),
        ({"X-Long": "v" * 20_000}, "/v2/", 431),
        ({"X-A": "v" * 9_000, "X-B": "v" * 9_000}, "/v2/", 400),  # over 16 KiB in all
    ]:
        r = raw(stocked.srv, "GET", target, headers)
        body: bytes = r.body  # type: ignore[attr-defined]
        assert r.status == status, (target[:40], r.status)
        assert json.loads(body)["error"]["code"] == "BAD_REQUEST"
    assert snapshot(stocked.root) == stocked.tree


@FUZZ
@given(
    number=NUMERAL,
    where=st.sampled_from(["catalog", "tags", "watch", "content-length"]),
)
def test_numbers_of_any_length(stocked: Stocked, number: str, where: str) -> None:
    """Every numeric query parameter and header takes a numeral of any length."""
    encoded = base64.urlsafe_b64encode(stocked.url.encode()).decode()
    if where == "content-length":
        digits = number.lstrip("0") or "0"
        value = int(digits) if len(digits) < 19 and len(number) <= 4000 else None
        if value is not None and value > 1000:
            return  # a body that long would be waited for
        host, port = stocked.srv.base_url.split("://", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            head = f"POST /content/ HTTP/1.1\r\nHost: h\r\nContent-Length: {number}\r\n"
            sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + b"x" * (value or 0))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer[9:12])
        assert 400 <= status < 500, answer[:200]
        assert b"Traceback" not in answer
    else:
        target = {
            "catalog": f"/v2/_catalog?n={number}",
            "tags": f"/v2/x/tags/list?n={number}",
            "watch": f"/content/{encoded}?watch={number}",
        }[where]
        r = raw(stocked.srv, "GET", target)
        check(r.status, r.body, "GET")  # type: ignore[attr-defined]
    assert set(snapshot(stocked.root)) ^ set(stocked.tree) == set()
