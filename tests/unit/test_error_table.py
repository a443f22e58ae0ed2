"""The one error table (proxy.api.errors): each domain error answers the
documented status and code on /content (README "status | code" table), on
/v2 (OCI error JSON) and on /hf (the Hub's error headers)."""

from __future__ import annotations

import json

import attrs
import pytest
from twisted.web.test.requesthelper import DummyRequest

from proxy import errors as e
from proxy.api.errors import (
    OCI_STATUS,
    TABLE,
    error_body,
    hub_error,
    hub_error_body,
    oci_error,
    render_error,
)
from proxy.shared.location import InvalidLocation
from proxy.shared.store import SharedStoreError

ASKED = "<asked>"  # the unknown code of what was asked: MANIFEST_UNKNOWN or BLOB_UNKNOWN


@attrs.frozen
class Case:
    error: e.StorageError
    status: int  # /content and /hf
    code: str  # /content
    oci_code: str
    oci_status: int


CASES = [
    Case(e.BadRequest("m"), 400, "BAD_REQUEST", "UNSUPPORTED", 400),
    Case(InvalidLocation("m"), 400, "BAD_REQUEST", "UNSUPPORTED", 400),
    Case(e.UnsupportedScheme("m"), 400, "UNSUPPORTED_SCHEME", "UNSUPPORTED", 400),
    Case(e.TargetDenied("m"), 403, "DENIED", "DENIED", 403),
    Case(e.EntryUnknown("m"), 404, "NOT_FOUND", ASKED, 404),
    Case(e.UpstreamError("m", 401), 401, "UPSTREAM_UNAUTHORIZED", ASKED, 404),
    Case(e.UpstreamError("m", 403), 403, "UPSTREAM_DENIED", ASKED, 404),
    Case(e.UpstreamError("m", 404), 404, "UPSTREAM_NOT_FOUND", ASKED, 404),
    Case(e.UpstreamError("m", 410), 404, "UPSTREAM_NOT_FOUND", ASKED, 404),
    Case(e.PlatformUnavailable("m"), 404, "PLATFORM_UNAVAILABLE", "MANIFEST_UNKNOWN", 404),
    Case(e.Conflict("m"), 409, "CONFLICT", "UNKNOWN", 409),
    Case(e.Cancelled("m"), 409, "CANCELLED", "UNAVAILABLE", 503),
    Case(e.UpstreamError("m", 500), 502, "UPSTREAM_ERROR", "UNAVAILABLE", 502),
    Case(e.UpstreamError("m"), 502, "UPSTREAM_ERROR", "UNAVAILABLE", 502),
    Case(e.UpstreamError("m", 429), 502, "UPSTREAM_ERROR", "TOOMANYREQUESTS", 429),
    Case(SharedStoreError("m"), 502, "UPSTREAM_ERROR", "UNAVAILABLE", 502),
    Case(e.SourceChanged("m"), 502, "UPSTREAM_ERROR", "UNAVAILABLE", 502),
    Case(e.Redirected("m", 307, "http://peer/"), 502, "UPSTREAM_ERROR", "UNAVAILABLE", 502),
    Case(e.UpstreamUnreachable("m"), 502, "UPSTREAM_UNREACHABLE", "UNAVAILABLE", 502),
    Case(e.BadContent("m"), 502, "DIGEST_MISMATCH", "UNAVAILABLE", 502),
    Case(e.UpstreamTimeout("m"), 504, "UPSTREAM_TIMEOUT", "UNAVAILABLE", 504),
    Case(e.DiskFull("m"), 507, "DISK_FULL", "UNAVAILABLE", 507),
    Case(e.StorageError("m"), 500, "INTERNAL_ERROR", "UNKNOWN", 500),
]


def _subclasses(cls: type) -> set[type]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _subclasses(sub)
    return out


def test_every_storage_error_and_code_has_a_documented_row() -> None:
    assert {type(c.error) for c in CASES} == _subclasses(e.StorageError)
    assert {c.code for c in CASES} == set(TABLE)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c.error).__name__}-{c.code}")
def test_content_answer(case: Case) -> None:
    request = DummyRequest([b""])
    body = json.loads(render_error(request, case.error))
    assert request.responseCode == case.status
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    assert body == {"error": {"code": case.code, "message": "m"}}


@pytest.mark.parametrize("unknown", ["MANIFEST_UNKNOWN", "BLOB_UNKNOWN"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c.error).__name__}-{c.code}")
def test_registry_answer(case: Case, unknown: str) -> None:
    err = oci_error(case.error, unknown)
    code = unknown if case.oci_code == ASKED else case.oci_code
    assert (err.code, err.status) == (code, case.oci_status)
    assert code in OCI_STATUS  # a code of the distribution spec (or distribution's own)
    request = DummyRequest([b""])
    data = error_body(request, err)
    assert request.responseCode == case.oci_status
    headers = request.responseHeaders
    assert headers.getRawHeaders(b"docker-distribution-api-version") == [b"registry/2.0"]
    assert headers.getRawHeaders(b"content-length") == [str(len(data)).encode()]
    assert json.loads(data) == {"errors": [{"code": code, "message": "m", "detail": {}}]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c.error).__name__}-{c.code}")
def test_hub_answer(case: Case) -> None:
    request = DummyRequest([b""])
    data = hub_error_body(request, hub_error(case.error))
    assert request.responseCode == case.status
    assert request.responseHeaders.getRawHeaders(b"x-error-message") == [b"m"]
    assert request.responseHeaders.getRawHeaders(b"x-error-code") is None
    assert json.loads(data) == {"error": "m"}
