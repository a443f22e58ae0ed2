"""ModelPack out (issue 23, item 4): ``hf://``, ``ollama://``, object-store prefix and
``file://`` entries are served under ``/v2`` as CNCF ModelPack artifacts, and pulled back
with oras-py: every file at its path, byte for byte.

What a ModelPack artifact is comes from ``modelpack/model-spec`` (read with the fetch tool,
commit d78bf32): ``docs/spec.md`` (the manifest: ``artifactType``
``application/vnd.cncf.model.manifest.v1+json``, config
``application/vnd.cncf.model.config.v1+json``, layers
``application/vnd.cncf.model.<kind>.v1.raw``), ``specs-go/v1/annotations.go``
(``org.cncf.model.filepath``, ``org.cncf.model.file.mediatype.untested``) and
``schema/config-schema.json``, copied unchanged to ``tests/support/modelpack_config_schema.json``
and checked here with ``jsonschema`` (draft 2020-12, with format checking).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support.hfhub import FakeHub
from tests.support.ollama_registry import OllamaRegistry
from tests.support.s3 import MotoS3
from tests.support.server import ServerProcess

MP = "application/vnd.cncf.model"
SCHEMA = json.loads(
    (Path(__file__).parents[1] / "support" / "modelpack_config_schema.json").read_text()
)
NAME_ANNOTATION = "io.nekko.storage-manager.modelpack.name"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oras_pull(server: ServerProcess, ref: str, out: Path) -> dict[str, bytes]:
    """``ref`` pulled with oras-py from the server's /v2; the files it wrote, by path."""
    import oras.client

    host = server.base_url.split("://", 1)[1]
    client = oras.client.OrasClient(hostname=host, insecure=True)
    client.pull(target=f"{host}/{ref}", outdir=str(out))
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def check_artifact(server: ServerProcess, ref: str, files: dict[str, bytes]) -> dict[str, Any]:
    """The manifest and config served for ``ref`` are ModelPack's; the config is valid."""
    name, tag = ref.rsplit(":", 1)
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=30) as c:
        r = c.get(
            f"/v2/{name}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 200, r.text
        manifest = r.json()
        assert r.headers["docker-content-digest"] == _sha(r.content)
        config = c.get(f"/v2/{name}/blobs/{manifest['config']['digest']}")
        assert config.status_code == 200
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == f"{MP}.manifest.v1+json"
    assert manifest["config"]["mediaType"] == f"{MP}.config.v1+json"
    assert _sha(config.content) == manifest["config"]["digest"]
    doc = config.json()
    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(doc)
    layers = manifest["layers"]
    paths = {layer["annotations"]["org.cncf.model.filepath"]: layer for layer in layers}
    assert set(paths) == set(files)
    for path, layer in paths.items():
        assert layer["digest"] == _sha(files[path]) and layer["size"] == len(files[path])
        assert layer["mediaType"].startswith(f"{MP}.") and layer["mediaType"].endswith(".v1.raw")
        assert layer["annotations"]["org.opencontainers.image.title"] == path
    assert doc["modelfs"] == {"type": "layers", "diffIds": [x["digest"] for x in layers]}
    assert doc["descriptor"]["name"] == name
    return {"manifest": manifest, "config": doc, "digest": _sha(r.content)}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


def test_hf_repository_served_as_modelpack(
    hub: FakeHub, server: ServerProcess, cache_dir: Path, tmp_path: Path
) -> None:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "tokenizer.json": b'{"version": "1.0"}',
        "README.md": b"# a model\n",
        "weights/model-00001-of-00002.safetensors": os.urandom(1_200_000),
        "weights/model-00002-of-00002.safetensors": os.urandom(300_000),
    }
    hub.add_repo("org/model")
    for path, data in files.items():
        hub.add_file("org/model", path, data)
    commit = hub.commit("org/model", tag="v1.0")
    url = f"hf://{hub.host}/org/model@v1.0"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        assert "hf/org/model" in c.get("/v2/_catalog").json()["repositories"]
        assert c.get("/v2/hf/org/model/tags/list").json()["tags"] == ["v1.0"]
    served = check_artifact(server, "hf/org/model:v1.0", files)
    kinds = {
        x["annotations"]["org.cncf.model.filepath"]: x["mediaType"]
        for x in served["manifest"]["layers"]
    }
    assert kinds["weights/model-00001-of-00002.safetensors"] == f"{MP}.weight.v1.raw"
    assert kinds["config.json"] == f"{MP}.weight.config.v1.raw"
    assert kinds["README.md"] == f"{MP}.doc.v1.raw"
    assert served["config"]["config"] == {"format": "safetensors"}
    assert served["config"]["descriptor"]["revision"] == commit
    assert served["config"]["descriptor"]["sourceURL"] == url
    assert oras_pull(server, "hf/org/model:v1.0", tmp_path / "pulled") == files

    # Written once, stored like any manifest: recorded in index.json, in blobs/, and the
    # same bytes after a restart (and the cache's sweep of unreferenced blobs).
    index = json.loads((cache_dir / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["annotations"][NAME_ANNOTATION] == "hf/org/model:v1.0"
    stored = cache_dir / "blobs" / "sha256" / served["digest"].split(":", 1)[1]
    assert stored.is_file()
    server.stop()
    server.start()
    with server.client() as c:
        assert c.post("/admin/gc").status_code == 200
    assert check_artifact(server, "hf/org/model:v1.0", files)["digest"] == served["digest"]
    assert oras_pull(server, "hf/org/model:v1.0", tmp_path / "again") == files


def test_file_directory_served_as_modelpack(cache_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    model = drop / "tiny"
    (model / "sub").mkdir(parents=True)
    files = {"config.json": b'{"a": 1}', "sub/model.gguf": os.urandom(70_000), "LICENSE": b"MIT"}
    for name, data in files.items():
        (model / name).write_bytes(data)
    with ServerProcess(cache_dir, "--allow-file-import", str(drop)) as srv:
        with srv.client() as c:
            r = c.post("/content/", json={"url": f"file://{model}"})
            assert r.status_code == 201, r.text
        ref = f"file{drop}/tiny:latest".lower()
        served = check_artifact(srv, ref, files)
        assert served["config"]["config"] == {"format": "gguf"}
        assert oras_pull(srv, ref, tmp_path / "pulled") == files


def test_ollama_model_served_as_modelpack(
    server: ServerProcess, cache_dir: Path, tmp_path: Path
) -> None:
    layers = [
        ("application/vnd.ollama.image.model", os.urandom(50_000)),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        ("application/vnd.ollama.image.params", b'{"stop": ["</s>"]}'),
    ]
    with OllamaRegistry() as reg:
        reg.add_model("team", "coder", "q4", layers)
        with server.client() as c:
            r = c.post("/content/", json={"url": f"ollama://{reg.host}/team/coder:q4"})
            assert r.status_code == 201, r.text
    files = {"model.gguf": layers[0][1], "template": layers[1][1], "params.json": layers[2][1]}
    served = check_artifact(server, "ollama/team/coder:q4", files)
    assert served["config"]["config"] == {"format": "gguf"}
    assert oras_pull(server, "ollama/team/coder:q4", tmp_path / "pulled") == files


def test_object_store_prefix_served_as_modelpack(cache_dir: Path, tmp_path: Path) -> None:
    with MotoS3() as moto:
        s3 = moto.boto()
        s3.create_bucket(Bucket="models")
        files = {
            "weights.safetensors": os.urandom(90_000),
            "config.json": b'{"layers": 2}',
            "tok/vocab.txt": b"a\nb\n",
        }
        for key, data in files.items():
            s3.put_object(Bucket="models", Key=f"llama/{key}", Body=data)
        with ServerProcess(cache_dir, env=moto.server_env()) as srv:
            with srv.client() as c:
                r = c.post("/content/", json={"url": "s3://models/llama/"})
                assert r.status_code == 201, r.text
            served = check_artifact(srv, "s3/models/llama:latest", files)
            assert served["config"]["descriptor"]["sourceURL"] == "s3://models/llama/"
            assert oras_pull(srv, "s3/models/llama:latest", tmp_path / "pulled") == files


def test_a_push_cannot_take_a_modelpack_name(hub: FakeHub, cache_dir: Path) -> None:
    hub.add_repo("org/model")
    hub.add_file("org/model", "config.json", b"{}")
    hub.commit("org/model")
    with ServerProcess(cache_dir, "--allow-push") as srv, srv.client() as c:
        r = c.post("/content/", json={"url": f"hf://{hub.host}/org/model"})
        assert r.status_code == 201, r.text
        r = c.post("/v2/hf/org/model/blobs/uploads/")
        assert r.status_code == 403, r.text
        assert "served as ModelPack" in r.text
        assert c.post("/v2/hf/org/other/blobs/uploads/").status_code == 202
