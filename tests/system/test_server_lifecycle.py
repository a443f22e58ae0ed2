"""Configuration, the cache lock, Unix sockets, restarts and crash recovery."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from proxy.config import Address, ConfigError, build
from tests.conftest import b64
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_defaults_match_the_seed() -> None:
    cfg = build({}, {})
    assert str(cfg.cache_dir) == "/var/lib/nekko/cache"
    assert str(cfg.address) == "localhost:8050"
    assert cfg.verbose == 0


def test_flags_beat_environment_beat_defaults() -> None:
    env = {"CACHE_DIR": "/env/cache", "NEKKO_ADDRESS": "127.0.0.1:9000", "VERBOSE": "1"}
    cfg = build({}, env)
    assert (str(cfg.cache_dir), str(cfg.address), cfg.verbose) == (
        "/env/cache",
        "127.0.0.1:9000",
        1,
    )
    cfg = build({"cache_dir": "/flag", "address": "unix:/run/sm.sock", "verbose": "2"}, env)
    assert (str(cfg.cache_dir), cfg.address.unix_path, cfg.verbose) == (
        "/flag",
        Path("/run/sm.sock"),
        2,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:8050", Address("localhost", 8050)),
        (":8050", Address("", 8050)),
        ("[::1]:0", Address("::1", 0)),
        ("unix:/tmp/x.sock", Address(unix_path=Path("/tmp/x.sock"))),
        ("/run/sm/api.sock", Address(unix_path=Path("/run/sm/api.sock"))),
    ],
)
def test_address_forms(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected


@pytest.mark.parametrize("bad", ["localhost", "host:http", "host:70000", "::1:80", "", "unix:"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ConfigError):
        Address.parse(bad)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--verbose", "loud"], {}),
        ([], {"VERBOSE": "x"}),
        (["--address", "nohostport"], {}),
        ([], {"NEKKO_ADDRESS": "h:99999"}),
        (["--max-downloads", "0"], {}),
        (["--no-such-flag"], {}),
    ],
)
def test_bad_values_exit_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    r = run_cli("--cache-dir", str(tmp_path / "c"), *args, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("storage-manager: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_help_and_entry_points() -> None:
    r = run_cli("--help")
    assert r.returncode == 0 and "--cache-dir" in r.stdout and "CACHE_DIR" in r.stdout
    import shutil
    import subprocess

    exe = shutil.which("storage-manager")
    assert exe is not None, "console script not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False, timeout=20)
    assert out.returncode == 0 and "--address" in out.stdout


def test_second_server_on_the_same_cache_is_refused(cache_dir: Path) -> None:
    with ServerProcess(cache_dir):
        r = run_cli("--cache-dir", str(cache_dir), "--address", "127.0.0.1:0")
        assert r.returncode == 1
        assert "in use by another storage-manager" in r.stderr
        assert "Traceback" not in r.stderr


def test_unix_socket(tmp_path: Path, source: Source) -> None:
    sock = tmp_path / "run" / "sm.sock"
    sock.parent.mkdir()
    source.add_file("/u", b"over a unix socket")
    with ServerProcess(tmp_path / "cache", address=f"unix:{sock}") as srv:
        mode = stat.S_IMODE(sock.stat().st_mode)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert mode & 0o007 == 0, oct(mode)  # not reachable by "other"
        with srv.client() as c:
            r = c.post("/content/", json={"url": source.url("/u")})
            assert r.status_code == 201
            assert c.get(f"/content/{b64(source.url('/u'))}").status_code == 200
    # A restart on the same path works (the old socket file is replaced).
    with ServerProcess(tmp_path / "cache", address=str(sock)) as srv, srv.client() as c:
        assert c.get(f"/content/{b64(source.url('/u'))}").status_code == 200


def test_restart_finds_the_cache_intact(cache_dir: Path, source: Source) -> None:
    data = os.urandom(200_000)
    source.add_file("/keep", data)
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/keep")}).status_code == 201
    n = len(source.requests)
    with ServerProcess(cache_dir) as srv, srv.client() as c:
        r = c.get(f"/content/{b64(source.url('/keep'))}")
        assert r.status_code == 200 and r.json()["digest"] == sha(data)
        assert c.post("/content/", json={"url": source.url("/keep")}).status_code == 200
    assert len(source.requests) == n


def test_kill_during_download_then_resume(cache_dir: Path, source: Source) -> None:
    data = os.urandom(4_000_000)
    source.add_file("/k", data)
    source.set_delay("/k", 0.03, chunk=65536)  # ~2 s
    url = source.url("/k")
    srv = ServerProcess(cache_dir).start()
    t = threading.Thread(target=lambda: _post_quietly(srv, url), daemon=True)
    t.start()
    with srv.client() as c:
        for _ in range(300):
            r = c.get(f"/content/{b64(url)}")
            if r.status_code == 206 and r.json()["bytesDone"] > 500_000:
                break
            time.sleep(0.01)
    srv.kill()
    source.set_delay("/k", 0.0)
    with ServerProcess(cache_dir) as srv2, srv2.client() as c:
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 206 and g.json()["state"] == "interrupted"
        done = g.json()["bytesDone"]
        assert done > 0
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201 and r.json()["digest"] == sha(data)
    last = [q for q in source.requests_for("/k") if q.method == "GET"][-1]
    assert last.headers["range"] == f"bytes={done}-"
    for p in (cache_dir / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name


def _post_quietly(srv: ServerProcess, url: str) -> None:
    try:
        with srv.client() as c:
            c.post("/content/", json={"url": url})
    except Exception:  # noqa: S110 - the server is killed under it on purpose
        pass


def test_stray_index_temp_files_are_removed(cache_dir: Path) -> None:
    with ServerProcess(cache_dir):
        pass
    stray = cache_dir / "index.json.tmp-999-1"
    stray.write_text("{half")
    with ServerProcess(cache_dir):
        assert not stray.exists()
    json.loads((cache_dir / "index.json").read_text())
