"""``--shared-store`` values and the store layout: the three forms parse to
one location each, and hostile values (escapes, userinfo, dot segments,
queries, controls, wrong names) are refused, never normalised into a key
outside the prefix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.shared.location import (
    InvalidLocation,
    StoreLocation,
    blob_digest,
    blob_key,
    check_key,
    lease_key,
    parse_location,
    ref_key,
)
from proxy.types import Digest

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3://models/cache", StoreLocation("s3", "models", "cache")),
        ("s3://models", StoreLocation("s3", "models", "")),
        ("s3://models/", StoreLocation("s3", "models", "")),
        ("s3://my.models-1/a/b/", StoreLocation("s3", "my.models-1", "a/b")),
        ("gs://my-bucket/team/cache", StoreLocation("gs", "my-bucket", "team/cache")),
        (
            "azure://devstoreaccount1/cache/site-a",
            StoreLocation("azure", "cache", "site-a", "devstoreaccount1"),
        ),
        ("azure://acct123/cache", StoreLocation("azure", "cache", "", "acct123")),
    ],
)
def test_the_three_forms(value: str, expected: StoreLocation) -> None:
    loc = parse_location(value)
    assert loc == expected
    assert parse_location(loc.url) == loc  # the canonical form parses to itself


@pytest.mark.parametrize(
    "value",
    [
        "s3://models/a/../b",
        "s3://models/./b",
        "s3://models/a%2f..%2fb",
        "s3://models/a%20b",
        "s3://user:secret@models/x",
        "s3://models/x?versionId=1",
        "s3://models/x#frag",
        "s3://models//x",
        "s3:///x",
        "s3://Models/x",  # a legacy name: readable by s3://, not a store to write
        "s3://bad..name/x",
        "s3://192.168.1.1/x",
        "s3://ab/x",
        "s3://models/a b",
        "s3://models/a\nb",
        "s3://models/\u00e9",
        "gs://b/x",
        "gs://UPPER/x",
        "azure://devstoreaccount1",
        "azure://devstoreaccount1/$root/x",
        "azure://Dev/cache/x",
        "azure://devstoreaccount1/-bad/x",
        "http://models/x",
        "S3://models/x",
        "s3:/models/x",
        "models/x",
        "",
        "s3://models/" + "a/" * 300,
    ],
)
def test_hostile_values_are_refused(value: str) -> None:
    with pytest.raises(InvalidLocation):
        parse_location(value)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused(text: str) -> None:
    for value in (
        text,
        "s3://models/" + text,
        "gs://my-bucket/" + text,
        "azure://acc/cont/" + text,
    ):
        try:
            loc = parse_location(value)
        except InvalidLocation:
            continue
        # What is accepted is plain: segments of safe characters, nothing to escape.
        assert all(s not in ("", ".", "..") for s in loc.prefix.split("/")) or loc.prefix == ""
        assert parse_location(loc.url) == loc
        assert loc.relative(loc.object_name("blobs/sha256/" + HEX)) == "blobs/sha256/" + HEX


@given(st.text(max_size=100))
def test_keys_never_leave_the_prefix(key: str) -> None:
    loc = parse_location("s3://models/cache")
    try:
        check_key(key)
    except ValueError:
        with pytest.raises(ValueError):
            loc.object_name(key)
        return
    name = loc.object_name(key)
    assert name.startswith("cache/") and ".." not in name.split("/")
    assert loc.relative(name) == key


def test_layout_keys() -> None:
    d = Digest(HEX)
    loc = parse_location("s3://models/cache")
    assert loc.object_name(blob_key(d)) == f"cache/blobs/sha256/{HEX}"
    assert loc.object_name(lease_key(d)) == f"cache/leases/sha256/{HEX}"
    ref = ref_key("hf://org/model")
    assert ref.startswith("refs/") and len(ref) == len("refs/") + 64
    assert blob_digest(blob_key(d)) == d
    # Outside the layout: ignored, not an error.
    for other in ("blobs/sha256/xyz", f"blobs/sha512/{HEX}", f"blobs/sha256/{HEX}/x", "notes"):
        assert blob_digest(other) is None
    assert loc.relative("cache2/blobs/sha256/" + HEX) is None
    assert loc.relative("cache/") is None
    assert parse_location("s3://models").relative("x/y") == "x/y"
