"""A GCS peer for tests: ``gcp-storage-emulator`` (PyPI) in its own process on
loopback, anonymous, data in memory.

What the emulator does not do (the tests say so where it matters): it
ignores ``ifGenerationMatch`` and ``generation`` on media downloads (the
current object is always served), it does not page listings, and its error
answers have no JSON document (a bare 404).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

import httpx

from tests.support.processes import stop_process
from tests.support.s3 import free_port

_LOG_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def available() -> bool:
    return importlib.util.find_spec("gcp_storage_emulator") is not None


class GcsEmulator:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self) -> GcsEmulator:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "gcp_storage_emulator", "start"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--in-memory"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gcp-storage-emulator did not start:\n" + "\n".join(self.lines))
            time.sleep(0.1)
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
        out = []
        for line in list(self.lines):
            m = _LOG_RE.search(line)
            if m:
                out.append((m["method"], m["target"], int(m["status"])))
        return out

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
