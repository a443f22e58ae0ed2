"""The cache array fetches each blob from its origin once: several nodes
(real server processes on 127.0.0.x, each its own cache) that want the same
content at once get every blob of known digest through its owner, which
fetches it once and streams it to the others while it arrives; faults
(the owner killed mid-stream, wrong bytes, a dead peer) end with correct
bytes; fan-out is bounded by --peer-fanout."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_cache_array import TOKEN, free_port, metric

pytestmark = pytest.mark.slow


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Array:
    """``n`` nodes on 127.0.0.1..n, each listing all."""

    def __init__(self, tmp_path: Path, n: int, *args: str) -> None:
        self.addresses = [f"127.0.0.{i + 1}:{free_port(f'127.0.0.{i + 1}')}" for i in range(n)]
        self.tmp_path = tmp_path
        self.args = args
        self.stack = ExitStack()
        self.nodes: list[ServerProcess] = []

    def start(self, i: int, *extra: str) -> ServerProcess:
        host, port = self.addresses[i].rsplit(":", 1)
        srv = ServerProcess(
            self.tmp_path / f"n{i}",
            "--peers",
            ",".join(self.addresses),
            *self.args,
            *extra,
            address=f"{host}:{port}",
            env={"NEKKO_CLUSTER_TOKEN": TOKEN},
        )
        return self.stack.enter_context(srv)

    def __enter__(self) -> Array:
        self.nodes = [self.start(i) for i in range(len(self.addresses))]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def owner_index(addresses: list[str], digest: str) -> int:
    weights = [hashlib.sha256(f"{a}|{digest}".encode()).hexdigest() for a in addresses]
    return weights.index(max(weights))


def post_all(nodes: list[ServerProcess], body: dict[str, Any]) -> list[Any]:
    def post(srv: ServerProcess) -> Any:
        with srv.client() as c:
            return c.post("/content/", json=body)

    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(post, nodes))


def origin_gets(origin: Source, path: str) -> int:
    return len([r for r in origin.requests_for(path) if r.method == "GET"])


def test_three_nodes_posting_one_url_fetch_it_from_the_origin_once(tmp_path: Path) -> None:
    data = os.urandom(12 * 1024 * 1024 + 7)
    with Source() as origin, Array(tmp_path, 3) as array:
        origin.add_file("/model.bin", data)
        origin.set_delay("/model.bin", 0.02, 256 * 1024)  # ~12 MiB/s: still arriving when asked
        answers = post_all(array.nodes, {"url": origin.url("/model.bin"), "digest": sha(data)})
        for r in answers:
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
        assert origin_gets(origin, "/model.bin") == 1
        owner = owner_index(array.addresses, sha(data))
        for i, srv in enumerate(array.nodes):
            if i != owner:
                assert "from peer" in srv.log()
                assert metric(srv, 'storage_manager_peer_bytes_total{direction="received"}') >= len(
                    data
                )
        assert metric(array.nodes[owner], "storage_manager_origin_bytes_total") == len(data)


def wait_for(what: str, check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def bytes_done(srv: ServerProcess, url: str) -> int:
    with srv.client() as c:
        return int(c.get(f"/content/{b64(url)}").json().get("bytesDone", 0))


def test_the_owner_killed_mid_stream_the_others_finish_from_the_next_node(
    tmp_path: Path,
) -> None:
    data = os.urandom(16 * 1024 * 1024 + 3)
    digest = sha(data)
    with Source() as origin, Array(tmp_path, 3) as array:
        origin.add_file("/model.bin", data)
        origin.set_delay("/model.bin", 0.05, 256 * 1024)  # ~5 MiB/s: seconds to kill it in
        url = origin.url("/model.bin")
        owner = owner_index(array.addresses, digest)
        others = [n for i, n in enumerate(array.nodes) if i != owner]
        with ThreadPoolExecutor(2) as pool:
            answers = [
                pool.submit(lambda s: post_all([s], {"url": url, "digest": digest})[0], n)
                for n in others
            ]
            wait_for("bytes from the owner", lambda: all(bytes_done(n, url) > 0 for n in others))
            array.nodes[owner].kill()
            results = [a.result() for a in answers]
        for r in results:
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
        logs = [n.log() for n in others]
        assert all(f"peer {array.addresses[owner]}" in log for log in logs)
        # The next node in rendezvous order took over: the third one resumed from it,
        # and the origin sent the blob at most once more (to the new owner).
        assert any("resuming" in log for log in logs), logs
        assert origin_gets(origin, "/model.bin") <= 2


class _WrongBytes(BaseHTTPRequestHandler):
    """A peer that answers every blob request with bytes of the right length, all wrong."""

    size = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        self.wfile.write(b"\0" * self.size)

    def log_message(self, *args: object) -> None:
        pass


def _owned_by(address: str, others: list[str], size: int) -> bytes:
    """Random data whose digest ``address`` owns among ``address`` and ``others``."""
    for _ in range(200):
        data = os.urandom(size)
        everyone = [address, *others]
        if owner_index(everyone, sha(data)) == 0:
            return data
    raise AssertionError("no data owned by the address in 200 draws")


def test_a_peer_that_sends_wrong_bytes_for_a_blob_is_skipped_and_nothing_kept(
    tmp_path: Path,
) -> None:
    liar = ThreadingHTTPServer(("127.0.0.9", 0), _WrongBytes)
    liar_addr = f"127.0.0.9:{liar.server_address[1]}"
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    port = free_port("127.0.0.1")
    me = f"127.0.0.1:{port}"
    data = _owned_by(liar_addr, [me], 2 * 1024 * 1024)
    _WrongBytes.size = len(data)
    try:
        with (
            Source() as origin,
            ServerProcess(
                tmp_path / "a",
                "--peers",
                f"{me},{liar_addr}",
                address=me,
                env={"NEKKO_CLUSTER_TOKEN": TOKEN},
            ) as a,
            a.client() as c,
        ):
            origin.add_file("/m.bin", data)
            r = c.post("/content/", json={"url": origin.url("/m.bin"), "digest": sha(data)})
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
            log = a.log()
            assert f"peer {liar_addr}: {sha(data)} not fetched from it" in log, log
            assert "from the origin (peers skipped)" in log
            assert origin_gets(origin, "/m.bin") == 1
            # The liar answered, so it is not down: only skipped for that blob.
            peers = c.get("/admin/peers").json()["peers"]
            assert [p["state"] for p in peers] == ["up"]
            partial = [p.name for p in (tmp_path / "a" / "ingest").iterdir()]
            assert set(partial) <= {"small", "unsynced"}, partial  # no download's bytes left
    finally:
        liar.shutdown()


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_dead_or_silent_owner_is_skipped_within_seconds(tmp_path: Path, kind: str) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.9", 0))
    if kind == "silent":
        dead.listen(16)  # connections complete in the kernel; nothing ever answers
    dead_addr = f"127.0.0.9:{dead.getsockname()[1]}"
    port = free_port("127.0.0.1")
    me = f"127.0.0.1:{port}"
    data = _owned_by(dead_addr, [me], 1024 * 1024)
    try:
        with (
            Source() as origin,
            ServerProcess(
                tmp_path / "a",
                "--peers",
                f"{me},{dead_addr}",
                "--idle-timeout",
                "2",
                address=me,
                env={"NEKKO_CLUSTER_TOKEN": TOKEN},
            ) as a,
            a.client() as c,
        ):
            origin.add_file("/m.bin", data)
            started = time.monotonic()
            r = c.post("/content/", json={"url": origin.url("/m.bin"), "digest": sha(data)})
            took = time.monotonic() - started
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
            peers = c.get("/admin/peers").json()["peers"]
            assert [(p["address"], p["state"]) for p in peers] == [(dead_addr, "down")]
            # Not a timed assertion of speed: the bound is the timeouts' (3 s connect, idle 2 s).
            assert took < 30, took
    finally:
        dead.close()


def test_the_origin_unreachable_and_no_peer_holding_it_is_the_single_node_error(
    tmp_path: Path,
) -> None:
    gone = f"http://127.0.0.1:{free_port('127.0.0.1')}/m.bin"
    body = {"url": gone, "digest": "sha256:" + "ab" * 32}
    with ServerProcess(tmp_path / "single") as single, single.client() as c:
        alone = c.post("/content/", json=body)
    with Array(tmp_path, 3) as array, array.nodes[0].client() as c:
        r = c.post("/content/", json=body)
    assert alone.status_code == r.status_code == 502, (alone.text, r.text)
    assert alone.json()["error"]["code"] == r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE"


def test_fan_out_is_bounded_and_every_node_gets_the_blob(tmp_path: Path) -> None:
    data = os.urandom(24 * 1024 * 1024 + 1)
    with Source() as origin, Array(tmp_path, 8, "--peer-fanout", "2") as array:
        origin.add_file("/model.bin", data)
        origin.set_delay("/model.bin", 0.02, 256 * 1024)
        answers = post_all(array.nodes, {"url": origin.url("/model.bin"), "digest": sha(data)})
        for r in answers:
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
        assert origin_gets(origin, "/model.bin") == 1
        most = []
        for srv in array.nodes:
            with srv.client() as c:
                most.append(c.get("/admin/peers").json()["fanout"]["mostAtOnce"])
        assert max(most) <= 2, most
        # Seven nodes asked at once and no node served more than two: some were sent on.
        redirects = sum(
            srv.log().count("/peer/v1/blobs/") and srv.log().count('" 307 ') for srv in array.nodes
        )
        assert redirects > 0, most
