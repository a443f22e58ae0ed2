"""Hostile input, fuzzed with hypothesis against the real server: every answer
is a 2xx RFC 9110 allows or a 4xx with a JSON error -- never a 5xx, never a
traceback -- and nothing outside the cache is created."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import ServerProcess

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
