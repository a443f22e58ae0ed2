"""The fake Hugging Face Hub (tests/support/hfhub.py) against the official ``huggingface_hub``.

The client runs in a subprocess: it reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE`` once, at import. Each run gets a fresh ``HF_HOME`` (no stored token), a
``HF_HUB_CACHE`` under ``tmp_path``, telemetry, Xet and hf_transfer off, and no proxy.
Skipped where ``huggingface_hub`` is not installed (it is not a project dependency); the
protocol tests at the end need only the standard library.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.hfhub import (
    FakeHub,
    HubRepo,
    RecordedRequest,
    git_blob_oid,
    iter_cache_files,
    lfs_pointer,
)

TOKEN = "hf_fake_reader_token"
OTHER_TOKEN = "hf_fake_other_token"
RESULT_MARK = "@@RESULT@@"

needs_client = pytest.mark.skipif(
    importlib.util.find_spec("huggingface_hub") is None,
    reason="huggingface_hub is not installed (pip install huggingface_hub)",
)

_PRELUDE = """
import json, sys
import huggingface_hub
from huggingface_hub import hf_hub_download, snapshot_download, HfApi, try_to_load_from_cache

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": fn(*args, **kwargs)}
    except Exception as exc:
        response = getattr(exc, "response", None)
        return {"error": type(exc).__name__,
                "mro": [cls.__name__ for cls in type(exc).__mro__],
                "status": getattr(response, "status_code", None),
                "message": str(exc)}
"""


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.tokens.update({TOKEN, OTHER_TOKEN})
        yield fake


def run_client(
    tmp_path: Path,
    endpoint: str,
    code: str,
    *,
    token: str | None = None,
    offline: bool = False,
    cache: Path | None = None,
    xet: bool = False,
) -> Any:
    """Run ``code`` (which sets ``result``) with the official client; return ``result``.

    ``xet=True`` leaves Xet enabled (``hf_xet`` is used where the server advertises Xet)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HF_", "HUGGING", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"))
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_CACHE=str(cache or tmp_path / "hub"),
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ENABLE_HF_TRANSFER="0",
        HF_HUB_DISABLE_XET="0" if xet else "1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        NO_PROXY="127.0.0.1,127.0.0.2,localhost",
        no_proxy="127.0.0.1,127.0.0.2,localhost",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    script = f"{_PRELUDE}\n{textwrap.dedent(code)}\nprint({RESULT_MARK!r} + json.dumps(result))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert proc.returncode == 0 and lines, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len(RESULT_MARK) :])


def resolve_requests(requests: list[RecordedRequest]) -> list[tuple[str, str, str, int]]:
    return [(r.server, r.method, r.route, r.status) for r in requests]


def repo_dir(tmp_path: Path, folder: str = "models--org--model") -> Path:
    return tmp_path / "hub" / folder


# -- the official client against the fake --------------------------------------------------------


@needs_client
def test_non_lfs_file_is_served_by_the_hub_itself(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add_repo("org/model")
    data = b'{"model_type": "fake"}\n'
    file = hub.add_file(repo, "config.json", data)
    sha = hub.commit(repo)
    assert not file.lfs

    path = run_client(
        tmp_path, hub.endpoint, 'result = hf_hub_download("org/model", "config.json")'
    )

    root = repo_dir(tmp_path)
    assert path == str(root / "snapshots" / sha / "config.json")
    assert Path(path).read_bytes() == data
    assert os.readlink(path) == f"../../blobs/{git_blob_oid(data)}"  # blob named by the git oid
    assert (root / "refs" / "main").read_text() == sha  # no trailing newline
    route = "/org/model/resolve/main/config.json"
    assert resolve_requests(hub.all_requests) == [
        ("hub", "HEAD", route, 200),
        ("hub", "GET", route, 200),
    ]
    head, get = hub.all_requests
    assert head.headers["accept-encoding"] == "identity"
    assert "hf_hub/" in head.headers["user-agent"] and "authorization" not in head.headers
    assert get.headers["x-hf-download-counter"] == "1" and "range" not in get.headers


@needs_client
def test_lfs_file_in_a_subfolder_of_a_private_repo(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add_repo("org/model", private=True)
    data = os.urandom(200_000)
    file = hub.add_file(repo, "weights/model.safetensors", data)
    sha = hub.commit(repo)
    assert file.lfs and file.sha256 == hashlib.sha256(data).hexdigest()

    code = 'result = hf_hub_download("org/model", "model.safetensors", subfolder="weights")'
    path = run_client(tmp_path, hub.endpoint, code, token=TOKEN)

    assert path == str(repo_dir(tmp_path) / "snapshots" / sha / "weights" / "model.safetensors")
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == file.sha256
    assert os.readlink(path) == f"../../../blobs/{file.sha256}"  # relative, one more ../
    route = "/org/model/resolve/main/weights/model.safetensors"
    assert [(r.server, r.method, r.status) for r in hub.all_requests] == [
        ("hub", "HEAD", 302),  # the client does not follow a redirect to another host...
        ("cdn", "GET", 200),  # ...it GETs the HEAD's Location directly
    ]
    head, get = hub.all_requests
    assert head.route == route
    assert head.headers["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in get.headers  # the token never leaves the Hub
    assert get.host == hub.cdn.host and get.route.endswith(f"/{file.sha256}")
    assert urlsplit(hub.cdn.url).netloc != urlsplit(hub.endpoint).netloc


@needs_client
def test_tag_branch_commit_and_pr_revisions(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add_repo("org/model")
    hub.add_file(repo, "notes.txt", b"one\n")
    first = hub.commit(repo, tag="v1.0")
    hub.add_file(repo, "notes.txt", b"two\n")
    second = hub.commit(repo)
    hub.add_file(repo, "notes.txt", b"proposed\n", revision="refs/pr/1")
    pr = hub.commit(repo, revision="refs/pr/1")
    assert len({first, second, pr}) == 3

    code = """
    result = [hf_hub_download("org/model", "notes.txt", revision=rev)
              for rev in ("v1.0", "main", "refs/pr/1", None)]
    """
    paths = run_client(tmp_path, hub.endpoint, code)

    contents = [Path(p).read_bytes() for p in paths]
    assert contents == [b"one\n", b"two\n", b"proposed\n", b"two\n"]
    root = repo_dir(tmp_path)
    assert (root / "refs" / "v1.0").read_text() == first
    assert (root / "refs" / "main").read_text() == second
    assert (root / "refs" / "refs" / "pr" / "1").read_text() == pr  # refs/<revision> verbatim
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == sorted([first, second, pr])
    heads = [r.route for r in hub.requests if r.method == "HEAD"]
    assert heads[:3] == [
        "/org/model/resolve/v1.0/notes.txt",
        "/org/model/resolve/main/notes.txt",
        "/org/model/resolve/refs%2Fpr%2F1/notes.txt",  # quote(revision, safe="")
    ]

    # A commit id that is already cached is answered from the cache, without any request.
    hub.clear_requests()
    code = f'result = hf_hub_download("org/model", "notes.txt", revision="{first}")'
    assert Path(run_client(tmp_path, hub.endpoint, code)).read_bytes() == b"one\n"
    assert hub.all_requests == []


@needs_client
def test_snapshot_download_follows_tree_pagination(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add_repo("org/model")
    files = {
        "README.md": b"# fake\n",
        "config.json": b"{}\n",
        "tokenizer/vocab.txt": b"a\nb\n",
        "weights/model-00001-of-00002.safetensors": os.urandom(5000),
        "weights/model-00002-of-00002.safetensors": os.urandom(7000),
    }
    for path, data in files.items():
        hub.add_file(repo, path, data)
    sha = hub.commit(repo)
    hub.tree_page_size = 2  # 2 directories + 5 files: 4 pages

    folder = run_client(tmp_path, hub.endpoint, 'result = snapshot_download("org/model")')

    assert folder == str(repo_dir(tmp_path) / "snapshots" / sha)
    for path, data in files.items():
        assert (Path(folder) / path).read_bytes() == data
    api = [r for r in hub.requests if r.route.startswith("/api/")]
    assert [r.path for r in api[:2]] == [
        "/api/models/org/model/revision/main",
        f"/api/models/org/model/tree/{sha}?recursive=true&expand=false",
    ]
    assert len(api) == 1 + 4 and all("cursor=" in r.path for r in api[2:])
    heads = sorted(r.route for r in hub.requests if r.method == "HEAD")
    assert heads == sorted(f"/org/model/resolve/{sha}/{p}" for p in files)  # pinned to the commit
    assert len([r for r in hub.cdn.requests if r.method == "GET"]) == 2
    tree_cache = json.loads((repo_dir(tmp_path) / "trees" / f"{sha}.json").read_text())
    shard = "weights/model-00001-of-00002.safetensors"
    assert tree_cache["files"][shard]["lfs_sha256"] == hashlib.sha256(files[shard]).hexdigest()
    assert tree_cache["files"][shard]["lfs_size"] == 5000


@needs_client
def test_errors_surface_as_huggingface_hub_exceptions(hub: FakeHub, tmp_path: Path) -> None:
    public = hub.add_repo("org/model")
    hub.add_file(public, "config.json", b"{}")
    sha = hub.commit(public)
    private = hub.add_repo("org/private", private=True, readers={TOKEN})
    hub.add_file(private, "config.json", b"{}")
    hub.commit(private)
    gated = hub.add_repo("org/gated", gated=True, readers={TOKEN})
    hub.add_file(gated, "config.json", b"{}")
    hub.commit(gated)

    code = f"""
    d = hf_hub_download
    result = {{
        "missing_repo": attempt(d, "org/nope", "config.json"),
        "private_anonymous": attempt(d, "org/private", "config.json"),
        "private_other_token": attempt(d, "org/private", "config.json", token="{OTHER_TOKEN}"),
        "private_reader": attempt(d, "org/private", "config.json", token="{TOKEN}"),
        "bad_revision": attempt(d, "org/model", "config.json", revision="nope"),
        "missing_entry": attempt(d, "org/model", "nope.txt"),
        "gated_anonymous": attempt(d, "org/gated", "config.json"),
        "gated_not_granted": attempt(d, "org/gated", "config.json", token="{OTHER_TOKEN}"),
        "gated_granted": attempt(d, "org/gated", "config.json", token="{TOKEN}"),
        "invalid_token": attempt(d, "org/model", "config.json", token="hf_invalid"),
        "snapshot_bad_revision": attempt(snapshot_download, "org/model", revision="nope"),
        "info_missing": attempt(lambda: HfApi().model_info("org/nope").id),
        "info_gated_anonymous": attempt(lambda: HfApi().model_info("org/gated").gated),
    }}
    """
    r = run_client(tmp_path, hub.endpoint, code)

    def error(name: str, cls: str, status: int) -> None:
        assert "error" in r[name], (name, r[name])
        assert cls in r[name]["mro"] and r[name]["status"] == status, (name, r[name])

    error("missing_repo", "RepositoryNotFoundError", 401)
    error("private_anonymous", "RepositoryNotFoundError", 401)
    error("private_other_token", "RepositoryNotFoundError", 404)
    assert "ok" in r["private_reader"]
    error("bad_revision", "RevisionNotFoundError", 404)
    error("missing_entry", "RemoteEntryNotFoundError", 404)
    assert "EntryNotFoundError" in r["missing_entry"]["mro"]
    error("gated_anonymous", "GatedRepoError", 401)
    assert "Please log in" in r["gated_anonymous"]["message"]
    error("gated_not_granted", "GatedRepoError", 403)
    assert "ok" in r["gated_granted"]
    error("invalid_token", "HfHubHTTPError", 401)
    assert "RepositoryNotFoundError" not in r["invalid_token"]["mro"]
    assert "Invalid credentials in Authorization header" in r["invalid_token"]["message"]
    error("snapshot_bad_revision", "RevisionNotFoundError", 404)
    error("info_missing", "RepositoryNotFoundError", 401)
    assert r["info_gated_anonymous"] == {"ok": "manual"}
    # The client caches the miss under .no_exist/<X-Repo-Commit of the 404>/.
    assert (repo_dir(tmp_path) / ".no_exist" / sha / "nope.txt").is_file()


@needs_client
def test_offline_mode_serves_the_downloaded_cache(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add_repo("org/model")
    hub.add_file(repo, "config.json", b"{}\n")
    lfs = hub.add_file(repo, "weights/model.safetensors", os.urandom(4096))
    hub.add_file(repo, "extra.txt", b"never downloaded\n", revision="dev")
    sha = hub.commit(repo)
    hub.commit(repo, revision="dev")
    code = """
    result = [hf_hub_download("org/model", "config.json"),
              hf_hub_download("org/model", "weights/model.safetensors")]
    """
    online = run_client(tmp_path, hub.endpoint, code)
    endpoint = hub.endpoint
    hub.stop()  # nothing answers any more

    code = """
    result = {
        "files": [hf_hub_download("org/model", "config.json"),
                  hf_hub_download("org/model", "model.safetensors", subfolder="weights")],
        "snapshot": snapshot_download("org/model"),
        "cached": try_to_load_from_cache("org/model", "config.json"),
        "missing": attempt(hf_hub_download, "org/model", "extra.txt", revision="dev"),
    }
    """
    r = run_client(tmp_path, endpoint, code, offline=True)

    root = repo_dir(tmp_path)
    assert r["files"] == online and r["cached"] == online[0]
    assert r["snapshot"] == str(root / "snapshots" / sha)
    assert hashlib.sha256(Path(r["files"][1]).read_bytes()).hexdigest() == lfs.sha256
    assert "LocalEntryNotFoundError" in r["missing"]["mro"]
    assert {p.name for p in root.iterdir()} >= {"blobs", "refs", "snapshots"}


@needs_client
def test_offline_mode_accepts_a_hand_made_cache(hub: FakeHub, tmp_path: Path) -> None:
    """What a downloader must write for ``HF_HUB_OFFLINE=1``: blobs, refs, relative links."""
    repo = hub.add_repo("org/model")
    hub.add_file(repo, "config.json", b'{"a": 1}\n')
    hub.add_file(repo, "sub/dir/model.gguf", os.urandom(3000))
    sha = hub.commit(repo, tag="v1")
    cache = tmp_path / "made-by-hand"
    for layout in (hub.cache_layout(repo, "main"), hub.cache_layout(repo, "v1")):
        for rel, content in iter_cache_files(layout):
            target = cache / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif not target.is_symlink():
                target.symlink_to(content)
    assert (cache / "models--org--model" / "refs" / "main").read_bytes() == sha.encode()

    code = f"""
    result = {{
        "main": hf_hub_download("org/model", "model.gguf", subfolder="sub/dir"),
        "tag": hf_hub_download("org/model", "config.json", revision="v1"),
        "commit": hf_hub_download("org/model", "config.json", revision="{sha}"),
        "snapshot": snapshot_download("org/model", revision="v1"),
    }}
    """
    r = run_client(tmp_path, "http://127.0.0.1:9", code, offline=True, cache=cache)

    snapshot = cache / "models--org--model" / "snapshots" / sha
    assert r["main"] == str(snapshot / "sub" / "dir" / "model.gguf")
    assert r["tag"] == r["commit"] == str(snapshot / "config.json")
    assert r["snapshot"] == str(snapshot)
    assert hub.all_requests == []


@needs_client
def test_downloads_resume_with_range_after_a_cut(hub: FakeHub, tmp_path: Path) -> None:
    # huggingface_hub reads bodies in DOWNLOAD_CHUNK_SIZE (10 MiB) chunks and resumes from the
    # last whole chunk it wrote: a cut before 10 MiB restarts from 0, so cut past it.
    chunk = 10 * 1024 * 1024
    repo = hub.add_repo("org/model")
    big = hub.add_file(repo, "model.bin", os.urandom(chunk + 300_000))
    plain = hub.add_file(repo, "vocab.txt", b"token\n" * (chunk // 6 + 50_000), lfs=False)
    hub.commit(repo)
    hub.cdn.interrupt_next(chunk + 1000)
    hub.interrupt_next(chunk + 1000, route_contains="vocab.txt")

    code = """
    result = [hf_hub_download("org/model", "model.bin"), hf_hub_download("org/model", "vocab.txt")]
    """
    paths = run_client(tmp_path, hub.endpoint, code)

    assert hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest() == big.sha256
    assert Path(paths[1]).read_bytes() == plain.data
    cdn = hub.cdn.requests
    assert [(r.status, r.headers.get("range")) for r in cdn] == [
        (200, None),
        (206, f"bytes={chunk}-"),
    ]
    gets = [r for r in hub.requests if r.method == "GET"]
    assert [(r.status, r.headers.get("range")) for r in gets] == [
        (200, None),
        (206, f"bytes={chunk}-"),
    ]
    assert "authorization" not in cdn[1].headers


@needs_client
def test_renamed_repo_redirect_and_dataset_repos(hub: FakeHub, tmp_path: Path) -> None:
    repo = hub.add_repo("org/old-name")
    hub.add_file(repo, "config.json", b"{}\n")
    hub.commit(repo)
    hub.rename_repo("org/old-name", "org/new-name")
    data = hub.add_repo("org/data", repo_type="dataset")
    hub.add_file(data, "train/part-0.parquet", b"PAR1" + os.urandom(100), lfs=True)
    hub.commit(data)

    code = """
    result = [hf_hub_download("org/old-name", "config.json"),
              snapshot_download("org/data", repo_type="dataset")]
    """
    old, dataset = run_client(tmp_path, hub.endpoint, code)

    assert "/models--org--old-name/snapshots/" in old  # cached under the name asked for
    assert Path(dataset, "train", "part-0.parquet").read_bytes().startswith(b"PAR1")
    assert "/datasets--org--data/snapshots/" in dataset
    first = resolve_requests(hub.requests)[:3]
    assert first == [
        ("hub", "HEAD", "/org/old-name/resolve/main/config.json", 307),
        ("hub", "HEAD", "/org/new-name/resolve/main/config.json", 200),
        ("hub", "GET", "/org/new-name/resolve/main/config.json", 200),
    ]
    assert any(r.route == "/api/datasets/org/data/revision/main" for r in hub.requests)


# -- the protocol itself, with the standard library only --------------------------------------


def fetch(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client: status, lowercased headers, body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def _model(hub: FakeHub) -> tuple[HubRepo, str]:
    repo = hub.add_repo("org/model")
    hub.add_file(repo, "config.json", b"0123456789")
    hub.add_file(repo, "a/b/weights.safetensors", b"w" * 100)
    hub.add_file(repo, "a/readme.md", b"# a\n")
    return repo, hub.commit(repo)


def test_resolve_headers_for_regular_and_lfs_files(hub: FakeHub) -> None:
    repo, sha = _model(hub)
    lfs = hub.repo("org/model").commits[sha].files["a/b/weights.safetensors"]

    status, headers, body = fetch(hub.resolve_url(repo, "config.json"), "HEAD")
    assert (status, body) == (200, b"")
    assert headers["etag"] == f'"{git_blob_oid(b"0123456789")}"'
    assert headers["x-repo-commit"] == sha and headers["content-length"] == "10"
    assert headers["accept-ranges"] == "bytes" and "x-linked-etag" not in headers

    status, headers, body = fetch(hub.resolve_url(repo, "a/b/weights.safetensors"), "GET")
    assert status == 302 and body.startswith(b"Found. Redirecting to ")
    assert headers["location"].startswith(hub.cdn.url + "/repos/")
    assert headers["x-linked-etag"] == f'"{lfs.sha256}"' and headers["x-linked-size"] == "100"
    assert headers["etag"] == f'"{git_blob_oid(lfs_pointer(lfs.sha256, 100))}"'
    assert headers["x-repo-commit"] == sha and headers["content-length"] == str(len(body))
    location = headers["location"]
    query = urlsplit(location).query
    assert all(f"{key}=" in query for key in ("Expires", "Signature", "Key-Pair-Id", "Policy"))

    status, headers, body = fetch(location)
    assert (status, body) == (200, b"w" * 100)
    assert headers["content-disposition"].startswith("attachment;")
    status, headers, body = fetch(location, headers={"Range": "bytes=-3"})
    assert (status, headers["content-range"], body) == (206, "bytes 97-99/100", b"www")
    status, headers, _ = fetch(location, headers={"Range": "bytes=100-"})
    assert (status, headers["content-range"]) == (416, "bytes */100")
    status, _, body = fetch(location, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and b"InvalidArgument" in body
    assert hub.cdn.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    status, _, body = fetch(location.replace("Signature=", "Signature=x"))
    assert status == 403 and b"AccessDenied" in body

    status, headers, body = fetch(
        hub.resolve_url(repo, "config.json"), headers={"Range": "bytes=2-4"}
    )
    assert (status, headers["content-range"], body) == (206, "bytes 2-4/10", b"234")


def test_errors_carry_the_hub_error_headers(hub: FakeHub) -> None:
    repo, sha = _model(hub)
    cases = [
        (f"{hub.endpoint}/org/nope/resolve/main/x", {}, 401, "RepoNotFound"),
        (
            f"{hub.endpoint}/org/nope/resolve/main/x",
            {"Authorization": f"Bearer {TOKEN}"},
            404,
            "RepoNotFound",
        ),
        (hub.resolve_url(repo, "config.json", "nope"), {}, 404, "RevisionNotFound"),
        (hub.resolve_url(repo, "nope.json"), {}, 404, "EntryNotFound"),
        (f"{hub.endpoint}/api/models/org/model/revision/nope", {}, 404, "RevisionNotFound"),
    ]
    for url, headers, want_status, code in cases:
        status, got, body = fetch(url, headers=headers)
        assert (status, got.get("x-error-code")) == (want_status, code), url
        assert json.loads(body) == {"error": got["x-error-message"]}
    _, got, _ = fetch(hub.resolve_url(repo, "nope.json"))
    assert got["x-repo-commit"] == sha


def test_api_info_tree_pagination_and_refs(hub: FakeHub) -> None:
    repo, sha = _model(hub)
    hub.tag(repo, "v1")
    status, _, body = fetch(f"{hub.endpoint}/api/models/org/model/revision/v1?blobs=true")
    info = json.loads(body)
    assert status == 200 and info["id"] == info["modelId"] == "org/model" and info["sha"] == sha
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    assert siblings["config.json"]["blobId"] == git_blob_oid(b"0123456789")
    assert siblings["a/b/weights.safetensors"]["lfs"]["size"] == 100

    hub.tree_page_size = 2
    url: str | None = f"{hub.endpoint}/api/models/org/model/tree/main?recursive=true"
    entries: list[dict[str, Any]] = []
    for _ in range(10):
        assert url is not None
        status, headers, body = fetch(url)
        entries += json.loads(body)
        link = headers.get("link")
        url = link[1 : link.index(">")] if link else None
        if url is None:
            break
    assert url is None
    assert [(e["type"], e["path"]) for e in entries] == [
        ("directory", "a"),
        ("directory", "a/b"),
        ("file", "a/b/weights.safetensors"),
        ("file", "a/readme.md"),
        ("file", "config.json"),
    ]
    lfs_entry = entries[2]
    assert lfs_entry["lfs"]["pointerSize"] == len(lfs_pointer(lfs_entry["lfs"]["oid"], 100))
    status, _, body = fetch(f"{hub.endpoint}/api/models/org/model/tree/main/a?expand=true")
    assert [e["path"] for e in json.loads(body)] == ["a/b", "a/readme.md"]
    assert json.loads(body)[1]["lastCommit"]["id"] == sha

    status, _, body = fetch(f"{hub.endpoint}/api/models/org/model/refs")
    refs = json.loads(body)
    assert refs["branches"] == [{"name": "main", "ref": "refs/heads/main", "targetCommit": sha}]
    assert refs["tags"] == [{"name": "v1", "ref": "refs/tags/v1", "targetCommit": sha}]


def test_keep_alive_and_content_length_on_every_response(hub: FakeHub) -> None:
    _model(hub)
    conn = http.client.HTTPConnection(urlsplit(hub.endpoint).netloc, timeout=10)
    try:
        for path in ("/org/model/resolve/main/config.json", "/org/model/resolve/main/nope"):
            for method in ("HEAD", "GET", "GET"):
                conn.request(method, path)
                response = conn.getresponse()
                response.read()
                assert response.getheader("Content-Length") is not None
                assert response.version == 11 and not response.will_close
    finally:
        conn.close()
    ports = {r.headers["host"] for r in hub.requests}
    assert len(hub.requests) == 6 and len(ports) == 1


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_oids_are_real_git_object_ids(hub: FakeHub, tmp_path: Path) -> None:
    _, sha = _model(hub)
    commit = hub.repo("org/model").commits[sha]
    work = tmp_path / "git"
    for file in commit.files.values():
        target = work / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lfs_pointer(file.sha256, file.size) if file.lfs else file.data)
    git = ["git", "-C", str(work), "-c", "core.autocrlf=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    tree = subprocess.run([*git, "write-tree"], check=True, capture_output=True, text=True)
    assert tree.stdout.strip() == commit.trees[""]
    sub = subprocess.run(
        [*git, "rev-parse", f"{commit.trees['']}:a/b"], check=True, capture_output=True, text=True
    )
    assert sub.stdout.strip() == commit.trees["a/b"]
