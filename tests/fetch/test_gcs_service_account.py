"""gs:// with GOOGLE_APPLICATION_CREDENTIALS: google-auth's signed-JWT grant to
the key's token_uri (a local OAuth token endpoint that checks the JWT against
the key), the token sent to the store, never the key anywhere."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.support.gcs import GcsEmulator, available
from tests.support.s3 import Relay
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(not available(), reason="gcp-storage-emulator is not installed")
TOKEN = "ya29.minted-for-the-service-account"


class TokenEndpoint:
    """Google's OAuth 2 token endpoint, for the JWT-bearer grant only."""

    def __init__(self, public_pem: bytes) -> None:
        self.grants: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                grant = form.get("grant_type", [""])[0]
                try:
                    claims = jwt.decode(form["assertion"][0], certs=public_pem, verify=True)
                    ok = grant == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                except (ValueError, KeyError):
                    ok = False
                if not ok:
                    body, status = b'{"error": "invalid_grant"}', 400
                else:
                    outer.grants.append(claims)
                    body = json.dumps(
                        {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                    ).encode()
                    status = 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def key(tmp_path: Path) -> Iterator[tuple[Path, TokenEndpoint, str]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    endpoint = TokenEndpoint(public)
    doc = {
        "type": "service_account",
        "project_id": "nodes",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "cache@nodes.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": endpoint.url,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(doc))
    try:
        yield path, endpoint, pem.splitlines()[1]
    finally:
        endpoint.close()


def test_service_account_key_gives_the_token(
    tmp_path: Path, key: tuple[Path, TokenEndpoint, str]
) -> None:
    path, endpoint, key_line = key
    data = os.urandom(200_000)
    with GcsEmulator() as emu, Relay(("127.0.0.1", emu.port)) as relay:
        emu.create_bucket("models")
        emu.put("models", "sa/f.bin", data)
        env = {
            **emu.server_env(relay.endpoint),
            "GOOGLE_APPLICATION_CREDENTIALS": str(path),
        }
        cache = tmp_path / "cache"
        with ServerProcess(cache, "--verbose", "2", env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": "gs://models/sa/f.bin"})
            assert r.status_code == 201, r.text
            r = c.post("/content/", json={"url": "gs://models/sa/"})
            assert r.status_code == 201, r.text
            time.sleep(0.1)
            log = srv.log()
    # One grant (the token is reused until it expires), signed by the key.
    assert len(endpoint.grants) == 1
    claims = endpoint.grants[0]
    assert claims["iss"] == "cache@nodes.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/devstorage.read_only"
    assert claims["aud"] in (endpoint.url, "https://oauth2.googleapis.com/token")
    sent = relay.sent_up.decode("latin-1").lower()
    assert f"authorization: bearer {TOKEN}".lower() in sent
    assert sent.count("authorization: bearer") >= 3  # metadata, media, listing
    for secret in (key_line, TOKEN):
        assert secret not in log
        for p in cache.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p


def test_an_unusable_key_file_is_a_clear_401(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "service_account"}')
    with GcsEmulator() as emu:
        emu.create_bucket("models")
        env = {**emu.server_env(), "GOOGLE_APPLICATION_CREDENTIALS": str(bad)}
        with ServerProcess(tmp_path / "c", env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": "gs://models/x"})
            assert r.status_code == 401, r.text
            assert "GOOGLE_APPLICATION_CREDENTIALS" in r.json()["error"]["message"]
