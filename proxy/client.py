"""How the CLI reaches a server: the one running on the cache, or one of its own.

If a server holds the cache directory's lock, commands talk to it at
``--address`` (TCP or a Unix socket). If none does, the command starts a
private server on that cache directory, listening on a Unix socket in a
temporary directory, talks to it the same way, and stops it afterwards: so
every command goes through the same API and the same single writer. A
cache directory that does not exist here means a server elsewhere: the
address is used as it is.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from proxy.config import Config


class ClientError(Exception):
    """The command cannot reach a server; the message says why."""


@attrs.frozen
class Answer:
    status: int
    body: Any  # decoded JSON, or None

    @property
    def error(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            err = self.body["error"]
            return f"{err.get('code', '')}: {err.get('message', '')}"
        return f"HTTP {self.status}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("storage-manager", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


@attrs.define
class Client:
    """Requests to one server (JSON in, JSON out)."""

    host: str = "127.0.0.1"
    port: int = 8050
    unix_path: str | None = None
    token: str | None = attrs.field(default=None, repr=False)

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        if self.unix_path is not None:
            return _UnixConnection(self.unix_path, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        h = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        return self._exchange(method, path, data, h, timeout)

    def upload(self, path: str, file: Any, size: int, content_type: str) -> Answer:
        """POST a file as the body (streamed from disk, never read whole)."""
        h = {"Content-Type": content_type, "Content-Length": str(size)}
        return self._exchange("POST", path, file, h, None)

    def _exchange(
        self, method: str, path: str, body: Any, headers: dict[str, str], timeout: float | None
    ) -> Answer:
        conn = self._conn(timeout or 24 * 3600.0)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        except OSError as e:
            raise ClientError(f"cannot reach the server at {self}: {e}") from None
        finally:
            conn.close()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return Answer(r.status, decoded)

    def alive(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=2).status == 200
        except ClientError:
            return False

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"


def content_path(url: str) -> str:
    return "/content/" + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def cache_in_use(cache_dir: Path) -> bool:
    """Whether a process holds the cache's write lock (a server runs on it)."""
    try:
        fd = os.open(cache_dir / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def for_address(cfg: Config) -> Client:
    addr = cfg.address
    if addr.unix_path is not None:
        return Client(unix_path=str(addr.unix_path), token=cfg.api_token)
    host = addr.host or "127.0.0.1"
    if host in ("localhost", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return Client(host=host, port=addr.port, token=cfg.api_token)


@contextlib.contextmanager
def connect(cfg: Config) -> Iterator[Client]:
    """The server of ``cfg``'s cache: the running one, or a private one."""
    cache = cfg.cache_dir
    if not (cache / "blobs").is_dir() or cache_in_use(cache):
        client = for_address(cfg)
        if not client.alive():
            raise ClientError(
                f"no storage-manager answers at {client}"
                + ("" if (cache / "blobs").is_dir() else f", and {cache} is not a cache here")
            )
        yield client
        return
    with tempfile.TemporaryDirectory(prefix="storage-manager-") as tmp:
        sock = Path(tmp) / "api.sock"
        log_path = Path(tmp) / "server.log"
        env = dict(os.environ)
        env.pop("NEKKO_ADDRESS", None)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "serve",
                    "--cache-dir",
                    str(cache),
                    "--address",
                    f"unix:{sock}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        try:
            client = Client(unix_path=str(sock), token=cfg.api_token)
            deadline = time.monotonic() + 30
            while not (sock.exists() and client.alive()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    lines = log_path.read_text(errors="replace").strip().splitlines()
                    why = lines[-1] if lines else "it exited"
                    raise ClientError(f"cannot start a server on {cache}: {why}")
                time.sleep(0.05)
            yield client
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
