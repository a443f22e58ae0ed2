"""Pagination of a sorted list of names by ``?n=`` and ``?last=``, as the OCI
distribution spec pages ``/v2/<name>/tags/list`` and ``/v2/_catalog``.

``last`` keeps the items after it (in sorted order), ``n`` keeps the first
``n`` of those; when more remain, the caller sends a ``Link`` header with
``rel="next"`` (:func:`next_link`). Without ``n`` everything after ``last``
is listed. ``n`` is read with :func:`proxy.numerals.read_decimal`, so a
numeral of any length is a number, never an error of the conversion; a
negative or non-decimal ``n`` is refused with :class:`BadPage`, which each
API answers in its own error format.
"""

from __future__ import annotations

from urllib.parse import quote

from proxy.numerals import read_decimal


class BadPage(ValueError):
    """``n`` is not a non-negative decimal number."""


def paginate(items: list[str], args: dict[bytes, list[bytes]]) -> tuple[list[str], str | None]:
    """The page of ``items`` (sorted) that ``args`` asks for, and the ``last``
    of the next page (None when this page is the last)."""
    last = args.get(b"last", [b""])[0].decode("utf-8", "replace")
    if last:
        items = [i for i in items if i > last]
    n_raw = args.get(b"n", [b""])[0]
    if n_raw:
        if not (n_raw.isascii() and n_raw.isdigit()):
            raise BadPage("n must be a non-negative number")
        n = read_decimal(n_raw.decode("ascii"))
        if len(items) > n:
            return items[:n], items[n - 1] if n > 0 else None
    return items, None


def next_link(path: str, next_last: str, args: dict[bytes, list[bytes]]) -> bytes:
    """The ``Link`` header to the page after the one whose last item is
    ``next_last`` (``last`` percent-encoded: a URL holds ``&`` and ``#``)."""
    n = args[b"n"][0].decode("ascii")
    return f'<{path}?last={quote(next_last, safe="/:")}&n={n}>; rel="next"'.encode()
