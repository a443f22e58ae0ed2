"""The cache array fetches each blob from its origin once: several nodes
(real server processes on 127.0.0.x, each its own cache) that want the same
content at once get every blob of known digest through its owner, which
fetches it once and streams it to the others while it arrives; faults
(the owner killed mid-stream, wrong bytes, a dead peer) end with correct
bytes; fan-out is bounded by --peer-fanout."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

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
