"""The shared store on S3, against moto's S3 server (its own process on
loopback, 5.2.6 or later for conditional writes): streamed and multipart
uploads, ranged reads, create-only / If-Match writes and deletes, bounded
listings that ignore objects outside the layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from proxy.fetch.s3 import Signer
from proxy.shared.location import parse_location
from proxy.shared.opening import open_store
from proxy.shared.s3 import MIN_PART, S3Store
from proxy.shared.store import SharedStoreError, outbound
from tests.shared import contract
from tests.support.s3 import MotoS3


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as m:
        m.boto().create_bucket(Bucket="shared")
        yield m


@pytest.fixture
def store(moto: MotoS3, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for k, v in moto.server_env().items():
        monkeypatch.setenv(k, v)
    client = contract.http_client()
    location = parse_location("s3://shared/cluster-a")
    return S3Store(location, client, outbound(client), Signer("path"), part_size=MIN_PART)


@pytest_twisted.ensureDeferred
async def test_small_file_round_trip(store: S3Store, tmp_path: Path, moto: MotoS3) -> None:
    await contract.round_trip(store, tmp_path, 300_000)
    puts = [t for m, t, s in moto.requests() if m == "PUT" and "cluster-a/blobs/" in t]
    assert puts and not any("partNumber" in t for t in puts)


@pytest_twisted.ensureDeferred
async def test_large_file_goes_up_in_parts(store: S3Store, tmp_path: Path, moto: MotoS3) -> None:
    size = 2 * MIN_PART + 12345
    before = len(moto.requests())
    await contract.round_trip(store, tmp_path, size)
    seen = moto.requests()[before:]
    parts = [t for m, t, s in seen if m == "PUT" and "partNumber=" in t and s == 200]
    assert len(parts) == 3
    assert any(m == "POST" and "uploads" in t for m, t, _ in seen)
    assert any(m == "POST" and "uploadId=" in t and s == 200 for m, t, s in seen)


@pytest_twisted.ensureDeferred
async def test_conditional_writes(store: S3Store) -> None:
    await contract.conditions(store)


@pytest_twisted.ensureDeferred
async def test_listing_is_bounded_and_ignores_other_objects(store: S3Store, moto: MotoS3) -> None:
    s3 = moto.boto()

    def put_raw(name: str) -> None:
        s3.put_object(Bucket="shared", Key=f"cluster-a/{name}", Body=b"x")
        s3.put_object(Bucket="shared", Key=f"cluster-ab/{name}", Body=b"x")

    await contract.listing(store, put_raw)


@pytest_twisted.ensureDeferred
async def test_a_store_down_is_a_store_error(
    store: S3Store, monkeypatch: pytest.MonkeyPatch, moto: MotoS3
) -> None:
    """Whatever goes wrong reaching the store is one error type for the
    caller to fall back on; no secret in it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    dead = open_store(store.location, contract.http_client(), s3_addressing_style="path")
    with pytest.raises(SharedStoreError) as err:
        await dead.head("blobs/sha256/" + "0" * 64)
    assert "127.0.0.1:9" in str(err.value) and moto.secret_key not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    nocreds = open_store(store.location, contract.http_client(), s3_addressing_style="path")
    with pytest.raises(SharedStoreError) as err:
        await nocreds.head("blobs/sha256/" + "0" * 64)
    assert "not-the-key" not in str(err.value)
