"""hf:// pulls against the fake Hub (tests/support/hfhub.py, which answers as
huggingface.co does: resolve HEAD/302 to a signed CDN URL, X-Repo-Commit,
X-Linked-Etag, X-Linked-Size, X-Error-Code, paginated tree listings), compared
with what the official huggingface_hub client downloads from the same server."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import b64
from tests.fakes.test_hfhub_fake import needs_client, run_client
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess

TOKEN = "hf_test_token"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.tokens.add(TOKEN)
        yield fake


def publish(hub: FakeHub) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "weights/model-00001.safetensors": os.urandom(1_500_000),
        "weights/model-00002.safetensors": os.urandom(700_000),
        "tokenizer.json": os.urandom(20_000),
        "gguf/tiny-Q2_K.gguf": os.urandom(900_000),
    }
    hub.add_repo("org/model")
    for path, data in files.items():
        hub.add_file("org/model", path, data)
    hub.commit("org/model", tag="v1.0")
    return files


def test_one_lfs_file_in_a_subfolder(hub: FakeHub, server: ServerProcess) -> None:
    files = publish(hub)
    url = f"hf://{hub.host}/org/model/gguf/tiny-Q2_K.gguf"
    with server.client() as c:
        r = c.post("/content/", json={"url": url, "credentials": TOKEN})
        assert r.status_code == 201, r.text
        body = r.json()
        data = files["gguf/tiny-Q2_K.gguf"]
        assert body["digest"] == sha(data)  # the blob is named by the file's sha256
        assert Path(body["path"]).read_bytes() == data
        assert body["blobs"][0]["title"] == "gguf/tiny-Q2_K.gguf"
        assert c.get(f"/content/{b64(url)}").status_code == 200
    assert hub.cdn.requests and all("authorization" not in q.headers for q in hub.cdn.requests)
    assert any(q.headers.get("authorization") == f"Bearer {TOKEN}" for q in hub.requests)
    assert TOKEN not in server.log()


def test_small_file_at_a_tag(hub: FakeHub, server: ServerProcess) -> None:
    files = publish(hub)
    with server.client() as c:
        r = c.post("/content/", json={"url": f"hf://{hub.host}/org/model@v1.0/config.json"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(files["config.json"])


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/nobody/nothing/f.bin", 404, "RepoNotFound"),
        ("/org/model@no-such-branch/config.json", 404, "RevisionNotFound"),
        ("/org/model/missing.bin", 404, "EntryNotFound"),
        ("/org/gated/f.bin", 403, "GatedRepo"),
    ],
)
def test_hub_errors(hub: FakeHub, server: ServerProcess, path: str, status: int, code: str) -> None:
    publish(hub)
    hub.add_repo("org/gated", gated=True)
    hub.add_file("org/gated", "f.bin", b"gated bytes")
    hub.commit("org/gated")
    with server.client() as c:
        r = c.post("/content/", json={"url": f"hf://{hub.host}{path}"})
        assert r.status_code == status, r.text
        assert code in r.json()["error"]["message"]


@needs_client
def test_whole_repository_and_the_hub_cache_view(
    hub: FakeHub, server: ServerProcess, cache_dir: Path, tmp_path: Path
) -> None:
    files = publish(hub)
    hub.tree_page_size = 2  # the listing comes in pages linked with Link: rel="next"
    url = f"hf://{hub.host}/org/model@v1.0"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
    assert len([q for q in hub.requests if "/tree/" in q.path]) >= 3
    titles = {b["title"]: b for b in body["blobs"] if b["title"]}
    assert set(titles) == set(files)
    # What is needed to serve each file again is kept with the entry.
    index = json.loads((cache_dir / "index.json").read_text())
    (desc,) = index["manifests"]
    ann = desc["annotations"]
    commit = ann["io.nekko.storage-manager.hf.commit"]
    assert ann["io.nekko.storage-manager.hf.repo"] == "org/model"
    assert ann["io.nekko.storage-manager.hf.revision"] == "v1.0"
    assert len(commit) == 40
    manifest = json.loads((cache_dir / "blobs/sha256" / desc["digest"][7:]).read_text())
    for layer in manifest["layers"]:
        la = layer["annotations"]
        assert la["io.nekko.storage-manager.hf.commit"] == commit
        assert len(la["io.nekko.storage-manager.hf.oid"]) == 40  # git blob id
        data = files[la["org.opencontainers.image.title"]]
        assert layer["size"] == len(data)
        if la["org.opencontainers.image.title"].endswith((".safetensors", ".gguf")):
            assert la["io.nekko.storage-manager.hf.lfs-sha256"] == sha(data)[7:]
    for path, data in files.items():
        assert Path(titles[path]["path"]).read_bytes() == data
        assert titles[path]["digest"] == sha(data)
    snapshot = Path(body["directory"])
    assert snapshot.parent.name == "snapshots"
    for path, data in files.items():
        assert (snapshot / path).read_bytes() == data
    # The official client, offline, loads the model from the node cache alone.
    hub_cache = Path(body["hfHubCache"])
    hub.stop()
    got = run_client(
        tmp_path,
        "http://127.0.0.1:9",
        """
        import hashlib, os
        p = hf_hub_download("org/model", "weights/model-00001.safetensors", revision="v1.0")
        d = snapshot_download("org/model", revision="v1.0")
        result = {"file": hashlib.sha256(open(p, "rb").read()).hexdigest(),
                  "all": {os.path.relpath(os.path.join(r, f), d):
                          hashlib.sha256(open(os.path.join(r, f), "rb").read()).hexdigest()
                          for r, _, fs in os.walk(d) for f in fs}}
        """,
        offline=True,
        cache=hub_cache,
    )
    assert got["file"] == sha(files["weights/model-00001.safetensors"])[7:]
    assert got["all"] == {p: sha(d)[7:] for p, d in files.items()}


@needs_client
def test_same_bytes_as_the_official_client(
    hub: FakeHub, server: ServerProcess, tmp_path: Path
) -> None:
    files = publish(hub)
    official = run_client(
        tmp_path,
        hub.endpoint,
        """
        import hashlib, os
        d = snapshot_download("org/model", revision="v1.0")
        result = {os.path.relpath(os.path.join(r, f), d):
                  hashlib.sha256(open(os.path.join(r, f), "rb").read()).hexdigest()
                  for r, _, fs in os.walk(d) for f in fs}
        """,
    )
    with server.client() as c:
        r = c.post("/content/", json={"url": f"hf://{hub.host}/org/model@v1.0"})
        assert r.status_code == 201, r.text
    ours = {b["title"]: b["digest"][7:] for b in r.json()["blobs"] if b["title"]}
    assert ours == official == {p: sha(d)[7:] for p, d in files.items()}


def test_delete_keeps_the_view_consistent(hub: FakeHub, server: ServerProcess) -> None:
    publish(hub)
    one = f"hf://{hub.host}/org/model/config.json"
    whole = f"hf://{hub.host}/org/model"
    with server.client() as c:
        assert c.post("/content/", json={"url": one}).status_code == 201
        r = c.post("/content/", json={"url": whole})
        assert r.status_code == 201
        snapshot = Path(r.json()["directory"])
        assert (snapshot / "tokenizer.json").exists()
        assert c.delete(f"/content/{b64(whole)}").status_code == 204
        assert (snapshot / "config.json").exists()  # still named by the single-file entry
        assert not (snapshot / "tokenizer.json").exists()
        assert c.delete(f"/content/{b64(one)}").status_code == 204
        assert not snapshot.exists()
