"""The shared store on Azure Blob Storage, against Azurite (its own process on
loopback, SharedKey-signed requests): streamed Put Blob and block uploads,
ranged reads, If-None-Match: * / If-Match writes and deletes, bounded
listings that ignore blobs outside the layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from proxy.shared.azure import AzureStore
from proxy.shared.location import parse_location
from proxy.shared.opening import open_store
from proxy.shared.store import SharedStoreError, outbound
from tests.shared import contract
from tests.support import azure
from tests.support.azure import Azurite

pytestmark = pytest.mark.skipif(
    azure.binary() is None, reason="azurite-blob not installed (see .ci/run)"
)
BLOCK = 1024 * 1024


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as a:
        a.create_container("shared")
        yield a


@pytest.fixture
def store(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AzureStore:
    for k, v in azurite.server_env().items():
        monkeypatch.setenv(k, v)
    client = contract.http_client()
    location = parse_location(f"azure://{azurite.account}/shared/cluster-a")
    return AzureStore(location, client, outbound(client), block_size=BLOCK)


@pytest_twisted.ensureDeferred
async def test_small_file_round_trip(store: AzureStore, tmp_path: Path, azurite: Azurite) -> None:
    await contract.round_trip(store, tmp_path, 300_000)
    puts = [t for m, t, s in azurite.requests() if m == "PUT" and "cluster-a/blobs/" in t]
    assert puts and not any("comp=block" in t for t in puts)


@pytest_twisted.ensureDeferred
async def test_large_file_goes_up_in_blocks(
    store: AzureStore, tmp_path: Path, azurite: Azurite
) -> None:
    before = len(azurite.requests())
    await contract.round_trip(store, tmp_path, 3 * BLOCK + 4321)
    seen = azurite.requests()[before:]
    blocks = [t for m, t, s in seen if m == "PUT" and "comp=block&" in t and s == 201]
    assert len(blocks) == 4
    assert any(m == "PUT" and "comp=blocklist" in t and s == 201 for m, t, s in seen)


@pytest_twisted.ensureDeferred
async def test_conditional_writes(store: AzureStore) -> None:
    await contract.conditions(store)


@pytest_twisted.ensureDeferred
async def test_listing_is_bounded_and_ignores_other_blobs(
    store: AzureStore, azurite: Azurite
) -> None:
    def put_raw(name: str) -> None:
        azurite.put("shared", f"cluster-a/{name}", b"x")
        azurite.put("shared", f"cluster-ab/{name}", b"x")

    await contract.listing(store, put_raw)


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_a_store_error(
    store: AzureStore, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azurite checks every signature: a wrong account key is refused, one
    error type for the caller, and the key is not in it."""
    wrong = "d3Jvbmcta2V5LW5vdC10aGUtb25l"  # base64 of "wrong-key-not-the-one"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string(key=wrong))
    bad = open_store(store.location, contract.http_client())
    with pytest.raises(SharedStoreError) as err:
        await bad.head("blobs/sha256/" + "0" * 64)
    assert wrong not in str(err.value) and azurite.key not in str(err.value)
