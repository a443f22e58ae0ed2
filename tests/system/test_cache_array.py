"""The cache array with real server processes on loopback (127.0.0.1,
127.0.0.2, ... are all this machine), each with its own cache: an entry one
node holds is copied by another whose origin is out of reach (unreachable,
or outside --allow-upstream), every byte verified; peer routes need the
cluster token; a peer that sends wrong bytes is refused and nothing of it kept;
GET /admin/peers and the metrics say what happened."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source

TOKEN = "cluster-s3cret"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def node(
    tmp_path: Path, name: str, host: str, port: int, peers: list[str], *args: str
) -> ServerProcess:
    return ServerProcess(
        tmp_path / name,
        "--peers",
        ",".join(peers),
        *args,
        address=f"{host}:{port}",
        env={"NEKKO_CLUSTER_TOKEN": TOKEN},
    )


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def metric(srv: ServerProcess, name: str) -> float:
    with srv.client() as c:
        text = c.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    pa, pb = free_port("127.0.0.1"), free_port("127.0.0.2")
    a_addr, b_addr = f"127.0.0.1:{pa}", f"127.0.0.2:{pb}"
    with (
        node(tmp_path, "a", "127.0.0.1", pa, [a_addr, b_addr]) as a,
        node(
            tmp_path, "b", "127.0.0.2", pb, [a_addr, b_addr], "--allow-upstream", "nowhere.test"
        ) as b,
    ):
        yield a, b


def test_an_entry_out_of_reach_of_the_origin_comes_from_a_peer(
    pair: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    a, b = pair
    data = os.urandom(3 * 1024 * 1024 + 5)
    with Source() as origin:
        origin.add_file("/model.bin", data)
        url = origin.url("/model.bin")
        with a.client() as c:
            assert c.post("/content/", json={"url": url}).status_code == 201
    # The origin is gone now, and b may not reach it anyway (--allow-upstream).
    with b.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == sha(data)
        assert Path(body["path"]).read_bytes() == data
        assert c.get(f"/content/{b64(url)}").json()["state"] == "complete"
        assert c.get(f"/v2/{body['reference'].rsplit(':', 1)[0]}/blobs/{sha(data)}").content == data
        peers = c.get("/admin/peers").json()
    assert peers["self"] == b.base_url.split("://", 1)[1]
    assert [p["address"] for p in peers["peers"]] == [a.base_url.split("://", 1)[1]]
    assert peers["peers"][0]["state"] == "up"
    assert metric(b, 'storage_manager_peer_bytes_total{direction="received"}') >= len(data)
    assert metric(a, 'storage_manager_peer_bytes_total{direction="served"}') >= len(data)
    assert "asking the peers" in b.log() and "copied" in b.log()


def test_peer_routes_need_the_cluster_token(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, _ = pair
    digest = "sha256:" + "0" * 64
    with a.client() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = c.get(f"/peer/v1/blobs/{digest}", headers=headers)
            assert r.status_code == 401, r.text
        r = c.get(f"/peer/v1/blobs/{digest}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 404
        r = c.get(
            f"/peer/v1/entries/{b64('http://h/x')}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 404


def test_without_peers_there_are_no_peer_routes(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "c") as srv, srv.client() as c:
        assert c.get("/peer/v1/blobs/sha256:" + "0" * 64).status_code == 404
        assert c.get("/admin/peers").status_code == 404


class _LyingPeer(BaseHTTPRequestHandler):
    """A peer that lists an entry and then sends other bytes for its blobs."""

    listing: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        if self.path.startswith("/peer/v1/entries/"):
            body = json.dumps(self.listing).encode()
        elif self.path.startswith("/peer/v1/blobs/"):
            size = next(b["size"] for b in self.listing["blobs"] if self.path.endswith(b["digest"]))
            body = b"x" * size
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_peer_that_sends_wrong_bytes_is_refused_and_the_next_one_asked(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    pa, pb = free_port("127.0.0.1"), free_port("127.0.0.2")
    liar = ThreadingHTTPServer(("127.0.0.3", 0), _LyingPeer)
    liar_addr = f"127.0.0.3:{liar.server_address[1]}"
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    try:
        a_addr = f"127.0.0.1:{pa}"
        with node(tmp_path, "a", "127.0.0.1", pa, [a_addr]) as a:
            with Source() as origin:
                origin.add_file("/m.bin", data)
                url = origin.url("/m.bin")
                with a.client() as c:
                    assert c.post("/content/", json={"url": url}).status_code == 201
            with a.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                _LyingPeer.listing = c.get(f"/peer/v1/entries/{b64(url, urlsafe=True)}").json()
            # Only the liar: refused, nothing kept, the origin's error stands.
            with node(tmp_path, "b", "127.0.0.2", pb, [liar_addr]) as b, b.client() as c:
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 502, r.text
                assert not (tmp_path / "b" / "blobs" / "sha256" / sha(data)[7:]).exists()
                log = b.log()
                assert f"peer {liar_addr}: no copy of {url}" in log, log
            # The liar and a peer that holds it: the right bytes, whichever is asked first.
            with (
                node(tmp_path, "b", "127.0.0.2", pb, [liar_addr, a_addr]) as b,
                b.client() as c,
            ):
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 201, r.text
                assert Path(r.json()["path"]).read_bytes() == data
    finally:
        liar.shutdown()


def test_storage_manager_peers_lists_them(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    address = a.base_url.split("://", 1)[1]
    r = run_cli("peers", "--address", address, "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [p["address"] for p in listed["peers"]] == [b.base_url.split("://", 1)[1]]
    r = run_cli("peers", "--address", address)
    assert r.returncode == 0 and "up" in r.stdout and b.base_url.split("://", 1)[1] in r.stdout


def test_an_unreachable_origin_sends_the_node_to_its_peers(tmp_path: Path) -> None:
    data = os.urandom(500_000)
    pa, pb = free_port("127.0.0.1"), free_port("127.0.0.2")
    a_addr, b_addr = f"127.0.0.1:{pa}", f"127.0.0.2:{pb}"
    with (
        node(tmp_path, "a", "127.0.0.1", pa, [a_addr, b_addr]) as a,
        node(tmp_path, "b", "127.0.0.2", pb, [a_addr, b_addr], "--retry-backoff", "0") as b,
    ):
        with Source() as origin:
            origin.add_file("/w.bin", data)
            url = origin.url("/w.bin")
            with a.client() as c:
                assert c.post("/content/", json={"url": url}).status_code == 201
        with b.client() as c:  # the origin's port is closed now: connection refused
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
    # Neither the origin nor any peer: the error a single node gives.
    with node(tmp_path, "c", "127.0.0.2", pb, [a_addr]) as c_node, c_node.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 502 and r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE", r.text


def test_peer_routes_take_the_cluster_token_not_the_api_token(tmp_path: Path) -> None:
    """With --api-token --protect-reads, a peer still needs (only) the cluster token."""
    port = free_port("127.0.0.1")
    address = f"127.0.0.1:{port}"
    with (
        node(
            tmp_path, "a", "127.0.0.1", port, [address], "--api-token", "api", "--protect-reads"
        ) as a,
        a.client() as c,
    ):
        path = f"/peer/v1/blobs/sha256:{'0' * 64}"
        assert c.get(path, headers={"Authorization": "Bearer api"}).status_code == 401
        assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
        assert c.get("/content/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
