"""The cache array's security rules, with real server processes on loopback:
what a peer asks is never routed again (one hop); a peer cannot make a node
reach a host outside its own --allow-upstream or a metadata address; origin
credentials reach the owner (loopback, with the cluster token) and are
never logged or stored; a peer is never sent the last byte of a blob before
the node verified its digest."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from proxy.service.forward import Origin
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_array_blobs import Array, origin_gets, owner_index, post_all, sha
from tests.system.test_cache_array import TOKEN

pytestmark = pytest.mark.slow

PEER = {"Authorization": f"Bearer {TOKEN}"}


def ask(srv: ServerProcess, digest: str, origin: Origin) -> httpx.Response:
    headers = {**PEER, "X-Nekko-Origin": origin.encode().decode()}
    with srv.client() as c:
        return c.get(f"/peer/v1/blobs/{digest}", headers=headers)


def test_what_a_peer_asks_is_fetched_from_the_origin_never_routed_again(tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    digest = sha(data)
    with Source() as origin, Array(tmp_path, 3) as array:
        origin.add_file("/m.bin", data)
        owner = owner_index(array.addresses, digest)
        asked = array.nodes[(owner + 1) % 3]  # not the owner: it must not ask the owner
        r = ask(asked, digest, Origin(origin.url("/m.bin"), "m.bin"))
        assert r.status_code == 200 and r.content == data
        assert origin_gets(origin, "/m.bin") == 1
        assert f"/peer/v1/blobs/{digest}" not in array.nodes[owner].log()
        assert "from peer" not in asked.log()


def test_a_peer_cannot_make_a_node_reach_what_its_own_rules_refuse(tmp_path: Path) -> None:
    data = os.urandom(4096)
    with Source() as origin, Array(tmp_path, 2, "--allow-upstream", "nowhere.test") as array:
        origin.add_file("/m.bin", data)
        for url in (origin.url("/m.bin"), "http://169.254.169.254/latest/meta-data/"):
            r = ask(array.nodes[0], sha(data), Origin(url, "x"))
            assert r.status_code == 403, r.text
            assert r.json()["errors"][0]["code"] == "DENIED"
        assert origin.requests_for("/m.bin") == []
        with array.nodes[0].client() as c:
            assert c.get("/content/").json()["entries"] == []  # nothing kept, no failure listed


def test_origin_credentials_reach_the_owner_and_are_never_logged_or_stored(
    tmp_path: Path,
) -> None:
    secret = "s3cret-hub-token-9f2c"
    data = os.urandom(3 * 1024 * 1024)
    with Source() as origin, Array(tmp_path, 3) as array:
        origin.add_file("/m.bin", data)
        origin.require_auth("/m.bin", f"Bearer {secret}")
        answers = post_all(
            array.nodes, {"url": origin.url("/m.bin"), "digest": sha(data), "credentials": secret}
        )
        for r in answers:
            assert r.status_code == 201, r.text
        gets = [r for r in origin.requests_for("/m.bin") if r.method == "GET"]
        assert len(gets) == 1 and gets[0].headers["authorization"] == f"Bearer {secret}"
        for srv in array.nodes:
            assert secret not in srv.log()
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_a_peer_never_gets_the_last_byte_of_a_blob_that_fails_its_check(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    with Source() as origin, Array(tmp_path, 2) as array:
        origin.add_file("/m.bin", data)
        origin.corrupt("/m.bin", 1000, times=10)
        headers = {**PEER, "X-Nekko-Origin": Origin(origin.url("/m.bin"), "m").encode().decode()}
        got = b""
        with (
            array.nodes[0].client() as c,
            c.stream("GET", f"/peer/v1/blobs/{sha(data)}", headers=headers) as r,
        ):
            try:
                for chunk in r.iter_bytes():
                    got += chunk
            except httpx.HTTPError:
                pass
        assert len(got) < len(data)
        blob = tmp_path / "n0" / "blobs" / "sha256" / sha(data)[7:]
        assert not blob.exists()
