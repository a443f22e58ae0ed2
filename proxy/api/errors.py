"""The one error table, as distribution's ``registry/api/errcode``: each
domain error (:mod:`proxy.errors`, by its ``code``) has one row saying what
every API answers for it, and the three error shapes are written here.

=====================  ===========  ==============================  ==========
``StorageError.code``  /content,    /v2 OCI code                    /v2 status
                       /admin, /hf
=====================  ===========  ==============================  ==========
BAD_REQUEST            400          UNSUPPORTED                     400
UNSUPPORTED_SCHEME     400          UNSUPPORTED                     400
DENIED                 403          DENIED                          403
NOT_FOUND              404          MANIFEST_UNKNOWN/BLOB_UNKNOWN   404
UPSTREAM_NOT_FOUND     404          MANIFEST_UNKNOWN/BLOB_UNKNOWN   404
PLATFORM_UNAVAILABLE   404          MANIFEST_UNKNOWN                404
UPSTREAM_UNAUTHORIZED  401          MANIFEST_UNKNOWN/BLOB_UNKNOWN   404
UPSTREAM_DENIED        403          MANIFEST_UNKNOWN/BLOB_UNKNOWN   404
CONFLICT               409          UNKNOWN                         409
CANCELLED              409          UNAVAILABLE                     503
UPSTREAM_ERROR         502          UNAVAILABLE (upstream 429:      502 (429)
                                    TOOMANYREQUESTS)
UPSTREAM_UNREACHABLE   502          UNAVAILABLE                     502
DIGEST_MISMATCH        502          UNAVAILABLE                     502
UPSTREAM_TIMEOUT       504          UNAVAILABLE                     504
DISK_FULL              507          UNAVAILABLE                     507
INTERNAL_ERROR         500          UNKNOWN                         500
=====================  ===========  ==============================  ==========

/content (and /admin) answer ``{"error": {"code": <code>, "message": ...}}``:
an upstream status is passed on where it means the same to our client (401,
403, 404); other upstream failures are a bad gateway (502) or a gateway
timeout (504). /v2 answers OCI error JSON (``{"errors": [{"code", "message",
"detail"}]}``). There an upstream that refuses this server's credentials
(401, 403) is a 404: what this mirror cannot read is unknown to it, and a 404
sends containerd on to its next host (which may hold credentials), where a 401
or 403 would end its pull; a failing upstream is a 5xx (UNAVAILABLE), which
also sends it on, and a rate limit is passed on (429 TOOMANYREQUESTS): the
next host is the same upstream. /hf answers the Hub's way
(``X-Error-Code``, ``X-Error-Message``, ``{"error": message}``) with the
/content status.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.iweb import IRequest

from proxy.api.answers import JSON_UTF8, json_answer
from proxy.errors import StorageError
from proxy.service.hub import HubError
from proxy.web.admission import OCI_API_VERSION, error_document

# OCI distribution-spec error codes (and distribution's UNAVAILABLE and
# UNKNOWN) with the status each is answered with unless a row says otherwise.
OCI_STATUS: dict[str, int] = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "TAG_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "UNAVAILABLE": 503,
    "UNKNOWN": 500,
}

# In a row's oci_code: the "unknown" code of what was asked for (a manifest or a blob).
ASKED_UNKNOWN = "*_UNKNOWN"


@attrs.frozen
class Row:
    """What every API answers for one domain error code."""

    status: int  # /content, /admin and /hf
    oci_code: str  # /v2
    oci_status: int


TABLE: dict[str, Row] = {
    "BAD_REQUEST": Row(400, "UNSUPPORTED", 400),
    "UNSUPPORTED_SCHEME": Row(400, "UNSUPPORTED", 400),
    "DENIED": Row(403, "DENIED", 403),
    "NOT_FOUND": Row(404, ASKED_UNKNOWN, 404),
    "UPSTREAM_NOT_FOUND": Row(404, ASKED_UNKNOWN, 404),
    "PLATFORM_UNAVAILABLE": Row(404, "MANIFEST_UNKNOWN", 404),
    "UPSTREAM_UNAUTHORIZED": Row(401, ASKED_UNKNOWN, 404),
    "UPSTREAM_DENIED": Row(403, ASKED_UNKNOWN, 404),
    "CONFLICT": Row(409, "UNKNOWN", 409),
    "CANCELLED": Row(409, "UNAVAILABLE", 503),
    "UPSTREAM_ERROR": Row(502, "UNAVAILABLE", 502),
    "UPSTREAM_UNREACHABLE": Row(502, "UNAVAILABLE", 502),
    "DIGEST_MISMATCH": Row(502, "UNAVAILABLE", 502),
    "UPSTREAM_TIMEOUT": Row(504, "UNAVAILABLE", 504),
    "DISK_FULL": Row(507, "UNAVAILABLE", 507),
    "INTERNAL_ERROR": Row(500, "UNKNOWN", 500),
}
_FALLBACK = TABLE["INTERNAL_ERROR"]


def row_for(error: StorageError) -> Row:
    return TABLE.get(error.code, _FALLBACK)


# -- /content and /admin -----------------------------------------------------------


def status_for(error: StorageError) -> int:
    return row_for(error).status


def json_error(request: IRequest, status: int, code: str, message: str) -> bytes:
    return json_answer(request, error_document(code, message, oci=False), status)


def render_error(request: IRequest, error: StorageError) -> bytes:
    return json_error(request, status_for(error), error.code, error.message)


# -- /v2 ------------------------------------------------------------------------------


class OciError(Exception):
    """An OCI error answer: its code, message and status (by default the code's)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or OCI_STATUS[code]


def oci_error(error: StorageError, unknown: str) -> OciError:
    """The /v2 answer to a domain error met while looking for a manifest or a
    blob (``unknown``: ``MANIFEST_UNKNOWN`` or ``BLOB_UNKNOWN``)."""
    row = row_for(error)
    if getattr(error, "upstream_status", None) == 429:
        return OciError("TOOMANYREQUESTS", error.message, 429)
    code = unknown if row.oci_code == ASKED_UNKNOWN else row.oci_code
    return OciError(code, error.message, row.oci_status)


def error_body(request: Any, err: OciError) -> bytes:
    """Write an OCI error's status and headers; its JSON body to send."""
    data = json_answer(request, error_document(err.code, err.message, oci=True), err.status)
    request.setHeader(*OCI_API_VERSION)
    request.setHeader(b"Content-Length", str(len(data)).encode())
    return data


# -- /hf -------------------------------------------------------------------------------


def hub_error(error: StorageError) -> HubError:
    """A domain error as the Hub would answer it (no Hub error code)."""
    return HubError(status_for(error), None, error.message)


def hub_error_body(request: Any, e: HubError) -> bytes:
    """Write a Hub error's status and headers; its JSON body to send."""
    if e.code is not None:
        request.setHeader(b"X-Error-Code", e.code.encode())
    request.setHeader(b"X-Error-Message", e.message.encode("ascii", "replace"))
    if e.commit is not None:
        request.setHeader(b"X-Repo-Commit", e.commit.encode())
    return json_answer(request, {"error": e.message}, e.status, JSON_UTF8, newline=False)
