"""Imported bundles are untrusted (issue 18, items 1, 5 and 9c).

* Every annotation that becomes a path or a name (hf commit, revision, repo
  id, repo type, endpoint, file titles, reference names) is checked where it
  enters: ``POST /admin/import``, ``file://`` layouts, and an index.json
  another program wrote; a bad bundle is a 400 and nothing is written, a bad
  index.json descriptor is kept verbatim but never served nor given a view.
* The hub cache views never write outside ``<cache>/views/``, whatever the
  entries say, and never through a symlinked directory planted there.
* An import is bounded: --max-cache-size is enforced while staging (507,
  nothing kept, nothing evicted for a bundle that cannot fit), a gzip bomb
  stops at the limit, a huge index.json is refused before it is parsed.
* A ``file://`` layout is read through the descriptor opened when it was
  checked, never by its path again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from proxy.cache import artifact, bundle, views
from proxy.cache.layout import Layout
from proxy.cache.store import new_entry
from proxy.fetch.file import FileFetcher
from proxy.types import (
    ANNOTATION_HF_COMMIT,
    ANNOTATION_HF_ENDPOINT,
    ANNOTATION_HF_REPO,
    ANNOTATION_HF_REPO_TYPE,
    ANNOTATION_HF_REVISION,
    ANNOTATION_KIND,
    ANNOTATION_PRIMARY,
    ANNOTATION_REF_NAME,
    ANNOTATION_TITLE,
    ANNOTATION_URL,
    EMPTY_JSON,
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_OCTET,
    Descriptor,
    Digest,
)
from tests.conftest import b64
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_ARTIFACT = "application/vnd.nekko.storage-manager.huggingface.v1"
SNAPSHOTS = ("views", "huggingface", "models--org--name", "snapshots")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hf_bundle(
    *,
    commit: str = COMMIT,
    revision: str = "main",
    repo: str = "org/name",
    repo_type: str = "model",
    endpoint: str = "https://huggingface.co",
    title: str = "config.json",
    ref_name: str = "huggingface.co/org/name:main",
    data: bytes = b'{"model": "tiny"}\n',
) -> dict[str, bytes]:
    """The members of an OCI layout holding one hf entry, as this server
    exports one, with the given names."""
    blob = Descriptor(MEDIA_TYPE_OCTET, Digest(_sha(data)), len(data), {ANNOTATION_TITLE: title})
    manifest = artifact.file_manifest([blob], HF_ARTIFACT)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
                "digest": f"sha256:{_sha(manifest)}",
                "size": len(manifest),
                "annotations": {
                    ANNOTATION_REF_NAME: ref_name,
                    ANNOTATION_URL: "hf://org/name",
                    ANNOTATION_KIND: "hf",
                    ANNOTATION_PRIMARY: str(blob.digest),
                    ANNOTATION_HF_REPO: repo,
                    ANNOTATION_HF_REPO_TYPE: repo_type,
                    ANNOTATION_HF_REVISION: revision,
                    ANNOTATION_HF_COMMIT: commit,
                    ANNOTATION_HF_ENDPOINT: endpoint,
                },
            }
        ],
    }
    return {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{_sha(b)}": b for b in (manifest, EMPTY_JSON, data)},
    }


def tar_of(files: dict[str, bytes], compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def escape(cache: Path, below: tuple[str, ...], target: Path) -> str:
    """A relative path that leads from ``<cache>/<below>`` to ``target``."""
    return os.path.relpath(target, cache.joinpath(*below))


def hostile_variants(cache: Path, target: Path) -> dict[str, dict[str, Any]]:
    """One bundle per field, each naming a place outside the cache."""
    return {
        "commit": {"commit": escape(cache, SNAPSHOTS, target / "snap")},
        "revision": {"revision": escape(cache, (*SNAPSHOTS[:-1], "refs"), target / "ref")},
        "repo": {"repo": "org/../../../name"},
        "repo-type": {"repo_type": "../model"},
        "endpoint": {"endpoint": "file:///etc/passwd"},
        "endpoint-host": {"endpoint": "https://h/../../x"},
        "title": {"title": escape(cache, (*SNAPSHOTS, COMMIT), target / "title")},
        "absolute-title": {"title": str(target / "abs")},
        "backslash-title": {"title": "a\\..\\b"},
        "ref-name": {"ref_name": "../../etc:x y"},
    }


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def state_of(cache: Path) -> tuple[str, list[str], list[str]]:
    index = json.dumps(json.loads((cache / "index.json").read_text()), sort_keys=True)
    blobs = sorted(p.name for p in (cache / "blobs" / "sha256").iterdir())
    ingest = [p.name for p in (cache / "ingest").iterdir() if p.name not in ("small", "unsynced")]
    return index, blobs, ingest


# -- item 1: names are checked where they enter ---------------------------------------


def test_a_bundle_with_a_bad_name_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    cache, target = tmp_path / "cache", tmp_path / "outside"
    target.mkdir()
    with ServerProcess(cache) as srv, srv.client() as c:
        before = state_of(cache)
        for field, names in hostile_variants(cache, target).items():
            r = c.post("/admin/import", content=tar_of(hf_bundle(**names)))
            assert r.status_code == 400, (field, r.text)
            assert r.json()["error"]["code"] == "BAD_REQUEST", field
            assert files_under(target) == [], field
            assert state_of(cache) == before, field
            assert files_under(cache / "views") == [], field
        # The same bundle with good names is imported, and viewed where it belongs.
        r = c.post("/admin/import", content=tar_of(hf_bundle()))
        assert r.status_code == 200, r.text
        link = cache.joinpath(*SNAPSHOTS, COMMIT, "config.json")
        assert link.is_symlink() and link.read_bytes() == b'{"model": "tiny"}\n'
        assert cache.joinpath(*SNAPSHOTS[:-1], "refs", "main").read_text() == COMMIT
    # `storage-manager import` (a private server here) says why, and adds nothing.
    bad = tmp_path / "bad.tar"
    bad.write_bytes(tar_of(hf_bundle(commit=escape(cache, SNAPSHOTS, target / "cli"))))
    before = state_of(cache)
    r = run_cli("import", str(bad), "--cache-dir", str(cache))
    assert r.returncode != 0 and "hf.commit" in r.stderr and "is not valid" in r.stderr, r.stderr
    assert state_of(cache) == before
    assert files_under(target) == []


def test_a_file_url_of_a_bundle_with_a_bad_name_is_refused(tmp_path: Path) -> None:
    cache, target, drop = tmp_path / "cache", tmp_path / "outside", tmp_path / "drop"
    target.mkdir()
    drop.mkdir()
    with ServerProcess(cache, "--allow-file-import", str(drop)) as srv, srv.client() as c:
        before = state_of(cache)
        for field, names in hostile_variants(cache, target).items():
            tar = drop / f"{field}.tar"
            tar.write_bytes(tar_of(hf_bundle(**names)))
            r = c.post("/content/", json={"url": f"file://{tar}"})
            assert r.status_code == 400, (field, r.text)
            assert files_under(target) == [], field
            assert state_of(cache) == before, field
        good = drop / "good.tar"
        good.write_bytes(tar_of(hf_bundle()))
        r = c.post("/content/", json={"url": f"file://{good}"})
        assert r.status_code == 201 and r.json()["kind"] == "oci-layout", r.text
    assert files_under(target) == []


def test_an_index_json_written_by_another_program_is_checked_at_startup(
    tmp_path: Path,
) -> None:
    cache, target = tmp_path / "cache", tmp_path / "outside"
    target.mkdir()
    with ServerProcess(cache) as srv, srv.client() as c:
        assert c.post("/admin/import", content=tar_of(hf_bundle())).status_code == 200
    # Another program rewrites the entry's commit and title to lead outside.
    index = json.loads((cache / "index.json").read_text())
    desc = index["manifests"][0]
    desc["annotations"][ANNOTATION_HF_COMMIT] = escape(cache, SNAPSHOTS, target / "snap")
    (cache / "index.json").write_text(json.dumps(index))
    for p in sorted((cache / "views").rglob("*"), reverse=True):
        p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
    with ServerProcess(cache) as srv, srv.client() as c:
        assert c.get(f"/content/{b64('hf://org/name')}").status_code == 404
        assert "not as an entry" in srv.log()
    assert files_under(target) == []
    assert files_under(cache / "views") == []
    # Kept verbatim for whatever wrote it, and its blobs kept alive.
    kept = json.loads((cache / "index.json").read_text())["manifests"]
    assert kept == [desc]
    assert (cache / "blobs" / "sha256" / desc["digest"].split(":")[1]).exists()


# -- item 1, defence in depth: the views never leave views/ ---------------------------


def _entry(commit: str = COMMIT, revision: str = "main", title: str = "config.json") -> Any:
    data = b"weights"
    blob = Descriptor(MEDIA_TYPE_OCTET, Digest(_sha(data)), len(data), {ANNOTATION_TITLE: title})
    manifest = Descriptor(MEDIA_TYPE_IMAGE_MANIFEST, Digest(_sha(b"m")), 1)
    return new_entry(
        "hf://org/name",
        "hf",
        manifest,
        [blob],
        blob,
        blobs=set(),
        annotations={
            ANNOTATION_HF_REPO: "org/name",
            ANNOTATION_HF_REPO_TYPE: "model",
            ANNOTATION_HF_REVISION: revision,
            ANNOTATION_HF_COMMIT: commit,
            ANNOTATION_HF_ENDPOINT: "https://huggingface.co",
        },
    )


def test_views_sync_never_writes_outside_views_for_hostile_entries(tmp_path: Path) -> None:
    cache, target = tmp_path / "cache", tmp_path / "outside"
    target.mkdir()
    layout = Layout(cache)
    layout.create()
    hostile = [
        _entry(commit=escape(cache, SNAPSHOTS, target / "snap")),
        _entry(revision=escape(cache, (*SNAPSHOTS[:-1], "refs"), target / "ref")),
        _entry(title=escape(cache, (*SNAPSHOTS, COMMIT), target / "title")),
        _entry(commit=str(target / "abs")),
    ]
    for entry in hostile:
        views.sync(layout, [entry])
        assert files_under(target) == []
    assert [views.entry_view(layout, e) is None for e in hostile] == [True, True, False, True]
    assert files_under(cache / "views" / "huggingface") in ([], ["models--org--name"])
    # A good entry is linked; the hostile fields of the others lead nowhere.
    views.sync(layout, [_entry(), *hostile])
    assert cache.joinpath(*SNAPSHOTS, COMMIT, "config.json").is_symlink()
    assert files_under(target) == []


@pytest.mark.parametrize(
    "planted", [SNAPSHOTS, SNAPSHOTS[:-1], (*SNAPSHOTS[:-1], "refs"), (*SNAPSHOTS, COMMIT)]
)
def test_views_sync_never_follows_a_symlinked_directory(
    tmp_path: Path, planted: tuple[str, ...]
) -> None:
    cache, target = tmp_path / "cache", tmp_path / "outside"
    target.mkdir()
    (target / "keep").write_text("precious")
    layout = Layout(cache)
    layout.create()
    link = cache.joinpath(*planted)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    views.sync(layout, [_entry()])
    assert files_under(target) == ["keep"]
    assert (target / "keep").read_text() == "precious"
    # And tidying (no entries any more) removes the link, never what it points to.
    views.sync(layout, [])
    assert files_under(target) == ["keep"]


# -- item 5: an import is bounded -------------------------------------------------------


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_gzip_bomb_stops_at_the_cache_limit_and_evicts_nothing(
    tmp_path: Path, source: Source
) -> None:
    cache = tmp_path / "cache"
    zeros = bytes(64 * 1024 * 1024)
    bomb = hf_bundle(data=zeros)
    packed = tar_of(bomb, "gz")
    assert len(packed) < 1024 * 1024
    source.add_file("/small.bin", os.urandom(100_000))
    with ServerProcess(cache, "--max-cache-size", "1M") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/small.bin")}).status_code == 201
        before = state_of(cache)
        r = c.post("/admin/import", content=packed)
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "DISK_FULL"
        assert state_of(cache) == before  # nothing kept, nothing evicted
        assert c.get(f"/content/{b64(source.url('/small.bin'))}").status_code == 200
        # The same bundle within the limit is imported.
        assert c.post("/admin/import", content=tar_of(hf_bundle(), "gz")).status_code == 200


def test_an_import_evicts_by_the_usual_rules_only_when_it_then_fits(
    tmp_path: Path, source: Source
) -> None:
    cache = tmp_path / "cache"
    source.add_file("/old.bin", os.urandom(600_000))
    with ServerProcess(cache, "--max-cache-size", "1M") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/old.bin")}).status_code == 201
        r = c.post("/admin/import", content=tar_of(hf_bundle(data=os.urandom(600_000))))
        assert r.status_code == 200, r.text  # the least recently used entry made room
        assert c.get(f"/content/{b64(source.url('/old.bin'))}").status_code == 404
        assert c.get(f"/content/{b64('hf://org/name')}").status_code == 200


def test_a_huge_index_json_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # 60 MiB of "{}," (under the old 64 MiB cap): about 60 KB gzipped, and
    # 1.5 GB of Python objects once parsed.
    huge = hf_bundle()
    huge["index.json"] = b'{"manifests": [' + b"{}," * (20 * 1024 * 1024) + b"{}]}"
    # Under the size cap, but millions of objects all the same.
    many = hf_bundle()
    many["index.json"] = b'{"manifests": [' + b"[]," * (4 * 1024 * 1024) + b"[]]}"
    with ServerProcess(cache) as srv, srv.client() as c:
        assert srv.proc is not None
        base = _vm_hwm(srv.proc.pid)
        before = state_of(cache)
        for body in (tar_of(huge, "gz"), tar_of(many, "gz")):
            assert len(body) < 1024 * 1024
            r = c.post("/admin/import", content=body)
            assert _vm_hwm(srv.proc.pid) - base < 200 * 1024 * 1024
            assert r.status_code == 400, r.text
            assert "index.json" in r.json()["error"]["message"]
        assert state_of(cache) == before


def test_tar_extended_headers_are_bounded(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("oci-layout")
        info.pax_headers = {"comment": "x" * (8 * 1024 * 1024)}
        data = b'{"imageLayoutVersion": "1.0.0"}'
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with ServerProcess(cache) as srv, srv.client() as c:
        r = c.post("/admin/import", content=buf.getvalue())
        assert r.status_code == 400 and "header" in r.json()["error"]["message"], r.text


# -- item 9c: a file:// layout is read through what was checked ---------------------------


@pytest.mark.parametrize("as_tar", [False, True])
def test_a_file_layout_is_read_through_the_descriptor_that_was_checked(
    tmp_path: Path, as_tar: bool
) -> None:
    drop, elsewhere = tmp_path / "drop", tmp_path / "elsewhere"
    drop.mkdir()
    elsewhere.mkdir()
    layout = Layout(tmp_path / "cache")
    layout.create()
    good, other = hf_bundle(), hf_bundle(data=b"swapped in after the check")

    def place(members: dict[str, bytes], at: Path) -> None:
        if as_tar:
            at.write_bytes(tar_of(members))
            return
        for name, content in members.items():
            (at / name).parent.mkdir(parents=True, exist_ok=True)
            (at / name).write_bytes(content)

    path = drop / "layout"
    if not as_tar:
        path.mkdir()
    place(good, path)
    outside = elsewhere / "layout"
    if not as_tar:
        outside.mkdir()
    place(other, outside)

    fetcher = FileFetcher(None, layout, [drop])
    fd = fetcher.open_checked(str(path))
    assert fd is not None
    opened = bundle.local_layout(fd, str(path))
    assert opened is not None and opened.directory is not as_tar
    # Between the check and the read, the path becomes a link out of the roots.
    path.rename(drop / "moved")
    path.symlink_to(outside)
    try:
        staged = bundle.stage(layout, opened, layout.ingest_dir / "import-test")
    finally:
        opened.close()
    assert staged.index == json.loads(good["index.json"])
    assert {d.hex for d in staged.new} == {n.rsplit("/", 1)[1] for n in good if "blobs/" in n}
    # And a path that resolves outside the roots is refused when it is opened.
    with pytest.raises(Exception, match="outside the directories allowed"):
        fetcher.open_checked(str(path))
