"""The last error of each download that failed, until it is retried or removed.

Kept in memory only (a restart forgets them: the URL is then unknown again,
or interrupted if it left bytes in ``ingest/``), and bounded: at most
:data:`MAX_FAILED` URLs, the oldest failure forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import attrs

MAX_FAILED = 1000


@attrs.frozen
class Failed:
    """Why the last download of a URL failed."""

    url: str
    code: str
    message: str
    at: float  # seconds since the epoch


class Failures:
    """The most recent failure per URL, at most ``limit`` URLs."""

    def __init__(self, limit: int = MAX_FAILED) -> None:
        self._limit = limit
        self._by_url: OrderedDict[str, Failed] = OrderedDict()

    def record(self, url: str, code: str, message: str) -> Failed:
        failed = Failed(url, code, message, time.time())
        self._by_url.pop(url, None)
        self._by_url[url] = failed
        while len(self._by_url) > self._limit:
            self._by_url.popitem(last=False)
        return failed

    def get(self, url: str) -> Failed | None:
        return self._by_url.get(url)

    def forget(self, url: str) -> bool:
        """Drop the record (a retry or a removal); whether there was one."""
        return self._by_url.pop(url, None) is not None

    def urls(self) -> list[str]:
        return list(self._by_url)

    def __len__(self) -> int:
        return len(self._by_url)
