"""The ``/hf`` tree listing of deep repositories: git tree ids are computed
without recursion (one frame per directory used to reach Python's recursion
limit), and agree with git's."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from proxy.cache.grammar import MAX_TITLE_DEPTH
from proxy.service.hub import HubFile, git_trees
from proxy.types import Descriptor, Digest
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess


def hub_file(path: str, data: bytes) -> HubFile:
    oid = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    desc = Descriptor(
        "application/octet-stream", Digest(hashlib.sha256(data).hexdigest()), len(data)
    )
    return HubFile(path, desc, oid, None)


def test_tree_ids_of_a_repository_far_deeper_than_the_recursion_limit() -> None:
    depth = 5 * sys.getrecursionlimit()
    deep = "/".join(["d"] * depth)
    files = {p: hub_file(p, p.encode()) for p in (deep + "/leaf", "top", "d/side")}
    trees = git_trees(files)
    assert len(trees) == depth + 1  # every directory and the root
    assert trees[deep] != trees[deep.rsplit("/", 1)[0]]


def test_tree_ids_are_git_s(tmp_path: Path) -> None:
    files = {
        p: hub_file(p, p.encode() * 3)
        for p in ("a", "a.b", "a-b/c", "b/c/d/e", "b/c/f", "b/g", "c/d", "c.d/e", "z")
    }
    repo = tmp_path / "repo"
    for p in files:
        (repo / p).parent.mkdir(parents=True, exist_ok=True)
        (repo / p).write_bytes(p.encode() * 3)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:1], "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    for directory, oid in git_trees(files).items():
        spec = f"HEAD:{directory}" if directory else "HEAD^{tree}"
        got = subprocess.run(
            [*git, "rev-parse", spec], check=True, capture_output=True, text=True
        ).stdout.strip()
        assert got == oid, directory


def test_tree_listing_of_a_deep_repository_over_http(server: ServerProcess) -> None:
    """As deep as a file's path may go (proxy.cache.grammar: MAX_TITLE_DEPTH
    directories); the tree ids themselves have no depth limit (above)."""
    depth = MAX_TITLE_DEPTH - 1  # directories, then the file
    deep = "/".join(["d"] * depth) + "/leaf.bin"
    with FakeHub() as hub:
        hub.add_repo("org/deep")
        hub.add_file("org/deep", deep, b"at the bottom")
        hub.add_file("org/deep", "top.txt", b"at the top")
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10 * depth)  # the fake Hub's own tree code recurses
        try:
            commit = hub.commit("org/deep")
            host = hub.host
            with server.client() as c:
                r = c.post("/content/", json={"url": f"hf://{host}/org/deep"})
        finally:
            sys.setrecursionlimit(limit)
        assert r.status_code == 201, r.text
    with server.client() as c:
        r = c.get(f"/hf/api/models/org/deep/tree/{commit}", params={"recursive": "true"})
        assert r.status_code == 200, r.text[:300]
        paths = {item["path"]: item for item in r.json()}
        assert paths[deep]["type"] == "file" and paths["top.txt"]["type"] == "file"
        assert sum(1 for item in paths.values() if item["type"] == "directory") == depth
        top = c.get(f"/hf/api/models/org/deep/tree/{commit}").json()
        assert sorted(item["path"] for item in top) == ["d", "top.txt"]
        below = "/".join(["d"] * (depth - 1))
        r = c.get(f"/hf/api/models/org/deep/tree/{commit}/{below}")
        assert r.status_code == 200, r.text[:300]
        assert [item["path"] for item in r.json()] == [below + "/d"]
    assert "RecursionError" not in server.log()


def test_a_path_deeper_than_a_title_may_go_is_refused(server: ServerProcess) -> None:
    deep = "/".join(["d"] * MAX_TITLE_DEPTH) + "/leaf.bin"
    with FakeHub() as hub:
        hub.add_repo("org/deeper")
        hub.add_file("org/deeper", deep, b"too deep")
        hub.commit("org/deeper")
        host = hub.host
        with server.client() as c:
            r = c.post("/content/", json={"url": f"hf://{host}/org/deeper"})
        assert r.status_code == 502 and "unsafe path" in r.text, r.text
    assert "RecursionError" not in server.log()
