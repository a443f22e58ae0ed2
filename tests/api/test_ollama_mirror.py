"""Ollama pulls from the node: a model cached with ollama:// from the fake registry
(tests/support/ollama_registry.py), the fake then stopped, and the requests of
``ollama pull --insecure <node>/library/<model>:<tag>`` (tests/support/ollama_client.py,
replaying ollama's server/download.go) served by /v2 alone."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.ollama_client import OllamaClient
from tests.support.ollama_registry import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_TEMPLATE,
    OllamaRegistry,
)
from tests.support.server import ServerProcess


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def cached(server: ServerProcess) -> Iterator[dict[str, bytes]]:
    """A model cached from the fake registry, which is stopped afterwards."""
    layers = [
        (MEDIA_TYPE_MODEL, os.urandom(3_000_000)),  # past the fast path's limit: sendfile
        (MEDIA_TYPE_TEMPLATE, b"{{ .Prompt }}"),
        (MEDIA_TYPE_PARAMS, b'{"stop": ["</s>"]}'),
        (MEDIA_TYPE_LICENSE, os.urandom(300_000)),
    ]
    with OllamaRegistry() as reg:
        manifest_digest = reg.add_model("library", "tinyllama", "latest", layers)
        manifest = reg.model("library", "tinyllama", "latest").manifest
        with server.client() as c:
            r = c.post("/content/", json={"url": f"ollama://{reg.host}/tinyllama"})
            assert r.status_code == 201, r.text
    blobs = {sha(data): data for _, data in layers}
    config = json.loads(manifest)["config"]["digest"]
    with server.client() as c:
        blobs[config] = c.get(f"/v2/library/tinyllama/blobs/{config}").content
    blobs[manifest_digest] = manifest
    yield blobs


def check_pull(client: OllamaClient, blobs: dict[str, bytes], tmp: Path) -> dict[str, object]:
    manifest = client.pull("library", "tinyllama", "latest")
    digests = [layer["digest"] for layer in manifest["layers"]] + [manifest["config"]["digest"]]
    for digest in digests:
        assert (tmp / "blobs" / digest.replace(":", "-")).read_bytes() == blobs[digest]
    assert not list((tmp / "blobs").glob("*-partial*"))
    return manifest


def test_ollama_pull_from_the_cache(
    cached: dict[str, bytes], server: ServerProcess, tmp_path: Path
) -> None:
    client = OllamaClient(server.base_url, tmp_path)
    check_pull(client, cached, tmp_path)
    client.close()
    assert client.connections < len(client.log)  # keep-alive, as Go's transport
    assert "Traceback" not in server.log()
    host = urlsplit(server.base_url).netloc
    gets = [e for e in client.log if e.method == "GET" and "range" not in e.request_headers]
    manifest_get = gets[0]
    assert manifest_get.url.endswith("/v2/library/tinyllama/manifests/latest")
    assert manifest_get.status == 200
    assert manifest_get.headers["content-type"] == (
        "application/vnd.docker.distribution.manifest.v2+json"
    )
    stored = tmp_path / "manifests" / host / "library" / "tinyllama" / "latest"
    assert sha(stored.read_bytes()) in cached
    # Every blob answer (HEAD, the GET read for its Location, the ranged parts)
    # names the blob's own absolute URL on the host the client asked.
    blob_answers = [e for e in client.log if "/blobs/" in e.url]
    assert len(blob_answers) == 3 * 5  # HEAD, GET, one part, for 4 layers and the config
    for e in blob_answers:
        assert e.status in (200, 206), (e.method, e.url, e.status)
        assert e.headers["location"] == e.url, e
        assert "content-encoding" not in e.headers
    parts = [e for e in blob_answers if "range" in e.request_headers]
    assert len(parts) == 5
    assert all(e.status == 206 for e in parts)
    assert all("authorization" not in e.request_headers for e in parts)


def test_parallel_parts_and_another_host_name(
    cached: dict[str, bytes], server: ServerProcess, tmp_path: Path
) -> None:
    # localhost instead of 127.0.0.1: Location must carry the name the client used.
    port = urlsplit(server.base_url).port
    base = f"http://localhost:{port}"
    # Small parts, so the 3 MB model comes in 16 parallel ranges (fast path and not).
    client = OllamaClient(base, tmp_path, min_part_size=150_000)
    check_pull(client, cached, tmp_path)
    client.close()
    model = max(cached.values(), key=len)
    ranged = [e for e in client.log if "range" in e.request_headers and e.url.endswith(sha(model))]
    assert len(ranged) == 16
    assert {e.headers["content-range"].split("/")[1] for e in ranged} == {str(len(model))}
    for e in client.log:
        if "/blobs/" in e.url:
            assert e.headers["location"] == f"{base}{urlsplit(e.url).path}", e


def test_a_model_that_is_not_cached(server: ServerProcess, tmp_path: Path) -> None:
    client = OllamaClient(server.base_url, tmp_path)
    with pytest.raises(Exception, match="pull model manifest: 404"):
        client.pull("library", "nothing", "latest")


def test_ollama_names_resolve_even_with_an_upstream(
    cached: dict[str, bytes], server: ServerProcess, tmp_path: Path
) -> None:
    """The Ollama client sends no ?ns=; with --upstream naming another registry
    the cached model is still found by its name."""
    server.stop()
    with ServerProcess(server.cache_dir, "--upstream", "registry.example") as srv:
        client = OllamaClient(srv.base_url, tmp_path)
        check_pull(client, cached, tmp_path)
        client.close()
