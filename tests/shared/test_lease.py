"""Cluster single flight through conditional writes, on each store: moto's S3
server, Azurite, and for GCS the loopback fake that honours ifGenerationMatch
(gcp-storage-emulator ignores it; tests/shared/test_gcs_store.py shows the
probe saying so). Two "nodes" are two Leases on one store; time is a Clock."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from proxy.fetch.s3 import Signer
from proxy.shared.azure import AzureStore
from proxy.shared.gcs import GcsStore
from proxy.shared.lease import (
    Held,
    InvalidLease,
    Lease,
    LeaseRecord,
    Leases,
    supports_conditional_writes,
)
from proxy.shared.location import lease_key, parse_location
from proxy.shared.s3 import S3Store
from proxy.shared.store import SharedStore, outbound
from proxy.types import Digest
from tests.shared import contract
from tests.support import azure
from tests.support.azure import Azurite
from tests.support.gcs_fake import GcsFake
from tests.support.s3 import MotoS3

A, B = "10.0.0.1:8080", "10.0.0.2:8080"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as m:
        m.boto().create_bucket(Bucket="leases")
        yield m


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    if azure.binary() is None:
        pytest.skip("azurite-blob not installed (see .ci/run)")
    with Azurite() as a:
        a.create_container("leases")
        yield a


@pytest.fixture(params=["s3", "azure", "gcs-fake"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[SharedStore]:
    client = contract.http_client()
    if request.param == "s3":
        m: MotoS3 = request.getfixturevalue("moto")
        for k, v in m.server_env().items():
            monkeypatch.setenv(k, v)
        loc = parse_location("s3://leases/c")
        yield S3Store(loc, client, outbound(client), Signer("path"))
    elif request.param == "azure":
        a: Azurite = request.getfixturevalue("azurite")
        for k, v in a.server_env().items():
            monkeypatch.setenv(k, v)
        loc = parse_location(f"azure://{a.account}/leases/c")
        yield AzureStore(loc, client, outbound(client))
    else:
        with GcsFake("leases") as f:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", f.endpoint)
            monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
            yield GcsStore(parse_location("gs://leases/c"), client, outbound(client))


def digest() -> Digest:
    return Digest(os.urandom(32).hex())


@pytest_twisted.ensureDeferred
async def test_probe_finds_conditional_writes(store: SharedStore) -> None:
    found = await supports_conditional_writes(store)
    assert found.create_only and found.if_match and found.supported
    assert await store.list("leases/probes/") == []  # the probe cleaned up


@pytest_twisted.ensureDeferred
async def test_one_holder_then_take_over_after_expiry(store: SharedStore) -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    a, b = Leases(store, clock, A, ttl=60), Leases(store, clock, B, ttl=60)
    d = digest()
    mine = await a.acquire(d)
    assert isinstance(mine, Lease) and mine.record.holder == A
    theirs = await b.acquire(d)
    assert isinstance(theirs, Held) and theirs.record == mine.record
    renewed = await a.renew(mine)
    assert renewed is not None and renewed.etag != mine.etag
    assert await a.release(mine) is False  # an old version of the lease is not ours to drop
    clock.advance(61)  # A died: its lease expires
    taken = await b.acquire(d)
    assert isinstance(taken, Lease) and taken.record.holder == B
    assert await a.renew(renewed) is None  # A comes back: the lease is no longer its
    assert await a.release(renewed) is False
    small = await store.read_small(lease_key(d))
    assert small is not None and LeaseRecord.from_bytes(small.data).holder == B
    assert await b.release(taken) is True
    again = await a.acquire(d)
    assert isinstance(again, Lease)
    assert await a.release(again)


@pytest_twisted.ensureDeferred
async def test_racing_nodes_get_one_lease(store: SharedStore) -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    nodes = [Leases(store, clock, f"10.0.1.{i}:8080", ttl=60) for i in range(6)]
    d = digest()
    results = await gatherResults([Deferred.fromCoroutine(n.acquire(d)) for n in nodes])
    won = [r for r in results if isinstance(r, Lease)]
    assert len(won) == 1
    assert all(
        isinstance(r, Held) and r.record == won[0].record for r in results if r is not won[0]
    )
    # Expired: of six nodes taking it over at once, again one wins.
    clock.advance(61)
    results = await gatherResults([Deferred.fromCoroutine(n.acquire(d)) for n in nodes])
    assert len([r for r in results if isinstance(r, Lease)]) == 1


@pytest_twisted.ensureDeferred
async def test_unreadable_and_own_leases_are_taken(store: SharedStore) -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    a = Leases(store, clock, A, ttl=60)
    d = digest()
    assert await store.create_if_absent(lease_key(d), b"\x00not a lease" * 10)
    got = await a.acquire(d)
    assert isinstance(got, Lease)
    # This node restarted: its own live lease from before is taken again.
    again = await Leases(store, clock, A, ttl=60).acquire(d)
    assert isinstance(again, Lease) and again.etag != got.etag
    assert await a.release(again)


def test_lease_records() -> None:
    r = LeaseRecord(A, 1_800_000_060.5)
    assert LeaseRecord.from_bytes(r.to_bytes()) == r
    assert LeaseRecord(A, 1.0).nonce != LeaseRecord(A, 1.0).nonce  # two writes, two ETags
    n = '"nonce":"0123456789abcdef"'
    for bad in (
        b'{"version":1,"holder":"a b","expires":1,%s}' % n.encode(),
        b'{"version":1,"holder":"a","expires":"1",%s}' % n.encode(),
        b'{"version":1,"holder":"a","expires":true,%s}' % n.encode(),
        b'{"version":2,"holder":"a","expires":1,%s}' % n.encode(),
        b'{"version":1,"holder":"a","expires":1e999,%s}' % n.encode(),
        b'{"version":1,"holder":"a","expires":1,"x":0,%s}' % n.encode(),
        b'{"version":1,"holder":"a","expires":1}',
        b'{"version":1,"holder":"a","expires":1,"nonce":"XYZ"}',
        b"[" * 5000,
        b"null",
    ):
        with pytest.raises(InvalidLease):
            LeaseRecord.from_bytes(bad)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_lease_or_refused(data: bytes) -> None:
    try:
        r = LeaseRecord.from_bytes(data)
    except InvalidLease:
        return
    assert LeaseRecord.from_bytes(r.to_bytes()) == r
