"""--max-cache-size: whole entries evicted least recently used first (last use
kept across restarts), shared blobs kept, pinned entries and entries being
read never evicted, and a download that cannot fit is a 507."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source

MiB = 1024 * 1024


def blob(cache: Path, data: bytes) -> Path:
    return cache / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()


def here(c: object, url: str) -> bool:
    """Whether it is cached (a look: not a use)."""
    return c.get(f"/content/{b64(url)}").status_code == 200  # type: ignore[attr-defined]


def use(c: object, url: str) -> bool:
    """Ask for a cached entry again (a use, as a client's POST is)."""
    return c.post("/content/", json={"url": url}).status_code == 200  # type: ignore[attr-defined]


@pytest.fixture
def files(source: Source) -> dict[str, bytes]:
    out = {name: os.urandom(MiB) for name in ("a", "b", "c", "d", "e")}
    out["big"] = os.urandom(5 * MiB)
    for name, data in out.items():
        source.add_file(f"/{name}", data)
    return out


def test_lru_eviction_pins_and_restarts(cache_dir: Path, source: Source, files: dict) -> None:
    url = {name: source.url(f"/{name}") for name in files}
    args = ("--max-cache-size", "3M", "--cache-low-watermark", "70%")
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        for name in ("a", "b"):
            assert c.post("/content/", json={"url": url[name]}).status_code == 201
        assert use(c, url["a"])  # a is now used more recently than b
        # c needs room: b, the least recently used, goes; a stays.
        assert c.post("/content/", json={"url": url["c"]}).status_code == 201
        assert not here(c, url["b"]) and here(c, url["a"]) and here(c, url["c"])
        assert not blob(cache_dir, files["b"]).exists()
        # Pinned (on POST, or later through the API): never evicted.
        r = c.post("/content/", json={"url": url["a"], "pin": True})
        assert r.status_code == 200 and r.json()["pinned"] is True
        assert c.post("/content/", json={"url": url["d"]}).status_code == 201
        assert here(c, url["a"]) and not here(c, url["c"]) and here(c, url["d"])
        time.sleep(0.05)
        log = srv.log()
    assert f"evicted {url['b']}" in log and f"evicted {url['c']}" in log

    # After a restart the order is the one recorded before it.
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        assert c.post("/content/", json={"url": url["e"]}).status_code == 201
        assert here(c, url["a"]) and not here(c, url["d"]) and here(c, url["e"])
        # Unpinned, a is the oldest: the next one evicts it.
        r = c.post("/admin/pin", json={"url": url["a"], "pin": False})
        assert r.status_code == 200 and r.json() == {"url": url["a"], "pinned": False}
        assert use(c, url["e"])  # e is used after a
        assert c.post("/content/", json={"url": url["b"]}).status_code == 201
        assert not here(c, url["a"]) and here(c, url["e"]) and here(c, url["b"])
        metrics = c.get("/metrics").text
    evictions = [x for x in metrics.splitlines() if x.startswith("storage_manager_evictions_total")]
    assert evictions == ["storage_manager_evictions_total 2.0"], evictions  # d, then a


def test_what_cannot_fit_is_507(cache_dir: Path, source: Source, files: dict) -> None:
    url = {name: source.url(f"/{name}") for name in files}
    with ServerProcess(cache_dir, "--max-cache-size", "3M") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": url["a"], "pin": True}).status_code == 201
        r = c.post("/content/", json={"url": url["big"]})
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "DISK_FULL"
        assert "limit" in r.json()["error"]["message"]
        assert not blob(cache_dir, files["big"]).exists()
        leftover = (cache_dir / "ingest").iterdir()
        assert not [p for p in leftover if p.name not in ("small", "unsynced")]
        assert here(c, url["a"])  # still serving, nothing lost
        assert c.post("/content/", json={"url": url["b"]}).status_code == 201


def test_an_entry_being_read_is_not_evicted(cache_dir: Path, source: Source) -> None:
    # Large enough that the answer cannot sit whole in the socket buffers.
    data = {name: os.urandom(48 * MiB) for name in ("old", "new")}
    for name, d in data.items():
        source.add_file(f"/{name}", d)
    args = ("--max-cache-size", "80M")
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        digest = c.post("/content/", json={"url": source.url("/old")}).json()["digest"]
        with srv.client() as reader, reader.stream("GET", f"/v2/x/blobs/{digest}") as r:
            chunks = r.iter_bytes(65536)
            got = bytearray(next(chunks))
            # "old" is the only candidate and is being read: the new one cannot fit.
            r2 = c.post("/content/", json={"url": source.url("/new")})
            assert r2.status_code == 507, r2.text
            for chunk in chunks:
                got += chunk
        assert bytes(got) == data["old"]
        # Read to its end: now it may go.
        assert c.post("/content/", json={"url": source.url("/new")}).status_code == 201
        assert not here(c, source.url("/old"))
