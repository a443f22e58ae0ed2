"""A GCS peer for tests: ``gcp-storage-emulator`` (PyPI) in its own process on
loopback, anonymous, data in memory.

What the emulator does not do (the tests say so where it matters): it
ignores ``ifGenerationMatch`` and ``generation`` on media downloads (the
current object is always served), it does not page listings, and its error
answers have no JSON document (a bare 404).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import httpx

from tests.support.processes import access_requests, start_listening, stop_process
from tests.support.s3 import free_port


def available() -> bool:
    return importlib.util.find_spec("gcp_storage_emulator") is not None


class GcsEmulator:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self) -> GcsEmulator:
        argv = [
            *(sys.executable, "-m", "gcp_storage_emulator", "start"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--in-memory"),
        ]
        self.proc = start_listening("gcp-storage-emulator", argv, self.port, self.lines)
        return self

    def create_bucket(self, bucket: str) -> None:
        r = httpx.post(f"{self.endpoint}/storage/v1/b", json={"name": bucket})
        r.raise_for_status()

    def put(self, bucket: str, name: str, data: bytes) -> dict[str, Any]:
        """Upload an object; its metadata (with the new generation)."""
        r = httpx.post(
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": name},
            content=data,
            timeout=60,
        )
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def metadata(self, bucket: str, name: str) -> dict[str, Any]:
        r = httpx.get(f"{self.endpoint}/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, target, status) of every request the emulator logged."""
        return access_requests(self.lines)

    def server_env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for a storage-manager that reads this store (host:port, as
        google-cloud-storage takes it)."""
        return {"STORAGE_EMULATOR_HOST": (endpoint or self.endpoint).removeprefix("http://")}

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
