"""The shared tier on gcp-storage-emulator, which ignores ``ifGenerationMatch``:
the start-up probe says so in the log and the tier works without cluster
single flight (read-through and write-back still do). The lease code itself
is tested against a fake that honours the condition (tests/shared/test_gcs_store.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import gcs
from tests.support.gcs import GcsEmulator
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_shared_tier import origin_gets, post, sha, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    if not gcs.available():
        pytest.skip("gcp-storage-emulator not installed")
    with GcsEmulator() as e:
        e.create_bucket("shared-gcs")
        yield e


def node(tmp_path: Path, name: str, emulator: GcsEmulator, prefix: str) -> ServerProcess:
    env = {**emulator.server_env(), "GOOGLE_APPLICATION_CREDENTIALS": ""}
    return ServerProcess(tmp_path / name, "--shared-store", f"gs://shared-gcs/{prefix}", env=env)


def test_a_store_without_conditional_writes_is_said_and_still_read_through(
    tmp_path: Path, emulator: GcsEmulator
) -> None:
    prefix = "cluster-" + uuid.uuid4().hex[:12]
    data = os.urandom(9 * 1024 * 1024 + 1)
    with Source() as origin:
        origin.add_file("/g.bin", data)
        url = origin.url("/g.bin")
        with node(tmp_path, "a", emulator, prefix) as a:
            wait_for("the probe", lambda: "conditional writes" in a.log())
            assert "ignores create-only" in a.log() and "no cluster single flight" in a.log()
            r = post(a, url, sha(data))
            assert r.status_code == 201, r.text
            wait_for("the write-back", lambda: "uploaded sha256:" in a.log())
            wait_for(
                "the queue to empty",
                lambda: not list((tmp_path / "a" / "shared-uploads").glob("*.json")),
            )
        with node(tmp_path, "b", emulator, prefix) as b:
            r = post(b, url, sha(data))
            assert r.status_code == 201, r.text
            assert Path(r.json()["path"]).read_bytes() == data
            assert "from the shared store" in b.log()
        assert origin_gets(origin, "/g.bin") == 1
