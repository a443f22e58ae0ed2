"""Every scheme whose digest is known before the download goes through the
blob's owner (issue 21, item 2): three nodes (real server processes on
127.0.0.1..3, each its own cache) POST the same ``oci://``, ``hf://``,
``ollama://``, ``s3://``, ``gs://`` or ``azure://`` URL at once, or pull the
same image through ``/v2`` in mirror mode; each blob of known digest leaves
its origin once (to its owner, which streams it to the others), each file of
unknown digest once per node, and every node ends with the origin's bytes.

``storage_manager_origin_bytes_total`` counts the bodies that ``download()``
takes from an origin; metadata read whole (manifests, tags, listings, hf
revisions) is not counted: each node resolves it at the origin as before."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from proxy.fetch.ociref import Platform
from tests.fetch.test_oci_registry import registry_gets
from tests.support import gcs
from tests.support.azure import Azurite, binary
from tests.support.gcs import GcsEmulator
from tests.support.hfhub import FakeHub
from tests.support.images import OCI_INDEX, OCI_MANIFEST, Blobs, push_image_tree, random_bytes
from tests.support.ollama_registry import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_TEMPLATE,
    OllamaRegistry,
)
from tests.support.registry import Registry
from tests.support.s3 import MotoS3
from tests.support.server import ServerProcess
from tests.system.test_array_blobs import Array, owner_index, post_all, sha
from tests.system.test_cache_array import metric

pytestmark = pytest.mark.slow

ORIGIN_BYTES = "storage_manager_origin_bytes_total"
NODE = Platform.running()


def blob_of(srv: ServerProcess, digest: str) -> bytes:
    return (srv.cache_dir / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def post_same(array: Array, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST ``body`` to every node at once: all 201, all the same digest."""
    answers = post_all(array.nodes, body)
    for r in answers:
        assert r.status_code == 201, r.text
    docs: list[dict[str, Any]] = [r.json() for r in answers]
    assert len({d["digest"] for d in docs}) == 1, docs
    return docs


def assert_through_owner(
    array: Array, known: Mapping[str, bytes], unknown: Mapping[str, bytes] | None = None
) -> None:
    """Every node holds every blob with the origin's bytes; the origin sent
    each blob of ``known`` digest once (to its owner, who passed it on) and
    each of ``unknown`` digest once to every node; every other node says it
    had the known ones from the owner."""
    unknown = unknown or {}
    for srv in array.nodes:
        for digest, data in {**known, **unknown}.items():
            assert blob_of(srv, digest) == data, digest
    origin = sum(metric(srv, ORIGIN_BYTES) for srv in array.nodes)
    once = sum(len(data) for data in known.values())
    everywhere = len(array.nodes) * sum(len(data) for data in unknown.values())
    assert origin == once + everywhere
    for digest in known:
        owner = owner_index(array.addresses, digest)
        for i, srv in enumerate(array.nodes):
            if i != owner:
                assert f"{digest} from peer {array.addresses[owner]}" in srv.log(), (i, digest)


def blobs_named(cache: Path, manifest_digest: str) -> dict[str, int]:
    """The config's and the layers' digests and sizes of a manifest in ``cache``."""
    doc = json.loads((cache / "blobs" / "sha256" / manifest_digest.split(":", 1)[1]).read_text())
    return {d["digest"]: d["size"] for d in [doc["config"], *doc["layers"]]}


# -- oci:// ---------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry") as reg:
        yield reg


def push_index(reg: Registry, repo: str) -> tuple[Blobs, dict[str, Any]]:
    """A two-platform index whose image for this machine has a large layer."""
    blobs = Blobs()
    here = blobs.image(NODE.architecture, layers=[random_bytes(6_000_000, 21), b"small layer"])
    other = blobs.image("s390x" if NODE.architecture != "s390x" else "amd64")
    push_image_tree(reg.url, repo, blobs, blobs.index([here, other]), "v1")
    return blobs, here


def test_oci_layers_and_config_come_through_their_owner(tmp_path: Path, registry: Registry) -> None:
    blobs, here = push_index(registry, "team/app")
    with Array(tmp_path, 3) as array:
        post_same(array, {"url": f"oci://{registry.host}/team/app:v1"})
        named = blobs_named(array.nodes[0].cache_dir, here["digest"])
        # The image's manifest, named by digest in the index, is a blob of known digest too.
        known = [*named, here["digest"]]
        assert_through_owner(array, {d: blobs.bytes_of(d) for d in known})
    for digest in named:
        assert registry_gets(registry, f"/blobs/{digest}") == 1, digest


def test_an_oci_manifest_by_digest_comes_through_its_owner(
    tmp_path: Path, registry: Registry
) -> None:
    _, here = push_index(registry, "team/idx")
    with Array(tmp_path, 3) as array:
        post_same(array, {"url": f"oci://{registry.host}/team/idx:v1"})
    assert registry_gets(registry, f"/manifests/{here['digest']}") == 1


# -- mirror mode (containerd's /v2 requests) ---------------------------------------------


def pull_through(srv: ServerProcess, repo: str, tag: str) -> dict[str, bytes]:
    """What containerd asks of its mirror: the manifest by tag, then by digest,
    then the config and every layer; the blobs by digest."""
    accept = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
    got: dict[str, bytes] = {}
    with srv.client() as c:
        top = c.get(f"/v2/{repo}/manifests/{tag}", headers=accept)
        assert top.status_code == 200, top.text
        child = next(
            m for m in top.json()["manifests"] if m["platform"]["architecture"] == NODE.architecture
        )
        manifest = c.get(f"/v2/{repo}/manifests/{child['digest']}", headers=accept)
        assert manifest.status_code == 200, manifest.text
        doc = manifest.json()
        for desc in [doc["config"], *doc["layers"]]:
            r = c.get(f"/v2/{repo}/blobs/{desc['digest']}")
            assert r.status_code == 200, r.text
            got[desc["digest"]] = r.content
    return got


def test_mirror_fills_through_three_nodes_come_through_their_owner(
    tmp_path: Path, registry: Registry
) -> None:
    blobs, here = push_index(registry, "team/mirrored")
    with Array(tmp_path, 3, "--mirror", "--upstream", registry.host) as array:
        with ThreadPoolExecutor(3) as pool:
            pulled = list(pool.map(lambda s: pull_through(s, "team/mirrored", "v1"), array.nodes))
        named = blobs_named(array.nodes[0].cache_dir, here["digest"])
        known = {d: blobs.bytes_of(d) for d in named}
        assert all(p == known for p in pulled)
        assert_through_owner(array, known)
    for digest in named:
        assert registry_gets(registry, f"/blobs/{digest}") == 1, digest


# -- hf:// ----------------------------------------------------------------------------------


def test_hf_lfs_files_come_through_their_owner(tmp_path: Path) -> None:
    lfs = {
        "model-00001.safetensors": os.urandom(4_000_000),
        "model-00002.safetensors": os.urandom(1_500_000),
    }
    # Git-stored (non-LFS) files have no sha256 before the download (their id is
    # a git sha1): every node fetches them from the Hub.
    plain = {"config.json": b'{"model_type": "llama"}\n', "tokenizer.json": os.urandom(30_000)}
    with FakeHub() as hub:
        hub.add_repo("org/model")
        for path, data in {**lfs, **plain}.items():
            hub.add_file("org/model", path, data)
        hub.commit("org/model", tag="v1.0")
        host = hub.host
        with Array(tmp_path, 3) as array:
            post_same(array, {"url": f"hf://{host}/org/model@v1.0"})
            assert_through_owner(
                array,
                {sha(d): d for d in lfs.values()},
                {sha(d): d for d in plain.values()},
            )
        cdn_gets = [q for q in hub.cdn.requests if q.method == "GET"]
        assert len(cdn_gets) == len(lfs)


# -- ollama:// ------------------------------------------------------------------------------


def test_ollama_layers_come_through_their_owner(tmp_path: Path) -> None:
    layers = [
        (MEDIA_TYPE_MODEL, os.urandom(5_000_000)),
        (MEDIA_TYPE_TEMPLATE, b"{{ .Prompt }}"),
        (MEDIA_TYPE_LICENSE, b"a license"),
    ]
    config = json.dumps({"model_format": "gguf", "rootfs": {"type": "layers"}}).encode()
    with OllamaRegistry() as ollama:
        ollama.add_model("library", "tiny", "latest", layers, config)
        with Array(tmp_path, 3) as array:
            post_same(array, {"url": f"ollama://{ollama.host}/tiny"})
            known = {sha(data): data for _, data in layers} | {sha(config): config}
            assert_through_owner(array, known)


# -- object stores ----------------------------------------------------------------------------


def test_s3_objects_with_a_checksum_come_through_their_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = os.urandom(6_000_000)
    small = b'{"layers": 2}'  # stored without a checksum: unknown until fetched
    with MotoS3() as moto:
        s3 = moto.boto()
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="m/w.bin", Body=weights, ChecksumAlgorithm="SHA256")
        s3.put_object(Bucket="models", Key="m/config.json", Body=small)
        for name, value in moto.server_env().items():
            monkeypatch.setenv(name, value)  # every node's process inherits it
        with Array(tmp_path, 3) as array:
            post_same(array, {"url": "s3://models/m/"})
            assert_through_owner(array, {sha(weights): weights}, {sha(small): small})
        gets = [t for m, t, _ in moto.requests() if m == "GET" and "/m/w.bin" in t]
        assert len(gets) == 1


def test_s3_object_without_a_checksum_and_a_posted_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5_000_000)
    with MotoS3() as moto:
        s3 = moto.boto()
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="plain.bin", Body=data)
        for name, value in moto.server_env().items():
            monkeypatch.setenv(name, value)
        with Array(tmp_path, 3) as array:
            post_same(array, {"url": "s3://models/plain.bin", "digest": sha(data)})
            assert_through_owner(array, {sha(data): data})


@pytest.mark.skipif(not gcs.available(), reason="gcp-storage-emulator is not installed")
def test_gs_object_with_a_posted_digest_comes_through_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5_000_000)
    with GcsEmulator() as emu:
        emu.create_bucket("models")
        emu.put("models", "w.bin", data)
        for name, value in emu.server_env().items():
            monkeypatch.setenv(name, value)
        with Array(tmp_path, 3) as array:
            post_same(array, {"url": "gs://models/w.bin", "digest": sha(data)})
            assert_through_owner(array, {sha(data): data})


@pytest.mark.skipif(binary() is None, reason="azurite-blob is not installed")
def test_azure_blob_with_a_posted_digest_comes_through_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5_000_000)
    with Azurite() as azurite:
        azurite.create_container("models")
        azurite.put("models", "w.bin", data)
        for name, value in azurite.server_env().items():
            monkeypatch.setenv(name, value)
        with Array(tmp_path, 3) as array:
            url = f"azure://{azurite.account}/models/w.bin"
            post_same(array, {"url": url, "digest": sha(data)})
            assert_through_owner(array, {sha(data): data})
