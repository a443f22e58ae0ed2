"""Large bodies on plain TCP, received off the reactor (proxy.fetch.socketbody): every
byte right, and cuts, resets, stalls, corruption, DELETE and a full disk handled as on
the reactor's path. Bodies here are larger than MIN_BODY, so they take that path."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

from proxy.fetch.socketbody import MIN_BODY
from tests.conftest import b64
from tests.fetch.test_faults import (
    FAST,
    blob,
    blob_files,
    delete_cancels_at_once,
    gets,
    ingest_left,
    post,
    ranges,
    sha,
)
from tests.fetch.test_reliability import small_fs  # noqa: F401 - a fixture
from tests.support.server import ServerProcess
from tests.support.source import Source

SIZE = MIN_BODY + 8 * 1024 * 1024 + 123  # not a multiple of any buffer or block
OFF_REACTOR = "off the reactor"


def server(cache: Path, *more: str) -> ServerProcess:
    return ServerProcess(cache, "--retries", "2", "--verbose", "1", *FAST, *more)


def test_a_large_body_is_received_off_the_reactor_byte_for_byte(
    cache_dir: Path, source: Source
) -> None:
    data = os.urandom(SIZE)
    source.add_file("/big", data)
    with server(cache_dir) as srv, srv.client() as c:
        r = post(c, source.url("/big"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data) and r.json()["size"] == SIZE
        assert any(OFF_REACTOR in line for line in srv.lines), srv.log()
        # Its connection was closed (Twisted never saw the end of that body), and the
        # next download works as ever.
        source.add_file("/next", b"small")
        assert post(c, source.url("/next")).status_code == 201
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_a_small_body_stays_on_the_reactor(cache_dir: Path, source: Source) -> None:
    source.add_file("/small", os.urandom(MIN_BODY // 2))
    with server(cache_dir) as srv, srv.client() as c:
        assert post(c, source.url("/small")).status_code == 201
        assert not any(OFF_REACTOR in line for line in srv.lines)


def test_a_cut_is_resumed_where_the_file_ends(cache_dir: Path, source: Source) -> None:
    data = os.urandom(SIZE)
    source.add_file("/cut", data)
    source.cut_after("/cut", MIN_BODY + 3 * 1024 * 1024 + 7)
    with server(cache_dir) as srv, srv.client() as c:
        r = post(c, source.url("/cut"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    first, second = ranges(source, "/cut")
    assert first is None and second is not None
    # Resumed from what reached the file (whole blocks), not from the start.
    resumed_at = int(second.removeprefix("bytes=").rstrip("-"))
    assert MIN_BODY < resumed_at <= MIN_BODY + 3 * 1024 * 1024 + 7
    assert blob(cache_dir, sha(data)).read_bytes() == data


def test_a_reset_is_resumed(cache_dir: Path, source: Source) -> None:
    data = os.urandom(SIZE)
    source.add_file("/rst", data)
    source.reset_after("/rst", MIN_BODY + 1024 * 1024)
    with server(cache_dir) as srv, srv.client() as c:
        r = post(c, source.url("/rst"))
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    assert len(gets(source, "/rst")) == 2


def test_a_stalled_body_times_out_and_is_resumed(cache_dir: Path, source: Source) -> None:
    data = os.urandom(SIZE)
    source.add_file("/stall", data)
    source.stall_after("/stall", MIN_BODY + 2 * 1024 * 1024, 30)
    with server(cache_dir) as srv, srv.client() as c:  # --idle-timeout 1
        t0 = time.monotonic()
        r = post(c, source.url("/stall"))
        assert r.status_code == 201, r.text
        assert time.monotonic() - t0 < 20  # not the 30 s of the stall
        assert r.json()["digest"] == sha(data)
    assert len(gets(source, "/stall")) == 2


def test_a_flipped_byte_is_never_kept(cache_dir: Path, source: Source) -> None:
    data = os.urandom(SIZE)
    source.add_file("/bad", data)
    source.corrupt("/bad", SIZE - 5, times=10)
    with server(cache_dir) as srv, srv.client() as c:
        r = post(c, source.url("/bad"), digest=sha(data))  # what the bytes must hash to
        assert r.status_code == 502, r.text
        assert sha(data) in r.json()["error"]["message"], r.text
        assert c.get(f"/content/{b64(source.url('/bad'))}").status_code == 404
    assert blob_files(cache_dir) == [] and ingest_left(cache_dir) == []


def test_delete_cancels_a_body_being_received_off_the_reactor(
    cache_dir: Path, source: Source
) -> None:
    url = source.url("/slow")
    source.add_file("/slow", os.urandom(SIZE))
    source.stall_after("/slow", MIN_BODY + 1024 * 1024, 40)
    with server(cache_dir, "--idle-timeout", "30") as srv, srv.client() as c:
        # Blocked in the receive, in the stall: only the cancel ends this quickly.
        delete_cancels_at_once(srv, c, url, lambda: any(OFF_REACTOR in x for x in srv.lines))
    assert blob_files(cache_dir) == [] and ingest_left(cache_dir) == []


def test_a_full_disk_is_507_and_leaves_nothing(
    small_fs: Path,  # noqa: F811 - the fixture
    source: Source,
) -> None:
    # The 6 MiB tmpfs fills while the pump writes: the writer's ENOSPC stops the receive.
    source.add_file("/huge", os.urandom(SIZE))
    cache = small_fs / "cache"
    with server(cache) as srv, srv.client() as c:
        r = post(c, source.url("/huge"))
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "DISK_FULL"
        assert any(OFF_REACTOR in line for line in srv.lines), srv.log()
        assert c.get("/v2/").status_code == 200
    assert not list((cache / "ingest").glob("*/data"))


def test_tls_bodies_stay_on_the_reactor(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    data = os.urandom(SIZE)
    with Source(tls=ctx) as tls_source:
        tls_source.add_file("/tls", data)
        srv = server(tmp_path / "cache")
        srv.env = {"SSL_CERT_FILE": str(ca_file)}
        with srv, srv.client() as c:
            r = post(c, tls_source.url("/tls"))
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
            assert not any(OFF_REACTOR in line for line in srv.lines)
