"""An Azure Blob Storage peer for tests: Azurite's blob service (npm) in its own
process on loopback, data in memory, with the well-known development account
``devstoreaccount1`` and its published key.

The binary is ``azurite-blob`` on PATH or under ``/opt/azurite`` (where
``.ci/run`` installs it: ``npm install --prefix /opt/azurite azurite``).
Requests to it are SharedKey-signed with :func:`proxy.fetch.azure.shared_key`
-- Azurite checks every signature, so a wrong one fails the setup too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import tempfile
import time
from email.utils import formatdate
from urllib.parse import quote

import httpx

from proxy.fetch.azure import API_VERSION, DEV_ACCOUNT, DEV_KEY, shared_key
from tests.support.processes import access_requests, start_listening, stop_process
from tests.support.s3 import free_port

_PLACES = ("/opt/azurite/node_modules/.bin/azurite-blob",)


def binary() -> str | None:
    found = shutil.which("azurite-blob")
    if found:
        return found
    return next((p for p in _PLACES if os.access(p, os.X_OK)), None)


class Azurite:
    account = DEV_ACCOUNT
    key = DEV_KEY

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{DEV_ACCOUNT}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="azurite-")

    def start(self) -> Azurite:
        exe = binary()
        assert exe is not None
        argv = [
            *(exe, "--blobHost", "127.0.0.1", "--blobPort", str(self.port)),
            *("--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck"),
        ]
        self.proc = start_listening(
            "azurite", argv, self.port, self.lines, cwd=self._dir.name, timeout=60
        )
        return self

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, content: bytes = b""
    ) -> httpx.Response:
        url = f"{self.endpoint}/{path}"
        h = {b"x-ms-version": API_VERSION.encode(), b"x-ms-date": formatdate(usegmt=True).encode()}
        h.update({k.encode(): v.encode() for k, v in (headers or {}).items()})
        if content:
            h[b"Content-Length"] = str(len(content)).encode()
        h[b"Authorization"] = shared_key(DEV_ACCOUNT, base64.b64decode(DEV_KEY), method, url, h)
        r = httpx.request(
            method, url, headers={k.decode(): v.decode() for k, v in h.items()}, content=content
        )
        return r

    def create_container(self, name: str, public: bool = False) -> None:
        headers = {"x-ms-blob-public-access": "container"} if public else {}
        r = self.request("PUT", f"{name}?restype=container", headers)
        assert r.status_code == 201, r.text

    def put(self, container: str, name: str, data: bytes) -> str:
        """Upload a block blob; its ETag."""
        path = f"{container}/{quote(name)}"
        r = self.request("PUT", path, {"x-ms-blob-type": "BlockBlob"}, data)
        assert r.status_code == 201, r.text
        return r.headers["ETag"]

    def sas(self, container: str, name: str, permissions: str = "r") -> str:
        """A service SAS for one blob (version 2020-12-06 string-to-sign)."""
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        version = "2020-12-06"
        resource = f"/blob/{DEV_ACCOUNT}/{container}/{name}"
        fields = [permissions, "", expiry, resource, "", "", "", version, "b", "", "", "", "", ""]
        fields += ["", ""]
        to_sign = "\n".join(fields)
        mac = hmac.new(base64.b64decode(DEV_KEY), to_sign.encode(), hashlib.sha256).digest()
        sig = base64.b64encode(mac).decode()
        return f"sv={version}&sr=b&sp={permissions}&se={quote(expiry)}&sig={quote(sig, safe='')}"

    def connection_string(
        self, endpoint: str | None = None, key: str | None = DEV_KEY, account: bool = True
    ) -> str:
        parts = []
        if account:
            parts.append(f"AccountName={DEV_ACCOUNT}")
        if key:
            parts.append(f"AccountKey={key}")
        parts.append(f"BlobEndpoint={endpoint or self.endpoint}")
        return "DefaultEndpointsProtocol=http;" + ";".join(parts) + ";"

    def server_env(self, endpoint: str | None = None, key: str | None = DEV_KEY) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string(endpoint, key)}

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, target, status) of every request Azurite logged."""
        return access_requests(self.lines)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._dir.cleanup()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay_endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}/{DEV_ACCOUNT}"
