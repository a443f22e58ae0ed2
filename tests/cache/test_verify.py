"""``storage-manager verify``: re-hash every blob, check index.json, quarantine."""

from __future__ import annotations

import json
import os
from pathlib import Path

from proxy.fetch.ociref import Platform
from tests.conftest import b64
from tests.support.images import Blobs, digest_of, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source


def verify(cache: Path, *args: str) -> tuple[int, dict]:
    r = run_cli("verify", "--cache-dir", str(cache), "--json", *args, timeout=60)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr}


def flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_finds_corruption_and_quarantine_repairs(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    one, two = os.urandom(300_000), os.urandom(200_000)
    source.add_file("/one.bin", one)
    source.add_file("/two.bin", two)
    with Registry(tmp_path / "registry") as reg:
        # An image index of which only this node's platform is fetched: the
        # other platform's manifest is legitimately absent.
        blobs = Blobs()
        node = Platform.running().architecture
        here = blobs.image(node, layers=[random_bytes(400_000, 3)])
        there = blobs.image("s390x" if node != "s390x" else "amd64", layers=[b"elsewhere"])
        push_image_tree(reg.url, "team/app", blobs, blobs.index([here, there]), "v1")
        with ServerProcess(cache) as srv, srv.client() as c:
            for url in (
                source.url("/one.bin"),
                source.url("/two.bin"),
                f"oci://{reg.host}/team/app:v1",
            ):
                assert c.post("/content/", json={"url": url}).status_code == 201
            # Reading needs no lock: verify runs beside the live server.
            code, report = verify(cache)
            assert code == 0, report
            assert report["ok"] and report["problems"] == []
            assert report["blobs"] >= 8
            assert report["bytes"] >= len(one) + len(two) + 400_000
            # Quarantine changes the cache: not while the server holds it.
            code, report = verify(cache, "--quarantine")
            assert code == 1 and "in use by another storage-manager" in report["stderr"]

    blob_one = cache / "blobs" / "sha256" / digest_of(one).split(":")[1]
    flip_a_byte(blob_one)
    (cache / "blobs" / "sha256" / "not-a-digest").write_bytes(b"?")
    code, report = verify(cache)
    assert code == 1
    kinds = {(p["kind"], Path(p["path"]).name) for p in report["problems"]}
    assert kinds == {("corrupt", blob_one.name), ("stray", "not-a-digest")}, report
    human = run_cli("verify", "--cache-dir", str(cache))
    assert human.returncode == 1
    assert f"corrupt: {blob_one}" in human.stdout and "2 problem(s)" in human.stdout

    code, report = verify(cache, "--quarantine")
    assert code == 1
    assert report["quarantined"] == [str(cache / "quarantine" / blob_one.name)]
    assert report["droppedEntries"] == [source.url("/one.bin")]
    assert not blob_one.exists()
    (cache / "blobs" / "sha256" / "not-a-digest").unlink()
    code, report = verify(cache)
    assert code == 0, report

    # The dropped entry is fetched again; the others were never touched.
    with ServerProcess(cache) as srv, srv.client() as c:
        assert c.get(f"/content/{b64(source.url('/one.bin'))}").status_code == 404
        assert c.get(f"/content/{b64(source.url('/two.bin'))}").status_code == 200
        r = c.post("/content/", json={"url": source.url("/one.bin")})
        assert r.status_code == 201 and r.json()["digest"] == digest_of(one)
    assert blob_one.read_bytes() == one
    code, report = verify(cache)
    assert code == 0, report


def test_verify_reports_a_missing_blob_and_a_bad_index(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    data = os.urandom(50_000)
    source.add_file("/f", data)
    with ServerProcess(cache) as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/f")}).status_code == 201
    blob = cache / "blobs" / "sha256" / digest_of(data).split(":")[1]
    blob.unlink()
    code, report = verify(cache)
    assert code == 1
    assert [(p["kind"], p["path"]) for p in report["problems"]] == [("missing", str(blob))]
    assert source.url("/f") in report["problems"][0]["detail"]
    (cache / "index.json").write_text('{"manifests": ')
    code, report = verify(cache)
    assert code == 1 and report["problems"][0]["kind"] == "index"
    r = run_cli("verify", "--cache-dir", str(tmp_path / "nothing-here"))
    assert r.returncode == 1 and "not a cache directory" in r.stderr
