"""The one table from domain errors to HTTP statuses and JSON bodies.

/content answers ``{"error": {"code": ..., "message": ...}}``. An upstream
status is passed on where it means the same to our client (401, 403, 404);
other upstream failures are a bad gateway (502) or a gateway timeout (504).
"""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from proxy.errors import StorageError

STATUS_BY_CODE: dict[str, int] = {
    "BAD_REQUEST": 400,
    "UNSUPPORTED_SCHEME": 400,
    "UNAUTHORIZED": 401,
    "UPSTREAM_UNAUTHORIZED": 401,
    "DENIED": 403,
    "UPSTREAM_DENIED": 403,
    "NOT_FOUND": 404,
    "UPSTREAM_NOT_FOUND": 404,
    "PLATFORM_UNAVAILABLE": 404,
    "CONFLICT": 409,
    "CANCELLED": 409,
    "UPSTREAM_ERROR": 502,
    "UPSTREAM_UNREACHABLE": 502,
    "DIGEST_MISMATCH": 502,
    "UPSTREAM_TIMEOUT": 504,
    "DISK_FULL": 507,
    "INTERNAL_ERROR": 500,
}


def status_for(error: StorageError) -> int:
    return STATUS_BY_CODE.get(error.code, 500)


def json_error(request: IRequest, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"


def render_error(request: IRequest, error: StorageError) -> bytes:
    return json_error(request, status_for(error), error.code, error.message)
