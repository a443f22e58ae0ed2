"""The file:// importer against the real server process (and its copy routine directly)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout, ingest_key
from proxy.errors import Cancelled, Conflict
from proxy.fetch.file import ARTIFACT_TYPE_DIRECTORY, COPY_CHUNK, FileFetcher, LocalFile
from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":", 1)[1]


def file_url(path: Path, slash: bool = False) -> str:
    return "file://" + quote(str(path)) + ("/" if slash else "")


def ingest_files(cache: Path) -> list[str]:
    """Files under ingest/ but the fsync markers of committed blobs (they come and go)."""
    root = cache / "ingest"
    return sorted(
        str(p.relative_to(cache))
        for p in root.rglob("*")
        if p.is_file() and p.parent != root / "unsynced"
    )


def blob_names(cache: Path) -> set[str]:
    return {p.name for p in (cache / "blobs" / "sha256").iterdir()}


def tree(top: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``top`` except ``skip``: (mode, size, mtime_ns), links not followed."""
    out = {}
    for dirpath, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        for name in [*dirs, *names]:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(top))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def error(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "import"
    d.mkdir()
    return d


@pytest.fixture
def srv(cache_dir: Path, root: Path) -> Iterator[ServerProcess]:
    with ServerProcess(cache_dir, "--allow-file-import", str(root), "--verbose", "1") as s:
        yield s


def test_single_file_round_trip(srv: ServerProcess, root: Path, cache_dir: Path) -> None:
    data = os.urandom(COPY_CHUNK + 12345)  # more than one copy chunk
    src = root / "models" / "model.gguf"
    src.parent.mkdir()
    src.write_bytes(data)
    before = src.stat()
    url = file_url(src)
    with srv.client() as c:
        assert c.get(f"/content/{b64(url)}").status_code == 404
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["url"] == url
        assert body["digest"] == sha(data)
        assert body["state"] == "complete" and body["kind"] == "file"
        assert body["size"] == body["bytesDone"] == len(data)
        assert body["path"] == str(blob_file(cache_dir, sha(data)))
        assert Path(body["path"]).read_bytes() == data
        assert Path(body["path"]).stat().st_mode & 0o222 == 0
        assert [b["title"] for b in body["blobs"]] == ["model.gguf"]
        # /v2 serves the blob and the entry's manifest
        name, tag = body["reference"].rsplit(":", 1)
        blob = c.get(f"/v2/{name}/blobs/{sha(data)}")
        assert blob.status_code == 200 and blob.content == data
        assert blob.headers["Docker-Content-Digest"] == sha(data)
        m = c.get(f"/v2/{name}/manifests/{tag}")
        assert m.status_code == 200
        assert m.headers["Docker-Content-Digest"] == body["manifestDigest"]
        (layer,) = m.json()["layers"]
        assert layer["annotations"]["org.opencontainers.image.title"] == "model.gguf"
        assert layer["digest"] == sha(data) and layer["size"] == len(data)
        # posted again: already there, nothing copied
        r2 = c.post("/content/", json={"url": url, "digest": sha(data)})
        assert r2.status_code == 200 and r2.json()["digest"] == sha(data)
        assert c.get(f"/content/{b64(url)}").status_code == 200
        # file://localhost/ is the same file (another entry, the same blob)
        r3 = c.post("/content/", json={"url": "file://localhost" + quote(str(src))})
        assert r3.status_code == 201 and r3.json()["digest"] == sha(data)
    assert ingest_files(cache_dir) == []
    after = src.stat()
    assert src.read_bytes() == data
    assert (after.st_mtime_ns, after.st_size, after.st_mode) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_mode,
    )


def test_directory_with_subfolders(srv: ServerProcess, root: Path, cache_dir: Path) -> None:
    model = root / "model"
    files = {
        "config.json": b'{"a": 1}',
        "weights/part-00001.safetensors": os.urandom(200_000),
        "weights/part-00002.safetensors": os.urandom(100_000),
        "tokenizer/deep/vocab.txt": b"a\nb\n",
        "a name with spaces?.txt": b"spaces",
    }
    for rel, data in files.items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_bytes(data)
    (model / "empty-dir").mkdir()
    # A link to a file elsewhere inside the allowed root is followed (as in a hub snapshot)...
    (root / "blobs").mkdir()
    (root / "blobs" / "abc").write_bytes(b"linked content")
    (model / "linked.bin").symlink_to("../blobs/abc")
    # ...a FIFO and a dangling link are skipped, a directory link is not descended into.
    os.mkfifo(model / "pipe")
    (model / "dangling").symlink_to("nowhere")
    (model / "dirlink").symlink_to("weights")
    expected = {**files, "linked.bin": b"linked content"}
    with srv.client() as c:
        for url in (file_url(model, slash=True), file_url(model)):
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            body = r.json()
            titles = [b["title"] for b in body["blobs"]]
            assert titles == sorted(expected)
            for b in body["blobs"]:
                assert b["digest"] == sha(expected[b["title"]])
                assert Path(b["path"]).read_bytes() == expected[b["title"]]
            assert body["kind"] == "file"
            assert body["digest"] == body["manifestDigest"]  # a set of files: its manifest
            manifest = json.loads(blob_file(cache_dir, body["manifestDigest"]).read_bytes())
            assert manifest["artifactType"] == ARTIFACT_TYPE_DIRECTORY
            assert [
                layer["annotations"]["org.opencontainers.image.title"]
                for layer in manifest["layers"]
            ] == sorted(expected)
            name, tag = body["reference"].rsplit(":", 1)
            served = c.get(f"/v2/{name}/manifests/{tag}")
            assert served.status_code == 200
            assert served.headers["Docker-Content-Digest"] == body["manifestDigest"]
    assert ingest_files(cache_dir) == []
    assert "skipping pipe (not a regular file)" in srv.log()


def test_identical_file_from_http_is_stored_once(
    srv: ServerProcess, root: Path, cache_dir: Path, source: Source
) -> None:
    data = os.urandom(150_000)
    source.add_file("/m.bin", data)
    (root / "local.bin").write_bytes(data)
    with srv.client() as c:
        r = c.post("/content/", json={"url": source.url("/m.bin")})
        assert r.status_code == 201, r.text
        blob = blob_file(cache_dir, sha(data))
        inode = blob.stat().st_ino
        names = blob_names(cache_dir)
        r2 = c.post("/content/", json={"url": file_url(root / "local.bin")})
        assert r2.status_code == 201, r2.text
        assert r2.json()["digest"] == sha(data) and r2.json()["path"] == str(blob)
        assert blob.stat().st_ino == inode  # the blob already there was kept, not replaced
        new = blob_names(cache_dir) - names
        assert len(new) == 1  # only the file entry's own manifest (another title)
        assert ingest_files(cache_dir) == []
        # the shared blob outlives either entry alone
        assert c.delete(f"/content/{b64(file_url(root / 'local.bin'))}").status_code == 204
        assert blob.read_bytes() == data
        assert c.delete(f"/content/{b64(source.url('/m.bin'))}").status_code == 204
        assert not blob.exists()


def test_expected_digest(srv: ServerProcess, root: Path, cache_dir: Path) -> None:
    data = os.urandom(50_000)
    (root / "f.bin").write_bytes(data)
    url = file_url(root / "f.bin")
    names = blob_names(cache_dir)
    index = (cache_dir / "index.json").read_bytes()
    with srv.client() as c:
        r = c.post("/content/", json={"url": url, "digest": sha(b"something else")})
        status, code, message = error(r)
        assert (status, code) == (502, "DIGEST_MISMATCH"), r.text
        assert sha(data) in message
        assert blob_names(cache_dir) == names
        assert (cache_dir / "index.json").read_bytes() == index
        assert ingest_files(cache_dir) == []
        assert c.get(f"/content/{b64(url)}").status_code == 404
        r2 = c.post("/content/", json={"url": url, "digest": sha(data)})
        assert r2.status_code == 201 and r2.json()["digest"] == sha(data)
        # a directory cannot be checked against one digest
        (root / "d").mkdir()
        (root / "d" / "x").write_bytes(b"x")
        r3 = c.post("/content/", json={"url": file_url(root / "d"), "digest": sha(b"x")})
        assert error(r3)[:2] == (400, "BAD_REQUEST")


def test_refused_paths(srv: ServerProcess, root: Path, tmp_path: Path, cache_dir: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    (root / "escape").symlink_to(outside)
    (root / "passwd").symlink_to("/etc/passwd")
    leaky = root / "leaky"
    (leaky / "sub").mkdir(parents=True)
    (leaky / "ok.txt").write_bytes(b"fine")
    (leaky / "sub" / "up").symlink_to(outside)
    (root / "outdir").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    names = blob_names(cache_dir)
    index = (cache_dir / "index.json").read_bytes()
    denied = [
        file_url(outside),
        "file:///etc/passwd",
        file_url(root / "escape"),
        file_url(root / "passwd"),
        file_url(leaky, slash=True),
        file_url(root / "outdir", slash=True),
        file_url(root) + "/../outside.txt",
        file_url(root) + "/%2e%2e/outside.txt",
        file_url(cache_dir / "index.json"),
        file_url(root / "fifo"),
    ]
    with srv.client() as c:
        for url in denied:
            r = c.post("/content/", json={"url": url})
            assert error(r)[:2] == (403, "DENIED"), (url, r.text)
            assert "secret" not in r.text
        r = c.post("/content/", json={"url": file_url(leaky)})
        assert "leaky/sub/up" in error(r)[2]
        for url in ("file://otherhost/x", "file://otherhost" + quote(str(root / "a"))):
            assert error(c.post("/content/", json={"url": url}))[:2] == (400, "BAD_REQUEST")
        missing = c.post("/content/", json={"url": file_url(root / "missing")})
        assert error(missing)[:2] == (404, "UPSTREAM_NOT_FOUND")
        (root / "empty").mkdir()
        empty = c.post("/content/", json={"url": file_url(root / "empty")})
        assert error(empty)[:2] == (404, "UPSTREAM_NOT_FOUND")
        assert "no regular files" in error(empty)[2]
        # Nothing stored: only the refusals are remembered, with their errors.
        listed = c.get("/content/").json()["entries"]
        assert {(e["state"], e["digest"], e["size"]) for e in listed} == {("failed", None, None)}
        codes = {e["url"]: e["error"]["code"] for e in listed}
        assert codes[file_url(root / "missing")] == "UPSTREAM_NOT_FOUND"
        assert set(codes.values()) == {"DENIED", "UPSTREAM_NOT_FOUND"}
    assert blob_names(cache_dir) == names
    assert (cache_dir / "index.json").read_bytes() == index
    assert ingest_files(cache_dir) == []


def test_cache_directory_is_never_a_source(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"ok")
    with ServerProcess(cache_dir, "--allow-file-import", str(tmp_path)) as s, s.client() as c:
        assert c.post("/content/", json={"url": file_url(tmp_path / "f.txt")}).status_code == 201
        for url in (
            file_url(cache_dir, slash=True),
            file_url(cache_dir / "oci-layout"),
            file_url(tmp_path, slash=True),  # holds the cache
        ):
            r = c.post("/content/", json={"url": url})
            status, code, message = error(r)
            assert (status, code) == (403, "DENIED"), (url, r.text)
            assert "cache directory" in message


def test_disabled_without_allow_file_import(
    server: ServerProcess, tmp_path: Path, cache_dir: Path
) -> None:
    (tmp_path / "f.txt").write_bytes(b"data")
    with server.client() as c:
        r = c.post("/content/", json={"url": file_url(tmp_path / "f.txt")})
        status, code, message = error(r)
        assert (status, code) == (403, "DENIED")
        assert "--allow-file-import" in message
        assert error(c.post("/content/", json={"url": "file:///etc/passwd"}))[0] == 403
    assert ingest_files(cache_dir) == []


def test_nothing_created_outside_the_cache(
    srv: ServerProcess, root: Path, tmp_path: Path, cache_dir: Path
) -> None:
    (root / "a.bin").write_bytes(os.urandom(70_000))
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "b.bin").write_bytes(os.urandom(10_000))
    (root / "d" / "c.bin").write_bytes(b"c")
    before = tree(tmp_path, cache_dir)
    with srv.client() as c:
        assert c.post("/content/", json={"url": file_url(root / "a.bin")}).status_code == 201
        assert c.post("/content/", json={"url": file_url(root / "d", True)}).status_code == 201
        assert c.post("/content/", json={"url": file_url(root / "nope")}).status_code == 404
        r = c.post("/content/", json={"url": file_url(root / "a.bin"), "digest": sha(b"")})
        assert r.status_code == 409  # already cached with another digest
    assert tree(tmp_path, cache_dir) == before


def test_delete_removes_only_unshared_blobs(
    srv: ServerProcess, root: Path, cache_dir: Path
) -> None:
    shared, own = os.urandom(40_000), os.urandom(30_000)
    (root / "d").mkdir()
    (root / "d" / "shared.bin").write_bytes(shared)
    (root / "d" / "own.bin").write_bytes(own)
    (root / "single.bin").write_bytes(shared)
    with srv.client() as c:
        d = c.post("/content/", json={"url": file_url(root / "d", True)})
        assert d.status_code == 201
        s = c.post("/content/", json={"url": file_url(root / "single.bin")})
        assert s.status_code == 201
        dir_manifest = blob_file(cache_dir, d.json()["manifestDigest"])
        assert c.delete(f"/content/{b64(file_url(root / 'd', True))}").status_code == 204
        assert not blob_file(cache_dir, sha(own)).exists()
        assert not dir_manifest.exists()
        assert blob_file(cache_dir, sha(shared)).read_bytes() == shared
        assert c.get(f"/content/{b64(file_url(root / 'single.bin'))}").status_code == 200
        assert c.delete(f"/content/{b64(file_url(root / 'single.bin'))}").status_code == 204
    assert blob_names(cache_dir) == set()
    # the sources are untouched
    assert (root / "d" / "own.bin").read_bytes() == own
    assert (root / "single.bin").read_bytes() == shared


def test_delete_during_import_stops_the_copy(
    srv: ServerProcess, root: Path, cache_dir: Path
) -> None:
    big = root / "big.bin"
    with open(big, "wb") as f:
        f.truncate(1024 * 1024 * 1024)  # sparse: copying and hashing it takes seconds
    url = file_url(big)
    answer: dict[str, Any] = {}

    def post() -> None:
        with srv.client() as c:
            answer["r"] = c.post("/content/", json={"url": url})

    t = threading.Thread(target=post)
    t.start()
    with srv.client() as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            g = c.get(f"/content/{b64(url)}")
            if g.status_code == 206 and g.json()["bytesDone"] > 0:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the import never reported progress")
        progress = g.json()
        assert progress["state"] == "downloading" and progress["size"] == big.stat().st_size
        assert progress["blobs"][0]["title"] == "big.bin"
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        t.join(30)
        status, code, _ = error(answer["r"])
        assert (status, code) == (409, "CANCELLED")
        assert c.get(f"/content/{b64(url)}").status_code == 404
    assert ingest_files(cache_dir) == []
    assert not (cache_dir / "ingest" / ingest_key(url)).exists()
    assert not blob_file(cache_dir, sha(b"\0" * big.stat().st_size)).exists()
    assert (cache_dir / "blobs" / "sha256").exists() and blob_names(cache_dir) == set()


def test_kill_9_mid_copy_then_import_again(root: Path, cache_dir: Path) -> None:
    data = os.urandom(3 * COPY_CHUNK)
    (root / "f.bin").write_bytes(data)
    url = file_url(root / "f.bin")
    args = ("--allow-file-import", str(root))
    s = ServerProcess(cache_dir, *args, env={"NEKKO_FAULT_PAUSE": "ingest-write"}).start()
    try:
        with (
            httpx.Client(base_url=s.base_url, timeout=2) as c,
            pytest.raises(httpx.TimeoutException),
        ):
            c.post("/content/", json={"url": url})
        deadline = time.monotonic() + 10
        while "fault point ingest-write reached" not in s.log():
            assert time.monotonic() < deadline, s.log()
    finally:
        s.kill()
    assert blob_names(cache_dir) == set()  # nothing half-written in blobs/
    with ServerProcess(cache_dir, *args) as s2, s2.client() as c:
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 206 and g.json()["state"] == "interrupted"
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201 and r.json()["digest"] == sha(data)
        assert blob_file(cache_dir, sha(data)).read_bytes() == data
    assert ingest_files(cache_dir) == []


# -- the copy routine itself (it runs in a worker thread; here called directly) ----------


@pytest.fixture
def fetcher(tmp_path: Path, root: Path) -> FileFetcher:
    layout = Layout(tmp_path / "cache")
    layout.create()
    return FileFetcher(None, layout, [root])


def _item(path: Path) -> LocalFile:
    return LocalFile(path.name, os.path.realpath(path), path.stat().st_size)


def test_file_changed_once_during_copy_is_copied_again(fetcher: FileFetcher, root: Path) -> None:
    src = root / "f.bin"
    src.write_bytes(os.urandom(2 * COPY_CHUNK))
    ingest = IngestFile(fetcher.layout, ingest_key("file:///f"))
    changed = []

    def progress(done: int) -> None:
        if done > 0 and not changed:
            with open(src, "ab") as f:
                f.write(b"appended while copying")
            changed.append(done)

    digest, size = fetcher.copy(_item(src), ingest, progress, threading.Event())
    final = src.read_bytes()
    assert changed and (str(digest), size) == (sha(final), len(final))
    assert ingest.data_path.read_bytes() == final
    ingest.discard()


def test_file_that_keeps_changing_fails(fetcher: FileFetcher, root: Path) -> None:
    src = root / "f.bin"
    src.write_bytes(os.urandom(COPY_CHUNK + 1))
    ingest = IngestFile(fetcher.layout, ingest_key("file:///f"))

    def progress(done: int) -> None:
        if done > 0:
            with open(src, "r+b") as f:  # same size, new bytes and mtime
                f.write(os.urandom(16))
            os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))

    with pytest.raises(Conflict, match="changed while it was being imported"):
        fetcher.copy(_item(src), ingest, progress, threading.Event())
    ingest.discard()


def test_cancel_flag_stops_the_copy_between_chunks(fetcher: FileFetcher, root: Path) -> None:
    src = root / "f.bin"
    src.write_bytes(os.urandom(4 * COPY_CHUNK))
    ingest = IngestFile(fetcher.layout, ingest_key("file:///f"))
    cancelled = threading.Event()
    seen = []

    def progress(done: int) -> None:
        seen.append(done)
        if done > 0:
            cancelled.set()

    with pytest.raises(Cancelled):
        fetcher.copy(_item(src), ingest, progress, cancelled)
    assert seen == [0, COPY_CHUNK]  # stopped after the first chunk
    ingest.discard()
