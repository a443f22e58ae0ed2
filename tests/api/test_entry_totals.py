"""An entry of several files (a file:// directory, an image) is described as
a whole: ``digest`` is its manifest, ``size`` the sum of its files,
``fileCount`` their number, and ``blobs`` lists each file with its digest and
path; ``ls`` shows the total and ``inspect`` the files. A single file keeps
the README's answer (digest, path and size of the file itself)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.fetch.ociref import Platform
from proxy.units import human_size as _size
from tests.conftest import b64
from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess, run_cli

FILES = {"config.json": b'{"a": 1}\n', "model.bin": b"m" * 300_000, "sub/tok.txt": b"tokens\n"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":", 1)[1]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "model"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def cli(srv: ServerProcess, *args: str) -> str:
    address = srv.base_url.removeprefix("http://")
    r = run_cli(*args, "--address", address, "--cache-dir", str(srv.cache_dir))
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_directory_answer(body: dict[str, Any], cache: Path) -> None:
    assert body["state"] == "complete"
    assert body["fileCount"] == 3
    assert body["size"] == body["bytesDone"] == sum(len(d) for d in FILES.values())
    # The entry is named by its manifest, as DESIGN.md says for multi-file entries.
    assert body["digest"] == body["manifestDigest"]
    manifest = json.loads(blob_path(cache, body["digest"]).read_bytes())
    assert Path(body["path"]) == blob_path(cache, body["digest"])
    assert [
        layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]
    ] == sorted(FILES)
    blobs = {b["title"]: b for b in body["blobs"]}
    assert set(blobs) == set(FILES)
    for name, data in FILES.items():
        assert blobs[name]["digest"] == sha(data)
        assert blobs[name]["size"] == len(data)
        assert Path(blobs[name]["path"]).read_bytes() == data


def test_a_directory_is_one_entry_with_its_total(
    cache_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    url = model_dir.as_uri() + "/"
    args = ("--allow-file-import", str(tmp_path / "src"))
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        check_directory_answer(r.json(), cache_dir)
        check_directory_answer(c.get(f"/content/{b64(url)}").json(), cache_dir)
        listed = {e["url"]: e for e in c.get("/content/").json()["entries"]}
        check_directory_answer(listed[url], cache_dir)
        table = cli(srv, "ls")
        assert _size(sum(len(d) for d in FILES.values())) in table  # the whole directory
        for command in ("inspect", "pull"):
            shown = cli(srv, command, url)
            for name, data in FILES.items():
                assert f"{name} {sha(data)} {_size(len(data))}" in shown
        assert f"{_size(sum(len(d) for d in FILES.values()))} in 3 files" in shown
    # The same after a restart (the entry as read back from index.json).
    with ServerProcess(cache_dir, *args) as srv, srv.client() as c:
        check_directory_answer(c.get(f"/content/{b64(url)}").json(), cache_dir)


def test_a_single_file_keeps_its_own_digest_path_and_size(
    cache_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    url = (model_dir / "model.bin").as_uri()
    data = FILES["model.bin"]
    with (
        ServerProcess(cache_dir, "--allow-file-import", str(tmp_path / "src")) as srv,
        srv.client() as c,
    ):
        body = c.post("/content/", json={"url": url}).json()
        assert (body["digest"], body["size"], body["fileCount"]) == (sha(data), len(data), 1)
        assert body["digest"] != body["manifestDigest"]
        assert Path(body["path"]) == blob_path(cache_dir, sha(data))
        assert [b["digest"] for b in body["blobs"]] == [sha(data)]


def test_an_image_reports_every_blob_and_its_total(registry: Registry, cache_dir: Path) -> None:
    blobs = Blobs()
    layers = [random_bytes(2 * 1024 * 1024, 1), random_bytes(700_000, 2)]
    image = blobs.image(Platform.running().architecture, layers=layers)
    push_image_tree(registry.url, "totals/img", blobs, image, "v1")
    manifest = json.loads(blobs.bytes_of(image["digest"]))
    parts = [image, manifest["config"], *manifest["layers"]]
    url = f"oci://{registry.host}/totals/img:v1"
    with ServerProcess(cache_dir, "--retries", "1") as srv, srv.client() as c:
        body = c.post("/content/", json={"url": url}).json()
        assert body["digest"] == body["manifestDigest"] == image["digest"]
        # manifest + config + layers: everything the entry keeps in the cache
        assert body["size"] == sum(p["size"] for p in parts) > 2_700_000
        assert body["fileCount"] == 4
        assert {b["digest"]: b["size"] for b in body["blobs"]} == {
            p["digest"]: p["size"] for p in parts
        }
        for b in body["blobs"]:
            assert Path(b["path"]).read_bytes() == blobs.bytes_of(b["digest"])
        assert c.get(f"/content/{b64(url)}").json()["size"] == body["size"]
        assert _size(body["size"]) in cli(srv, "ls")
