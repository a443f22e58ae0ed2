"""``GET /content/`` pages with ``?n=`` and ``?last=`` as ``/v2`` tag lists do:
sorted by URL, a ``Link: <...>; rel="next"`` while more remain, everything
without ``n``; a hostile ``n`` (any length, negative, empty, not ASCII
digits) or ``last`` is a page or a 400 JSON error, never a 5xx."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.numerals import read_decimal
from tests.support.server import ServerProcess
from tests.support.source import Source

PATHS = ["/m/b.bin", "/m/a.bin", "/m/x&n=1.bin", "/m/c+d.bin", "/m/e=f.bin", "/m/zz.bin"]
_LINK_RE = re.compile(r'<(/content/\?[^>]*)>; rel="next"')


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[str]]]:
    """A server holding one entry per path, and their URLs as it lists them."""
    root = tmp_path_factory.mktemp("paging")
    with Source() as source, ServerProcess(root / "cache", "--retries", "0") as srv:
        with srv.client() as c:
            for i, path in enumerate(PATHS):
                source.add_file(path, f"file {i}".encode())
                r = c.post("/content/", json={"url": source.url(path)})
                assert r.status_code == 201, r.text
            urls = [e["url"] for e in c.get("/content/").json()["entries"]]
        assert len(urls) == len(PATHS)
        yield srv, sorted(urls)


def _page(c: httpx.Client, target: str) -> tuple[list[str], str | None]:
    r = c.get(target)
    assert r.status_code == 200, r.text
    link = r.headers.get("link")
    next_target = None
    if link is not None:
        m = _LINK_RE.fullmatch(link)
        assert m is not None, link
        next_target = m.group(1)
    return [e["url"] for e in r.json()["entries"]], next_target


def test_without_n_everything_is_listed_sorted(listed: tuple[ServerProcess, list[str]]) -> None:
    srv, urls = listed
    with srv.client() as c:
        assert _page(c, "/content/") == (urls, None)


def test_following_next_links_lists_every_entry_once(
    listed: tuple[ServerProcess, list[str]],
) -> None:
    srv, urls = listed
    for n in (1, 2, 4):
        seen: list[str] = []
        target: str | None = f"/content/?n={n}"
        pages = 0
        with srv.client() as c:
            while target is not None:
                page, target = _page(c, target)
                assert len(page) <= n
                seen += page
                pages += 1
        assert seen == urls
        assert pages == -(-len(urls) // n)


def test_last_and_n_select_as_tag_lists_do(listed: tuple[ServerProcess, list[str]]) -> None:
    srv, urls = listed
    with srv.client() as c:
        assert _page(c, "/content/?n=0") == ([], None)
        assert _page(c, f"/content/?n={len(urls)}") == (urls, None)
        assert _page(c, "/content/?n=" + "9" * 5000) == (urls, None)
        assert _page(c, f"/content/?last={quote(urls[-1], safe='')}") == ([], None)
        page, link = _page(c, f"/content/?n=1&last={quote(urls[2], safe='')}")
        assert page == [urls[3]]
        assert link == f"/content/?last={quote(urls[3], safe='/:')}&n=1"
        for bad in ("-1", "1.5", "0x10", "+3", "\u0663", "\u00b2", " 2"):
            r = c.get(f"/content/?n={quote(bad, safe='')}")
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["code"] == "BAD_REQUEST"


NUMERAL = st.one_of(
    st.integers(0, 2**70).map(str),
    st.integers(-(2**70), -1).map(str),
    st.integers(4000, 6000).map(lambda n: "9" * n),
    st.builds(lambda z, d: "0" * z + d, st.integers(0, 5000), st.integers(0, 20).map(str)),
    st.sampled_from(["", "-", "-0", "9" * 4301, "0" * 4301, "1e3", "\u0661\u0662"]),
    st.text(max_size=8),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.one_of(st.none(), NUMERAL), last=st.one_of(st.none(), st.text(max_size=40)))
def test_hostile_n_and_last_page_or_refuse(
    listed: tuple[ServerProcess, list[str]], n: str | None, last: str | None
) -> None:
    srv, urls = listed
    query = []
    if n is not None:
        query.append("n=" + quote(n, safe=""))
    if last is not None:
        query.append("last=" + quote(last, safe=""))
    with srv.client() as c:
        r = c.get("/content/?" + "&".join(query))
    assert r.status_code in (200, 400), r.text
    valid_n = n is None or n == "" or (n.isascii() and n.isdigit())
    if not valid_n:
        assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_REQUEST"
        return
    assert r.status_code == 200, r.text
    expected = [u for u in urls if not last or u > last]
    more = False
    if n:
        count = read_decimal(n)
        more = len(expected) > count > 0
        expected = expected[:count]
    assert [e["url"] for e in r.json()["entries"]] == expected
    assert ("link" in r.headers) == more
