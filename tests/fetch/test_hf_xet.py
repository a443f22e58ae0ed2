"""hf:// pulls of Xet-backed repositories, from the fake Hub answering as the Xet-era Hub
(``FakeHub(xet=True)``, tests/support/hfhub.py): ``/resolve`` of an LFS file carries
``X-Xet-Hash`` and ``Link: <...>; rel="xet-auth"`` and redirects to the Xet bridge
(``cas-bridge.xethub.hf.co`` on the Hub; here another loopback origin).

The node speaks no Xet: as ``huggingface_hub`` does without ``hf_xet``
(huggingface/huggingface_hub ``src/huggingface_hub/file_download.py``, the plain HTTP
branch of ``_download_to_tmp_and_move`` when ``xet_file_data`` is set but Xet is not
available), it follows the bridge redirect, never sends the token there, and still checks
the bytes against the LFS sha256 (``X-Linked-Etag``, the tree's ``lfs.oid``), which the
Xet-era Hub keeps sending (``get_hf_file_metadata`` reads it the same way).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import b64
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess

TOKEN = "hf_test_token"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(xet=True) as fake:
        fake.tokens.add(TOKEN)
        yield fake


def publish(hub: FakeHub) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "weights/model-00001.safetensors": os.urandom(700_000),
        "weights/model-00002.safetensors": os.urandom(300_000),
        "gguf/tiny-Q2_K.gguf": os.urandom(200_000),
    }
    hub.add_repo("org/model", private=True)
    for path, data in files.items():
        hub.add_file("org/model", path, data)
    hub.commit("org/model", tag="v1.0")
    return files


def test_xet_backed_files_come_through_the_bridge(hub: FakeHub, server: ServerProcess) -> None:
    files = publish(hub)
    one = f"hf://{hub.host}/org/model/gguf/tiny-Q2_K.gguf"
    whole = f"hf://{hub.host}/org/model@v1.0"
    with server.client() as c:
        r = c.post("/content/", json={"url": one, "credentials": TOKEN})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == sha(files["gguf/tiny-Q2_K.gguf"])
        assert Path(body["path"]).read_bytes() == files["gguf/tiny-Q2_K.gguf"]
        r = c.post("/content/", json={"url": whole, "credentials": TOKEN})
        assert r.status_code == 201, r.text
        blobs = {b["title"]: b for b in r.json()["blobs"]}
    assert set(blobs) == set(files)
    for path, data in files.items():
        assert blobs[path]["digest"] == sha(data), path
        assert Path(blobs[path]["path"]).read_bytes() == data
    # Every LFS file came from the bridge (the gguf once: the second pull reused it),
    # without the token; the CDN of the LFS era was never asked.
    lfs = hub.repo("org/model").commits[hub.repo("org/model").refs["main"]].files
    fetched = {r.route.rsplit("/", 1)[-1] for r in hub.bridge.requests if r.method == "GET"}
    assert fetched == {f.xet_hash for f in lfs.values() if f.lfs}
    assert all("authorization" not in r.headers for r in hub.bridge.requests)
    assert all(r.status in (200, 206) for r in hub.bridge.requests)
    assert not hub.cdn.requests
    assert TOKEN not in server.log()


def test_a_bridge_serving_wrong_bytes_is_rejected(hub: FakeHub, server: ServerProcess) -> None:
    files = publish(hub)
    hub.bridge.serve_wrong_bytes = True
    url = f"hf://{hub.host}/org/model/weights/model-00002.safetensors"
    with server.client() as c:
        r = c.post("/content/", json={"url": url, "credentials": TOKEN})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "DIGEST_MISMATCH", r.text
        r = c.get(f"/content/{b64(url)}")
        assert r.status_code != 200 and r.json()["error"]["code"] == "DIGEST_MISMATCH"
    wanted = hashlib.sha256(files["weights/model-00002.safetensors"]).hexdigest()
    assert not list(server.cache_dir.rglob(wanted))  # nothing stored under the file's digest
    assert any(r.method == "GET" for r in hub.bridge.requests)
    # Fixed bridge: the same pull now succeeds, with the right bytes.
    hub.bridge.serve_wrong_bytes = False
    with server.client() as c:
        r = c.post("/content/", json={"url": url, "credentials": TOKEN})
        assert r.status_code == 201, r.text
        assert Path(r.json()["path"]).read_bytes() == files["weights/model-00002.safetensors"]


def test_a_cut_on_the_bridge_resumes_with_a_range(hub: FakeHub, server: ServerProcess) -> None:
    files = publish(hub)
    data = files["weights/model-00001.safetensors"]
    hub.bridge.interrupt_next(250_000)
    url = f"hf://{hub.host}/org/model/weights/model-00001.safetensors"
    with server.client() as c:
        r = c.post("/content/", json={"url": url, "credentials": TOKEN})
        assert r.status_code == 201, r.text
        assert Path(r.json()["path"]).read_bytes() == data
    gets = [r for r in hub.bridge.requests if r.method == "GET"]
    assert len(gets) == 2, gets
    assert gets[1].headers.get("range", "").startswith("bytes=") and gets[1].status == 206
    assert all("authorization" not in r.headers for r in gets)
