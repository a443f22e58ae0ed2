"""Air-gapped nodes and the shared store's records (issue 22, items 4 and 5).

One node pulls an image and an hf repository while their origins are up
and writes them back; then the registry and the Hub are gone, and new, empty
nodes with the same --shared-store serve ``POST oci://``, ``POST hf://`` and
containerd's ``/v2`` pulls from the store alone, each answer saying so
(``"source": "shared-store"`` and the record's age). With the origin
reachable, a moved tag is resolved there and the record is not used. A
record that is not one, or is another URL's, is ignored.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.hfhub import FakeHub
from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.s3 import MotoS3
from tests.support.server import ServerProcess
from tests.system.test_array_schemes import NODE, pull_through
from tests.system.test_shared_tier import BUCKET, keys, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def prefix() -> str:
    return "gap-" + uuid.uuid4().hex[:12]


def node(tmp_path: Path, name: str, moto: MotoS3, prefix: str, *args: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / name,
        "--shared-store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-addressing-style",
        "path",
        "--retries",
        "0",
        *args,
        env=moto.server_env(),
    )


def post(srv: ServerProcess, url: str) -> Any:
    with srv.client() as c:
        return c.post("/content/", json={"url": url})


def records(moto: MotoS3, prefix: str) -> int:
    return len([k for k in keys(moto, prefix) if k.startswith("refs/")])


def settled(moto: MotoS3, prefix: str, srv: ServerProcess, count: int) -> None:
    wait_for("the records", lambda: records(moto, prefix) >= count)
    wait_for(
        "the write-back queue to empty",
        lambda: not list((srv.cache_dir / "shared-uploads").glob("*.json")),
    )


def files_of(doc: dict[str, Any]) -> dict[str, bytes]:
    return {b["digest"]: Path(b["path"]).read_bytes() for b in doc["blobs"]}


def push_image(reg: Registry, repo: str, tag: str, seed: int) -> Blobs:
    blobs = Blobs()
    here = blobs.image(NODE.architecture, layers=[random_bytes(3_000_000, seed), b"small"])
    other = blobs.image("s390x" if NODE.architecture != "s390x" else "amd64")
    push_image_tree(reg.url, repo, blobs, blobs.index([here, other]), tag)
    return blobs


def test_new_nodes_serve_oci_hf_and_v2_from_the_store_with_the_origins_gone(
    tmp_path: Path, moto: MotoS3, prefix: str
) -> None:
    lfs = os.urandom(2_000_000)
    with Registry(tmp_path / "registry") as reg, FakeHub() as hub:
        push_image(reg, "team/app", "v1", 31)
        hub.add_repo("org/model")
        hub.add_file("org/model", "model.safetensors", lfs)
        hub.add_file("org/model", "config.json", b'{"model_type": "llama"}\n')
        hub.commit("org/model")
        host = hub.host
        registry = reg.host
        oci_url, hf_url = f"oci://{registry}/team/app:v1", f"hf://{host}/org/model"
        with node(tmp_path, "a", moto, prefix) as a:
            first_oci, first_hf = post(a, oci_url), post(a, hf_url)
            assert first_oci.status_code == 201, first_oci.text
            assert first_hf.status_code == 201, first_hf.text
            assert "source" not in first_oci.json()
            settled(moto, prefix, a, 2)
    # The registry and the Hub are gone: only the store is left.
    with node(tmp_path, "b", moto, prefix, "--mirror", "--upstream", registry) as b:
        r = post(b, oci_url)
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["source"] == "shared-store"
        assert doc["recordAgeSeconds"] >= 0
        assert doc["recordWrittenAt"].endswith("Z")
        assert doc["manifestDigest"] == first_oci.json()["manifestDigest"]
        assert files_of(doc) == files_of(first_oci.json())
        r = post(b, hf_url)
        assert r.status_code == 201, r.text
        assert r.json()["source"] == "shared-store"
        assert files_of(r.json()) == files_of(first_hf.json())
        assert hashlib.sha256(lfs).hexdigest() in {d.split(":")[1] for d in files_of(r.json())}
        assert "copied from the shared store" in b.log()
        # The node did not write its copies back (the records keep their writer's time).
        assert records(moto, prefix) == 2
    with node(tmp_path, "c", moto, prefix, "--mirror", "--upstream", registry) as c:
        pulled = pull_through(c, "team/app", "v1")
        assert pulled
        assert "asking the shared store" in c.log()


def test_a_moved_tag_is_resolved_at_the_origin_when_it_is_reachable(
    tmp_path: Path, moto: MotoS3, prefix: str
) -> None:
    with Registry(tmp_path / "registry") as reg:
        push_image(reg, "team/moving", "latest", 41)
        url = f"oci://{reg.host}/team/moving:latest"
        with node(tmp_path, "a", moto, prefix) as a:
            old = post(a, url)
            assert old.status_code == 201, old.text
            settled(moto, prefix, a, 1)
        push_image(reg, "team/moving", "latest", 42)  # the tag moves
        with node(tmp_path, "b", moto, prefix) as b:
            new = post(b, url)
            assert new.status_code == 201, new.text
            assert new.json()["manifestDigest"] != old.json()["manifestDigest"]
            assert "source" not in new.json()
            settled(moto, prefix, b, 1)  # its record replaces the older one
    # With the registry gone, a new node has only the record (the latest one
    # written), and the answer says where it came from.
    with node(tmp_path, "c", moto, prefix) as c:
        r = post(c, url)
        assert r.status_code == 201, r.text
        assert r.json()["source"] == "shared-store"
        assert r.json()["manifestDigest"] == new.json()["manifestDigest"]


def test_records_that_are_not_records_are_ignored(
    tmp_path: Path, moto: MotoS3, prefix: str
) -> None:
    from proxy.shared.location import ref_key

    s3 = moto.boto()
    url = "oci://127.0.0.1:9/team/gone:v1"  # nothing listens there
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{ref_key(url)}", Body=b"not a record")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/refs/../../escape", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/unrelated/object", Body=b"x")
    with node(tmp_path, "a", moto, prefix) as a:
        r = post(a, url)
        assert r.status_code == 502, r.text
        assert "is not a record" in a.log()
