"""The shared second tier (--shared-store) on moto's S3 server: server
processes on loopback, each with its own cache, one store between them.
A node with an empty cache reads what another wrote back (the origin is not
asked again); an object whose bytes are not its name is never used; pending
write-backs resume after kill -9 and finish before a clean stop; two nodes
without peers fetch one blob from the origin once, thanks to the lease."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3 import MotoS3, Relay
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_cache_array import metric

pytestmark = pytest.mark.slow

BUCKET = "shared"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def prefix() -> str:
    return "cluster-" + uuid.uuid4().hex[:12]


@pytest.fixture
def origin() -> Iterator[Source]:
    with Source() as src:
        yield src


def node(
    tmp_path: Path,
    name: str,
    moto: MotoS3,
    prefix: str,
    endpoint: str | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    return ServerProcess(
        tmp_path / name,
        "--shared-store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-addressing-style",
        "path",
        env={**moto.server_env(endpoint), **(env or {})},
    )


def post(srv: ServerProcess, url: str, digest: str) -> Any:
    with srv.client() as c:
        return c.post("/content/", json={"url": url, "digest": digest})


def keys(moto: MotoS3, prefix: str) -> set[str]:
    found = moto.boto().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :] for o in found.get("Contents", [])}


def wait_for(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def origin_gets(origin: Source, path: str) -> int:
    return len([r for r in origin.requests_for(path) if r.method == "GET"])


def blob_of(data: bytes) -> str:
    return "blobs/sha256/" + hashlib.sha256(data).hexdigest()


def written_back(moto: MotoS3, prefix: str, data: bytes) -> bool:
    found = keys(moto, prefix)
    return blob_of(data) in found and any(k.startswith("refs/") for k in found)


def test_a_new_node_reads_what_another_wrote_back_and_the_origin_is_not_asked_again(
    tmp_path: Path, moto: MotoS3, prefix: str, origin: Source
) -> None:
    data = os.urandom(20 * 1024 * 1024 + 5)  # three ranged reads
    origin.add_file("/model.bin", data)
    url = origin.url("/model.bin")
    with node(tmp_path, "a", moto, prefix) as a:
        r = post(a, url, sha(data))
        assert r.status_code == 201, r.text
        wait_for("the write-back", lambda: written_back(moto, prefix, data))
        # The blob, and the entry's small manifest.
        written = metric(a, 'storage_manager_shared_store_bytes_total{direction="written"}')
        assert len(data) < written < len(data) + 64 * 1024
        assert "conditional writes work" in a.log()
    got = moto.boto().get_object(Bucket=BUCKET, Key=f"{prefix}/{blob_of(data)}")["Body"].read()
    assert got == data
    assert origin_gets(origin, "/model.bin") == 1
    with node(tmp_path, "b", moto, prefix) as b:
        r = post(b, url, sha(data))
        assert r.status_code == 201, r.text
        assert Path(r.json()["path"]).read_bytes() == data
        assert origin_gets(origin, "/model.bin") == 1  # the second node read the store
        assert metric(b, 'storage_manager_shared_store_bytes_total{direction="read"}') == len(data)
        assert "from the shared store" in b.log()
    ranged = [t for m, t, s in moto.requests() if m == "GET" and blob_of(data) in t and s == 206]
    assert len(ranged) >= 3


def test_a_store_object_whose_bytes_are_not_its_name_is_never_used(
    tmp_path: Path, moto: MotoS3, prefix: str, origin: Source
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    wrong = bytearray(data)
    wrong[12345] ^= 0xFF
    s3 = moto.boto()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{blob_of(data)}", Body=bytes(wrong))
    origin.add_file("/m.bin", data)
    with node(tmp_path, "a", moto, prefix) as a:
        r = post(a, origin.url("/m.bin"), sha(data))
        assert r.status_code == 201, r.text
        assert Path(r.json()["path"]).read_bytes() == data
        assert origin_gets(origin, "/m.bin") == 1
        assert metric(a, "storage_manager_shared_store_mismatches_total") == 1
        assert "does not match its name" in a.log()

        def repaired() -> bool:
            body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{blob_of(data)}")["Body"].read()
            return bool(body == data)

        wait_for("the write-back to replace the wrong object", repaired)


def test_write_back_resumes_after_kill_9(
    tmp_path: Path, moto: MotoS3, prefix: str, origin: Source
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 1)
    origin.add_file("/k.bin", data)
    paused = node(tmp_path, "a", moto, prefix, env={"NEKKO_FAULT_PAUSE": "shared-upload"})
    with paused as a:
        r = post(a, origin.url("/k.bin"), sha(data))
        assert r.status_code == 201, r.text
        wait_for("the queued write-back", lambda: "fault point shared-upload reached" in a.log())
        a.kill()
    # The entry's manifest and record had not gone up. The blob itself may
    # have, under its lease; what a kill -9 can leave besides is that lease
    # (it expires: LEASE_TTL) and the start-up probe's object (random name).
    left = keys(moto, prefix)
    assert not any(k.startswith("refs/") for k in left)
    lease = "leases/" + blob_of(data).removeprefix("blobs/")
    assert all(k in (blob_of(data), lease) or k.startswith("leases/probes/") for k in left), left
    assert list((tmp_path / "a" / "shared-uploads").glob("*.json"))
    with node(tmp_path, "a", moto, prefix) as again:
        wait_for("the resumed write-back", lambda: written_back(moto, prefix, data))
        assert "resuming 1 pending write-backs" in again.log()
        wait_for(
            "the queue to empty",
            lambda: not list((tmp_path / "a" / "shared-uploads").glob("*.json")),
        )
    assert origin_gets(origin, "/k.bin") == 1


def test_a_clean_stop_finishes_pending_uploads_first(
    tmp_path: Path, moto: MotoS3, prefix: str, origin: Source
) -> None:
    data = os.urandom(1024 * 1024 + 3)
    origin.add_file("/t.bin", data)
    # Every request to the store takes a second: the uploads are still pending
    # when the answer comes, and when SIGTERM does.
    with Relay(("127.0.0.1", moto.port), request_delay=1.0) as relay:
        srv = node(tmp_path, "a", moto, prefix, endpoint=relay.endpoint).start()
        try:
            r = post(srv, origin.url("/t.bin"), sha(data))
            assert r.status_code == 201, r.text
            assert not written_back(moto, prefix, data)
            assert srv.stop() == 0
        finally:
            srv.stop()
    assert written_back(moto, prefix, data)
    assert "pending uploads finished" in srv.log()
    assert not list((tmp_path / "a" / "shared-uploads").glob("*.json"))


def test_two_nodes_without_peers_fetch_a_blob_from_the_origin_once(
    tmp_path: Path, moto: MotoS3, prefix: str, origin: Source
) -> None:
    data = os.urandom(6 * 1024 * 1024 + 11)
    origin.add_file("/big.bin", data)
    origin.set_delay("/big.bin", 0.05, 256 * 1024)  # ~5 MiB/s: the two overlap
    url = origin.url("/big.bin")
    with node(tmp_path, "a", moto, prefix) as a, node(tmp_path, "b", moto, prefix) as b:
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
