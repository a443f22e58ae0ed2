"""Export to an OCI image layout tarball and import it again: read by skopeo,
every digest checked on import, and the /v2 answers of the new cache
byte-identical to the old one's."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from proxy.fetch.ociref import Platform
from tests.conftest import b64
from tests.support.images import Blobs, digest_of, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source

NODE = Platform.running()


def v2(srv: ServerProcess, name: str, tag: str) -> dict[str, bytes]:
    """Every /v2 answer of one image: the manifest and each blob it names."""
    out = {}
    with srv.client() as c:
        todo = [tag]
        while todo:
            ref = todo.pop()
            r = c.get(f"/v2/{name}/manifests/{ref}")
            if r.status_code == 404 and ref != tag:
                continue  # another platform's manifest: not fetched, not served
            assert r.status_code == 200, r.text
            out[ref] = r.content
            out[ref + " type"] = r.headers["content-type"].encode()
            doc = json.loads(r.content)
            todo += [m["digest"] for m in doc.get("manifests", [])]
            for d in [doc.get("config"), *doc.get("layers", [])]:
                if d:
                    out[d["digest"]] = c.get(f"/v2/{name}/blobs/{d['digest']}").content
    assert len(out) > 2
    return out


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_export_then_import_round_trip(tmp_path: Path, source: Source) -> None:
    data = os.urandom(300_000)
    source.add_file("/m.gguf", data)
    one, two = tmp_path / "one", tmp_path / "two"
    bundle = tmp_path / "bundle.tar"
    with Registry(tmp_path / "registry") as reg:
        blobs = Blobs()
        here = blobs.image(NODE.architecture, layers=[random_bytes(700_000, 5), b"small"])
        there = blobs.image("s390x" if NODE.architecture != "s390x" else "amd64", layers=[b"x"])
        push_image_tree(reg.url, "team/app", blobs, blobs.index([here, there]), "v1")
        image_url = f"oci://{reg.host}/team/app:v1"
        with ServerProcess(one) as srv, srv.client() as c:
            assert c.post("/content/", json={"url": image_url}).status_code == 201
            ref = c.post("/content/", json={"url": source.url("/m.gguf")}).json()["reference"]
            before = v2(srv, "team/app", "v1")
            file_before = v2(srv, *ref.rsplit(":", 1))
            # Export reads the cache beside the running server.
            r = run_cli(
                "export", image_url, ref, "-o", str(bundle), "--cache-dir", str(one), "--json"
            )
            assert r.returncode == 0, r.stderr
            report = json.loads(r.stdout)
            assert report["entries"] == [image_url, source.url("/m.gguf")]
    # A standard layout: skopeo reads it (the index with this node's platform).
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    if shutil.which("umoci"):
        unpacked = tmp_path / "unpacked"
        with tarfile.open(bundle) as tar:
            tar.extractall(unpacked, filter="data")
        r = subprocess.run(
            ["umoci", "ls", "--layout", str(unpacked)], capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == sorted(refs)
    out = tmp_path / "copied"
    r = skopeo("copy", f"oci-archive:{bundle}:{refs[0]}", f"dir:{out}")
    assert r.returncode == 0, r.stderr
    assert digest_of((out / "manifest.json").read_bytes()) == here["digest"]

    # Import into a new cache directory (no server running: a private one creates it).
    assert not two.exists()
    r = run_cli("import", str(bundle), "--cache-dir", str(two), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(report["entries"]) == sorted([image_url, source.url("/m.gguf")])
    assert report["blobsSkipped"] == 0 and report["blobsAdded"] == len(names) - 2
    with ServerProcess(two) as srv, srv.client() as c:
        assert v2(srv, "team/app", "v1") == before
        assert v2(srv, *ref.rsplit(":", 1)) == file_before
        entry = c.get(f"/content/{b64(source.url('/m.gguf'))}").json()
        assert entry["digest"] == digest_of(data) and Path(entry["path"]).read_bytes() == data
        assert c.get(f"/content/{b64(image_url)}").status_code == 200
    # Again: nothing new to write.
    r = run_cli("import", str(bundle), "--cache-dir", str(two), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["blobsAdded"] == 0
    assert not [p for p in (two / "ingest").iterdir() if p.name not in ("small", "unsynced")]
    assert run_cli("verify", "--cache-dir", str(two)).returncode == 0


def test_a_bundle_from_skopeo_and_bad_bundles(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Registry(tmp_path / "registry") as reg:
        blobs = Blobs()
        img = blobs.image(NODE.architecture, layers=[random_bytes(200_000, 9)])
        push_image_tree(reg.url, "lib/tool", blobs, img, "2.0")
        made = tmp_path / "skopeo.tar"
        r = skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://{reg.host}/lib/tool:2.0",
            f"oci-archive:{made}:tool:2.0",
        )
        assert r.returncode == 0, r.stderr
    with ServerProcess(cache) as srv, srv.client() as c:
        r = c.post("/admin/import", content=made.read_bytes())
        assert r.status_code == 200, r.text
        assert r.json()["entries"] == ["oci-layout:tool:2.0"]
        with tarfile.open(made) as tar:
            index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        m = c.get("/v2/tool/manifests/2.0")
        assert m.status_code == 200 and digest_of(m.content) == index["manifests"][0]["digest"]

    # One flipped byte in a blob: refused, nothing added, nothing left over
    # (into an empty cache: blobs already present are skipped, not re-read).
    cache = tmp_path / "empty"
    with ServerProcess(cache) as srv, srv.client() as c:
        raw = bytearray(made.read_bytes())
        with tarfile.open(made) as tar:
            member = next(x for x in tar.getmembers() if x.size == 200_000 or x.size > 100_000)
            raw[member.offset_data + 1000] ^= 0xFF
        before = json.loads((cache / "index.json").read_text())
        blobs_before = sorted(p.name for p in (cache / "blobs" / "sha256").iterdir())
        index_json = json.dumps(before)
        r = c.post("/admin/import", content=bytes(raw))
        assert r.status_code == 502 and r.json()["error"]["code"] == "DIGEST_MISMATCH"
        for bad in (b"not a tar at all", _tar({"hello.txt": b"hi"}), _tar({"oci-layout": b"{}"})):
            r = c.post("/admin/import", content=bad)
            assert r.status_code == 400, r.text
        assert json.dumps(json.loads((cache / "index.json").read_text())) == index_json
        assert sorted(p.name for p in (cache / "blobs" / "sha256").iterdir()) == blobs_before
        assert not [p for p in (cache / "ingest").iterdir() if p.name not in ("small", "unsynced")]


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_post_file_url_of_a_layout_tar_or_directory(tmp_path: Path, source: Source) -> None:
    data = os.urandom(100_000)
    source.add_file("/w.bin", data)
    drop = tmp_path / "drop"
    drop.mkdir()
    with ServerProcess(tmp_path / "one") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/w.bin")}).status_code == 201
    tar = drop / "bundle.tar"
    r = run_cli(
        "export", source.url("/w.bin"), "-o", str(tar), "--cache-dir", str(tmp_path / "one")
    )
    assert r.returncode == 0, r.stderr
    unpacked = drop / "layout"
    with tarfile.open(tar) as t:
        t.extractall(unpacked, filter="data")
    for i, target in enumerate((tar, unpacked)):
        cache = tmp_path / f"c{i}"
        srv = ServerProcess(cache, "--allow-file-import", str(drop))
        with srv, srv.client() as c:
            r = c.post("/content/", json={"url": f"file://{target}"})
            assert r.status_code == 201, r.text
            assert r.json()["kind"] == "oci-layout"
            assert [e["url"] for e in r.json()["imported"]] == [source.url("/w.bin")]
            entry = c.get(f"/content/{b64(source.url('/w.bin'))}").json()
            assert Path(entry["path"]).read_bytes() == data
    # The same rules as any file:// import: outside --allow-file-import it is refused.
    with ServerProcess(tmp_path / "c9") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": f"file://{tar}"}).status_code == 403
