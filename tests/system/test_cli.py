"""The operator CLI driven as a user would: subprocesses against a real server
(the one running on the cache, or the private one a command starts itself),
and the progress bar on a pseudo-terminal."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cli(cache: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--cache-dir", str(cache), timeout=timeout)


def test_help_names_every_command() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for command in ("serve", "pull", "ls", "inspect", "rm", "gc", "verify", "du"):
        assert command in r.stdout
    r = run_cli("pull", "--help")
    assert r.returncode == 0 and "--credentials-env" in r.stdout and "--json" in r.stdout


def test_commands_without_a_server(tmp_path: Path, source: Source) -> None:
    """No server runs on the cache: each command starts a private one."""
    cache = tmp_path / "cache"
    with ServerProcess(cache):  # make the layout, then stop
        pass
    data = os.urandom(200_000)
    source.add_file("/m.gguf", data)
    url = source.url("/m.gguf")
    r = cli(cache, "pull", url)
    assert r.returncode == 0, r.stderr
    assert f"stored: {url}" in r.stdout and sha(data) in r.stdout
    assert "━" not in r.stderr  # no progress bar when not on a terminal
    r = cli(cache, "pull", url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["digest"] == sha(data)

    entries = json.loads(cli(cache, "ls", "--json").stdout)
    assert [e["url"] for e in entries] == [url]
    table = cli(cache, "ls").stdout
    assert url in table and "complete" in table and "REFERENCE" in table

    one = json.loads(cli(cache, "inspect", url, "--json").stdout)
    assert one["digest"] == sha(data) and Path(one["path"]).read_bytes() == data
    holders = json.loads(cli(cache, "inspect", sha(data), "--json").stdout)
    assert [e["url"] for e in holders["entries"]] == [url]
    assert cli(cache, "inspect", "sha256:" + "0" * 64).returncode == 3

    du = json.loads(cli(cache, "du", "--json").stdout)
    assert du["entries"] == 1 and du["blobBytes"] >= len(data) and du["unreferencedBytes"] == 0

    # gc: an unreferenced blob and a stale partial download go, the entry stays.
    stray = os.urandom(5000)
    blob = cache / "blobs" / "sha256" / hashlib.sha256(stray).hexdigest()
    blob.write_bytes(stray)
    stale = cache / "ingest" / ("ab" * 32)
    stale.mkdir()
    (stale / "data").write_bytes(b"x" * 1000)
    old = time.time() - 3 * 24 * 3600
    os.utime(stale / "data", (old, old))
    fresh = cache / "ingest" / ("cd" * 32)
    fresh.mkdir()
    (fresh / "data").write_bytes(b"y" * 10)
    r = cli(cache, "gc", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"blobsRemoved": 1, "ingestRemoved": 1, "bytesFreed": 6000}
    assert not blob.exists() and not stale.exists() and fresh.exists()
    assert "freed" in cli(cache, "gc", "--ingest-age", "0").stdout
    assert not fresh.exists()
    assert cli(cache, "verify").returncode == 0

    r = cli(cache, "rm", url)
    assert r.returncode == 0 and f"deleted {url}" in r.stdout
    r = cli(cache, "rm", url)
    assert r.returncode == 3 and "not in the cache" in r.stderr
    assert json.loads(cli(cache, "ls", "--json").stdout) == []
    assert not list((cache / "blobs" / "sha256").iterdir())


def test_commands_use_the_running_server(tmp_path: Path, source: Source) -> None:
    source.add_file("/f", b"from the running server")
    cache = tmp_path / "cache"
    with ServerProcess(cache) as srv:
        address = srv.base_url.split("://", 1)[1]
        r = cli(cache, "pull", source.url("/f"), "--address", address)
        assert r.returncode == 0, r.stderr
        r = cli(cache, "ls", "--json", "--address", address)
        assert [e["url"] for e in json.loads(r.stdout)] == [source.url("/f")]
        time.sleep(0.1)
        assert any('"POST /content/' in line for line in srv.lines)
        assert any('"GET /content/' in line for line in srv.lines)
    # The server is gone, the lock free: a private server again.
    assert cli(cache, "ls", "--json").returncode == 0


def test_failures_and_exit_codes(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    with ServerProcess(cache):
        pass
    r = cli(cache, "pull", source.url("/missing"))
    assert r.returncode == 1 and "UPSTREAM_NOT_FOUND" in r.stderr
    r = run_cli("ls", "--cache-dir", str(tmp_path / "nowhere"), "--address", "127.0.0.1:1")
    assert r.returncode == 4 and "no storage-manager answers" in r.stderr
    r = cli(cache, "pull", source.url("/x"), "--credentials-env", "NO_SUCH_VARIABLE_9")
    assert r.returncode == 2 and "NO_SUCH_VARIABLE_9" in r.stderr


def test_pull_shows_progress_on_a_terminal(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "cache"
    with ServerProcess(cache):
        pass
    data = os.urandom(4 * 1024 * 1024)
    source.add_file("/slow.bin", data)
    source.set_delay("/slow.bin", 0.05, chunk=128 * 1024)  # about 1.6 s
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("CACHE_DIR", "NEKKO_ADDRESS")}
    env.update({"COLUMNS": "120", "TERM": "xterm"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "pull", source.url("/slow.bin"), "--cache-dir", str(cache)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(controller)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "slow.bin" in text  # the blob's own line
    assert "/4.0 MiB" in text  # bytes done of the total, in ls's units (MiB)
    assert "4.0/4.0 MiB" in text  # the bar ends at 100%
    assert "MiB/s" in text or "KiB/s" in text  # a rate, in the same units
    assert "stored:" in text and sha(data) in text
