"""The optional API token for changes (--api-token / NEKKO_API_TOKEN)."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.conftest import b64
from tests.support.server import ServerProcess
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
