"""The Hugging Face mirror under /hf: content pulled with hf:// from the fake Hub
(tests/support/hfhub.py), the Hub then stopped, and the official huggingface_hub
client pointed at the node (HF_ENDPOINT=<node>/hf) with nothing else running."""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.test_hfhub_fake import needs_client, run_client
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess

pytestmark = needs_client

SNAPSHOT_HASHES = """
import hashlib, os
def hashes(d):
    return {os.path.relpath(os.path.join(r, f), d).replace(os.sep, "/"):
            hashlib.sha256(open(os.path.join(r, f), "rb").read()).hexdigest()
            for r, _, fs in os.walk(d) for f in fs}
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


def publish(hub: FakeHub) -> tuple[dict[str, bytes], str]:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "README.md": b"# a model\n",
        "weights/model-00001.safetensors": os.urandom(1_500_000),
        "weights/model-00002.safetensors": os.urandom(300_000),
        "tokenizer/tokenizer.json": os.urandom(20_000),
        "gguf/deep/tiny-Q2_K.gguf": os.urandom(400_000),
    }
    hub.add_repo("org/model")
    for path, data in files.items():
        hub.add_file("org/model", path, data)
    commit = hub.commit("org/model", tag="v1.0")
    return files, commit


def pull(server: ServerProcess, url: str) -> dict[str, Any]:
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


def test_snapshot_and_files_from_the_cache_alone(
    hub: FakeHub, server: ServerProcess, tmp_path: Path
) -> None:
    files, commit = publish(hub)
    pull(server, f"hf://{hub.host}/org/model@v1.0")
    with httpx.Client(base_url=hub.endpoint) as h:
        hub_tree = h.get(f"/api/models/org/model/tree/{commit}?recursive=true").json()
        hub_top = h.get(f"/api/models/org/model/tree/{commit}").json()
        hub_sub = h.get(f"/api/models/org/model/tree/{commit}/gguf").json()
        hub_info = h.get("/api/models/org/model/revision/v1.0?blobs=true").json()
        hub_heads = {p: h.head(f"/org/model/resolve/v1.0/{p}").headers for p in files}
    hub.stop()
    endpoint = f"{server.base_url}/hf"

    # The listings are the Hub's, directory ids (git trees) included.
    with httpx.Client(base_url=endpoint) as c:
        assert c.get(f"/api/models/org/model/tree/{commit}?recursive=true").json() == hub_tree
        assert c.get("/api/models/org/model/tree/v1.0").json() == hub_top
        assert c.get("/api/models/org/model/tree/v1.0/gguf").json() == hub_sub
        info = c.get("/api/models/org/model/revision/v1.0?blobs=true").json()
        assert info["sha"] == commit == hub_info["sha"]
        key = "rfilename"
        assert sorted(info["siblings"], key=lambda s: s[key]) == sorted(
            hub_info["siblings"], key=lambda s: s[key]
        )
        # resolve: the headers huggingface_hub reads, as the Hub sends them.
        for path, data in files.items():
            r = c.head(f"/org/model/resolve/v1.0/{path}")
            assert r.status_code == 200, (path, r.text)
            assert r.headers["x-repo-commit"] == commit
            assert r.headers["content-length"] == str(len(data))
            assert "content-encoding" not in r.headers
            assert not any(k.lower().startswith("x-xet") for k in r.headers)
            want = hub_heads[path]
            if "x-linked-etag" in want:
                assert r.headers["x-linked-etag"] == want["x-linked-etag"] == f'"{sha(data)}"'
                assert r.headers["x-linked-size"] == str(len(data))
                assert r.headers["etag"] == f'"{sha(data)}"'
            else:
                assert r.headers["etag"] == want["etag"]  # the git blob id
                assert "x-linked-etag" not in r.headers
        # A Range, and one past the end.
        data = files["weights/model-00001.safetensors"]
        r = c.get(
            f"/org/model/resolve/{commit}/weights/model-00001.safetensors",
            headers={"Range": "bytes=1000-400999"},
        )
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 1000-400999/{len(data)}"
        assert r.content == data[1000:401000]
        r = c.get("/org/model/resolve/v1.0/config.json", headers={"Range": "bytes=9999-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(files['config.json'])}"

    got = run_client(
        tmp_path,
        endpoint,
        SNAPSHOT_HASHES
        + textwrap.dedent(
            f"""
        lfs = hf_hub_download("org/model", "weights/model-00001.safetensors", revision="v1.0")
        small = hf_hub_download("org/model", "tokenizer/tokenizer.json", revision="{commit}")
        by_tag = snapshot_download("org/model", revision="v1.0")
        by_commit = snapshot_download("org/model", revision="{commit}")
        result = {{"lfs": hashes(os.path.dirname(lfs))["model-00001.safetensors"],
                  "small": hashlib.sha256(open(small, "rb").read()).hexdigest(),
                  "tag": hashes(by_tag), "commit": hashes(by_commit),
                  "same": by_tag == by_commit, "dir": os.path.basename(by_tag),
                  "main": attempt(snapshot_download, "org/model")}}
        """
        ),
    )
    assert got["lfs"] == sha(files["weights/model-00001.safetensors"])
    assert got["small"] == sha(files["tokenizer/tokenizer.json"])
    published = {p: sha(d) for p, d in files.items()}
    assert got["tag"] == got["commit"] == published
    assert got["same"] and got["dir"] == commit
    # "main" was never pulled: the node does not know what it points to.
    assert got["main"]["error"] == "RevisionNotFoundError", got["main"]
    assert "not cached on this node" in got["main"]["message"]


def test_a_partly_cached_repository_gives_no_snapshot(
    hub: FakeHub, server: ServerProcess, tmp_path: Path
) -> None:
    files, commit = publish(hub)
    pull(server, f"hf://{hub.host}/org/model/config.json")
    pull(server, f"hf://{hub.host}/org/model/weights/model-00002.safetensors")
    hub.stop()
    endpoint = f"{server.base_url}/hf"
    got = run_client(
        tmp_path,
        endpoint,
        f"""
        import os
        result = {{"snapshot": attempt(snapshot_download, "org/model"),
                  "by_commit": attempt(snapshot_download, "org/model", revision="{commit}"),
                  "wrote": os.path.exists(os.environ["HF_HUB_CACHE"] + "/models--org--model")}}
        one = hf_hub_download("org/model", "weights/model-00002.safetensors")
        result["one"] = open(one, "rb").read().hex()
        result["missing"] = attempt(hf_hub_download, "org/model", "tokenizer/tokenizer.json")
        # With that one file in its own cache, still no snapshot of the rest.
        result["again"] = attempt(snapshot_download, "org/model")
        """,
    )
    assert bytes.fromhex(got["one"]) == files["weights/model-00002.safetensors"]
    assert not got["wrote"]
    for key in ("snapshot", "by_commit", "again"):
        err = got[key]
        assert err.get("error") == "RevisionNotFoundError", err
        assert "only partly cached on this node" in err["message"], err
    assert got["missing"]["error"] == "RemoteEntryNotFoundError", got["missing"]
    assert "not cached on this node" in got["missing"]["message"]
    # Nothing beyond the one file it downloaded itself: no (partial) snapshot.
    snapshots = tmp_path / "hub" / "models--org--model" / "snapshots"
    written = sorted(str(p.relative_to(snapshots)) for p in snapshots.rglob("*") if p.is_file())
    assert written == [f"{commit}/weights/model-00002.safetensors"]
    assert not (tmp_path / "hub" / "models--org--model" / ".no_exist").exists()
    with httpx.Client(base_url=endpoint) as c:
        for path in (
            "/api/models/org/model/revision/main",
            f"/api/models/org/model/tree/{commit}?recursive=true",
        ):
            r = c.get(path)
            assert r.status_code == 404
            assert r.headers["x-error-code"] == "RevisionNotFound"
            assert "only partly cached" in r.json()["error"]


def test_datasets(hub: FakeHub, server: ServerProcess, tmp_path: Path) -> None:
    hub.add_repo("org/data", repo_type="dataset")
    files = {"data/train.parquet": os.urandom(50_000), "README.md": b"# data\n"}
    for path, data in files.items():
        hub.add_file(hub.repo("org/data", "dataset"), path, data)
    hub.commit(hub.repo("org/data", "dataset"))
    pull(server, f"hf://{hub.host}/datasets/org/data")
    hub.stop()
    got = run_client(
        tmp_path,
        f"{server.base_url}/hf",
        SNAPSHOT_HASHES
        + textwrap.dedent(
            """
        d = snapshot_download("org/data", repo_type="dataset")
        f = hf_hub_download("org/data", "data/train.parquet", repo_type="dataset")
        result = {"all": hashes(d), "one": hashlib.sha256(open(f, "rb").read()).hexdigest(),
                  "as_model": attempt(snapshot_download, "org/data")}
        """
        ),
    )
    assert got["all"] == {p: sha(d) for p, d in files.items()}
    assert got["one"] == sha(files["data/train.parquet"])
    assert got["as_model"]["error"] == "RepositoryNotFoundError", got["as_model"]


def test_bad_requests(hub: FakeHub, server: ServerProcess) -> None:
    publish(hub)
    pull(server, f"hf://{hub.host}/org/model")
    hub.stop()
    with httpx.Client(base_url=f"{server.base_url}/hf") as c:
        for path in (
            "/org/model/resolve/main/weights/%2e%2e/config.json",
            "/org/model/resolve/main/weights%2F..%2Fconfig.json",
            "/org/model/resolve/%2E%2E/config.json",
            "/api/models/org/model/revision/..%2Fx",
            "/api/models/org/model/tree/main/%2E%2E",
            "/api/models/org/model/tree/main?cursor=%%%",
        ):
            r = c.get(path)
            assert r.status_code == 400, (path, r.status_code, r.text)
            assert r.json()["error"], path
        r = c.get("/nobody/nothing/resolve/main/x")
        assert (r.status_code, r.headers["x-error-code"]) == (404, "RepoNotFound")
        r = c.get("/org/model/resolve/v9/config.json")
        assert (r.status_code, r.headers["x-error-code"]) == (404, "RevisionNotFound")
        r = c.head("/org/model/resolve/main/nope.bin")
        assert (r.status_code, r.headers["x-error-code"]) == (404, "EntryNotFound")
        assert len(r.headers["x-repo-commit"]) == 40  # a proven miss at a fully cached commit
        r = c.post("/org/model/resolve/main/config.json", content=b"x")
        assert r.status_code == 405
        assert c.get("/").status_code == 404


def test_protected_reads(hub: FakeHub, cache_dir: Path, tmp_path: Path) -> None:
    files, _ = publish(hub)
    token = "node-secret"
    srv = ServerProcess(cache_dir, "--protect-reads", env={"NEKKO_API_TOKEN": token})
    with srv:
        with srv.client() as c:
            r = c.post(
                "/content/",
                json={"url": f"hf://{hub.host}/org/model/config.json"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 201, r.text
        hub.stop()
        url = f"{srv.base_url}/hf/org/model/resolve/main/config.json"
        assert httpx.get(url).status_code == 401
        assert (
            httpx.get(url, headers={"Authorization": f"Bearer {token}"}).content
            == (files["config.json"])
        )
        got = run_client(
            tmp_path,
            f"{srv.base_url}/hf",
            """
            p = hf_hub_download("org/model", "config.json")
            result = open(p, "rb").read().decode()
            """,
            token=token,
        )
        assert got == files["config.json"].decode()


def test_a_long_tree_listing_is_paged_like_the_hub(
    hub: FakeHub, server: ServerProcess, tmp_path: Path
) -> None:
    hub.add_repo("org/many")
    for i in range(1003):
        hub.add_file("org/many", f"shards/{i // 500}/part-{i:04d}.txt", b"%d\n" % i)
    commit = hub.commit("org/many")
    pull(server, f"hf://{hub.host}/org/many")
    with httpx.Client(base_url=hub.endpoint) as h:
        first = h.get(f"/api/models/org/many/tree/{commit}?recursive=true")
        hub_all = first.json() + h.get(first.links["next"]["url"]).json()
    hub.stop()
    endpoint = f"{server.base_url}/hf"
    with httpx.Client() as c:
        r = c.get(f"{endpoint}/api/models/org/many/tree/main?recursive=true")
        assert len(r.json()) == 1000  # the Hub's page size
        nxt = r.links["next"]["url"]
        assert nxt.startswith(f"{endpoint}/api/models/org/many/tree/main?")  # absolute
        rest = c.get(nxt)
        assert "next" not in rest.links
        assert r.json() + rest.json() == hub_all
    got = run_client(
        tmp_path,
        endpoint,
        """
        from huggingface_hub import HfApi
        entries = list(HfApi().list_repo_tree("org/many", recursive=True))
        result = sorted(e.path for e in entries)
        """,
    )
    assert got == sorted(str(e["path"]) for e in hub_all)
