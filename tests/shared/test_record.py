"""Entry records in the shared store: a record round-trips, and any other
document (another shape, a secret-bearing URL, a manifest that is not the
descriptor's, garbage) is refused as InvalidRecord, never half-read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.shared.record import MAX_RECORD, InvalidRecord, RefRecord
from proxy.types import Descriptor, Digest

MANIFEST = Digest("cd" * 32)
DESC = Descriptor(
    "application/vnd.oci.image.manifest.v1+json",
    MANIFEST,
    512,
    {"io.nekko.storage-manager.url": "hf://org/model"},
)


def record(**changes: object) -> RefRecord:
    fields: dict[str, object] = {
        "url": "hf://org/model",
        "descriptor": DESC,
        "manifest": MANIFEST,
        "written_at": "2026-12-07T12:00:00Z",
        "node": "10.0.0.5:8080",
    }
    fields.update(changes)
    return RefRecord(**fields)  # type: ignore[arg-type]


def test_round_trip() -> None:
    r = record()
    assert RefRecord.from_bytes(r.to_bytes()) == r
    assert r.written.year == 2026
    doc = json.loads(r.to_bytes())
    assert doc["manifest"] == str(MANIFEST) and doc["writtenAt"] == "2026-12-07T12:00:00Z"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@example.com/x",
        "https://example.com/x?token=abc",
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a"
        "&X-Amz-Date=20261207T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "a" * 64,
        "https://example.com/a b",
        "",
    ],
)
def test_urls_with_secrets_are_refused(url: str) -> None:
    with pytest.raises(InvalidRecord):
        record(url=url)


def test_other_documents_are_refused() -> None:
    good = json.loads(record().to_bytes())
    bad: list[object] = [
        {**good, "version": 2},
        {**good, "version": True},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "node"},
        {**good, "manifest": "sha256:" + "ef" * 32},  # not the descriptor's
        {**good, "manifest": "md5:x"},
        {**good, "writtenAt": "2026-13-45T99:00:00Z"},
        {**good, "writtenAt": 0},
        {**good, "node": "a node"},
        {**good, "descriptor": {"digest": "x"}},
        [good],
        "record",
    ]
    for doc in bad:
        with pytest.raises(InvalidRecord):
            RefRecord.from_bytes(json.dumps(doc).encode())
    with pytest.raises(InvalidRecord):
        RefRecord.from_bytes(b"[" * 100_000)
    with pytest.raises(InvalidRecord):
        RefRecord.from_bytes(b" " * (MAX_RECORD + 1))


@given(st.binary(max_size=400))
def test_garbage_is_refused_or_a_record(data: bytes) -> None:
    try:
        r = RefRecord.from_bytes(data)
    except InvalidRecord:
        return
    assert RefRecord.from_bytes(r.to_bytes()) == r
