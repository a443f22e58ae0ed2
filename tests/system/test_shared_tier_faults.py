"""The shared store (--shared-store) failing: a store that refuses
connections, and one that accepts them and never answers. Either way every
download is served by the origin as if there were no store, the node says
once that the store is down, and a clean stop does not wait for uploads to
it. Also: the store's credentials never reach the log, and deleting an
entry on a node leaves the store alone."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3 import MotoS3, free_port
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_cache_array import metric
from tests.system.test_shared_tier import (
    BUCKET,
    blob_of,
    keys,
    origin_gets,
    post,
    sha,
    wait_for,
    written_back,
)

pytestmark = pytest.mark.slow

# Distinctive values: whatever the node logs, these never appear in it.
ACCESS_KEY = "AKIDLOGCHECK7Q2W9E4R"
SECRET_KEY = "sekrit-never-logged-4f9a2c7e1b"


def store_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def node(path: Path, endpoint: str, prefix: str = "cluster") -> ServerProcess:
    return ServerProcess(
        path,
        "--shared-store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-addressing-style",
        "path",
        env=store_env(endpoint),
    )


@pytest.fixture
def origin() -> Iterator[Source]:
    with Source() as src:
        yield src


@pytest.fixture
def stalled() -> Iterator[str]:
    """An endpoint that takes connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def no_secrets(log: str) -> None:
    assert SECRET_KEY not in log
    assert ACCESS_KEY not in log


def three_downloads(srv: ServerProcess, origin: Source) -> None:
    """Three blobs of known digest, one after the other: each from the origin."""
    for i in range(3):
        data = os.urandom(256 * 1024 + i)
        origin.add_file(f"/f{i}.bin", data)
        r = post(srv, origin.url(f"/f{i}.bin"), sha(data))
        assert r.status_code == 201, r.text
        assert Path(r.json()["path"]).read_bytes() == data
        assert origin_gets(origin, f"/f{i}.bin") == 1


def test_a_store_that_refuses_connections_is_as_if_there_were_none(
    tmp_path: Path, origin: Source
) -> None:
    srv = node(tmp_path / "a", f"http://127.0.0.1:{free_port()}").start()
    try:
        three_downloads(srv, origin)
        log = srv.log()
        assert "not used for 30 s (the peers and the origin serve)" in log
        assert metric(srv, "storage_manager_shared_store_down_total") >= 1
        # Pending write-backs to a store that is down do not hold the stop.
        assert srv.stop() == 0
        assert "the store is down: they resume at the next start" in srv.log()
    finally:
        srv.stop()
    no_secrets(srv.log())
    assert list((tmp_path / "a" / "shared-uploads").glob("*.json"))


def test_a_store_that_never_answers_is_as_if_there_were_none(
    tmp_path: Path, origin: Source, stalled: str
) -> None:
    srv = node(tmp_path / "a", stalled).start()
    try:
        three_downloads(srv, origin)
        log = srv.log()
        assert "no answer within 5 s; not used for 30 s" in log
        assert srv.stop() == 0
    finally:
        srv.stop()
    no_secrets(srv.log())


def test_credentials_are_never_logged_and_a_delete_leaves_the_store_alone(
    tmp_path: Path, origin: Source
) -> None:
    with MotoS3() as moto:  # no auth: any keys are taken, and a request log kept
        moto.boto().create_bucket(Bucket=BUCKET)
        data = os.urandom(1024 * 1024 + 7)
        origin.add_file("/d.bin", data)
        url = origin.url("/d.bin")
        with node(tmp_path / "a", moto.endpoint, "p") as srv:
            r = post(srv, url, sha(data))
            assert r.status_code == 201, r.text
            wait_for("the write-back", lambda: written_back(moto, "p", data))
            before = keys(moto, "p")
            with srv.client() as c:
                encoded = base64.urlsafe_b64encode(url.encode()).decode()
                assert c.delete(f"/content/{encoded}").status_code == 204
                assert c.get(f"/content/{encoded}").status_code == 404
            log = srv.log()
        deleted = [t for m, t, _s in moto.requests() if m == "DELETE"]
        assert not [t for t in deleted if "/blobs/" in t or "/refs/" in t]  # leases only
        assert keys(moto, "p") == before
        assert blob_of(data) in before
        # moto saw the signed requests: the keys were used, not only never logged.
        assert any(m == "PUT" for m, _t, _s in moto.requests())
    no_secrets(log)
