"""The shared store on GCS. Uploads (one request, and resumable in chunks),
ranged reads and listings run against gcp-storage-emulator (its own process
on loopback). The emulator ignores ``ifGenerationMatch``, so the
conditional writes are tested against tests/support/gcs_fake.py, a small
loopback server that honours it -- and the start-up probe is shown to
notice the emulator's lack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from proxy.shared.gcs import QUANTUM, GcsStore
from proxy.shared.lease import supports_conditional_writes
from proxy.shared.location import parse_location
from proxy.shared.store import outbound
from tests.shared import contract
from tests.support import gcs
from tests.support.gcs import GcsEmulator
from tests.support.gcs_fake import GcsFake

CHUNK = 4 * QUANTUM


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    if not gcs.available():
        pytest.skip("gcp-storage-emulator not installed")
    with GcsEmulator() as e:
        e.create_bucket("shared-gcs")
        yield e


def make_store(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> GcsStore:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    client = contract.http_client()
    location = parse_location("gs://shared-gcs/cluster-a")
    return GcsStore(location, client, outbound(client), chunk_size=CHUNK)


@pytest.fixture
def store(emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> GcsStore:
    return make_store(emulator.endpoint, monkeypatch)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsStore]:
    with GcsFake("shared-gcs") as f:
        yield make_store(f.endpoint, monkeypatch)


@pytest_twisted.ensureDeferred
async def test_small_file_round_trip(
    store: GcsStore, tmp_path: Path, emulator: GcsEmulator
) -> None:
    await contract.round_trip(store, tmp_path, 300_000)
    assert not any("resumable" in t for _, t, _ in emulator.requests())


@pytest_twisted.ensureDeferred
async def test_large_file_goes_up_resumable_in_chunks(
    store: GcsStore, tmp_path: Path, emulator: GcsEmulator
) -> None:
    before = len(emulator.requests())
    await contract.round_trip(store, tmp_path, 2 * CHUNK + 777)
    seen = emulator.requests()[before:]
    assert any(m == "POST" and "uploadType=resumable" in t for m, t, _ in seen)
    chunks = [s for m, t, s in seen if m == "PUT" and "upload_id=" in t]
    assert chunks == [308, 308, 200]


@pytest_twisted.ensureDeferred
async def test_listing_against_the_emulator(store: GcsStore, emulator: GcsEmulator) -> None:
    def put_raw(name: str) -> None:
        emulator.put("shared-gcs", f"cluster-a/{name}", b"x")
        emulator.put("shared-gcs", f"cluster-ab/{name}", b"x")

    await contract.listing(store, put_raw)


@pytest_twisted.ensureDeferred
async def test_the_probe_notices_the_emulator_ignores_conditions(store: GcsStore) -> None:
    found = await supports_conditional_writes(store)
    assert not found.create_only and not found.supported
    assert "no cluster single flight" in found.describe()


@pytest_twisted.ensureDeferred
async def test_conditional_writes_against_a_store_that_honours_them(fake: GcsStore) -> None:
    await contract.conditions(fake)
    assert (await supports_conditional_writes(fake)).supported


@pytest_twisted.ensureDeferred
async def test_a_paged_listing(fake: GcsStore) -> None:
    """The fake pages every 3 items: the listing follows the pages, up to its limit."""
    keys = [f"blobs/sha256/{i:064x}" for i in range(8)]
    for k in keys:
        assert await fake.create_if_absent(k, b"b")
    assert [x.key for x in await fake.list("blobs/")] == keys
    assert [x.key for x in await fake.list("blobs/", limit=4)] == keys[:4]
