"""Cluster single flight on Azure Blob Storage (Azurite): two nodes without
peers, one shared store, one blob wanted by both at once: the origin is asked
once (the lease is a create-only write with ``If-None-Match: *``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.azure import Azurite
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_shared_tier import origin_gets, post, sha, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as a:
        a.create_container("shared")
        yield a


def node(tmp_path: Path, name: str, azurite: Azurite, prefix: str) -> ServerProcess:
    location = f"azure://{azurite.account}/shared/{prefix}"
    return ServerProcess(tmp_path / name, "--shared-store", location, env=azurite.server_env())


def test_two_nodes_without_peers_fetch_a_blob_from_the_origin_once(
    tmp_path: Path, azurite: Azurite
) -> None:
    prefix = "cluster-" + uuid.uuid4().hex[:12]
    data = os.urandom(6 * 1024 * 1024 + 11)
    with Source() as origin:
        origin.add_file("/big.bin", data)
        origin.set_delay("/big.bin", 0.05, 256 * 1024)  # ~5 MiB/s: the two overlap
        url = origin.url("/big.bin")
        with node(tmp_path, "a", azurite, prefix) as a, node(tmp_path, "b", azurite, prefix) as b:
            for srv in (a, b):
                wait_for("the probe", lambda s=srv: "conditional writes work" in s.log())  # type: ignore[misc]
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda s: post(s, url, sha(data)), [a, b]))
            for r in answers:
                assert r.status_code == 201, r.text
                assert Path(r.json()["path"]).read_bytes() == data
            assert origin_gets(origin, "/big.bin") == 1
            logs = a.log() + b.log()
            assert "waiting for it in the shared store" in logs
            assert "from the shared store" in logs
