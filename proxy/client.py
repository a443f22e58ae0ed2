"""How the CLI reaches a server: the one running on the cache, or one of its own.

A command acts on the cache it was asked for (``--cache-dir``/``CACHE_DIR``),
never on another one:

* If a server holds the cache directory's lock, the command talks to it at
  the address its lock file names, after asking it (``GET /admin/info``)
  which cache it serves.
* If none does, the command starts a private server on that cache
  directory (creating a new or empty one for ``pull`` and ``import``),
  listening on a Unix socket in a temporary directory, talks to it the same
  way, and stops it afterwards: every command goes through the same API and
  the same single writer.
* ``--address``/``NEKKO_ADDRESS`` names a server to use when no server holds
  the lock (a server elsewhere, in a container with the same cache path): it
  is used only if it serves that cache; without a cache named, the server
  at the address is used, whatever its cache.

A mismatch (the server at the address serves another cache) is an error
that names both.
"""

from __future__ import annotations

import base64
import contextlib
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

from proxy.cache.layout import Layout
from proxy.config import Address


class ClientError(Exception):
    """The command cannot reach a server; the message says why."""


class NotACache(ClientError):
    """The directory a command reads is not a cache (exit 1, not 4)."""


@attrs.frozen
class Answer:
    status: int
    body: Any  # decoded JSON, or None

    @property
    def error(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            err = self.body["error"]
            text = f"{err.get('code', '')}: {err.get('message', '')}"
        else:
            text = f"HTTP {self.status}"
        if self.status == 401:
            text += " (set NEKKO_API_TOKEN, or --api-token, to the server's token)"
        return text


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
    private: bool = False  # a server this command started (it stops with the command)

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


def for_address(address: Address, token: str | None) -> Client:
    """A client of the server at ``address`` (a wildcard host means this node)."""
    if address.unix_path is not None:
        return Client(unix_path=str(address.unix_path), token=token)
    host = address.host or "127.0.0.1"
    if host in ("localhost", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return Client(host=host, port=address.port, token=token)


@attrs.frozen
class Target:
    """Which cache a command was asked for, and how explicitly."""

    cache: Path  # absolute
    address: Address
    cache_given: bool  # --cache-dir or CACHE_DIR (else the default)
    address_given: bool  # --address or NEKKO_ADDRESS (else the default)
    writes: bool  # the command creates a new cache (pull, import)


def served_cache(client: Client) -> str | None:
    """The cache directory the server at ``client`` serves; None if nothing
    answers there (or an old server that does not say)."""
    try:
        answer = client.request("GET", "/admin/info", timeout=5)
    except ClientError:
        return None
    if answer.status == 401:
        raise ClientError(
            f"the server at {client} needs the API token: set NEKKO_API_TOKEN (or --api-token)"
        )
    body = answer.body
    if answer.status == 200 and isinstance(body, dict) and isinstance(body.get("cache"), str):
        return str(body["cache"])
    return None


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def is_cache(path: Path) -> bool:
    return (path / "blobs").is_dir() and (path / "index.json").is_file()


def _check_usable(cache: Path) -> None:
    if cache.exists() and not cache.is_dir():
        raise ClientError(f"{cache} is a file, not a cache directory")
    if cache.is_dir() and not is_cache(cache) and any(cache.iterdir()):
        raise ClientError(
            f"{cache} is not a storage-manager cache (no blobs/ or index.json) and not empty: "
            "give an empty or new directory, or the cache's own"
        )


def find_server(target: Target, token: str | None) -> Client | None:
    """The running server of ``target``'s cache, or None if no server holds
    its lock (then the caller starts a private one, or says why it cannot).
    Never a server of another cache: a mismatch raises ClientError naming both."""
    cache = target.cache
    holder = Layout(cache).lock_holder() if cache.is_dir() else None
    if holder is not None:
        if holder.address is None:
            raise ClientError(
                f"{cache} is in use by {holder}, which does not say where it listens "
                "(still starting, or an older version): try again, or stop it"
            )
        client = for_address(Address.parse(holder.address), token)
        serves = served_cache(client)
        if serves is None:
            raise ClientError(f"{cache} is in use by {holder}, which does not answer there")
        if not _same_dir(serves, cache):
            raise ClientError(f"{cache} is locked by {holder}, but that address serves {serves}")
        return client
    if not (target.address_given or not target.cache_given):
        return None
    # A server named by --address (or, with no cache named, the default address).
    client = for_address(target.address, token)
    serves = served_cache(client)
    if serves is None:
        return None
    if target.cache_given and serves != str(cache) and not _same_dir(serves, cache):
        raise ClientError(f"the server at {client} serves {serves}, not {cache}")
    return client


def locate_cache(target: Target, token: str | None) -> Path:
    """The cache directory a command that reads the disk itself (``verify``,
    ``export``) works on, found as the other commands find their server: the
    one asked for, or, with none asked for, the one the server at the
    address serves (the default directory if none answers)."""
    cache = target.cache
    if target.cache_given:
        holder = Layout(cache).lock_holder() if cache.is_dir() else None
        if holder is not None and target.address_given and holder.address is not None:
            mine = for_address(Address.parse(holder.address), token)
            asked = for_address(target.address, token)
            if str(mine) != str(asked):
                raise ClientError(f"{cache} is served by {holder}, not at {asked}")
    else:
        serves = served_cache(for_address(target.address, token))
        if serves is not None:
            cache = Path(serves)
    if not is_cache(cache):
        raise NotACache(f"{cache} is not a cache directory (no blobs/ or index.json)")
    return cache


@contextlib.contextmanager
def connect(target: Target, token: str | None) -> Iterator[Client]:
    """The server of ``target``'s cache: the running one, or a private one."""
    found = find_server(target, token)
    if found is not None:
        yield found
        return
    cache = target.cache
    _check_usable(cache)
    if not is_cache(cache) and not target.writes:
        where = (
            f"no storage-manager answers at {for_address(target.address, token)}, and "
            if target.address_given or not target.cache_given
            else "no storage-manager serves it, and "
        )
        raise ClientError(
            f"{cache}: {where}it is not a cache yet (pull, import or serve create one there)"
        )
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
                    "--workers",
                    "1",  # one command's server: a single process is enough
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        try:
            client = Client(unix_path=str(sock), token=token, private=True)
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
