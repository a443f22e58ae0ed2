"""Pull-through mirror mode (--mirror): /v2 misses filled from upstream, once."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import threading
from pathlib import Path

import httpx
import pytest

from proxy.fetch.ociref import Platform
from tests.fetch.test_oci_protocol import digest_of, host_of, serve_image
from tests.support.containerd import Containerd, containerd_available, write_hosts_toml
from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess
from tests.support.source import Source


def blob_gets(source: Source, digest: str) -> int:
    return len([q for q in source.requests if q.method == "GET" and q.path.endswith(digest)])


def test_only_configured_upstreams_are_filled(tmp_path: Path, source: Source) -> None:
    serve_image(source, "r", "t", [b"layer"])
    mirror = ServerProcess(tmp_path / "c", "--mirror", "--upstream", host_of(source))
    with mirror as srv, srv.client() as c:
        assert c.get("/v2/r/manifests/t").status_code == 200
        for ns in ("evil.example", "169.254.169.254", "127.0.0.1:1"):
            r = c.get(f"/v2/r/manifests/t?ns={ns}")
            assert r.status_code == 403, r.text
            assert r.json()["errors"][0]["code"] == "DENIED"
            r = c.get(f"/v2/r/blobs/sha256:{'0' * 64}?ns={ns}")
            assert r.status_code == 403
    # Offline (the default) never fills.
    with ServerProcess(tmp_path / "c2", "--upstream", host_of(source)) as srv, srv.client() as c:
        n = len(source.requests)
        assert c.get("/v2/r/manifests/t").status_code == 404
        assert len(source.requests) == n


def test_concurrent_clients_share_one_streamed_fill(tmp_path: Path, source: Source) -> None:
    big = os.urandom(6 * 1024 * 1024)
    serve_image(source, "r", "t", [big])
    d = digest_of(big)
    source.set_delay(f"/v2/r/blobs/{d}", 0.02, chunk=65536)  # about 2 s in all
    with ServerProcess(tmp_path / "c", "--mirror", "--upstream", host_of(source)) as srv:
        first_chunk_while_filling = threading.Event()

        def client(i: int) -> bytes:
            with srv.client() as c, c.stream("GET", f"/v2/r/blobs/{d}") as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(len(big))
                out = bytearray()
                for chunk in r.iter_bytes():
                    if not out and i == 0:
                        with srv.client() as probe:
                            state = probe.get("/content/").json()["entries"]
                            if any(e["state"] == "downloading" for e in state):
                                first_chunk_while_filling.set()
                    out += chunk
                return bytes(out)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(client, range(6)))
        assert all(r == big for r in results)
        assert first_chunk_while_filling.is_set(), "bytes only came after the whole fill"
        assert blob_gets(source, d) == 1
        # Afterwards: a cached blob, served from disk; an entry like any other.
        n = len(source.requests)
        with srv.client() as c:
            assert c.get(f"/v2/r/blobs/{d}").content == big
            urls = [e["url"] for e in c.get("/content/").json()["entries"]]
            assert f"oci-blob://{host_of(source)}/r@{d}" in urls
        assert len(source.requests) == n
    assert (tmp_path / "c" / "blobs" / "sha256" / d[7:]).read_bytes() == big


def test_range_ahead_of_the_fill_is_passed_through(tmp_path: Path, source: Source) -> None:
    big = os.urandom(24 * 1024 * 1024)
    serve_image(source, "r", "t", [big])
    d = digest_of(big)
    source.set_delay(f"/v2/r/blobs/{d}", 0.01, chunk=65536)  # about 4 s in all
    mirror = ServerProcess(tmp_path / "c", "--mirror", "--upstream", host_of(source))
    with mirror as srv, srv.client() as c:
        if True:
            # Start the fill with a request for the first bytes...
            r = c.get(f"/v2/r/blobs/{d}", headers={"Range": "bytes=0-4095"})
            assert r.status_code == 206 and r.content == big[:4096]
            # ...then ask for the end, far ahead of it: answered at once from upstream.
            start = len(big) - 1024 * 1024
            r = c.get(f"/v2/r/blobs/{d}", headers={"Range": f"bytes={start}-{len(big) - 1}"})
            assert r.status_code == 206, r.text
            assert r.content == big[start:]
            assert r.headers["content-range"] == f"bytes {start}-{len(big) - 1}/{len(big)}"
            ranged = [
                q
                for q in source.requests
                if q.path.endswith(d) and q.headers.get("range") == f"bytes={start}-{len(big) - 1}"
            ]
            assert len(ranged) == 1
            state = [e for e in c.get("/content/").json()["entries"] if "oci-blob" in e["url"]]
            assert state and state[0]["state"] == "downloading"


def test_wrong_bytes_abort_the_clients(tmp_path: Path, source: Source) -> None:
    good = os.urandom(2 * 1024 * 1024)
    serve_image(source, "r", "t", [good])
    d = digest_of(good)
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    source.add_file(f"/v2/r/blobs/{d}", bytes(bad))
    # Slow enough that the client is attached to the fill before it fails.
    source.set_delay(f"/v2/r/blobs/{d}", 0.02, chunk=65536)
    mirror = ServerProcess(tmp_path / "c", "--mirror", "--upstream", host_of(source))
    with mirror as srv, srv.client() as c:
        # The body stops short of its Content-Length: the client gets an error,
        # never a complete wrong blob.
        with pytest.raises(httpx.TransportError):
            c.get(f"/v2/r/blobs/{d}")
        assert "aborting a client of the fill" in srv.log()
    assert not (tmp_path / "c" / "blobs" / "sha256" / d[7:]).exists()


def test_tags_are_revalidated_and_served_when_upstream_is_down(tmp_path: Path) -> None:
    node = Platform.running().architecture
    with Registry(tmp_path / "registry") as reg:
        b = Blobs()
        one = b.image(node, layers=[b"one"])
        two = b.image(node, layers=[b"two"])
        push_image_tree(reg.url, "app", b, one, "latest")
        args = ("--mirror", "--upstream", reg.host, "--manifest-ttl", "0")
        with ServerProcess(tmp_path / "c", *args) as srv, srv.client() as c:
            r = c.get("/v2/app/manifests/latest")
            assert r.headers["docker-content-digest"] == one["digest"]
            push_image_tree(reg.url, "app", b, two, "latest")  # the tag moves upstream
            r = c.get("/v2/app/manifests/latest")
            assert r.headers["docker-content-digest"] == two["digest"]
            # By digest: immutable, never asked again.
            assert c.get(f"/v2/app/manifests/{one['digest']}").status_code == 200
            n = reg.log().count(f"/manifests/{one['digest']}")
            assert c.get(f"/v2/app/manifests/{one['digest']}").status_code == 200
            assert reg.log().count(f"/manifests/{one['digest']}") == n
            reg.stop()
            r = c.get("/v2/app/manifests/latest")
            assert r.status_code == 200 and r.headers["docker-content-digest"] == two["digest"]


def test_forward_proxy_misses_are_filled(tmp_path: Path, source: Source) -> None:
    layer = os.urandom(500_000)
    serve_image(source, "r", "t", [layer])
    d = digest_of(layer)
    # --allow-upstream lists the registries filled from; the target names the registry.
    mirror = ServerProcess(tmp_path / "c", "--mirror", "--allow-upstream", host_of(source))
    with mirror as srv, httpx.Client(proxy=srv.base_url) as c:
        if True:
            r = c.get(f"http://{host_of(source)}/v2/r/blobs/{d}", headers={"Range": "bytes=7-99"})
            assert r.status_code in (200, 206), r.text
    assert blob_gets(source, d) >= 1


@pytest.mark.slow
@pytest.mark.skipif(not containerd_available(), reason="containerd is not installed")
def test_containerd_through_the_mirror(tmp_path: Path) -> None:
    node = Platform.running()
    blobs = Blobs()
    here = blobs.image(node.architecture, layers=[random_bytes(3_000_000, 41), b"two"])
    top = blobs.index([here, blobs.image("s390x" if node.architecture != "s390x" else "amd64")])
    registry = Registry(tmp_path / "registry").start()
    try:
        push_image_tree(registry.url, "team/app", blobs, top, "v1")
        upstream = registry.host
        ref = f"{upstream}/team/app:v1"
        args = ("--mirror", "--upstream", upstream)
        with ServerProcess(tmp_path / "cache", *args) as srv:
            daemons = [Containerd(tmp_path / f"ctrd{i}").start() for i in range(3)]
            try:
                for ctrd in daemons:
                    write_hosts_toml(
                        ctrd.hosts_dir,
                        upstream,
                        server_url=f"http://{upstream}",
                        mirror_url=srv.base_url,
                    )
                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    list(pool.map(lambda ctrd: ctrd.pull(ref), daemons))
            finally:
                for ctrd in daemons:
                    ctrd.stop()
            manifest = json.loads(blobs.bytes_of(here["digest"]))
            layer_digests = [
                manifest["config"]["digest"],
                *(x["digest"] for x in manifest["layers"]),
            ]
            log = registry.log()
            for digest in layer_digests:
                fetched = re.findall(rf"http\.request\.method=GET[^\n]*blobs/{digest}", log)
                assert len(fetched) == 1, (digest, len(fetched))
            registry.stop()
            with Containerd(tmp_path / "again") as ctrd:
                write_hosts_toml(
                    ctrd.hosts_dir,
                    upstream,
                    server_url=f"http://{upstream}",
                    mirror_url=srv.base_url,
                )
                ctrd.pull(ref)
                for digest in layer_digests:
                    assert ctrd.read_content(digest) == blobs.bytes_of(digest)
    finally:
        registry.stop()


def test_configured_upstream_credentials(tmp_path: Path) -> None:
    from tests.support.registry import TokenServer

    node = Platform.running().architecture
    with (
        TokenServer(tmp_path / "token", users={"alice": "wonderland"}) as ts,
        Registry.for_token_server(tmp_path / "registry", ts) as reg,
    ):
        b = Blobs()
        image = b.image(node, layers=[b"private layer"])
        push_image_tree(
            reg.url, "priv/app", b, image, "1", ts.bearer("repository:priv/app:pull,push")
        )
        layer = json.loads(b.bytes_of(image["digest"]))["layers"][0]["digest"]
        # Without credentials for that upstream: nothing to serve.
        with (
            ServerProcess(tmp_path / "c1", "--mirror", "--upstream", reg.host) as srv,
            srv.client() as c,
        ):
            assert c.get("/v2/priv/app/manifests/1").status_code == 404
        env = {"NEKKO_REGISTRY_CREDENTIALS": f"{reg.host}=alice:wonderland"}
        with (
            ServerProcess(tmp_path / "c2", "--mirror", "--upstream", reg.host, env=env) as srv,
            srv.client() as c,
        ):
            # A client's own Authorization is not what reaches upstream.
            r = c.get("/v2/priv/app/manifests/1", headers={"Authorization": "Bearer client-tok"})
            assert r.status_code == 200, r.text
            assert c.get(f"/v2/priv/app/blobs/{layer}").content == b"private layer"
            log = srv.log()
        assert "wonderland" not in log
        assert all("client-tok" not in (q.authorization or "") for q in ts.requests)
        assert any((q.authorization or "").startswith("Basic ") for q in ts.requests)
