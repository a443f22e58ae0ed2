"""A blob is read as a manifest only when it is no larger than a manifest may
be (4 MiB): at push, at startup and by ``verify`` (issue 18, item 4).

A small index naming a big blob as its child manifest must not make the
server (or ``verify``) read the big blob into memory: the push is refused with
MANIFEST_INVALID, a cache holding such an index starts (and says so), and
``verify`` reports it. Memory is measured as the peak resident set (VmHWM of
the server, and of the ``verify`` process as it ends), which grows by the blob's
size when it is read whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cache.layout import Layout
from proxy.types import (
    ANNOTATION_KIND,
    ANNOTATION_REF_NAME,
    ANNOTATION_URL,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Digest,
)
from tests.support.images import digest_of, random_bytes
from tests.support.server import ServerProcess

MiB = 1024 * 1024
# distribution's limit, stated here rather than imported: the server must not go lower.
MAX_MANIFEST = 4 * MiB
# Big enough that reading it whole shows in the peak RSS beyond any noise.
BIG = 96 * MiB
# A sparse blob for the caches built on disk: no disk space, all of it in memory when read.
HUGE = 768 * MiB


def peak_rss(pid: int) -> int:
    """The peak resident set of a process, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def oci_error(r: httpx.Response) -> str:
    code: str = r.json()["errors"][0]["code"]
    return code


def push_blob(c: httpx.Client, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def index_naming(digest: str, size: int, media_type: str = MEDIA_TYPE_IMAGE_MANIFEST) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_INDEX,
        "manifests": [{"mediaType": media_type, "digest": digest, "size": size}],
    }
    return json.dumps(doc).encode()


def put_manifest(c: httpx.Client, repo: str, tag: str, data: bytes, media_type: str) -> Any:
    return c.put(f"/v2/{repo}/manifests/{tag}", content=data, headers={"Content-Type": media_type})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("bounds") / "cache", "--allow-push") as s:
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def test_an_index_naming_a_big_blob_as_its_child_manifest_is_refused_unread(
    srv: ServerProcess, c: httpx.Client
) -> None:
    data = b"\0" * BIG
    big = push_blob(c, "bounds/big", data)
    del data
    assert srv.proc is not None
    before = peak_rss(srv.proc.pid)
    index = index_naming(big, BIG)
    r = put_manifest(c, "bounds/big", "v1", index, MEDIA_TYPE_IMAGE_INDEX)
    assert r.status_code == 400, r.text
    assert oci_error(r) == "MANIFEST_INVALID"
    assert "at most" in r.json()["errors"][0]["message"]
    grown = peak_rss(srv.proc.pid) - before
    assert grown < BIG // 3, f"the server's peak RSS grew by {grown} bytes"
    # Nothing was stored: no entry, and the index is not served.
    listed = {e["url"] for e in c.get("/content/").json()["entries"]}
    assert "oci-push://bounds/big:v1" not in listed
    assert c.get(f"/v2/bounds/big/manifests/{digest_of(index)}").status_code == 404


def test_a_blob_just_over_the_limit_is_not_a_manifest_and_one_at_it_is(
    c: httpx.Client,
) -> None:
    over = random_bytes(MAX_MANIFEST + 1, 41)
    digest = push_blob(c, "bounds/edge", over)
    r = put_manifest(
        c, "bounds/edge", "over", index_naming(digest, len(over)), MEDIA_TYPE_IMAGE_INDEX
    )
    assert r.status_code == 400, r.text
    assert oci_error(r) == "MANIFEST_INVALID"

    # A 3.9 MB child manifest (the conformance suite pushes such sizes) is
    # read, and its own children are part of the entry.
    layer = random_bytes(1000, 42)
    layer_digest = push_blob(c, "bounds/edge", layer)
    config = b"{}"
    config_digest = push_blob(c, "bounds/edge", config)
    child_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
        "annotations": {"padding": "p" * 3_900_000},
    }
    child = json.dumps(child_doc).encode()
    assert 3_900_000 < len(child) <= MAX_MANIFEST
    child_digest = push_blob(c, "bounds/edge", child)
    index = index_naming(child_digest, len(child))
    r = put_manifest(c, "bounds/edge", "at", index, MEDIA_TYPE_IMAGE_INDEX)
    assert r.status_code == 201, r.text
    entry = next(
        e for e in c.get("/content/").json()["entries"] if e["url"] == "oci-push://bounds/edge:at"
    )
    digests = {b["digest"] for b in entry["blobs"]}
    assert {child_digest, layer_digest, config_digest} <= digests
    r = c.get(f"/v2/bounds/edge/manifests/{child_digest}")
    assert r.status_code == 200
    assert r.content == child


def sparse_blob(layout: Layout, size: int) -> Digest:
    """A blob of ``size`` zero bytes that takes no disk space, under its digest."""
    h = hashlib.sha256()
    chunk = b"\0" * (8 * MiB)
    for _ in range(size // len(chunk)):
        h.update(chunk)
    digest = Digest(h.hexdigest())
    with open(layout.blob_path(digest), "wb") as f:
        f.truncate(size)
    return digest


def cache_with_a_huge_child(root: Path) -> tuple[Layout, Digest, Digest]:
    """A cache whose one entry is an index naming a huge blob as its manifest."""
    layout = Layout(root)
    layout.create()
    huge = sparse_blob(layout, HUGE)
    index = index_naming(str(huge), HUGE)
    top = layout.put_small_blob(index)
    entry = {
        "mediaType": MEDIA_TYPE_IMAGE_INDEX,
        "digest": str(top),
        "size": len(index),
        "annotations": {
            ANNOTATION_URL: "oci-push://bounds/huge:v1",
            ANNOTATION_KIND: "push",
            ANNOTATION_REF_NAME: "bounds/huge:v1",
        },
    }
    layout.write_index({"schemaVersion": 2, "manifests": [entry]})
    return layout, huge, top


def test_a_cache_with_such_an_index_starts_without_reading_the_blob(tmp_path: Path) -> None:
    _, huge, top = cache_with_a_huge_child(tmp_path / "cache")
    for _ in range(2):  # and again at the next start
        with ServerProcess(tmp_path / "cache") as s:
            assert s.proc is not None
            with s.client() as c:
                assert c.get("/healthz").status_code == 200
                # The entry itself is still there, its index served.
                assert c.get(f"/v2/bounds/huge/manifests/{top}").status_code == 200
            peak = peak_rss(s.proc.pid)
            assert peak < HUGE // 2, f"the server's peak RSS was {peak} bytes"
            log = s.log()
        assert str(huge) in log
        assert "more than a manifest may" in log


def test_verify_reports_such_an_index_without_reading_the_blob(tmp_path: Path) -> None:
    layout, huge, _ = cache_with_a_huge_child(tmp_path / "cache")
    env = {k: v for k, v in os.environ.items() if k not in ("CACHE_DIR", "VERBOSE")}
    out_path, err_path, status_path = tmp_path / "out", tmp_path / "err", tmp_path / "status"
    # The peak RSS of verify itself: VmHWM of its own address space, read as it ends
    # (ru_maxrss would carry the test runner's size over from before the exec).
    run_verify = (
        "import runpy, sys\n"
        f"sys.argv = ['storage-manager', 'verify', '--cache-dir', {str(layout.root)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('proxy', run_name='__main__')\n"
        "finally:\n"
        f"    open({str(status_path)!r}, 'w').write(open('/proc/self/status').read())\n"
    )
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.run(
            [sys.executable, "-c", run_verify], stdout=out, stderr=err, env=env, check=False
        )
    assert proc.returncode == 1, err_path.read_text()
    hwm = [x for x in status_path.read_text().splitlines() if x.startswith("VmHWM:")]
    peak = int(hwm[0].split()[1]) * 1024
    assert peak < HUGE // 2, f"verify's peak RSS was {peak} bytes"
    out = out_path.read_bytes()
    report = json.loads(out)
    kinds = {(p["kind"], Path(p["path"]).name) for p in report["problems"]}
    assert kinds == {("manifest", huge.hex)}, report["problems"]
    assert report["blobs"] == 2  # the huge blob was hashed (streamed) like any other


def test_json_nested_too_deeply_is_not_a_manifest(c: httpx.Client) -> None:
    """Within the size limit, a document nested deeper than the JSON parser
    goes is refused like any other non-manifest (it was a 500)."""
    deep = b"[" * 200_000 + b"]" * 200_000
    r = put_manifest(c, "bounds/deep", "v1", deep, MEDIA_TYPE_IMAGE_MANIFEST)
    assert r.status_code == 400, r.text
    assert oci_error(r) == "MANIFEST_INVALID"
    # The same bytes as a blob, asked for as a manifest, or named as one by an index.
    digest = push_blob(c, "bounds/deep", deep)
    r = c.get(f"/v2/bounds/deep/manifests/{digest}")
    assert r.status_code == 404, r.text
    assert oci_error(r) == "MANIFEST_UNKNOWN"
    r = put_manifest(
        c, "bounds/deep", "v2", index_naming(digest, len(deep)), MEDIA_TYPE_IMAGE_INDEX
    )
    assert r.status_code == 201, r.text  # an unreadable child is logged, as before
