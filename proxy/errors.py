"""Domain errors raised anywhere below the API.

Each carries a stable ``code``; :mod:`proxy.api.errors` is the one table that
maps codes to HTTP statuses. Messages never contain credentials.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class: ``code`` names the failure for clients and the status table."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(StorageError):
    code = "BAD_REQUEST"


class UnsupportedScheme(BadRequest):
    code = "UNSUPPORTED_SCHEME"


class EntryUnknown(StorageError):
    code = "NOT_FOUND"


class Conflict(StorageError):
    code = "CONFLICT"


class Cancelled(StorageError):
    code = "CANCELLED"


class TargetDenied(StorageError):
    """The URL (or a redirect hop) points where this server may not go."""

    code = "DENIED"


class UpstreamError(StorageError):
    """The source answered with an error status."""

    code = "UPSTREAM_ERROR"

    def __init__(self, message: str, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        if upstream_status == 401:
            self.code = "UPSTREAM_UNAUTHORIZED"
        elif upstream_status == 403:
            self.code = "UPSTREAM_DENIED"
        elif upstream_status in (404, 410):
            self.code = "UPSTREAM_NOT_FOUND"


class Redirected(UpstreamError):
    """A redirect not followed (a peer's fan-out): ``location`` is where the
    source said to go."""

    def __init__(self, message: str, status: int, location: str) -> None:
        super().__init__(message, status)
        self.location = location


class PlatformUnavailable(UpstreamError):
    """The image has no manifest for the platform asked for (``?platform=``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 404)
        self.code = "PLATFORM_UNAVAILABLE"


class SourceChanged(UpstreamError):
    """The source (an object in a store) changed while it was being fetched."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 412)


class UpstreamUnreachable(StorageError):
    code = "UPSTREAM_UNREACHABLE"


class UpstreamTimeout(StorageError):
    code = "UPSTREAM_TIMEOUT"


class BadContent(StorageError):
    """The source sent bytes that do not match their digest or length."""

    code = "DIGEST_MISMATCH"


class DiskFull(StorageError):
    code = "DISK_FULL"
