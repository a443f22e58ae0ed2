"""A private containerd 1.6 daemon for tests, driven with ``ctr``, and ``hosts.toml`` writers.

containerd (Debian ``containerd`` 1.6.20) is the client the ``/v2`` API is meant to serve as a
pull-through mirror. Each :class:`Containerd` has its own ``root``, ``state`` and GRPC socket in a
temporary directory, no CRI plugin and no task runtime (it only stores content and image
records), and is stopped (SIGTERM, then SIGKILL) when the ``with`` block ends::

    with Containerd(tmp_path / "containerd") as ctrd:
        write_hosts_toml(ctrd.hosts_dir, reg.host, server_url=reg.url, mirror_url=mirror.url)
        ctrd.pull(f"{reg.host}/library/demo:v1")  # content only: no unpack, no snapshot
        assert set(blobs) <= ctrd.list_content()

How containerd 1.6 reaches registries (checked against this binary, see
``tests/fakes/test_containerd_harness.py``):

* With ``ctr`` the resolver and the HTTP requests run in the *client* process (``ctr``), not in
  the daemon; the registry host configuration is the ``--hosts-dir DIR`` flag of
  ``ctr images pull`` / ``ctr content fetch`` (the CRI plugin's equivalent is
  ``[plugins."io.containerd.grpc.v1.cri".registry] config_path``).
* For a reference ``HOST[:PORT]/repo:tag`` it reads the first of ``DIR/HOST_PORT_/hosts.toml``,
  ``DIR/HOST:PORT/hosts.toml`` and ``DIR/_default/hosts.toml`` that exists.
* Every ``[host."URL"]`` is tried in file order, then ``server`` (or, with no ``server`` line,
  the reference's own host). A host answering 404, another 4xx/5xx status, or not answering,
  makes it try the next one.
* Requests to any host other than the reference's own host carry ``?ns=<HOST[:PORT]>``.
* The scheme is the one written in each URL: ``ctr --plain-http`` does not turn an
  ``https://`` entry into ``http://`` (it only picks the scheme of the implicit server when
  ``server`` is absent; loopback hosts get ``http`` then anyway).
* containerd 1.6.20 rejects a ``hosts.toml`` that has no ``[host...]`` table ("failed to decode
  hosts.toml: invalid `host` tree", containerd/containerd#10027) and then silently uses its
  defaults; :func:`write_hosts_toml` writes an empty ``[host]`` table in that case, and
  :meth:`Containerd.pull` fails if ``ctr`` reports that error.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.support.processes import stop_process

__all__ = [
    "CONTAINERD_BINARY",
    "CTR_BINARY",
    "DISABLED_PLUGINS",
    "NAMESPACE",
    "Containerd",
    "CtrError",
    "RecordedRequest",
    "RecordingServer",
    "closed_loopback_port",
    "containerd_available",
    "host_platform",
    "write_hosts_toml",
]

CONTAINERD_BINARY = "/usr/bin/containerd"
"""containerd 1.6.20 (Debian ``containerd``)."""

CTR_BINARY = "/usr/bin/ctr"

NAMESPACE = "test"
"""The containerd namespace every ``ctr`` call uses."""

DISABLED_PLUGINS = (
    # Kubernetes CRI: needs CNI, cgroups, and would start streaming servers.
    "io.containerd.grpc.v1.cri",
    # Would create /opt/containerd outside our temporary directory.
    "io.containerd.internal.v1.opt",
    # Running containers: not needed to fetch content, and needs cgroups / shims.
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.internal.v1.restart",
    # Snapshotters needing special filesystems or devices.
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    # Would export traces over the network if configured.
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)
"""Plugins the test daemon does not load (unknown names are ignored by containerd)."""

_LOOPBACK = "127.0.0.1"
_POLL = 0.05
_SUN_PATH_MAX = 100  # sun_path is 108 bytes; containerd adds ".ttrpc" for its ttrpc socket
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
# Environment variables that would change what ctr / containerd do behind our back.
_ENV_DROP = re.compile(r"^(CONTAINERD_|HTTPS?_PROXY$|NO_PROXY$|ALL_PROXY$)", re.IGNORECASE)
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


class CtrError(RuntimeError):
    """A ``ctr`` command failed (or reported an ignored ``hosts.toml``)."""

    def __init__(self, message: str, proc: subprocess.CompletedProcess[Any] | None = None) -> None:
        super().__init__(message)
        self.proc = proc


def containerd_available() -> bool:
    """Whether the containerd and ctr binaries are installed."""
    return os.access(CONTAINERD_BINARY, os.X_OK) and os.access(CTR_BINARY, os.X_OK)


def host_platform() -> str:
    """The running platform as containerd names it, e.g. ``linux/amd64``."""
    machine = platform.machine().lower()
    arch = _GOARCH.get(machine, machine)
    return f"linux/{arch}"


def closed_loopback_port() -> int:
    """A 127.0.0.1 port with nothing listening on it (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not _ENV_DROP.match(k)}


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are a subset of TOML's for these characters)."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _with_scheme(url: str, plain_http: bool) -> str:
    if "://" in url:
        return url.rstrip("/")
    return ("http://" if plain_http else "https://") + url.rstrip("/")


def write_hosts_toml(
    hosts_dir: Path,
    registry_host: str,
    server_url: str | None = None,
    mirror_url: str | Sequence[str] | None = None,
    capabilities: Sequence[str] = ("pull", "resolve"),
    skip_verify: bool = False,
    plain_http: bool = True,
    *,
    override_path: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """Write ``<hosts_dir>/<registry_host>/hosts.toml`` and return its path.

    ``registry_host`` is the host part of the references it applies to (``docker.io``,
    ``127.0.0.1:5000``) or ``_default``. ``server_url`` becomes ``server`` (tried last; omit it to
    fall back to ``registry_host`` itself); each ``mirror_url`` becomes a
    ``[host."URL"]`` table with ``capabilities`` (``pull``, ``resolve``, ``push``), tried first
    and in order. ``skip_verify``, ``override_path`` and ``headers`` go into every ``[host]``
    table (and ``skip_verify`` also to the top level, where it applies to ``server``).

    containerd takes each URL's scheme as written; a URL given without one gets ``http://`` when
    ``plain_http`` (the default: test servers are plain HTTP on loopback), else ``https://``.
    """
    if not registry_host or "/" in registry_host:
        raise ValueError(f"registry_host must be a host[:port] or _default: {registry_host!r}")
    for cap in capabilities:
        if cap not in ("pull", "resolve", "push"):
            raise ValueError(f"unknown capability {cap!r}")
    if mirror_url is None:
        mirrors: list[str] = []
    elif isinstance(mirror_url, str):
        mirrors = [mirror_url]
    else:
        mirrors = list(mirror_url)
    lines = [f"# hosts.toml for {registry_host} (containerd 1.6 format, docs/hosts.md)"]
    if server_url is not None:
        lines.append(f"server = {_toml_str(_with_scheme(server_url, plain_http))}")
    if skip_verify:
        lines.append("skip_verify = true")
    for mirror in mirrors:
        url = _with_scheme(mirror, plain_http)
        lines += ["", f"[host.{_toml_str(url)}]"]
        lines.append("  capabilities = [" + ", ".join(_toml_str(c) for c in capabilities) + "]")
        if skip_verify:
            lines.append("  skip_verify = true")
        if override_path:
            lines.append("  override_path = true")
        if headers:
            lines.append(f"  [host.{_toml_str(url)}.header]")
            lines += [f"    {_toml_str(k)} = {_toml_str(v)}" for k, v in headers.items()]
    if not mirrors:
        # containerd 1.6 cannot parse a hosts.toml without a host tree (containerd#10027).
        lines += ["", "[host]"]
    path = hosts_dir / registry_host / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class Containerd:
    """``containerd --config <tmp>/config.toml`` with private root, state and socket."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        namespace: str = NAMESPACE,
        binary: str = CONTAINERD_BINARY,
        ctr_binary: str = CTR_BINARY,
        log_level: str = "debug",
        ctr_timeout: float = 120.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="ctrd-"))
        self.namespace = namespace
        self.binary = binary
        self.ctr_binary = ctr_binary
        self.log_level = log_level
        self.ctr_timeout = ctr_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._socket_dir: Path | None = None

    # -- paths ----------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """containerd's persistent ``root`` (content store, metadata.db)."""
        return self.workdir / "root"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def log_path(self) -> Path:
        """The daemon's stdout and stderr."""
        return self.workdir / "containerd.log"

    @property
    def hosts_dir(self) -> Path:
        """A ``certs.d``-style directory that :meth:`pull` passes as ``--hosts-dir``."""
        return self.workdir / "certs.d"

    @property
    def address(self) -> Path:
        """The GRPC socket (in the work directory, or a short /tmp one if that path is long)."""
        if self._socket_dir is not None:
            return self._socket_dir / "containerd.sock"
        return self.workdir / "containerd.sock"

    @property
    def content_dir(self) -> Path:
        """Where the content store keeps blobs: ``<root>/io.containerd.content.v1.content``."""
        return self.root / "io.containerd.content.v1.content" / "blobs"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle ------------------------------------------------------------------------------

    def _config(self) -> str:
        disabled = ", ".join(_toml_str(p) for p in DISABLED_PLUGINS)
        sock = str(self.address)
        return "\n".join(
            [
                "version = 2",
                f"root = {_toml_str(str(self.root))}",
                f"state = {_toml_str(str(self.state))}",
                f"temp = {_toml_str(str(self.workdir / 'tmp'))}",
                f"disabled_plugins = [{disabled}]",
                "oom_score = 0",
                "",
                "[grpc]",
                f"  address = {_toml_str(sock)}",
                "",
                "[ttrpc]",
                f"  address = {_toml_str(sock + '.ttrpc')}",
                "",
                "[debug]",
                '  address = ""',
                f"  level = {_toml_str(self.log_level)}",
                "",
                "[metrics]",
                '  address = ""',
                "",
            ]
        )

    def start(self, timeout: float = 20.0) -> Containerd:
        """Start the daemon and wait until ``ctr version`` reaches it (at most ``timeout`` s)."""
        if not containerd_available():
            raise RuntimeError(f"{self.binary} / {self.ctr_binary} are not installed")
        if self.proc is not None:
            raise RuntimeError("containerd is already running")
        for d in (self.workdir, self.root, self.state, self.hosts_dir, self.workdir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        if len(str(self.workdir / "containerd.sock")) > _SUN_PATH_MAX:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ctrd-sock-"))
        self.config_path.write_text(self._config())
        self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=_clean_env(),
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                self.stop()
                raise RuntimeError(f"containerd exited with status {status}:\n{self.log()[-3000:]}")
            if self.address.exists():
                try:
                    probe = self.ctr("version", timeout=5.0)
                except subprocess.TimeoutExpired:
                    last = "ctr version timed out"
                else:
                    if probe.returncode == 0:
                        return self
                    last = probe.stderr.strip()
            time.sleep(_POLL)
        self.stop()
        raise RuntimeError(
            f"containerd not ready after {timeout} s ({last}):\n{self.log()[-3000:]}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the daemon (SIGTERM, then SIGKILL); return its exit status."""
        status: int | None = None
        if self.proc is not None:
            status = stop_process(self.proc, timeout)
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return status

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- ctr ------------------------------------------------------------------------------------

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [
            self.ctr_binary,
            "--address",
            str(self.address),
            "--namespace",
            self.namespace,
            *args,
        ]

    def ctr(
        self, *args: str, timeout: float | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address <socket> --namespace <ns> ARGS...`` (text output, bounded time).

        With ``check``, a non-zero exit raises :class:`CtrError` carrying stdout, stderr and the
        tail of the daemon's log.
        """
        argv = self._argv(args)
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=self.ctr_timeout if timeout is None else timeout,
            check=False,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise CtrError(self._describe_failure(argv, proc), proc)
        return proc

    def _describe_failure(self, argv: Sequence[str], proc: subprocess.CompletedProcess[Any]) -> str:
        out = proc.stdout if isinstance(proc.stdout, str) else ""
        err = proc.stderr if isinstance(proc.stderr, str) else repr(proc.stderr)
        return (
            f"{' '.join(argv)} -> exit {proc.returncode}\n"
            f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}\n"
            f"--- containerd log (tail) ---\n{self.log()[-2000:]}"
        )

    def pull(
        self,
        ref: str,
        hosts_dir: Path | None = None,
        platform: str | None = None,
        *,
        all_platforms: bool = False,
        plain_http: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Fetch ``ref``'s content into the content store, without unpacking it.

        Runs ``ctr content fetch --hosts-dir DIR [--platform P | --all-platforms]
        [--plain-http] REF``: the manifest (and index), config and layers for the platform (the
        running one by default) are stored and an image record ``REF`` is created; no snapshot
        is prepared, so no snapshotter or mount is needed. ``hosts_dir`` defaults to
        :attr:`hosts_dir`. Raises :class:`CtrError` on failure, or when ``ctr`` says it could
        not parse a ``hosts.toml`` (it then ignores the file and carries on with defaults).
        """
        args = ["content", "fetch", "--hosts-dir", str(hosts_dir or self.hosts_dir)]
        if all_platforms:
            args.append("--all-platforms")
        elif platform is not None:
            args += ["--platform", platform]
        if plain_http:
            args.append("--plain-http")
        args += [*extra_args, ref]
        proc = self.ctr(*args, timeout=timeout, check=True)
        if "failed to decode hosts.toml" in proc.stderr:
            raise CtrError(
                "ctr ignored a hosts.toml it could not parse:\n"
                + self._describe_failure(self._argv(args), proc),
                proc,
            )
        return proc

    def list_content(self) -> set[str]:
        """Digests of every blob in the namespace's content store (``ctr content ls -q``)."""
        proc = self.ctr("content", "ls", "--quiet", check=True)
        return {line.strip() for line in proc.stdout.splitlines() if _DIGEST.match(line.strip())}

    def read_content(self, digest: str) -> bytes:
        """A blob's bytes (``ctr content get DIGEST``)."""
        argv = self._argv(["content", "get", digest])
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=self.ctr_timeout,
            check=False,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise CtrError(self._describe_failure(argv, proc), proc)
        return proc.stdout

    def list_images(self) -> dict[str, str]:
        """Image records: ``name -> target digest`` (``ctr images ls``)."""
        proc = self.ctr("images", "ls", check=True)
        images: dict[str, str] = {}
        for line in proc.stdout.splitlines()[1:]:
            fields = line.split()
            digests = [f for f in fields[1:] if f.startswith("sha256:")]
            if fields and digests:
                images[fields[0]] = digests[0]
        return images


# -- a recording registry host ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as :class:`RecordingServer` received it."""

    method: str
    target: str
    """The request target as sent (path and query string)."""
    headers: tuple[tuple[str, str], ...]
    """Header names as sent, in order."""
    status: int
    """The status the server answered."""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


class RecordingServer:
    """An HTTP/1.1 server on 127.0.0.1 that records every request, for use as a registry host.

    By default it answers everything with 404 and an OCI ``NAME_UNKNOWN`` error body. With
    ``upstream`` (``http://127.0.0.1:PORT``) it forwards GET and HEAD to that server instead (same
    target minus ``ns``, same headers but ``Host``) and relays the answer; with
    ``drop_headers`` those response headers are left out (e.g. ``Docker-Content-Digest``), and
    the first 200 answer to a GET whose path ends with one of ``truncate_once`` (digests) is cut
    after half its body (the full ``Content-Length`` is announced, then the connection closes).
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        status: int = 404,
        drop_headers: Sequence[str] = (),
        truncate_once: Sequence[str] = (),
    ) -> None:
        self.upstream = upstream
        self.status = status
        self.drop_headers = {h.lower() for h in drop_headers}
        self.truncate_once = set(truncate_once)
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        port: int = self._httpd.server_address[1]
        return port

    @property
    def host(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def recorded(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.requests)

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _take_truncation(self, target: str) -> bool:
        path = urlsplit(target).path
        with self._lock:
            for digest in self.truncate_once:
                if path.endswith("/" + digest):
                    self.truncate_once.discard(digest)
                    return True
        return False

    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.upstream is not None
        parts = urlsplit(target)
        query = [
            (k, v)
            for k, vs in parse_qs(parts.query, keep_blank_values=True).items()
            if k != "ns"
            for v in vs
        ]
        path = parts.path + ("?" + urlencode(query) if query else "")
        up = urlsplit(self.upstream)
        conn = HTTPConnection(up.hostname or _LOOPBACK, up.port or 80, timeout=60)
        try:
            fwd = {k: v for k, v in headers if k.lower() not in ("host", "connection")}
            conn.request(method, path, headers=fwd)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.getheaders(), body
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = list(self.headers.items())
                if server.upstream is not None and self.command in ("GET", "HEAD"):
                    status, resp_headers, body = server._forward(self.command, self.path, headers)
                else:
                    status = server.status
                    body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"recording server"}]}'
                    resp_headers = [("Content-Type", "application/json")]
                server._record(RecordedRequest(self.command, self.path, tuple(headers), status))
                self.send_response(status)
                skip = {"content-length", "connection", "transfer-encoding", "date", "server"}
                announced = str(len(body))
                for k, v in resp_headers:
                    if k.lower() == "content-length" and self.command == "HEAD":
                        announced = v  # a HEAD answer announces the size of the GET body
                    elif k.lower() not in skip and k.lower() not in server.drop_headers:
                        self.send_header(k, v)
                self.send_header("Content-Length", announced)
                cut = self.command == "GET" and status == 200 and server._take_truncation(self.path)
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> RecordingServer:
        self._httpd = ThreadingHTTPServer((_LOOPBACK, 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="recording-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
