"""What ``ollama pull --insecure <host>/<namespace>/<model>:<tag>`` sends, replayed in Python.

The ollama binary cannot be installed in the test environment, so this reproduces the
requests of its pull (``server/images.go`` ``PullModel``/``pullModelManifest`` and
``server/download.go``, read at ollama ``fb30760`` and ``01ca4ec``) with Go's
``net/http`` behaviour where it matters:

1. ``GET /v2/<ns>/<model>/manifests/<tag>`` with ``Accept:
   application/vnd.docker.distribution.manifest.v2+json``; any status >= 400 fails.
2. For the config and every layer (``downloadBlob``):

   * ``blobDownload.Prepare``: ``HEAD /v2/<ns>/<model>/blobs/<digest>`` with Go's default
     redirect policy (followed); its ``Content-Length`` is the download's total, split
     into parts of ``total / 16`` clamped to [100 MB, 1000 MB].
   * ``blobDownload.run``: ``GET`` of the same URL with a ``CheckRedirect`` that follows
     redirects to the same hostname and stops at the first other one; a ``307``/``302``
     gives the direct URL from its ``Location``, and a ``200`` gives it from the
     ``Location`` header too (``resp.Location()`` at ``fb30760``: "http: no Location header
     in response" without one; ``01ca4ec`` uses the request URL instead). The body is
     not read: the connection is closed (``defer resp.Body.Close()``).
   * ``downloadChunk`` per part, in parallel (up to 16): ``GET <direct URL>`` with
     ``Range: bytes=<start>-<end>`` and **no** credentials (``http.DefaultClient``); the
     status is not checked and exactly the part's size is copied from the body (a
     ``200`` would be written at the part's offset); a short body is retried.
   * then ``verifyBlob``: the file's sha256 must be the digest.

Connections are kept alive and reused as Go's transport does (one closed when its body
was not read). Each request and the answer's status and headers are recorded in
``client.log``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
USER_AGENT = "ollama/0.6.0 (amd64 linux) Go/go1.24.0"
NUM_DOWNLOAD_PARTS = 16
MIN_DOWNLOAD_PART_SIZE = 100 * 1000 * 1000
MAX_DOWNLOAD_PART_SIZE = 1000 * 1000 * 1000
MAX_RETRIES = 6


class PullError(Exception):
    """The pull failed where ollama's would."""


@dataclass
class Exchange:
    method: str
    url: str
    request_headers: dict[str, str]  # lower-cased names
    status: int
    headers: dict[str, str]  # lower-cased names


@dataclass
class OllamaClient:
    """Pulls one model from ``base`` (``http://host:port``) into ``models_dir``."""

    base: str
    models_dir: Path
    min_part_size: int = MIN_DOWNLOAD_PART_SIZE
    timeout: float = 30.0
    log: list[Exchange] = field(default_factory=list)
    connections: int = 0  # opened (the rest of the requests reused one)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = field(default_factory=dict)

    # -- one HTTP exchange, Go style ----------------------------------------------

    def _connection(self, host: str, port: int) -> http.client.HTTPConnection:
        """An idle keep-alive connection to ``host:port`` (Go's pool), or a new one."""
        with self._lock:
            idle = self._idle.get((host, port))
            if idle:
                return idle.pop()
            self.connections += 1
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _request(
        self, method: str, url: str, headers: dict[str, str], *, read_body: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise PullError(f"unsupported URL {url!r}")
        key = (parts.hostname, parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": USER_AGENT, **headers}
        # Go's transport asks for gzip by itself unless the request has a Range.
        if "Range" not in sent and method != "HEAD":
            sent.setdefault("Accept-Encoding", "gzip")
        conn = self._connection(*key)
        reused = conn.sock is not None
        try:
            try:
                conn.request(method, target, headers=sent)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError):
                if not reused:
                    raise
                # The server closed an idle connection: Go retries on a new one.
                conn.close()
                conn = http.client.HTTPConnection(*key, timeout=self.timeout)
                conn.request(method, target, headers=sent)
                resp = conn.getresponse()
            got = {k.lower(): v for k, v in resp.getheaders()}
            body = resp.read() if read_body or method == "HEAD" else b""  # HEAD: b""
        except BaseException:
            conn.close()
            raise
        if (read_body or method == "HEAD") and not resp.will_close:
            with self._lock:
                self._idle.setdefault(key, []).append(conn)
        else:
            conn.close()  # an unread body: Go closes the connection
        with self._lock:
            lowered = {k.lower(): v for k, v in sent.items()}
            self.log.append(Exchange(method, url, lowered, resp.status, got))
        return resp.status, got, body

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _follow(
        self, method: str, url: str, headers: dict[str, str], *, same_host_only: bool = False
    ) -> tuple[str, int, dict[str, str], bytes]:
        """Go's client: redirects followed (at most 10); with ``same_host_only`` (the
        ``CheckRedirect`` of ``blobDownload.run``) it stops at another hostname and
        hands back that redirect itself. The body of the last answer is not read
        when ``same_host_only`` is set."""
        first = urlsplit(url).hostname
        for _ in range(11):
            status, got, body = self._request(method, url, headers, read_body=not same_host_only)
            if status in (301, 302, 303, 307, 308) and "location" in got:
                nxt = urljoin(url, got["location"])
                if same_host_only and urlsplit(nxt).hostname != first:
                    return url, status, got, body
                url = nxt
                continue
            return url, status, got, body
        raise PullError("stopped after 10 redirects")

    # -- the pull ------------------------------------------------------------------

    def pull(self, namespace: str, model: str, tag: str) -> dict[str, Any]:
        """Pull ``<namespace>/<model>:<tag>``; the parsed manifest."""
        repo = f"{namespace}/{model}"
        url = f"{self.base}/v2/{repo}/manifests/{tag}"
        _, status, _, body = self._follow("GET", url, {"Accept": MANIFEST_ACCEPT})
        if status >= 400:
            raise PullError(f"pull model manifest: {status}: {body[:200]!r}")
        manifest: dict[str, Any] = json.loads(body)
        layers = list(manifest.get("layers", []))
        if manifest.get("config", {}).get("digest"):
            layers.append(manifest["config"])
        blobs = self.models_dir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        for layer in layers:
            self.download_blob(repo, layer["digest"], blobs)
        path = self.models_dir / "manifests" / urlsplit(self.base).netloc / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return manifest

    def download_blob(self, repo: str, digest: str, blobs: Path) -> Path:
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise PullError(f"bad digest {digest!r}")
        final = blobs / digest.replace(":", "-")
        if final.exists():
            return final
        request_url = f"{self.base}/v2/{repo}/blobs/{digest}"
        # Prepare: HEAD with the default redirect policy; Content-Length is the total.
        _, status, got, _ = self._follow("HEAD", request_url, {})
        if status >= 400:
            raise PullError(f"HEAD {request_url}: {status}")
        total = int(got.get("content-length", "0") or 0)
        size = total // NUM_DOWNLOAD_PARTS
        size = min(max(size, self.min_part_size), MAX_DOWNLOAD_PART_SIZE)
        parts: list[tuple[int, int]] = []
        offset = 0
        while offset < total:
            n = min(size, total - offset)
            parts.append((offset, n))
            offset += n
        # run: the direct URL from a GET that does not follow a redirect off-host.
        last_url, status, got, _ = self._follow("GET", request_url, {}, same_host_only=True)
        if status in (302, 307):
            direct = urljoin(last_url, got["location"])
        elif status == 200:
            if "location" not in got:
                raise PullError("http: no Location header in response")
            direct = urljoin(last_url, got["location"])  # resp.Location()
        else:
            raise PullError(f"unexpected status code {status}")
        partial = blobs / (final.name + "-partial")
        with open(partial, "wb") as f:
            f.truncate(total)

        def part(start: int, length: int) -> None:
            done = 0
            for _ in range(MAX_RETRIES):
                first, last = start + done, start + length - 1
                _, _, _, body = self._follow("GET", direct, {"Range": f"bytes={first}-{last}"})
                chunk = body[: length - done]  # io.CopyN: the status is not looked at
                with open(partial, "r+b") as f:
                    f.seek(first)
                    f.write(chunk)
                done += len(chunk)
                if done == length:
                    return
            raise PullError(f"{digest[7:19]} part at {start}: max retries exceeded")

        with ThreadPoolExecutor(max_workers=NUM_DOWNLOAD_PARTS) as pool:
            for future in [pool.submit(part, s, n) for s, n in parts]:
                future.result()
        h = hashlib.sha256()
        with open(partial, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if "sha256:" + h.hexdigest() != digest:
            partial.unlink()
            raise PullError(f"digest mismatch, file must be downloaded again: want {digest}")
        partial.rename(final)
        return final
