"""The fast path's reading of a plain ``bytes=<first>-<last>`` agrees with
:func:`proxy.web.ranges.parse_range` on every header and size, and declines
(None) every other form, which parse_range then reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.web.fastpath import simple_range
from proxy.web.ranges import Unsatisfiable, parse_range

numerals = st.one_of(
    st.integers(min_value=0, max_value=2**70).map(str),
    st.text("0123456789", min_size=0, max_size=40),  # leading zeros, empty, very long
)
separators = st.sampled_from(["-", " - ", "- ", "--", ","])
units = st.sampled_from(["bytes=", "bytes =", "Bytes=", "bytes= ", "items=", ""])
sizes = st.one_of(st.integers(min_value=0, max_value=2**63), st.sampled_from([0, 1, 4096]))


def _reference(header: str, size: int) -> tuple[int, int] | str | None:
    try:
        r = parse_range(header, size)
    except Unsatisfiable:
        return "416"
    return None if r is None else (r.start, r.end)


def _fast(header: str, size: int) -> tuple[int, int] | str | None:
    try:
        return simple_range(header.encode("latin-1"), size)
    except Unsatisfiable:
        return "416"


@given(units, numerals, separators, numerals, st.sampled_from(["", ",0-1", " "]), sizes)
def test_agrees_with_parse_range(
    unit: str, first: str, sep: str, last: str, tail: str, size: int
) -> None:
    header = f"{unit}{first}{sep}{last}{tail}"
    fast = _fast(header, size)
    if fast is None:
        return  # declined: parse_range alone decides
    assert fast == _reference(header, size)
    # It takes only the plain form, with numerals short enough for int().
    assert header.startswith("bytes=") and len(first) <= 18 and len(last) <= 18


@given(st.integers(0, 10**18 - 1), st.integers(0, 10**18 - 1), sizes)
def test_takes_every_plain_range(first: int, last: int, size: int) -> None:
    header = f"bytes={first}-{last}"
    assert _fast(header, size) == _reference(header, size)


def test_examples() -> None:
    assert simple_range(b"bytes=0-9", 100) == (0, 9)
    assert simple_range(b"bytes=90-200", 100) == (90, 99)
    assert _fast("bytes=100-200", 100) == "416"
    assert _fast("bytes=9-3", 100) == "416"
    assert simple_range(b"bytes=-5", 100) is None  # a suffix: parse_range's
    assert simple_range(b"bytes=0-", 100) is None
    assert simple_range(b"bytes=0-1,5-6", 100) is None
    assert simple_range(b"bytes=" + b"1" * 19 + b"-" + b"2" * 19, 100) is None
