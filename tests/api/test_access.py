"""The optional API token for changes (--api-token / NEKKO_API_TOKEN)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess, run_cli
from tests.support.source import Source

TOKEN = "node-admin-token"


def test_writes_need_the_token_reads_do_not(cache_dir: Path, source: Source) -> None:
    source.add_file("/m", b"model")
    url = source.url("/m")
    srv = ServerProcess(cache_dir, env={"NEKKO_API_TOKEN": TOKEN})
    with srv, srv.client() as c:
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="storage-manager"'
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
        assert (
            c.post(
                "/content/", json={"url": url}, headers={"Authorization": "Bearer wrong"}
            ).status_code
            == 401
        )
        assert not source.requests  # refused before anything was fetched
        r = c.post("/content/", json={"url": url}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text
        # Reads stay open: /content and /v2.
        assert c.get(f"/content/{b64(url)}").status_code == 200
        assert c.get("/v2/").status_code == 200
        # Basic with the token as password (registry clients after a challenge).
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert c.delete(f"/content/{b64(url)}").status_code == 401
        r = c.delete(f"/content/{b64(url)}", headers={"Authorization": f"Basic {basic}"})
        assert r.status_code == 204
    assert TOKEN not in srv.log()


def test_no_token_on_a_public_address_is_warned_about(cache_dir: Path) -> None:
    with ServerProcess(cache_dir, address="0.0.0.0:0") as srv:
        assert "without --api-token" in srv.log()
    with ServerProcess(cache_dir, address="127.0.0.1:0") as srv:
        assert "without --api-token" not in srv.log()


def test_protected_reads_challenge_registry_clients(cache_dir: Path, source: Source) -> None:
    data = b"weights" * 1000
    source.add_file("/models/m.gguf", data)
    url = source.url("/models/m.gguf")
    srv = ServerProcess(cache_dir, "--protect-reads", env={"NEKKO_API_TOKEN": TOKEN})
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode()}
    with srv, srv.client() as c:
        r = c.post("/content/", json={"url": url}, headers=bearer)
        assert r.status_code == 201, r.text
        digest, ref = r.json()["digest"], r.json()["reference"]
        name, tag = ref.rsplit(":", 1)
        # Every read needs the token now, on /content and on /v2 (ping included).
        for method, path in [
            ("GET", f"/content/{b64(url)}"),
            ("GET", "/content/"),
            ("GET", "/v2/"),
            ("HEAD", f"/v2/{name}/blobs/{digest}"),
            ("GET", f"/v2/{name}/blobs/{digest}"),
            ("GET", f"/v2/{name}/manifests/{tag}"),
            ("GET", "/v2/_catalog"),
        ]:
            r = c.request(method, path)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == 'Basic realm="storage-manager"'
            if method == "GET" and path.startswith("/v2"):
                assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
            wrong = {"Authorization": "Bearer nope"}
            assert c.request(method, path, headers=wrong).status_code == 401
            assert c.request(method, path, headers=bearer).status_code == 200, (method, path)
            assert c.request(method, path, headers=basic).status_code == 200, (method, path)
        r = c.get(f"/v2/{name}/blobs/{digest}", headers=basic)
        assert r.content == data
        # Probes stay open.
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        # skopeo answers the Basic challenge with --creds, and fails without.
        host = srv.base_url.split("://", 1)[1]
        target = f"docker://{host}/{ref}"
        without = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", target],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert without.returncode != 0
        assert "unauthorized" in without.stderr.lower() or "401" in without.stderr
        with_creds = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"u:{TOKEN}", target],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert with_creds.returncode == 0, with_creds.stderr
        manifest = json.loads(with_creds.stdout)
        assert manifest["layers"][0]["digest"] == digest
    assert TOKEN not in srv.log()


def test_protect_reads_needs_a_token(cache_dir: Path) -> None:
    r = run_cli("--cache-dir", str(cache_dir), "--protect-reads")
    assert r.returncode == 2
    assert "needs an API token" in r.stderr


def test_allow_upstream_is_checked_on_every_hop(cache_dir: Path, source: Source) -> None:
    """With --allow-upstream, only the listed hosts are reached: loopback too
    only when listed, and a redirect elsewhere is refused before it connects."""
    allowed = source.base_url.split("://", 1)[1]  # 127.0.0.1:<port>
    with Source() as other:
        other.add_file("/secret", b"internal service")
        source.add_file("/ok", b"allowed content")
        source.redirect("/hop", other.url("/secret"))
        srv = ServerProcess(cache_dir, "--allow-upstream", allowed)
        with srv, srv.client() as c:
            assert c.post("/content/", json={"url": source.url("/ok")}).status_code == 201
            for url in (
                other.url("/secret"),  # same host, another port
                source.url("/hop"),  # a redirect to it
                source.url("/ok").replace("127.0.0.1", "localhost"),  # loopback, not listed
            ):
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 403, (url, r.text)
                assert r.json()["error"]["code"] == "DENIED"
        assert other.requests == []
