"""Decimal numerals from requests, read without tripping over their length.

Python's ``int()`` refuses a string of more than 4300 digits with a
ValueError (its guard against quadratic conversion), yet a numeral of any
length is syntactically valid HTTP, and RFC 9110 section 8.6 asks a
recipient to "anticipate potentially large decimal numerals and prevent
parsing errors due to integer conversion overflows". Every number taken
from a request (``Range``, ``Content-Range``, ``Content-Length``, ``?n=``)
is read here: a value beyond :data:`CAP` -- more than any size or count this
server handles -- reads as ``CAP``, so it compares as "too large" without
ever being converted in full.
"""

from __future__ import annotations

CAP = 10**18
_CAP_DIGITS = len(str(CAP)) - 1  # 18: every numeral of at most 18 digits is below CAP


def significant(digits: str) -> str:
    """``digits`` (ASCII 0-9 only) without leading zeros; ``"0"`` for zero."""
    return digits.lstrip("0") or "0"


def is_decimal(text: str) -> bool:
    """True if ``text`` is one or more ASCII digits (``str.isdigit`` also
    takes other scripts' digits and superscripts)."""
    return text.isascii() and text.isdigit()


def read_decimal(digits: str) -> int:
    """The value of ``digits`` (ASCII 0-9, checked by the caller), at most
    :data:`CAP`."""
    value = significant(digits)
    return int(value) if len(value) <= _CAP_DIGITS else CAP


def decimal_less(a: str, b: str) -> bool:
    """``a < b`` for two ASCII-decimal numerals of any length, exactly."""
    a, b = significant(a), significant(b)
    return (len(a), a) < (len(b), b)
