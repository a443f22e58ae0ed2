"""A cache to and from an object store (issue 22, item 4): ``import
bundle.tar`` on a node with --shared-store writes every blob and record to
the store, so another node, its origin gone, serves the URL from there;
``export --to s3://bucket/prefix`` and ``import --from s3://bucket/prefix``
move a whole cache without a tar (objects outside the layout skipped)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3 import MotoS3
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source
from tests.system.test_shared_tier import BUCKET, blob_of, keys, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def prefix() -> str:
    return "copy-" + uuid.uuid4().hex[:12]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def node(path: Path, moto: MotoS3, *args: str) -> ServerProcess:
    return ServerProcess(
        path, "--s3-addressing-style", "path", "--retries", "0", *args, env=moto.server_env()
    )


def cli(moto: MotoS3, cache: Path, *args: str) -> Any:
    done = run_cli(*args, "--cache-dir", str(cache), "--json", env=moto.server_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def post(srv: ServerProcess, url: str, digest: str | None = None) -> dict[str, object]:
    with srv.client() as c:
        r = c.post("/content/", json={"url": url, **({"digest": digest} if digest else {})})
    assert r.status_code in (200, 201), r.text
    answer: dict[str, object] = r.json()
    return answer


def refs(moto: MotoS3, prefix: str) -> int:
    return len([k for k in keys(moto, prefix) if k.startswith("refs/")])


def test_an_imported_bundle_goes_to_the_store_for_the_other_nodes(
    tmp_path: Path, moto: MotoS3, prefix: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    store = f"s3://{BUCKET}/{prefix}"
    with Source() as origin:
        origin.add_file("/w.bin", data)
        url = origin.url("/w.bin")
        # A cache outside the cluster: its entry goes into a tar.
        with node(tmp_path / "outside", moto) as outside:
            post(outside, url, sha(data))
        bundle = tmp_path / "bundle.tar"
        cli(moto, tmp_path / "outside", "export", url, "-o", str(bundle))
    # The origin is gone. One node of the cluster imports the tar...
    with node(tmp_path / "a", moto, "--shared-store", store):
        answer = cli(moto, tmp_path / "a", "import", str(bundle))
        assert answer["entries"] == [url]
        wait_for("the blobs and the record", lambda: refs(moto, prefix) == 1)
        assert blob_of(data) in keys(moto, prefix)
    # ...and another, empty, serves the URL from the store (no digest given:
    # only the record says what the URL is).
    with node(tmp_path / "b", moto, "--shared-store", store) as b:
        doc = post(b, url)
        assert doc["source"] == "shared-store"
        assert Path(str(doc["path"])).read_bytes() == data


def test_export_to_and_import_from_a_store_without_a_tar(
    tmp_path: Path, moto: MotoS3, prefix: str
) -> None:
    one, two = os.urandom(1024 * 1024 + 5), os.urandom(2 * 1024 * 1024 + 9)
    store = f"s3://{BUCKET}/{prefix}"
    with Source() as origin:
        origin.add_file("/one.bin", one)
        origin.add_file("/two.bin", two)
        urls = [origin.url("/one.bin"), origin.url("/two.bin")]
        with node(tmp_path / "a", moto) as a:  # no --shared-store: export says where
            post(a, urls[0], sha(one))
            post(a, urls[1])  # no digest known before the download
            exported = cli(moto, tmp_path / "a", "export", "--to", store)
        assert sorted(exported["entries"]) == sorted(urls)
        assert exported["failed"] == []
    assert {blob_of(one), blob_of(two)} <= keys(moto, prefix)
    assert refs(moto, prefix) == 2
    s3 = moto.boto()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/refs/{'0' * 64}", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/refs/not-a-hash", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/elsewhere/thing", Body=b"x")
    # The origin is gone; a new cache (no server running: a private one) imports.
    imported = cli(moto, tmp_path / "b", "import", "--from", store)
    assert sorted(imported["entries"]) == sorted(urls)
    assert imported["failed"] == []
    assert len(imported["skipped"]) == 2
    listed = cli(moto, tmp_path / "b", "ls")
    assert {e["url"] for e in listed} == set(urls)
    for data in (one, two):
        assert (
            tmp_path / "b" / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
        ).read_bytes() == data
