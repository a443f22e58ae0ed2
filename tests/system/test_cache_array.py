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
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
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


def _tls_files(tmp_path: Path, name: str, *hosts: str) -> tuple[Path, Path, Path]:
    """A CA (its PEM), and a certificate and key for ``hosts`` it issued."""
    import trustme

    ca = trustme.CA()
    cert, key, ca_file = (tmp_path / f"{name}-{part}.pem" for part in ("cert", "key", "ca"))
    issued = ca.issue_cert(*hosts)
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def test_peers_talk_https_verified_against_the_cluster_ca(tmp_path: Path) -> None:
    """With --tls-*, peers are reached on their HTTPS listeners (a plain request to
    one fails its handshake, so a copy proves HTTPS), and a certificate that the
    node's --tls-ca did not issue is refused."""
    data = os.urandom(300_000)
    cert, key, ca = _tls_files(tmp_path, "cluster", "127.0.0.1", "127.0.0.2")
    _, _, other_ca = _tls_files(tmp_path, "other", "127.0.0.1", "127.0.0.2")
    ta, tb = free_port("127.0.0.1"), free_port("127.0.0.2")
    a_tls, b_tls = f"127.0.0.1:{ta}", f"127.0.0.2:{tb}"

    def tls_node(name: str, host: str, tls_port: int, ca_file: Path) -> ServerProcess:
        return node(
            tmp_path, name, host, free_port(host), [a_tls, b_tls],
            "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca_file),
            "--tls-address", f"{host}:{tls_port}", "--retry-backoff", "0",
        )  # fmt: skip

    with tls_node("a", "127.0.0.1", ta, ca) as a:
        assert f"listening on https://127.0.0.1:{ta}" in a.log()
        with Source() as origin:
            origin.add_file("/t.bin", data)
            url = origin.url("/t.bin")
            with a.client() as c:
                assert c.post("/content/", json={"url": url}).status_code == 201
        # The origin is gone. b trusts the cluster's CA: a copy, over HTTPS.
        with tls_node("b", "127.0.0.2", tb, ca) as b, b.client() as c:
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, b.log()
            assert Path(r.json()["path"]).read_bytes() == data
            assert f"copied {url} from peer {a_tls}" in b.log()
        # c trusts another CA: a's certificate is refused, so no copy; the origin's error.
        with tls_node("c", "127.0.0.2", tb, other_ca) as c_node, c_node.client() as c:
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 502, r.text
            assert f"peer {a_tls}: no copy of {url}" in c_node.log()
            assert not (tmp_path / "c" / "blobs" / "sha256" / sha(data)[7:]).exists()


def test_the_https_listener_serves_the_same_api_byte_for_byte(tmp_path: Path) -> None:
    """Blobs over HTTPS (the fast path, sendfile sizes, ranges) are the blobs: no byte
    may go to the socket past the TLS layer."""
    data = os.urandom(5 * 1024 * 1024 + 3)
    cert, key, ca = _tls_files(tmp_path, "cluster", "127.0.0.1")
    tls_port = free_port("127.0.0.1")
    args = (
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-address",
        f"127.0.0.1:{tls_port}",
    )
    with ServerProcess(tmp_path / "c", *args) as srv, Source() as origin:
        origin.add_file("/big.bin", data)
        with srv.client() as c:
            body = c.post("/content/", json={"url": origin.url("/big.bin")}).json()
        name = body["reference"].rsplit(":", 1)[0]
        with httpx.Client(
            base_url=f"https://127.0.0.1:{tls_port}",
            verify=ssl.create_default_context(cafile=str(ca)),
        ) as c:
            path = f"/v2/{name}/blobs/{sha(data)}"
            assert c.get(path).content == data
            assert c.head(path).headers["content-length"] == str(len(data))
            ranged = c.get(path, headers={"Range": "bytes=100-4195"})
            assert ranged.status_code == 206 and ranged.content == data[100:4196]
            assert c.get("/healthz").json() == {"status": "ok"}
