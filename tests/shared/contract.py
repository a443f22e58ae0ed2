"""What every SharedStore must do, run by each store's test file against its
real emulator (or, for GCS conditions, the fake that honours them)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from proxy.fetch.reach import ReachPolicy
from proxy.fetch.transfer import HttpClient, TransferOptions
from proxy.shared.location import blob_digest, blob_key, lease_key
from proxy.shared.store import SharedStore, SharedStoreError
from proxy.shared.wire import FileSink
from proxy.types import Digest


def http_client() -> HttpClient:
    """The fetchers' client on the real reactor, quick to give up."""
    options = TransferOptions(idle_timeout=30, attempts=2, backoff=0.01)
    return HttpClient(reactor, ReachPolicy(), options)


def blob_file(tmp_path: Path, size: int, seed: bytes = b"x") -> tuple[Path, Digest]:
    """A file of ``size`` pseudo-random bytes, and its digest."""
    path = tmp_path / f"blob-{seed.hex()}-{size}"
    h = hashlib.sha256()
    with path.open("wb") as f:
        block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
        left = size
        i = 0
        while left:
            chunk = bytes(b ^ (i & 0xFF) for b in block[:64]) + block[64 : min(left, len(block))]
            chunk = chunk[: min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return path, Digest(h.hexdigest())


async def read_range(store: SharedStore, key: str, first: int, last: int, out: Path) -> bytes:
    sink = FileSink(reactor, str(out))
    got = await store.get_range(key, first, last, sink)
    await sink.flush()
    assert got == last - first + 1
    return out.read_bytes()


async def round_trip(store: SharedStore, tmp_path: Path, size: int) -> None:
    """A file up, its head, ranges of it down, the same bytes."""
    path, digest = blob_file(tmp_path, size)
    key = blob_key(digest)
    assert await store.head(key) is None
    info = await store.put_file(key, str(path))
    assert info.size == size
    head = await store.head(key)
    assert head is not None and head.size == size and head.etag
    data = path.read_bytes()
    for n, (first, last) in enumerate([(0, size - 1), (1, 1), (size // 3, size - 2)]):
        got = await read_range(store, key, first, last, tmp_path / f"range-{n}")
        assert got == data[first : last + 1]
    with pytest.raises(SharedStoreError):
        await read_range(store, key, size + 10, size + 20, tmp_path / "past-the-end")
    with pytest.raises(SharedStoreError):
        await read_range(store, blob_key(Digest("0" * 64)), 0, 0, tmp_path / "missing")


async def conditions(store: SharedStore) -> None:
    """Create-only, replace-if-match and delete-if-match, each both ways."""
    key = lease_key(Digest(os.urandom(32).hex()))
    first = await store.create_if_absent(key, b"one")
    assert first
    assert await store.create_if_absent(key, b"two") is None
    small = await store.read_small(key)
    assert small is not None and small.data == b"one" and small.etag == first
    assert await store.replace_if_match(key, b"three", '"0123456789abcdef"') is None
    second = await store.replace_if_match(key, b"three", first)
    assert second and second != first
    small = await store.read_small(key)
    assert small is not None and small.data == b"three"
    assert await store.replace_if_match(key, b"four", first) is None  # stale etag
    assert await store.delete(key, first) is False
    assert await store.delete(key, second) is True
    assert await store.head(key) is None
    assert await store.read_small(key) is None
    assert await store.delete(key) is False
    missing = lease_key(Digest(os.urandom(32).hex()))
    assert await store.replace_if_match(missing, b"x", second) is None


async def listing(store: SharedStore, put_raw: Any) -> None:
    """Layout keys under the prefix are listed (bounded); names the layout
    never makes, and objects beside the prefix, are not."""
    digests = sorted(Digest(hashlib.sha256(bytes([i])).hexdigest()) for i in range(5))
    for d in digests:
        assert await store.create_if_absent(blob_key(d), b"b")
    # Written behind the store's back: outside the layout, or outside the prefix.
    put_raw("notes/readme%20file.txt")
    put_raw("blobs/sha256/has space")
    put_raw("blobs/sha256/\u00e9t\u00e9")
    listed = await store.list("blobs/sha256/")
    mine = {blob_key(d) for d in digests}
    assert [x.key for x in listed if x.key in mine] == [blob_key(d) for d in digests]
    assert all(blob_digest(x.key) is not None for x in listed)  # "has space" is not
    assert [x.key for x in listed] == sorted(x.key for x in listed)
    assert all(x.size == 1 for x in listed if x.key in mine)
    assert len(await store.list("blobs/sha256/", limit=2)) == 2
    everything = {x.key for x in await store.list("")}
    assert {blob_key(d) for d in digests} <= everything
    assert not any("readme" in k or "\u00e9" in k or " " in k for k in everything)
    for d in digests:
        assert await store.delete(blob_key(d))
