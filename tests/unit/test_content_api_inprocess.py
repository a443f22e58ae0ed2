"""ContentAPI built in-process: its Klein resource around a real
:class:`Downloads` over a real store in a temp dir, driven with
twisted.web's own Request and Site over a ``DummyChannel``; its errors are the error table's."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel

from proxy.api.content import ContentAPI
from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.service.downloads import Downloads


@pytest.fixture
def api(tmp_path: Path) -> ContentAPI:
    layout = Layout(tmp_path / "cache")
    layout.create()
    store = Store(layout, reactor)
    store.load()
    return ContentAPI(Downloads(reactor, reactor, store, {}))


def _call(api: ContentAPI, method: bytes, path: bytes, body: bytes = b"") -> tuple[int, Any]:
    """One request through twisted.web's own Request and Site (over a
    DummyChannel, no socket): the status and the JSON body it wrote."""
    channel = DummyChannel()
    channel.site = Site(api.app.resource())
    request = Request(channel)
    request.gotLength(len(body))
    request.handleContentChunk(body)
    request.requestReceived(method, path, b"HTTP/1.0")
    assert request.finished, "the answer was not finished synchronously"
    head, _, data = channel.transport.written.getvalue().partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"Content-Type: application/json" in head.split(b"\r\n") or not data
    return status, json.loads(data) if data else None


def _b64(url: str) -> bytes:
    return base64.urlsafe_b64encode(url.encode())


def test_an_empty_cache_lists_nothing(api: ContentAPI) -> None:
    assert _call(api, b"GET", b"/content/") == (200, {"entries": []})


def test_unknown_url_is_not_found(api: ContentAPI) -> None:
    status, body = _call(api, b"GET", b"/content/" + _b64("https://example.com/m.gguf"))
    assert status == 404
    assert body["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "BAD_REQUEST"),
        (b'{"url": 7}', "BAD_REQUEST"),
        (b'{"url": "gopher://example.com/x"}', "UNSUPPORTED_SCHEME"),
    ],
)
def test_refused_posts_answer_the_tables_code(api: ContentAPI, body: bytes, code: str) -> None:
    status, answer = _call(api, b"POST", b"/content/", body)
    assert (status, answer["error"]["code"]) == (400, code)
    assert api.downloads.urls() == []


def test_bad_base64_is_a_bad_request(api: ContentAPI) -> None:
    status, body = _call(api, b"GET", b"/content/%%%")
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST")


def test_a_wrong_method_is_json(api: ContentAPI) -> None:
    status, body = _call(api, b"PUT", b"/content/" + _b64("https://example.com/m.gguf"))
    assert (status, body["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
