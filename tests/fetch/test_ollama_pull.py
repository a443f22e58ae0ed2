"""ollama:// pulls against the Ollama registry fake (tests/support/ollama_registry.py),
which reproduces registry.ollama.ai: no /v2/ ping, manifests as text/plain without
Content-Length or Docker-Content-Digest, nothing by digest, blobs by 307 to a signed
CDN URL on another host."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import b64
from tests.support.ollama_registry import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_TEMPLATE,
    OllamaRegistry,
)
from tests.support.server import ServerProcess


@pytest.fixture
def ollama() -> Iterator[OllamaRegistry]:
    with OllamaRegistry() as reg:
        yield reg


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_pull_a_model(ollama: OllamaRegistry, server: ServerProcess, cache_dir: Path) -> None:
    gguf = os.urandom(3_000_000)
    layers = [
        (MEDIA_TYPE_MODEL, gguf),
        (MEDIA_TYPE_TEMPLATE, b"{{ .Prompt }}"),
        (MEDIA_TYPE_PARAMS, b'{"stop": ["</s>"]}'),
        (MEDIA_TYPE_LICENSE, b"../../etc/passwd is a name, not a path"),
    ]
    manifest_digest = ollama.add_model("library", "tinyllama", "latest", layers)
    url = f"ollama://{ollama.host}/tinyllama"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == sha(gguf)  # the model file itself
        assert Path(body["path"]).read_bytes() == gguf
        assert body["manifestDigest"] == manifest_digest
        assert body["reference"] == f"{ollama.host}/library/tinyllama:latest"
        by_digest = {b["digest"]: b for b in body["blobs"]}
        for media_type, data in layers:
            blob = by_digest[sha(data)]
            assert blob["mediaType"] == media_type
            assert Path(blob["path"]).read_bytes() == data
        assert c.get(f"/content/{b64(url)}").status_code == 200
        # Served again under /v2 as <namespace>/<model>:<tag>, byte for byte.
        m = c.get(f"/v2/library/tinyllama/manifests/latest?ns={ollama.host}")
        assert m.status_code == 200
        assert sha(m.content) == manifest_digest
        assert m.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"
    # No ping, no manifest by digest, and the CDN never saw registry credentials.
    paths = [q.path for q in ollama.requests("registry")]
    assert "/v2/" not in paths
    assert not any("/manifests/sha256:" in p for p in paths)
    assert ollama.cdn.requests
    assert all("authorization" not in q.headers for q in ollama.cdn.requests)
    # Layer names never became paths: only blobs/ and the index hold the content.
    assert not (cache_dir / "etc").exists()
    for p in (cache_dir / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name


def test_wrong_bytes_from_the_cdn_are_rejected(
    ollama: OllamaRegistry, server: ServerProcess, cache_dir: Path
) -> None:
    gguf = os.urandom(500_000)
    ollama.add_model("library", "bad", "v1", [(MEDIA_TYPE_MODEL, gguf)])
    ollama.cdn.corrupt_once(sha(gguf))
    with server.client() as c:
        r = c.post("/content/", json={"url": f"ollama://{ollama.host}/bad:v1"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
        assert not (cache_dir / "blobs" / "sha256" / sha(gguf)[7:]).exists()
        # The next try gets the right bytes.
        r = c.post("/content/", json={"url": f"ollama://{ollama.host}/bad:v1"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(gguf)


def test_unknown_model_is_404(ollama: OllamaRegistry, server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/content/", json={"url": f"ollama://{ollama.host}/library/nothing:1"})
        assert r.status_code == 404, r.text
        assert "MANIFEST_UNKNOWN" in r.json()["error"]["message"]


def test_private_model_with_a_token(ollama: OllamaRegistry, server: ServerProcess) -> None:
    gguf = os.urandom(10_000)
    ollama.add_secret("olla-secret")
    ollama.add_model("team", "private", "latest", [(MEDIA_TYPE_MODEL, gguf)], private=True)
    url = f"ollama://{ollama.host}/team/private"
    with server.client() as c:
        assert c.post("/content/", json={"url": url}).status_code == 401
        r = c.post("/content/", json={"url": url, "credentials": "olla-secret"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(gguf)
    assert "olla-secret" not in server.log()
    assert all("authorization" not in q.headers for q in ollama.cdn.requests)
    manifest = json.loads(ollama.model("team", "private", "latest").manifest)
    assert manifest["layers"][0]["digest"] == sha(gguf)
