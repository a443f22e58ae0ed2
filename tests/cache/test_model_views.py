"""Model directories (issue 23, items 1 and 3): every entry with named files
is a directory of real file names under ``<cache>/views/models``.

The model is a CNCF ModelPack artifact pushed to a real docker-registry with
oras-py: raw layers placed by ``org.cncf.model.filepath``, and ``tar``,
``tar+gzip`` and ``tar+zstd`` layers unpacked at the directory's root. The
media types, the annotation and the config's schema are those of
``modelpack/model-spec`` (``specs-go/v1/mediatype.go``,
``specs-go/v1/annotations.go``, ``specs-go/v1/config.go``,
``schema/config-schema.json``). The directory is then loaded with the real
libraries: ``safetensors`` (numpy) for the weights, ``transformers``'
``AutoConfig`` and ``AutoTokenizer`` for the small files made here (no hub).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zstandard
from safetensors.numpy import save

from tests.conftest import b64
from tests.support.registry import Registry
from tests.support.server import ServerProcess, run_cli

MP = "application/vnd.cncf.model"
ARTIFACT_TYPE = f"{MP}.manifest.v1+json"
CONFIG_TYPE = f"{MP}.config.v1+json"
FILEPATH = "org.cncf.model.filepath"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], compression: str = "") -> bytes:
    """A tar (``compression``: "", "gzip" or "zstd") of files, or of prepared headers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(m[1]))
    raw = buf.getvalue()
    if compression == "gzip":
        import gzip

        return gzip.compress(raw)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def push_artifact(
    registry: Registry,
    repo_tag: str,
    layers: list[tuple[str, bytes, dict[str, str]]],
    config: bytes,
    tmp: Path,
) -> str:
    """Push a ModelPack manifest (``artifactType``, config, layers in order)
    with oras-py's blob and manifest uploads; return the manifest's digest."""
    import oras.client

    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    container = client.get_container(f"{registry.host}/{repo_tag}")

    def upload(media_type: str, data: bytes, annotations: dict[str, str]) -> dict[str, Any]:
        path = tmp / _sha(data).replace(":", "-")
        path.write_bytes(data)
        desc: dict[str, Any] = {"mediaType": media_type, "digest": _sha(data), "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        r = client.upload_blob(str(path), container, desc)
        assert r.status_code in (200, 201), r.text
        return desc

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": upload(CONFIG_TYPE, config, {}),
        "layers": [upload(mt, data, ann) for mt, data, ann in layers],
    }
    r = client.upload_manifest(manifest, container)
    assert r.status_code == 201, r.text
    head = httpx.head(
        f"{registry.url}/v2/{repo_tag.replace(':', '/manifests/')}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    return str(head.headers["docker-content-digest"])


def small_model() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Files of a tiny GPT-2: two safetensors shards, config, tokenizer, README."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = np.random.default_rng(23)
    t1 = {"wte.weight": rng.standard_normal((3, 8)).astype(np.float32)}
    t2 = {"h.0.attn.bias": rng.standard_normal((8,)).astype(np.float32)}
    config = {
        "model_type": "gpt2",
        "n_layer": 1,
        "n_embd": 8,
        "n_head": 2,
        "vocab_size": 3,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    files = {
        "model-00001-of-00002.safetensors": save(t1),
        "model-00002-of-00002.safetensors": save(t2),
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": tok.to_str().encode(),
        "tokenizer_config.json": json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
        ).encode(),
        "README.md": b"# tiny\n",
        "extra/notes.txt": b"notes\n",
    }
    return files, {**t1, **t2}


MODEL_CONFIG = {
    "descriptor": {"name": "tiny-gpt2", "family": "gpt2", "version": "1"},
    "modelfs": {"type": "layers", "diffIds": []},
    "config": {
        "architecture": "transformer",
        "format": "safetensors",
        "paramSize": "1k",
        "precision": "float32",
    },
}


def modelpack_layers(files: dict[str, bytes]) -> list[tuple[str, bytes, dict[str, str]]]:
    """Raw weights and config by path; tokenizer in tar+gzip, docs in tar+zstd,
    the second shard in a plain tar under ``weights/`` (as modctl names them)."""

    def raw(kind: str, name: str, path: str | None = None) -> tuple[str, bytes, dict[str, str]]:
        return (f"{MP}.{kind}.v1.raw", files[name], {FILEPATH: path or name})

    shard2 = "model-00002-of-00002.safetensors"
    return [
        raw("weight", "model-00001-of-00002.safetensors"),
        raw("weight.config", "config.json"),
        (
            f"{MP}.weight.config.v1.tar+gzip",
            tar_bytes([(n, files[n]) for n in ("tokenizer.json", "tokenizer_config.json")], "gzip"),
            {FILEPATH: "tokenizer.json"},
        ),
        (
            f"{MP}.doc.v1.tar+zstd",
            tar_bytes(
                [("./README.md", files["README.md"]), ("extra/notes.txt", b"notes\n")], "zstd"
            ),
            {FILEPATH: "README.md"},
        ),
        (
            f"{MP}.weight.v1.tar",
            tar_bytes([(f"weights/{shard2}", files[shard2])]),
            {FILEPATH: f"weights/{shard2}"},
        ),
    ]


def test_modelpack_artifact_loads_from_its_directory(
    registry: Registry, server: ServerProcess, cache_dir: Path, tmp_path: Path
) -> None:
    files, tensors = small_model()
    layers = modelpack_layers(files)
    config = json.dumps(
        {**MODEL_CONFIG, "modelfs": {"type": "layers", "diffIds": [_sha(d) for _, d, _ in layers]}}
    ).encode()
    digest = push_artifact(registry, "models/tiny:v1", layers, config, tmp_path)
    url = f"oci://{registry.host}/models/tiny:v1"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
    assert body["manifestDigest"] == digest
    assert body["kind"] == "modelpack"
    assert body["modelpack"] == {
        "architecture": "transformer",
        "format": "safetensors",
        "paramSize": "1k",
        "precision": "float32",
        "name": "tiny-gpt2",
        "family": "gpt2",
        "version": "1",
    }
    directory = Path(body["directory"])
    assert directory == cache_dir / "views" / "models" / digest.split(":", 1)[1]
    # Raw layers are links into blobs/; tar layers are unpacked files.
    first = directory / "model-00001-of-00002.safetensors"
    assert first.is_symlink()
    assert first.resolve() == (cache_dir / "blobs/sha256" / _sha(first.read_bytes())[7:]).resolve()
    assert not (directory / "tokenizer.json").is_symlink()
    got = {
        str(p.relative_to(directory)): p.read_bytes()
        for p in directory.rglob("*")
        if not p.is_dir()
    }
    expected = {k: v for k, v in files.items() if k != "model-00002-of-00002.safetensors"}
    expected["weights/model-00002-of-00002.safetensors"] = files["model-00002-of-00002.safetensors"]
    assert got == expected

    # The libraries load the model from the directory, by name.
    from safetensors import safe_open

    loaded: dict[str, np.ndarray] = {}
    for shard in (first, directory / "weights" / "model-00002-of-00002.safetensors"):
        with safe_open(str(shard), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                loaded[key] = f.get_tensor(key)
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        np.testing.assert_array_equal(loaded[key], value)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(directory))
    assert (cfg.model_type, cfg.n_embd, cfg.vocab_size) == ("gpt2", 8, 3)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    assert tokenizer("hello world")["input_ids"] == [1, 2]

    # The CLI prints it; du counts the unpacked bytes (not the links).
    out = run_cli("inspect", url, "--cache-dir", str(cache_dir))
    assert out.returncode == 0, out.stderr
    assert str(directory) in out.stdout
    out = run_cli("pull", url, "--cache-dir", str(cache_dir))
    assert out.returncode == 0, out.stderr
    assert f"dir    {directory}" in out.stdout
    unpacked = sum(
        p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink()
    )
    with server.client() as c:
        du = c.get("/admin/du").json()
    assert du["viewBytes"] == unpacked > 0
    assert du["totalBytes"] == du["blobBytes"] + du["ingestBytes"] + unpacked

    # Derived from the entries: a crash mid-build leaves a partial .build-<hex>
    # and no directory; the next start removes the leftover and rebuilds it.
    server.stop()
    shutil.rmtree(directory)
    leftover = directory.parent / f".build-{directory.name}"
    leftover.mkdir()
    (leftover / "config.json").write_bytes(b"partial")
    server.start()
    assert not leftover.exists()
    got_again = {
        str(p.relative_to(directory)): p.read_bytes()
        for p in directory.rglob("*")
        if not p.is_dir()
    }
    assert got_again == expected
    # Removed with the entry.
    with server.client() as c:
        assert c.delete(f"/content/{b64(url)}").status_code == 204
    assert not directory.exists()
    assert list((cache_dir / "views" / "models").iterdir()) == []


def _member(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("../escaped", b"x")], "not a relative path"),
        ([("/tmp/absolute-escape", b"x")], "not a relative path"),
        ([("ok/../../escaped", b"x")], "not a relative path"),
        ([_member("link", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
        ([_member("link", tarfile.SYMTYPE, "inside")], "is a link"),
        ([("inside", b"x"), _member("hard", tarfile.LNKTYPE, "inside")], "is a link"),
        ([_member("dev", tarfile.CHRTYPE)], "special file"),
        ([_member("fifo", tarfile.FIFOTYPE)], "special file"),
        # A link then a file through it: refused at the link already.
        ([_member("d", tarfile.SYMTYPE, ".."), ("d/escaped", b"x")], "is a link"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "inner-dotdot",
        "symlink-out",
        "symlink-in",
        "hardlink",
        "device",
        "fifo",
        "through-link",
    ],
)
def test_unsafe_tar_layers_get_no_directory(
    registry: Registry,
    server: ServerProcess,
    cache_dir: Path,
    tmp_path: Path,
    members: list[tarfile.TarInfo | tuple[str, bytes]],
    reason: str,
) -> None:
    """A tar layer breaking import's rules: the entry is stored, has no
    directory (``directoryError`` says why), nothing is written outside."""
    layers = [
        (f"{MP}.weight.v1.raw", b"weights", {FILEPATH: "w.bin"}),
        (f"{MP}.code.v1.tar", tar_bytes(members), {FILEPATH: "code"}),
    ]
    repo = f"unsafe/{hashlib.sha256(repr(members).encode()).hexdigest()[:12]}:v1"
    push_artifact(registry, repo, layers, json.dumps(MODEL_CONFIG).encode(), tmp_path)
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/{repo}"})
        assert r.status_code == 201, r.text
        body = r.json()
    assert body["directory"] is None
    assert reason in body["directoryError"]
    models = cache_dir / "views" / "models"
    assert list(models.iterdir()) == []  # nor a .build- leftover
    assert not (cache_dir / "views" / "escaped").exists()
    assert not (cache_dir / "views" / "models" / "escaped").exists()
    assert not Path("/tmp/absolute-escape").exists()


def test_unpacked_bytes_are_bounded_by_max_cache_size(
    registry: Registry, cache_dir: Path, tmp_path: Path
) -> None:
    """A gzip bomb: 8 MiB of zeros in a few KiB. The blobs fit in the cache's
    2 MiB; unpacked, they would not: no directory, nothing left behind."""
    bomb = tar_bytes([("zeros.bin", bytes(8 * 1024 * 1024))], "gzip")
    assert len(bomb) < 64 * 1024
    layers = [(f"{MP}.dataset.v1.tar+gzip", bomb, {FILEPATH: "zeros.bin"})]
    push_artifact(registry, "bomb/zeros:v1", layers, json.dumps(MODEL_CONFIG).encode(), tmp_path)
    with ServerProcess(cache_dir, "--max-cache-size", "2M") as srv, srv.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/bomb/zeros:v1"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["directory"] is None
        assert "do not fit" in body["directoryError"]
        assert c.get("/admin/du").json()["viewBytes"] == 0
    assert list((cache_dir / "views" / "models").iterdir()) == []


def test_titled_oras_files_and_plain_file_entries_get_a_directory(
    registry: Registry, server: ServerProcess, cache_dir: Path, tmp_path: Path
) -> None:
    """Not only ModelPack: an oras push's titled layers, and an http file."""
    from tests.support.images import oras_push_artifact

    files = {"a.gguf": b"gguf bytes", "params.json": b"{}"}
    oras_push_artifact(registry.host, "plain/files:v1", files, file_media_type="application/x-x")
    with server.client() as c:
        r = c.post("/content/", json={"url": f"oci://{registry.host}/plain/files:v1"})
        assert r.status_code == 201, r.text
        body = r.json()
    assert body["kind"] == "oci" and "modelpack" not in body
    directory = Path(body["directory"])
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files
    assert all(p.is_symlink() for p in directory.iterdir())


def test_file_directory_gets_a_directory_of_links(cache_dir: Path, tmp_path: Path) -> None:
    """A ``file://`` directory (nested files): the same names, links into blobs/."""
    drop = tmp_path / "drop"
    model = drop / "m"
    (model / "sub").mkdir(parents=True)
    files = {"config.json": b'{"a": 1}', "sub/weights.bin": os.urandom(1000)}
    for name, data in files.items():
        (model / name).write_bytes(data)
    with (
        ServerProcess(cache_dir, "--allow-file-import", str(drop)) as srv,
        srv.client() as c,
    ):
        r = c.post("/content/", json={"url": f"file://{model}"})
        assert r.status_code == 201, r.text
        directory = Path(r.json()["directory"])
    assert directory.parent == cache_dir / "views" / "models"
    got = {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }
    assert got == files
    assert (directory / "sub" / "weights.bin").is_symlink()
