"""Reliability: a full disk, deleting what is being read, credentials at trace level."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs for the cache (needs root and mount(2); skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_507_and_leaves_nothing(small_fs: Path, source: Source) -> None:
    source.add_file("/small", b"fits" * 1000)
    source.add_file("/big", os.urandom(10 * 1024 * 1024))
    cache = small_fs / "cache"
    with ServerProcess(cache) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": source.url("/big")})
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "DISK_FULL"
        assert [p.name for p in (cache / "blobs" / "sha256").iterdir()] == []
        assert not list((cache / "ingest").glob("*/data"))
        # Still serving, and still storing what fits.
        assert c.get(f"/content/{b64(source.url('/big'))}").status_code == 404
        assert c.post("/content/", json={"url": source.url("/small")}).status_code == 201
        assert c.get("/v2/").status_code == 200


def test_delete_while_a_client_reads_the_blob(server: ServerProcess, source: Source) -> None:
    data = os.urandom(32 * 1024 * 1024)
    source.add_file("/b", data)
    url = source.url("/b")
    with server.client() as c:
        digest = c.post("/content/", json={"url": url}).json()["digest"]
        got = bytearray()
        with server.client() as reader, reader.stream("GET", f"/v2/x/blobs/{digest}") as r:
            chunks = r.iter_bytes(65536)
            got += next(chunks)
            assert c.delete(f"/content/{b64(url)}").status_code == 204
            for chunk in chunks:
                got += chunk
        assert bytes(got) == data  # the open file was not cut from under the reader
        assert c.get(f"/v2/x/blobs/{digest}").status_code == 404


def test_no_credential_reaches_logs_or_disk_even_at_trace_level(
    cache_dir: Path, source: Source
) -> None:
    bearer, password = "planted-bearer-7f3a", "planted-pass-91c2"
    basic = base64.b64encode(f"user:{password}".encode()).decode()
    source.add_file("/a", b"a")
    source.require_auth("/a", f"Bearer {bearer}")
    source.add_file("/b", b"b")
    source.require_auth("/b", f"Basic {basic}")
    for path in ("/d", "/e"):  # refuse the credentials sent
        source.add_file(path, b"x")
        source.require_auth(path, "Bearer another")
    port = source.base_url.rsplit(":", 1)[1]
    with ServerProcess(cache_dir, "--verbose", "2") as srv, srv.client() as c:
        assert (
            c.post("/content/", json={"url": source.url("/a"), "credentials": bearer}).status_code
            == 201
        )
        assert (
            c.post(
                "/content/", json={"url": f"http://user:{password}@127.0.0.1:{port}/b"}
            ).status_code
            == 201
        )
        # Error answers never echo a secret: a missing file, refused credentials,
        # a URL with user:password that fails.
        failures = [
            {"url": source.url("/c"), "credentials": bearer},
            {"url": source.url("/d"), "credentials": bearer},
            {"url": f"http://user:{password}@127.0.0.1:{port}/c"},
            {"url": f"http://user:{password}@127.0.0.1:1/unreachable"},
            {"url": source.url("/e"), "credentials": basic, "credentialsType": "Basic"},
        ]
        for body in failures:
            r = c.post("/content/", json=body)
            assert r.status_code >= 400, (body, r.text)
            for secret in (bearer, password, basic):
                assert secret not in r.text, (body, r.text)
        listing = c.get("/content/").text
        log = srv.log()
    for secret in (bearer, password, basic):
        assert secret not in log
        assert secret not in listing
        for p in cache_dir.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p
