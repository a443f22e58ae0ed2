"""nydusd's reads, reproduced by tests.support.nydus_reader, against the proxy.

Both uses of the proxy by nydusd: as its registry backend (``host`` = the
proxy) and as its forward proxy (``proxy.url`` = the proxy, ``fallback``,
``ping_url`` = /healthz). Every one of many concurrent random ranges must
come back with exactly the requested length and bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import attrs
import pytest

from proxy.fetch.ociref import Platform
from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.nydus_reader import NydusReader
from tests.support.registry import Registry
from tests.support.server import ServerProcess


@attrs.define
class Cached:
    registry: Registry
    server: ServerProcess
    blobs: dict[str, bytes]
    uncached: tuple[str, bytes]


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    work = tmp_path_factory.mktemp("nydus")
    with Registry(work / "registry") as reg:
        b = Blobs()
        image = b.image(
            Platform.running().architecture,
            layers=[random_bytes(8 * 1024 * 1024 + 17, 31), random_bytes(300_000, 32)],
        )
        push_image_tree(reg.url, "nydus/image", b, image, "v1")
        other = b.image("amd64", layers=[random_bytes(200_000, 33)])
        push_image_tree(reg.url, "nydus/other", b, other, "v1")
        layers = json.loads(b.bytes_of(image["digest"]))["layers"]
        blobs = {layer["digest"]: b.bytes_of(layer["digest"]) for layer in layers}
        uncached_digest = json.loads(b.bytes_of(other["digest"]))["layers"][0]["digest"]
        with ServerProcess(work / "cache") as srv, srv.client() as c:
            r = c.post("/content/", json={"url": f"oci://{reg.host}/nydus/image:v1"})
            assert r.status_code == 201, r.text
            yield Cached(reg, srv, blobs, (uncached_digest, b.bytes_of(uncached_digest)))


def proxy_host(c: Cached) -> str:
    return c.server.base_url.split("://", 1)[1]


def test_registry_backend_mode(cached: Cached) -> None:
    with NydusReader("http", proxy_host(cached), "any/repo/name") as reader:
        for digest, data in cached.blobs.items():
            assert reader.blob_size(digest) == len(data)
            assert reader.read_range(digest, 0, 1) == data[:1]
            assert reader.read_range(digest, len(data) - 1, 1) == data[-1:]
            assert reader.read_range(digest, 0, len(data)) == data
        result = reader.stress(cached.blobs, requests=600, concurrency=8, seed=1)
        assert result.failed == 0, result.summary()
        assert result.ok == 600
        assert all(not r.via_proxy for r in reader.records)


def test_forward_proxy_mode(cached: Cached) -> None:
    proxy = cached.server.base_url
    with NydusReader(
        "http",
        cached.registry.host,
        "nydus/image",
        proxy_url=proxy,
        proxy_fallback=True,
        proxy_ping_url=f"{proxy}/healthz",
    ) as reader:
        assert reader.proxy_healthy
        result = reader.stress(cached.blobs, requests=600, concurrency=8, seed=2)
        assert result.failed == 0, result.summary()
        served = [r for r in reader.records if r.target.startswith("http://")]
        assert len(served) >= 600
        assert all(r.via_proxy and r.status in (200, 206) for r in served)
    # A blob the cache does not hold: 502 from the proxy, then straight to the registry.
    with NydusReader(
        "http", cached.registry.host, "nydus/other", proxy_url=proxy, proxy_fallback=True
    ) as reader:
        digest, data = cached.uncached
        assert reader.read_range(digest, 10, 1000) == data[10:1010]
        tried = list(reader.records)
        assert [r.status for r in tried if r.via_proxy] == [502]
        assert any(not r.via_proxy and r.status in (200, 206) for r in tried)
