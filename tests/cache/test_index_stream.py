"""index.json read one descriptor at a time (proxy.cache.indexstream) gives what
``json.loads`` with the journal merged over it (proxy.cache.journal.merge) gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor

from proxy.cache import indexstream, journal
from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.types import ANNOTATION_REF_NAME, ANNOTATION_URL

URLS = [f"https://example.invalid/{i}" for i in range(5)]


def _desc(url: str | None, n: int) -> dict[str, Any]:
    ann = {ANNOTATION_URL: url} if url is not None else {ANNOTATION_REF_NAME: f"tag{n}"}
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{n:064x}",
        "size": n,
        "annotations": ann,
    }


descriptors = st.builds(_desc, st.one_of(st.none(), st.sampled_from(URLS)), st.integers(0, 1000))
records = st.lists(
    st.one_of(
        st.builds(lambda d: {"put": d}, st.builds(_desc, st.sampled_from(URLS), st.integers())),
        st.builds(lambda u: {"remove": u}, st.sampled_from([*URLS, "https://other.invalid/"])),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    manifests=st.lists(descriptors, max_size=8),
    changes=records,
    indent=st.sampled_from([None, 2]),
    meta_last=st.booleans(),
)
def test_stream_is_merge(
    manifests: list[Any], changes: list[Any], indent: int | None, meta_last: bool
) -> None:
    index: dict[str, Any] = (
        {"manifests": manifests, "schemaVersion": 2, "annotations": {"a": "b"}}
        if meta_last
        else {"schemaVersion": 2, "mediaType": "x", "manifests": manifests}
    )
    data = json.dumps(index, indent=indent).encode()
    got: list[Any] = []
    head = indexstream.read(data, changes, got.append)
    want = journal.merge(json.loads(data), changes)
    assert got == want["manifests"]
    assert head == {k: v for k, v in want.items() if k != "manifests"}


@pytest.mark.parametrize(
    "data",
    [b"[]", b'{"manifests": [1,]}', b'{"manifests": [1]} x', b'{"a" 1}', b"{", b'{"manifests": 3}'],
)
def test_not_an_index(data: bytes) -> None:
    with pytest.raises(ValueError):
        indexstream.read(data, [], lambda _: None)


def test_manifests_twice_is_read_as_json_does(tmp_path: Path) -> None:
    """json.loads keeps the last of two "manifests": so does the store (the
    stream gives up, the index is read whole)."""
    layout = Layout(tmp_path)
    layout.create()
    first, second = _desc(None, 1), _desc(None, 2)
    data = b'{"schemaVersion": 2, "manifests": [%s], "manifests": [%s]}' % (
        json.dumps(first).encode(),
        json.dumps(second).encode(),
    )
    with pytest.raises(indexstream.Irregular):
        indexstream.read(data, [], lambda _: None)
    store = Store(layout, reactor)
    store.load_from(data, [])
    assert store._snapshot()["manifests"] == [second]
