"""``index.json`` read one descriptor at a time, with ``index.journal`` replayed.

Why: ``json.loads`` of the whole index builds every descriptor's dicts and
strings before the first entry is made (about 1 KB a descriptor: 100 MB at
100,000 entries) and frees them after the last; the strings the entries keep
(URLs, names, dates) are left scattered through that memory, which the
allocator then cannot give back (about 0.7 KB an entry of resident memory
after the load). Parsed one descriptor at a time, each descriptor's
temporaries are freed before the next is parsed and their memory is reused.

:func:`descriptors` yields what ``json.loads(data)["manifests"]`` holds, in
order, and :func:`replay` what :func:`proxy.cache.journal.merge` gives for
them, also one at a time. An index with a second ``"manifests"`` key (where
``json.loads`` keeps the last) raises :class:`Irregular`: read it whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from proxy.cache.journal import Record, url_of

_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


class Irregular(ValueError):
    """Valid JSON, but not as :func:`descriptors` reads it (read it whole)."""


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WS:
        at += 1
    return at


def _expect(text: str, at: int, char: str) -> int:
    at = _skip(text, at)
    if text[at : at + 1] != char:
        raise ValueError(f"index.json: expected {char!r} at byte {at}")
    return at + 1


def descriptors(data: bytes, head: dict[str, Any]) -> Iterator[Any]:
    """The elements of the index's ``manifests`` array, parsed one at a time;
    ``head`` receives every other member of the index (once the iterator is
    exhausted). ValueError where the bytes are not a JSON object."""
    try:
        text = data.decode(json.detect_encoding(data))
    except (UnicodeDecodeError, LookupError) as e:
        raise Irregular(str(e)) from None
    at = _expect(text, 0, "{")
    found = False
    first = True
    while True:
        at = _skip(text, at)
        if text[at : at + 1] == "}" and first:
            at += 1
            break
        if not first:
            at = _expect(text, at, ",")
            at = _skip(text, at)
        first = False
        key, at = _DECODER.raw_decode(text, at)
        if not isinstance(key, str):
            raise ValueError("index.json: a member's name is not a string")
        at = _expect(text, at, ":")
        at = _skip(text, at)
        if key == "manifests" and text[at : at + 1] == "[":
            if found:
                raise Irregular("index.json names its manifests twice")
            found = True
            at = _skip(text, at + 1)
            if text[at : at + 1] == "]":
                at += 1
            else:
                while True:
                    item, at = _DECODER.raw_decode(text, _skip(text, at))
                    yield item
                    at = _skip(text, at)
                    if text[at : at + 1] == "]":
                        at += 1
                        break
                    at = _expect(text, at, ",")
        else:
            if key == "manifests":
                raise Irregular("index.json's manifests is not an array")
            value, at = _DECODER.raw_decode(text, at)
            head[key] = value
        at = _skip(text, at)
        if text[at : at + 1] == "}":
            at += 1
            break
    if _skip(text, at) != len(text):
        raise ValueError("index.json: extra data after the index")


# What the journal leaves of a URL's slot in index.json: _KEEP (as it is), a
# descriptor (replaced), or _GONE (removed).
_KEEP = object()
_GONE = object()


def _outcomes(
    records: list[Record],
) -> tuple[dict[str, tuple[object, tuple[int, Any] | None]], dict[str, tuple[int, Any] | None]]:
    """For every URL the records change: what becomes of it if index.json has
    it (its slot, and a descriptor appended at a position), and if not."""
    present: dict[str, list[Any]] = {}  # url -> [slot: "index"|"added"|None, content, seq]
    absent: dict[str, list[Any]] = {}
    for seq, record in enumerate(records):
        if "put" in record:
            url = url_of(record["put"])
            if url is None:
                continue
            for states, start in ((present, "index"), (absent, None)):
                state = states.setdefault(url, [start, _KEEP, -1])
                if state[0] is None:
                    state[0], state[2] = "added", seq
                state[1] = record["put"]
        elif isinstance(record.get("remove"), str):
            url = record["remove"]
            for states, start in ((present, "index"), (absent, None)):
                state = states.setdefault(url, [start, _KEEP, -1])
                state[0], state[1] = None, _GONE
    if_present: dict[str, tuple[object, tuple[int, Any] | None]] = {}
    for url, (slot, content, seq) in present.items():
        if slot == "index":
            if_present[url] = (content, None)
        elif slot == "added":
            if_present[url] = (_GONE, (seq, content))
        else:
            if_present[url] = (_GONE, None)
    if_absent = {
        url: (seq, content) if slot == "added" else None
        for url, (slot, content, seq) in absent.items()
    }
    return if_present, if_absent


def replay(manifests: Iterable[Any], records: list[Record]) -> Iterator[Any]:
    """``manifests`` (index.json's descriptors, as they are parsed) with
    ``records`` replayed over them: :func:`proxy.cache.journal.merge`'s
    result, one descriptor at a time."""
    if not records:
        yield from manifests
        return
    if_present, if_absent = _outcomes(records)
    seen: set[str] = set()
    for desc in manifests:
        url = url_of(desc)
        if url is None or url not in if_present or url in seen:
            yield desc
            continue
        seen.add(url)
        slot = if_present[url][0]
        if slot is _KEEP:
            yield desc
        elif slot is not _GONE:
            yield slot
    added = [a for u, (_, a) in if_present.items() if u in seen and a is not None]
    added += [a for u, a in if_absent.items() if u not in seen and a is not None]
    for _, desc in sorted(added, key=lambda a: a[0]):
        yield desc


def read(data: bytes, records: list[Record], use: Callable[[Any], None]) -> dict[str, Any]:
    """Call ``use`` with every descriptor of the index ``data`` with
    ``records`` replayed over them, in order; return the rest of the index.
    ValueError (Irregular among them) where it is not an OCI image index."""
    head: dict[str, Any] = {}
    for desc in replay(descriptors(data, head), records):
        use(desc)
    return head
