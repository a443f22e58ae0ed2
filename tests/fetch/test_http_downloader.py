"""The http(s) downloader: credentials, redirects, reach, resume, timeouts."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import threading
import time
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_bearer_credentials(server: ServerProcess, source: Source) -> None:
    source.add_file("/private", b"secret model")
    source.require_auth("/private", "Bearer tok-123")
    with server.client() as c:
        assert c.post("/content/", json={"url": source.url("/private")}).status_code == 401
        r = c.post("/content/", json={"url": source.url("/private"), "credentials": "wrong"})
        assert r.status_code == 403
        r = c.post("/content/", json={"url": source.url("/private"), "credentials": "tok-123"})
        assert r.status_code == 201, r.text
    assert "tok-123" not in server.log()


def test_basic_credentials(server: ServerProcess, source: Source, cache_dir: Path) -> None:
    token = base64.b64encode(b"alice:s3cret").decode()
    source.add_file("/basic", b"basic data")
    source.require_auth("/basic", f"Basic {token}")
    with server.client() as c:
        r = c.post(
            "/content/",
            json={"url": source.url("/basic"), "credentials": token, "credentialsType": "Basic"},
        )
        assert r.status_code == 201, r.text
    assert token not in server.log() and "s3cret" not in server.log()
    assert not any(token.encode() in p.read_bytes() for p in cache_dir.rglob("*") if p.is_file())


def test_userinfo_in_url_is_split_and_never_stored(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    token = base64.b64encode(b"bob:hunter2").decode()
    source.add_file("/ui", b"userinfo data")
    source.require_auth("/ui", f"Basic {token}")
    port = source.base_url.rsplit(":", 1)[1]
    url = f"http://bob:hunter2@127.0.0.1:{port}/ui"
    with server.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        assert r.json()["url"] == source.url("/ui")
        # GET with or without the userinfo finds the same entry.
        assert c.get(f"/content/{b64(url)}").status_code == 200
        assert c.get(f"/content/{b64(source.url('/ui'))}").status_code == 200
    assert "hunter2" not in server.log()
    for p in cache_dir.rglob("*"):
        if p.is_file():
            assert b"hunter2" not in p.read_bytes(), p


def test_redirect_same_host_keeps_auth_other_host_drops_it(
    server: ServerProcess, source: Source
) -> None:
    with Source(host="127.0.0.2") as other:
        other.add_file("/target", b"moved content")
        source.add_file("/local-target", b"local moved content")
        source.redirect("/same", "/local-target")
        source.redirect("/cross", other.url("/target"), status=307)
        with server.client() as c:
            r = c.post("/content/", json={"url": source.url("/same"), "credentials": "tok"})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(b"local moved content")
            r = c.post("/content/", json={"url": source.url("/cross"), "credentials": "tok"})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(b"moved content")
        (same,) = [q for q in source.requests if q.path == "/local-target"]
        assert same.headers.get("authorization") == "Bearer tok"
        (cross,) = [q for q in other.requests if q.path == "/target"]
        assert "authorization" not in cross.headers


def test_redirect_loop_is_an_error(server: ServerProcess, source: Source) -> None:
    source.redirect("/loop1", "/loop2")
    source.redirect("/loop2", "/loop1")
    with server.client() as c:
        r = c.post("/content/", json={"url": source.url("/loop1")})
        assert r.status_code == 502
        assert "loop" in r.json()["error"]["message"]


def test_link_local_targets_are_refused(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    source.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/")
    with server.client() as c:
        for url in (
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://100.100.100.200/latest/meta-data/",
            source.url("/to-metadata"),
        ):
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 403, (url, r.text)
            assert r.json()["error"]["code"] == "DENIED"
    assert json.loads((cache_dir / "index.json").read_text())["manifests"] == []


def test_interrupted_download_resumes_with_range(cache_dir: Path, source: Source) -> None:
    data = os.urandom(3_000_000)
    source.add_file("/r.bin", data)
    source.cut_after("/r.bin", 1_000_000)
    url = source.url("/r.bin")
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 502, r.text
        g = c.get(f"/content/{b64(url)}")
        assert g.status_code == 206
        assert g.json()["state"] == "interrupted"
        assert g.json()["bytesDone"] == 1_000_000
        assert not (cache_dir / "blobs" / "sha256" / sha(data)[7:]).exists()
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    gets = [q for q in source.requests_for("/r.bin") if q.method == "GET"]
    assert len(gets) == 2
    assert gets[1].headers["range"] == "bytes=1000000-"
    assert gets[1].headers["if-range"] == source_etag(source, "/r.bin")
    assert (cache_dir / "blobs" / "sha256" / sha(data)[7:]).read_bytes() == data


def source_etag(source: Source, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(source.url(path), method="HEAD")) as resp:
        return str(resp.headers["ETag"])


def test_cut_download_is_retried_and_resumed_in_one_post(
    server: ServerProcess, source: Source
) -> None:
    data = os.urandom(2_000_000)
    source.add_file("/auto.bin", data)
    source.cut_after("/auto.bin", 700_000)
    with server.client() as c:
        r = c.post("/content/", json={"url": source.url("/auto.bin")})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(data)
    gets = [q for q in source.requests_for("/auto.bin") if q.method == "GET"]
    assert [g.headers.get("range") for g in gets] == [None, "bytes=700000-"]


def test_changed_file_restarts_instead_of_mixing(cache_dir: Path, source: Source) -> None:
    old, new = os.urandom(1_000_000), os.urandom(1_000_000)
    source.add_file("/v", old)
    source.cut_after("/v", 400_000)
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/v")}).status_code == 502
        source.replace_file("/v", new)
        r = c.post("/content/", json={"url": source.url("/v")})
        assert r.status_code == 201
        assert r.json()["digest"] == sha(new)


def test_no_validator_means_no_resume(cache_dir: Path, source: Source) -> None:
    data = os.urandom(1_000_000)
    source.add_file("/nv", data, etag=None, last_modified=None)
    source.cut_after("/nv", 300_000)
    with ServerProcess(cache_dir, "--retries", "0") as srv, srv.client() as c:
        assert c.post("/content/", json={"url": source.url("/nv")}).status_code == 502
        r = c.post("/content/", json={"url": source.url("/nv")})
        assert r.status_code == 201 and r.json()["digest"] == sha(data)
    gets = [q for q in source.requests_for("/nv") if q.method == "GET"]
    assert all("range" not in g.headers for g in gets)


def test_stalled_body_hits_the_idle_timeout(cache_dir: Path, source: Source) -> None:
    source.add_file("/stall", os.urandom(500_000))
    source.stall_after("/stall", 100_000, seconds=5)
    with (
        ServerProcess(cache_dir, "--retries", "0", "--idle-timeout", "1") as srv,
        srv.client() as c,
    ):
        t0 = time.monotonic()
        r = c.post("/content/", json={"url": source.url("/stall")})
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
        assert time.monotonic() - t0 < 4.5
        assert c.get(f"/content/{b64(source.url('/stall'))}").json()["state"] == "interrupted"


def test_delete_cancels_a_running_download(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    source.add_file("/slow", os.urandom(4_000_000))
    source.set_delay("/slow", 0.05, chunk=65536)  # about 3 s in all
    url = source.url("/slow")
    result: list[int] = []

    def post() -> None:
        with server.client() as c:
            result.append(c.post("/content/", json={"url": url}).status_code)

    t = threading.Thread(target=post)
    t.start()
    with server.client() as c:
        for _ in range(100):
            if c.get(f"/content/{b64(url)}").status_code == 206:
                break
            time.sleep(0.02)
        assert c.delete(f"/content/{b64(url)}").status_code == 204
        t.join(10)
        assert result == [409]
        assert c.get(f"/content/{b64(url)}").status_code == 404
    assert list((cache_dir / "ingest").glob("*/data")) == []
    assert json.loads((cache_dir / "index.json").read_text())["manifests"] == []


def test_https_source_with_a_trusted_ca(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    data = os.urandom(100_000)
    with Source(tls=ctx) as tls_source:
        tls_source.add_file("/secure", data)
        tls_source.require_auth("/secure", "Bearer tls-token")
        url = tls_source.url("/secure")
        assert url.startswith("https://")
        trusting = ServerProcess(tmp_path / "cache", env={"SSL_CERT_FILE": str(ca_file)})
        with trusting as srv, srv.client() as c:
            r = c.post("/content/", json={"url": url, "credentials": "tls-token"})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
        # Without trusting the CA, the certificate is refused.
        with ServerProcess(tmp_path / "cache2") as srv, srv.client() as c:
            r = c.post("/content/", json={"url": url, "credentials": "tls-token"})
            assert r.status_code == 502, r.text
            assert "TLS" in r.json()["error"]["message"]
        assert len([q for q in tls_source.requests if q.path == "/secure"]) == 1
