"""/v2 finds blobs through one chain of sources: a source added to the chain
serves what the local store lacks, without any change to the routes."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from proxy.api.registry import RegistryAPI
from proxy.service.sources import BlobHandle, BlobWant, Chain, LocalBlobs, StoredBlob
from proxy.types import Digest
from tests.unit.support import answer, cache, digest_of, put_blob, registry, render, request


class OtherStore:
    """A second source (as a peer or a shared store will be): its own files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.asked: list[BlobWant] = []

    def add(self, data: bytes) -> Digest:
        digest = digest_of(data)
        (self.root / digest.hex).write_bytes(data)
        return digest

    def open(self, want: BlobWant) -> Deferred[BlobHandle | None]:
        self.asked.append(want)
        path = self.root / want.digest.hex
        if not path.exists():
            return succeed(None)
        fd = os.open(path, os.O_RDONLY)
        return succeed(StoredBlob(fd, os.fstat(fd).st_size))


def _api(tmp_path: Path) -> tuple[RegistryAPI, OtherStore, Digest, Digest]:
    layout, _, catalog = cache(tmp_path)
    other = OtherStore(tmp_path)
    local = put_blob(layout, b"in the local cache")
    elsewhere = other.add(b"only in the other store")
    api = registry(layout, catalog, Chain([LocalBlobs(layout, catalog), other]), Clock())
    return api, other, local, elsewhere


def test_a_second_source_serves_what_the_cache_lacks(tmp_path: Path) -> None:
    api, other, _, elsewhere = _api(tmp_path)
    r = render(api, request(b"GET", f"/v2/lib/x/blobs/{elsewhere}".encode()))
    status, fields, body = answer(r)
    assert (status, body) == (200, b"only in the other store")
    assert fields[b"docker-content-digest"] == str(elsewhere).encode()
    assert fields[b"etag"] == f'"{elsewhere}"'.encode()
    assert [w.name for w in other.asked] == ["lib/x"]


def test_the_cache_answers_first(tmp_path: Path) -> None:
    api, other, local, _ = _api(tmp_path)
    r = render(api, request(b"GET", f"/v2/lib/x/blobs/{local}".encode(), {b"range": b"bytes=3-7"}))
    status, fields, body = answer(r)
    assert (status, body) == (206, b"the l")
    assert fields[b"content-range"] == b"bytes 3-7/18"
    assert other.asked == []


def test_a_digest_no_source_has_is_unknown(tmp_path: Path) -> None:
    api, other, _, _ = _api(tmp_path)
    missing = digest_of(b"nowhere")
    status, _, _ = answer(render(api, request(b"HEAD", f"/v2/lib/x/blobs/{missing}".encode())))
    assert status == 404
    assert len(other.asked) == 1
