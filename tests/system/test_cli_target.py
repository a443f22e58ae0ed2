"""The CLI acts on the cache it was asked for, as a new user drives it:
subprocesses against real servers, relative paths from another working
directory, a second server of another cache on the default address."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import REPOSITORY, ServerProcess, run_cli
from tests.support.source import Source


def cli_in(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m proxy`` from another working directory (relative paths are the user's)."""
    return run_cli(*args, timeout=timeout, cwd=cwd)


def _address(srv: ServerProcess) -> str:
    return srv.base_url.split("://", 1)[1]


def _entries(srv: ServerProcess) -> list[str]:
    with srv.client() as c:
        return [e["url"] for e in c.get("/content/").json()["entries"]]


def test_commands_never_act_on_another_servers_cache(tmp_path: Path, source: Source) -> None:
    """rm/import with --cache-dir or CACHE_DIR of another directory never reach the
    server that answers at --address: a private server, or a one-line error naming both."""
    source.add_file("/k.bin", os.urandom(50_000))
    url = source.url("/k.bin")
    other = tmp_path / "other"
    with ServerProcess(other) as srv:
        with srv.client() as c:
            assert c.post("/content/", json={"url": url}).status_code == 201
        address = _address(srv)
        # A typo'd cache: nothing there, the entry of the other server stays.
        r = run_cli("rm", url, "--cache-dir", str(tmp_path / "typo"), "--address", address)
        assert r.returncode == 4, r.stderr
        assert f"serves {other}" in r.stderr and str(tmp_path / "typo") in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert _entries(srv) == [url]
        r = run_cli("rm", url, env={"CACHE_DIR": str(tmp_path / "typo"), "NEKKO_ADDRESS": address})
        assert r.returncode == 4 and _entries(srv) == [url]

        # Export the entry, then import it into a new directory: the new cache gets it.
        bundle = tmp_path / "b.tar"
        r = run_cli("export", url, "-o", str(bundle), "--address", address)
        assert r.returncode == 0, r.stderr
        fresh = tmp_path / "fresh"
        r = run_cli("import", str(bundle), env={"CACHE_DIR": str(fresh)})
        assert r.returncode == 0, r.stderr
        assert "imported 1 entry" in r.stdout
        assert (fresh / "index.json").is_file() and url in (fresh / "index.json").read_text()
        # ... and an empty directory is initialised the same way.
        empty = tmp_path / "empty"
        empty.mkdir()
        assert run_cli("import", str(bundle), "--cache-dir", str(empty)).returncode == 0
        assert url in (empty / "index.json").read_text()
        # The other server's cache never saw either import.
        with srv.client() as c:
            assert c.delete("/content/" + _b64(url)).status_code == 204
        assert _entries(srv) == []


def _b64(url: str) -> str:
    import base64

    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def test_the_running_server_of_a_cache_is_found_by_its_lock(tmp_path: Path, source: Source) -> None:
    """With only --cache-dir (relative, from another directory), commands reach the server
    that holds the cache's lock at the address it listens on, not the default one."""
    source.add_file("/r.bin", b"x" * 10_000)
    url = source.url("/r.bin")
    work = tmp_path / "work"
    work.mkdir()
    cache = work / "cache"
    with ServerProcess(cache) as srv:
        lock = (cache / ".lock").read_text().splitlines()
        assert lock[0] == str(srv.proc.pid) and lock[1] == _address(srv)
        r = cli_in(work, "pull", url, "--cache-dir", "cache")
        assert r.returncode == 0, r.stderr
        assert f"path   {cache}/blobs/sha256/" in r.stdout  # absolute
        time.sleep(0.1)
        assert any('"POST /content/' in line for line in srv.lines)
        # verify and export find the cache the same way (here: through the server's address).
        r = cli_in(tmp_path, "verify", "--address", _address(srv))
        assert r.returncode == 0, r.stderr
        r = cli_in(tmp_path, "export", url, "-o", "out.tar", "--address", _address(srv))
        assert r.returncode == 0 and (tmp_path / "out.tar").is_file(), r.stderr
        # A locked cache whose server listens elsewhere: an error naming that server.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            elsewhere = f"127.0.0.1:{s.getsockname()[1]}"
            r = cli_in(work, "verify", "--cache-dir", "cache", "--address", elsewhere)
        assert r.returncode == 4
        assert f"pid {srv.proc.pid}" in r.stderr and _address(srv) in r.stderr


def test_paths_are_absolute_with_a_relative_cache_dir(tmp_path: Path, source: Source) -> None:
    source.add_file("/p.bin", b"p" * 1000)
    env = {k: v for k, v in os.environ.items() if k not in ("CACHE_DIR", "NEKKO_ADDRESS")}
    env["PYTHONPATH"] = str(REPOSITORY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--cache-dir", "./cache", "--address", "127.0.0.1:0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                break
        text = "".join(lines)
        assert f"cache {tmp_path}/cache: 0 entries, 0 interrupted downloads" in text
        base = re.search(r"listening on (http://\S+)", text).group(1)  # type: ignore[union-attr]
        r = httpx.post(base + "/content/", json={"url": source.url("/p.bin")}, timeout=30)
        assert r.status_code == 201
        assert r.json()["path"].startswith(f"{tmp_path}/cache/blobs/sha256/")
        assert all(b["path"].startswith(str(tmp_path)) for b in r.json()["blobs"])
    finally:
        proc.terminate()
        proc.wait(10)


def test_one_entry_is_one_entry_and_startup_messages(tmp_path: Path) -> None:
    """No "1 entries"; a port in use is said once and creates nothing; a file as the cache."""
    cache = tmp_path / "c"
    with ServerProcess(cache) as srv:
        with srv.client() as c:
            c.post("/content/", json={"url": "file:///nowhere"})  # refused: keeps 0 entries
        address = _address(srv)
        r = run_cli("--cache-dir", str(tmp_path / "second"), "--address", address, timeout=20)
        assert r.returncode == 1
        assert r.stderr.count("Address already in use") == 1, r.stderr
        assert not (tmp_path / "second").exists()
    a_file = tmp_path / "f"
    a_file.write_text("x")
    r = run_cli("--cache-dir", str(a_file), "--address", "127.0.0.1:0")
    assert r.returncode == 1 and f"{a_file} is a file, not a directory" in r.stderr
    r = run_cli("ls", "--cache-dir", str(a_file))
    assert r.returncode == 4 and "is a file" in r.stderr


def test_targets_by_url_reference_or_digest_and_client_flags(
    tmp_path: Path, source: Source
) -> None:
    one, two = os.urandom(3000), os.urandom(4000)
    source.add_file("/one.bin", one)
    source.add_file("/two.bin", two)
    cache = tmp_path / "cache"
    with ServerProcess(cache, env={"NEKKO_API_TOKEN": "s3cret"}) as srv:
        address = _address(srv)
        r = run_cli("pull", source.url("/one.bin"), "--cache-dir", str(cache))
        assert r.returncode == 4 or r.returncode == 1
        assert "NEKKO_API_TOKEN" in r.stderr  # the 401 names the variable
        for path in ("/one.bin", "/two.bin"):
            r = run_cli(
                "pull", source.url(path), "--cache-dir", str(cache), "--api-token", "s3cret"
            )
            assert r.returncode == 0, r.stderr
        listing = json.loads(
            run_cli("ls", "--json", "--cache-dir", str(cache), "--api-token", "s3cret").stdout
        )
        by_url = {e["url"]: e for e in listing}
        ref_one = by_url[source.url("/one.bin")]["reference"]
        digest_two = by_url[source.url("/two.bin")]["digest"]
        r = run_cli(
            "inspect",
            ref_one,
            digest_two,
            "--json",
            "--cache-dir",
            str(cache),
            "--address",
            address,
            "--api-token",
            "s3cret",
        )
        assert r.returncode == 0, r.stderr
        found = json.loads(r.stdout)
        assert found[0]["url"] == source.url("/one.bin")
        assert [e["url"] for e in found[1]["entries"]] == [source.url("/two.bin")]
        r = run_cli("pin", ref_one, digest_two, "--cache-dir", str(cache), "--api-token", "s3cret")
        assert r.returncode == 0 and r.stdout.count("pinned") == 2, r.stderr
        r = run_cli(
            "rm",
            ref_one,
            digest_two,
            "nothing:here",
            "--cache-dir",
            str(cache),
            "--api-token",
            "s3cret",
        )
        assert r.returncode == 3 and "nothing:here is not in the cache" in r.stderr
        assert r.stdout.count("deleted") == 2
        assert _entries_with_token(srv) == []


def _entries_with_token(srv: ServerProcess) -> list[str]:
    with srv.client(headers={"Authorization": "Bearer s3cret"}) as c:
        return [e["url"] for e in c.get("/content/").json()["entries"]]


def test_version_and_help_for_everything() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and re.fullmatch(r"storage-manager \d+\.\d+\.\d+\s*", r.stdout)
    for command in (
        "serve",
        "pull",
        "ls",
        "inspect",
        "rm",
        "gc",
        "du",
        "pin",
        "unpin",
        "verify",
        "export",
        "import",
    ):
        r = run_cli(command, "--help")
        assert r.returncode == 0, command
        _usage, _, rest = r.stdout.partition("\n\n")
        assert rest.strip(), command  # a description
        for action in re.findall(r"^  (\w[\w-]*)\s{2,}(\S.*)?$", r.stdout, re.M):
            assert action[1], (command, action)  # every positional has help text
        if command not in ("serve",):
            assert "--api-token" in r.stdout and "--cache-dir" in r.stdout, command


@pytest.mark.slow
def test_status_lines_without_a_terminal(tmp_path: Path, source: Source) -> None:
    data = os.urandom(6 * 1024 * 1024)
    source.add_file("/slow.bin", data)
    source.set_delay("/slow.bin", 0.1, chunk=64 * 1024)  # about 9.6 s
    r = run_cli("pull", source.url("/slow.bin"), "--cache-dir", str(tmp_path / "c"), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("pull ")]
    assert lines[0].endswith(": started")
    progress = [x for x in lines[1:] if " of 6.0 MiB (" in x and "/s" in x]
    assert len(progress) >= 1, r.stderr


def _start_pull(cache: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CACHE_DIR", "NEKKO_ADDRESS")}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "pull", url, "--cache-dir", str(cache), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_downloading(srv: ServerProcess, url: str, clients: int = 1) -> dict:
    """Until the download runs and ``clients`` wait for it (the pull's own POST
    among them: a Ctrl-C before the command got that far is another case)."""
    deadline = time.monotonic() + 30
    with srv.client() as c:
        while time.monotonic() < deadline:
            r = c.get("/content/" + _b64(url))
            body = r.json()
            if r.status_code == 206 and body.get("bytesDone") and body["clients"] >= clients:
                return body
            time.sleep(0.05)
    raise AssertionError("the download did not start")


def test_ctrl_c_cancels_the_pull_it_started(tmp_path: Path, source: Source) -> None:
    source.add_file("/big.bin", os.urandom(4 * 1024 * 1024))
    source.set_delay("/big.bin", 0.1, chunk=64 * 1024)  # about 6 s
    url = source.url("/big.bin")
    cache = tmp_path / "cache"
    with ServerProcess(cache) as srv:
        proc = _start_pull(cache, url)
        _wait_downloading(srv, url)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "Traceback" not in err and f"cancelled the download of {url}" in err
        with srv.client() as c:
            assert c.get("/content/" + _b64(url)).status_code == 404

        # Another client joined: the download goes on, and the message says how to cancel it.
        with srv.client() as c:
            assert (
                c.post(
                    "/content/", json={"url": url}, headers={"Prefer": "respond-async"}
                ).status_code
                == 202
            )
        watcher = httpx.Client(base_url=srv.base_url, timeout=60)
        import threading

        waited: list[int] = []
        t = threading.Thread(
            target=lambda: waited.append(watcher.post("/content/", json={"url": url}).status_code)
        )
        t.start()
        proc = _start_pull(cache, url)
        _wait_downloading(srv, url, clients=3)  # the 202's waiter, the thread's POST, the pull
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "Traceback" not in err
        assert "goes on" in err and f"storage-manager rm {url}" in err
        t.join(60)
        watcher.close()
        assert waited == [201]

        # --detach: started on the running server, which goes on with it.
        source.add_file("/d.bin", os.urandom(1024 * 1024))
        source.set_delay("/d.bin", 0.05, chunk=64 * 1024)
        r = run_cli("pull", source.url("/d.bin"), "--detach", "--cache-dir", str(cache))
        assert r.returncode == 0 and "downloading in the background" in r.stdout, r.stderr


def test_a_name_or_a_path_given_as_a_url_gets_a_suggestion(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "c") as srv, srv.client() as c:
        for given, meant in (
            ("alpine:3", "oci://docker.io/library/alpine:3"),
            ("team/app:v1", "oci://docker.io/team/app:v1"),
            ("ghcr.io/org/app:1.0", "oci://ghcr.io/org/app:1.0"),
            ("/tmp/x.bin", "file:///tmp/x.bin"),
        ):
            r = c.post("/content/", json={"url": given})
            assert r.status_code == 400, given
            assert f"did you mean {meant}?" in r.json()["error"]["message"], r.text
        r = c.post("/content/", json={"url": "nonsense: with spaces"})
        assert r.status_code == 400 and "did you mean" not in r.text
    r = run_cli("pull", "alpine:3", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 1 and "oci://docker.io/library/alpine:3" in r.stderr


def test_verify_prints_status_lines_without_a_terminal(tmp_path: Path, source: Source) -> None:
    data = os.urandom(3 * 1024 * 1024)
    source.add_file("/v.bin", data)
    cache = tmp_path / "c"
    assert run_cli("pull", source.url("/v.bin"), "--cache-dir", str(cache)).returncode == 0
    r = run_cli("verify", "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"verify {cache}: started"
    assert re.fullmatch(rf"verify {cache}: 3\.0 MiB of 3\.0 MiB \(100%\), .*/s", lines[-1])
    assert "━" not in r.stderr and not run_cli("verify", "--cache-dir", str(cache), "--json").stderr


def test_log_lines_count_and_size_for_people(tmp_path: Path, source: Source) -> None:
    """ "1 entry", not "1 entries"; sizes in log lines in the units ls shows."""
    source.add_file("/one.bin", os.urandom(3 * 1024))
    cache = tmp_path / "c"
    with ServerProcess(cache) as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/one.bin")}).status_code == 201
    with ServerProcess(cache, "--max-cache-size", "100M") as srv:
        with srv.client() as c:
            assert c.delete("/content/" + _b64(source.url("/one.bin"))).status_code == 204
        log = srv.log()
    assert f"cache {cache}: 1 entry, 0 interrupted downloads" in log, log
    assert "cache limit 100.0 MiB" in log, log
    assert re.search(r"deleted \S+ \(\d+\.\d KiB freed\)", log), log


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, source: Source) -> None:
    """`storage-manager inspect URL | head -1`: no traceback when the reader goes away."""
    source.add_file("/p.bin", b"p" * 100)
    cache = tmp_path / "c"
    assert run_cli("pull", source.url("/p.bin"), "--cache-dir", str(cache)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in ("CACHE_DIR", "NEKKO_ADDRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "inspect", source.url("/p.bin"), "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before a line is written
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err
    assert proc.returncode == 141
