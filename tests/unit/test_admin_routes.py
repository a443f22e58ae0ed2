"""/admin's route table in-process: the methods each endpoint takes (405
with Allow otherwise), 404 for the rest, and /admin/info's answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.web.test.requesthelper import DummyRequest

from proxy.api.admin import AdminAPI
from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.service.downloads import Downloads


@pytest.fixture
def admin(tmp_path: Path) -> AdminAPI:
    layout = Layout(tmp_path / "cache")
    layout.create()
    store = Store(layout, reactor)
    store.load()
    return AdminAPI(Downloads(reactor, reactor, store, {}))


def _render(admin: AdminAPI, method: bytes, path: bytes) -> tuple[DummyRequest, bytes]:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    return request, admin.render(request, path)


@pytest.mark.parametrize(
    ("method", "path", "allow", "message"),
    [
        (b"GET", b"/admin/gc", b"POST", "gc is a POST"),
        (b"POST", b"/admin/du", b"GET, HEAD", "du is a GET"),
        (b"GET", b"/admin/import", b"POST", "import is a POST"),
        (b"DELETE", b"/admin/pin", b"POST", "pin is a POST"),
    ],
)
def test_wrong_method(
    admin: AdminAPI, method: bytes, path: bytes, allow: bytes, message: str
) -> None:
    request, body = _render(admin, method, path)
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [allow]
    assert json.loads(body) == {"error": {"code": "METHOD_NOT_ALLOWED", "message": message}}


def test_unknown_endpoint(admin: AdminAPI) -> None:
    request, body = _render(admin, b"GET", b"/admin/nope")
    assert request.responseCode == 404
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"


def test_info_takes_any_method(admin: AdminAPI, tmp_path: Path) -> None:
    for method in (b"GET", b"POST"):
        request, body = _render(admin, method, b"/admin/info")
        assert (request.responseCode or 200) == 200  # a DummyRequest's default: None
        info = json.loads(body)
        assert (info["cache"], info["pid"]) == (str(tmp_path / "cache"), os.getpid())
