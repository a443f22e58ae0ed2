"""gs:// against gcp-storage-emulator (a separate process on loopback,
anonymous): single objects, prefixes with subfolders, resume with Range,
an object replaced mid-download, and not-found errors.

The emulator ignores ``ifGenerationMatch`` on media downloads (it always
serves the current object), so it never answers 412: a replaced object is
caught by the fetcher's own checks (the body's length against the
generation's size, and the generation read again after the body), which is
what the changed-object tests exercise. The 412 path itself is the one
``s3://`` tests with moto (shared code in ``proxy/fetch/objects.py`` and
``transfer``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import BadRequest
from proxy.fetch.gcs import gcs_endpoint, parse_gcs_url
from tests.support import gcs
from tests.support.gcs import GcsEmulator
from tests.support.s3 import Relay
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(
    not gcs.available(), reason="gcp-storage-emulator is not installed (pip install '.[test]')"
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layers_of(cache: Path, url: str) -> list[dict[str, Any]]:
    index = json.loads((cache / "index.json").read_text())
    for desc in index["manifests"]:
        if desc["annotations"].get("io.nekko.storage-manager.url") == url:
            path = cache / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]
            layers: list[dict[str, Any]] = json.loads(path.read_text())["layers"]
            return layers
    raise AssertionError(f"{url} not in index.json")


def media_gets(emu: GcsEmulator, name: str) -> list[int]:
    return [
        s
        for m, t, s in emu.requests()
        if m == "GET" and t.startswith("/download/") and name in t.replace("%2F", "/")
    ]


@pytest.fixture(scope="module")
def emu() -> Iterator[GcsEmulator]:
    with GcsEmulator() as e:
        e.create_bucket("models")
        yield e


def test_url_grammar_and_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_gcs_url("gs://models/a/b.bin").name == "a/b.bin"
    assert parse_gcs_url("gs://models/a/").is_prefix
    assert parse_gcs_url("gs://models/").is_prefix and parse_gcs_url("gs://models").name == ""
    assert parse_gcs_url("gs://my.dotted.bucket/a%20b").name == "a b"
    for bad in ("gs:///o", "gs://a/o", "gs://Upper/o", "gs://b..c/o", "gs://bkt/o?x=1", "s3://b/o"):
        with pytest.raises(BadRequest):
            parse_gcs_url(bad)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert gcs_endpoint() == "https://storage.googleapis.com"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")
    assert gcs_endpoint() == "http://127.0.0.1:9023"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://localhost:4443/")
    assert gcs_endpoint() == "http://localhost:4443"


def test_one_object_and_a_prefix(tmp_path: Path, emu: GcsEmulator) -> None:
    weights = os.urandom(3 * 1024 * 1024 + 5)
    meta = emu.put("models", "llama/weights.gguf", weights)
    emu.put("models", "llama/config.json", b'{"layers": 2}')
    emu.put("models", "llama/tok/sub dir/vocab.txt", b"a\nb\n")
    # (A console "folder", a zero-byte "llama/", cannot be made: the emulator
    # drops the connection of an empty upload.)
    emu.put("models", "other/x", b"not under the prefix")
    token = "ya29.a-secret-oauth-token"
    cache = tmp_path / "cache"
    with ServerProcess(cache, "--verbose", "2", env=emu.server_env()) as srv, srv.client() as c:
        url = "gs://models/llama/weights.gguf"
        r = c.post("/content/", json={"url": url, "credentials": token})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == sha(weights) and body["size"] == len(weights)
        assert Path(body["path"]).read_bytes() == weights
        (layer,) = layers_of(cache, url)
        ann = layer["annotations"]
        assert ann["org.opencontainers.image.title"] == "weights.gguf"
        assert ann["io.nekko.storage-manager.gcs.generation"] == meta["generation"]
        assert ann["io.nekko.storage-manager.gcs.size"] == str(len(weights))
        assert ann["io.nekko.storage-manager.gcs.md5"] == meta["md5Hash"]
        assert c.post("/content/", json={"url": url}).status_code == 200

        prefix = "gs://models/llama/"
        r = c.post("/content/", json={"url": prefix})
        assert r.status_code == 201, r.text
        layers = layers_of(cache, prefix)
        titles = [x["annotations"]["org.opencontainers.image.title"] for x in layers]
        assert titles == ["config.json", "tok/sub dir/vocab.txt", "weights.gguf"]
        assert [x["digest"] for x in layers] == [
            sha(b'{"layers": 2}'),
            sha(b"a\nb\n"),
            sha(weights),
        ]
        # The weights are stored once, shared by both entries.
        big = [p for p in (cache / "blobs" / "sha256").iterdir() if p.stat().st_size > 1e6]
        assert len(big) == 1
        ref = r.json()["reference"]
        name, tag = ref.rsplit(":", 1)
        m = c.get(f"/v2/{name}/manifests/{tag}")
        assert m.status_code == 200 and len(m.json()["layers"]) == 3
        # A subfolder alone, titles relative to it.
        r = c.post("/content/", json={"url": "gs://models/llama/tok/"})
        assert r.status_code == 201, r.text
        assert [b["title"] for b in r.json()["blobs"]] == ["sub dir/vocab.txt"]
    # The token is used, never kept or logged.
    assert token not in srv.log()
    for p in cache.rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p


def test_interrupted_download_resumes_with_range(tmp_path: Path, emu: GcsEmulator) -> None:
    data = os.urandom(32 * 1024 * 1024)
    emu.put("models", "big/model.bin", data)
    with Relay(("127.0.0.1", emu.port), cut_after=10 * 1024 * 1024) as relay:
        env = emu.server_env(relay.endpoint)
        args = ("--retries", "2", "--retry-backoff", "0.1")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": "gs://models/big/model.bin"})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
        assert relay.cuts == 1
    assert media_gets(emu, "big/model.bin")[-2:] == [200, 206]  # the second one continued
    assert "resuming gs://models/big/model.bin at byte" in srv.log()


@pytest.mark.parametrize("grow", [1, 0], ids=["longer", "same-size"])
def test_an_object_replaced_mid_download_starts_over(
    tmp_path: Path, emu: GcsEmulator, grow: int
) -> None:
    """Never a mix of two generations. Longer: the resumed body's length is
    not the first generation's size. Same size: only the generation read
    again after the body tells."""
    name = f"moving/m{grow}.bin"
    old, new = os.urandom(8 * 1024 * 1024), os.urandom(8 * 1024 * 1024 + grow)
    first = emu.put("models", name, old)

    def replace() -> None:
        emu.put("models", name, new)

    with Relay(("127.0.0.1", emu.port), cut_after=2 * 1024 * 1024, on_cut=replace) as relay:
        env = emu.server_env(relay.endpoint)
        args = ("--retries", "2", "--retry-backoff", "0.2")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            url = f"gs://models/{name}"
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(new)
            assert Path(r.json()["path"]).read_bytes() == new
            (layer,) = layers_of(tmp_path / "cache", url)
            generation = layer["annotations"]["io.nekko.storage-manager.gcs.generation"]
            assert generation == emu.metadata("models", name)["generation"]
            assert generation != first["generation"]
        assert relay.cuts == 1
    assert "changed while it was fetched" in srv.log()
    assert media_gets(emu, name)[-1] == 200  # the new generation, from its first byte


def test_not_found_errors(tmp_path: Path, emu: GcsEmulator) -> None:
    with ServerProcess(tmp_path / "c", env=emu.server_env()) as srv, srv.client() as c:
        for url in (
            "gs://models/no/such/object",
            "gs://no-such-bucket/object",
            "gs://no-such-bucket/prefix/",
            "gs://models/empty-prefix/",
        ):
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 404, (url, r.text)
            err = r.json()["error"]
            assert err["code"] == "UPSTREAM_NOT_FOUND"
            assert url.split("/", 3)[-1].rstrip("/") in err["message"], err
        r = c.post("/content/", json={"url": "gs://models/no/such/object"})
        assert "notFound" in r.json()["error"]["message"]
        r = c.post(
            "/content/",
            json={
                "url": "gs://models/x",
                "credentialsType": "Basic",
                "credentials": "dXNlcjpwdw==",
            },
        )
        assert r.status_code == 400, r.text
        assert "dXNlcjpwdw==" not in r.text
