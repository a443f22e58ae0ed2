"""A real CNCF distribution registry (``docker-registry`` 2.8) and a local token server for tests.

Both listen on 127.0.0.1 only and are meant to be used as context managers (or pytest fixtures
that wrap them), so their process / thread is always stopped::

    with Registry(tmp_path / "reg") as reg:
        ...  # reg.url == "http://127.0.0.1:PORT", reg.host == "127.0.0.1:PORT"

    with TokenServer(tmp_path / "ts", users={"alice": "s3cret"}, anonymous_pull=True) as ts:
        with Registry.for_token_server(tmp_path / "reg", ts) as reg:
            ...  # GET reg.url + "/v2/" -> 401, WWW-Authenticate: Bearer realm=...,service=...
            token = ts.issue_token(["repository:foo:pull,push"])  # mint one directly

``Registry(auth="token")`` is the Docker token flow (registry ``auth.token``): the registry
verifies RS256 JWTs whose ``x5c`` header chains to ``rootcertbundle`` (``TokenServer.cert_path``),
whose ``iss`` equals ``token_issuer`` and whose ``aud`` (a *string* in 2.8) equals
``token_service``. ``Registry(auth="htpasswd")`` is HTTP Basic against a bcrypt htpasswd file
(see ``write_htpasswd``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.processes import stop_process

__all__ = [
    "REGISTRY_BINARY",
    "TOKEN_ISSUER",
    "TOKEN_SERVICE",
    "Registry",
    "TokenRequest",
    "TokenServer",
    "parse_scope",
    "parse_www_authenticate",
    "write_htpasswd",
]

REGISTRY_BINARY = "/usr/bin/docker-registry"
"""CNCF distribution 2.8.2 (Debian ``docker-registry``)."""

TOKEN_ISSUER = "storage-manager-test-token-issuer"
"""Default ``iss`` claim the token server signs and the registry trusts."""

TOKEN_SERVICE = "storage-manager-test-registry"
"""Default ``service`` (and token ``aud``) of a token-auth registry."""

HTPASSWD_REALM = "storage-manager-test-registry"
"""Default Basic realm of an htpasswd-auth registry."""

_LOOPBACK = "127.0.0.1"
_POLL = 0.05


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _yaml_str(value: str) -> str:
    # JSON strings are valid YAML flow scalars; this quotes paths, URLs and secrets safely.
    return json.dumps(value)


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """Write a bcrypt htpasswd file (the only hash registry 2.8 accepts) and return ``path``.

    Uses ``crypt(3)`` (libxcrypt's ``$2b$``) with the minimum cost, so it is fast.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        lines = []
        for user, password in users.items():
            if ":" in user:
                raise ValueError(f"htpasswd user names cannot contain ':': {user!r}")
            salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)  # noqa: S324 (bcrypt, cost 4)
            hashed = crypt.crypt(password, salt)
            if not hashed or not hashed.startswith("$2"):
                raise RuntimeError("crypt(3) on this system does not support bcrypt")
            lines.append(f"{user}:{hashed}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


class Registry:
    """``docker-registry serve config.yml`` on a free 127.0.0.1 port with its own storage."""

    def __init__(
        self,
        workdir: Path,
        auth: Literal["token", "htpasswd"] | None = None,
        token_realm: str | None = None,
        token_issuer: str = TOKEN_ISSUER,
        token_service: str = TOKEN_SERVICE,
        token_cert: Path | None = None,
        htpasswd: Path | None = None,
        htpasswd_realm: str = HTPASSWD_REALM,
        binary: str = REGISTRY_BINARY,
    ) -> None:
        if auth == "token" and (token_realm is None or token_cert is None):
            raise ValueError("auth='token' needs token_realm and token_cert")
        if auth == "htpasswd" and htpasswd is None:
            raise ValueError("auth='htpasswd' needs htpasswd (see write_htpasswd)")
        if auth not in (None, "token", "htpasswd"):
            raise ValueError(f"unknown auth mode {auth!r}")
        self.workdir = workdir
        self.auth = auth
        self.token_realm = token_realm
        self.token_issuer = token_issuer
        self.token_service = token_service
        self.token_cert = token_cert
        self.htpasswd = htpasswd
        self.htpasswd_realm = htpasswd_realm
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @classmethod
    def for_token_server(
        cls, workdir: Path, token_server: TokenServer, service: str = TOKEN_SERVICE
    ) -> Registry:
        """A registry in ``auth: token`` mode trusting ``token_server``."""
        return cls(
            workdir,
            auth="token",
            token_realm=token_server.realm,
            token_issuer=token_server.issuer,
            token_service=service,
            token_cert=token_server.cert_path,
        )

    # -- paths and addresses ------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yml"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        """The registry's stderr (and stdout): logrus lines plus an access log."""
        return self.workdir / "registry.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in ``docker://`` / oras references."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle ------------------------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {_yaml_str(str(self.storage_dir))}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {_yaml_str(self.host)}",
            f"  secret: {_yaml_str(secrets.token_hex(16))}",
        ]
        if self.auth == "token":
            assert self.token_realm is not None and self.token_cert is not None
            lines += [
                "auth:",
                "  token:",
                f"    realm: {_yaml_str(self.token_realm)}",
                f"    service: {_yaml_str(self.token_service)}",
                f"    issuer: {_yaml_str(self.token_issuer)}",
                f"    rootcertbundle: {_yaml_str(str(self.token_cert))}",
            ]
        elif self.auth == "htpasswd":
            assert self.htpasswd is not None
            lines += [
                "auth:",
                "  htpasswd:",
                f"    realm: {_yaml_str(self.htpasswd_realm)}",
                f"    path: {_yaml_str(str(self.htpasswd))}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> Registry:
        """Start the registry and wait until ``GET /v2/`` answers 200 or 401.

        A free port is picked by binding port 0 and releasing it; if another process takes it
        first the start is retried (up to 3 attempts in all).
        """
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(3):
            self.port = _free_port()
            self.config_path.write_text(self._config())
            ready, last_error = self._spawn(timeout)
            if ready:
                return self
            self.stop()
            if "address already in use" not in last_error:
                break
        raise RuntimeError(f"docker-registry did not start: {last_error}\n{self.log()}")

    def _spawn(self, timeout: float) -> tuple[bool, str]:
        # REGISTRY_* variables override the config file; don't let the environment leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=env,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log()[-2000:]
                    return False, f"exited with status {self.proc.returncode}: {tail}"
                try:
                    status = client.get(f"{self.url}/v2/").status_code
                except httpx.TransportError:
                    status = 0
                if status in (200, 401):
                    return True, ""
                time.sleep(_POLL)
        return False, f"not ready after {timeout} s"

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the process (SIGTERM, then SIGKILL) and return its exit status."""
        status: int | None = None
        if self.proc is not None:
            status = stop_process(self.proc, timeout)
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return status

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- token server ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``"repository:a/b:pull,push"`` -> ``("repository", "a/b", ["pull", "push"])``.

    The name may itself contain ``:`` (e.g. a registry host with a port), so the type is cut at
    the first colon and the actions at the last one.
    """
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        raise ValueError(f"malformed scope {scope!r}")
    return kind, name, [a for a in actions.split(",") if a]


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)="((?:[^"\\]|\\.)*)"')


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """``'Bearer realm="r",service="s",scope="a:b:pull"'`` -> ``("bearer", {...})``.

    Enough for the single challenge registry 2.8 sends; the scheme is lower-cased.
    """
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): re.sub(r"\\(.)", r"\1", v) for k, v in _CHALLENGE_PARAM.findall(rest)}
    return scheme.lower(), params


@dataclasses.dataclass(frozen=True)
class TokenRequest:
    """One request as the token server received it."""

    method: str
    path: str
    """The request target, query string included."""
    headers: dict[str, str]
    """Header names in lower case; repeated headers are joined with ``", "``."""
    body: bytes
    status: int
    """The status the token server answered."""

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class TokenServer:
    """A Docker token server (``GET /token``, and OAuth2 ``POST /token``) on 127.0.0.1.

    Authentication at the token endpoint:

    * ``Authorization: Basic`` with a pair from ``users``, or ``Authorization: Bearer S`` with
      ``S`` in ``bearer_secrets``: every requested action is granted.
    * Credentials present but wrong: 401.
    * No credentials: if ``anonymous_pull``, only ``pull`` is granted; else, if ``users`` and
      ``bearer_secrets`` are both empty, everything is granted (an open token server); else 401.

    ``fail_status`` makes every token request fail with that status (for error-path tests).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        issuer: str = TOKEN_ISSUER,
        users: dict[str, str] | None = None,
        bearer_secrets: set[str] | None = None,
        anonymous_pull: bool = False,
        expires_in: int = 300,
        response_fields: tuple[str, ...] = ("token", "access_token"),
    ) -> None:
        self.workdir = workdir
        self.issuer = issuer
        self.users: dict[str, str] = dict(users or {})
        self.bearer_secrets: set[str] = set(bearer_secrets or set())
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.response_fields = response_fields
        self.fail_status: int | None = None
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = self._make_cert()
        self._cert_der = self._cert.public_bytes(serialization.Encoding.DER)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.workdir / "token-signer.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _make_cert(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "storage-manager test token")])
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    # -- addresses ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("token server not started")
        port: int = self._httpd.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    # -- tokens ---------------------------------------------------------------------------------

    def issue_token(
        self,
        scopes: list[str] | str | None = None,
        service: str = TOKEN_SERVICE,
        subject: str = "",
        *,
        expires_in: int | None = None,
        issuer: str | None = None,
    ) -> str:
        """Mint a signed JWT granting exactly ``scopes`` (``type:name:actions`` strings)."""
        if isinstance(scopes, str):
            scopes = [scopes]
        access = []
        for scope in scopes or []:
            kind, name, actions = parse_scope(scope)
            access.append({"type": kind, "name": name, "actions": actions})
        return self._sign(access, service, subject, expires_in, issuer)

    def bearer(self, scopes: list[str] | str | None = None, service: str = TOKEN_SERVICE) -> str:
        """``"Bearer <jwt>"`` for an ``Authorization`` header (see ``issue_token``)."""
        return "Bearer " + self.issue_token(scopes, service)

    def _sign(
        self,
        access: list[dict[str, Any]],
        service: str,
        subject: str,
        expires_in: int | None,
        issuer: str | None,
    ) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            # distribution 2.8 decodes "aud" into a Go string: a JSON list is rejected.
            "aud": service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def requests_with_auth(self) -> list[TokenRequest]:
        """The recorded requests that carried an ``Authorization`` header."""
        with self._lock:
            return [r for r in self.requests if "authorization" in r.headers]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _authenticate(self, authorization: str | None, form: dict[str, list[str]]) -> str | None:
        """The subject for valid credentials, ``""`` for anonymous; ``None`` means 401."""
        auth_required = bool(self.users or self.bearer_secrets)
        if authorization:
            scheme, _, value = authorization.partition(" ")
            value = value.strip()
            if scheme.lower() == "basic":
                try:
                    user, sep, password = (
                        base64.b64decode(value, validate=True).decode().partition(":")
                    )
                except (ValueError, UnicodeDecodeError):
                    return None
                if (
                    sep
                    and user in self.users
                    and secrets.compare_digest(self.users[user], password)
                ):
                    return user
                return None
            if scheme.lower() == "bearer":
                if any(secrets.compare_digest(value, s) for s in self.bearer_secrets):
                    return "bearer-secret"
                return None
            return None
        # OAuth2 password grant (POST form), as containerd / oras-go use.
        if form.get("grant_type") == ["password"]:
            user = form.get("username", [""])[0]
            password = form.get("password", [""])[0]
            if user in self.users and secrets.compare_digest(self.users[user], password):
                return user
            return None
        if self.anonymous_pull or not auth_required:
            return ""
        return None

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(path)
        if split.path != "/token":
            return 404, {}, b'{"error":"not found"}'
        if self.fail_status is not None:
            return self.fail_status, {}, b'{"error":"configured failure"}'
        params = parse_qs(split.query)
        if method == "POST":
            ctype = headers.get("content-type", "")
            if not ctype.startswith("application/x-www-form-urlencoded"):
                return 400, {}, b'{"error":"unsupported_grant_type"}'
            params = {**params, **parse_qs(body.decode("utf-8", "replace"))}
        subject = self._authenticate(headers.get("authorization"), params)
        if subject is None:
            return (
                401,
                {"WWW-Authenticate": 'Basic realm="storage-manager-test-token"'},
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            )
        service = params.get("service", [TOKEN_SERVICE])[0]
        access: list[dict[str, Any]] = []
        for raw in params.get("scope", []):
            for scope in raw.split(" "):  # OAuth2 form posts join scopes with spaces
                if not scope:
                    continue
                try:
                    kind, name, actions = parse_scope(scope)
                except ValueError:
                    return 400, {}, b'{"error":"invalid_scope"}'
                if subject == "" and self.anonymous_pull:
                    actions = [a for a in actions if a == "pull"]
                access.append({"type": kind, "name": name, "actions": actions})
        token = self._sign(access, service, subject, None, None)
        answer: dict[str, Any] = {field: token for field in self.response_fields}
        answer["expires_in"] = self.expires_in
        answer["issued_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, {}, json.dumps(answer).encode()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                headers: dict[str, str] = {}
                for key, value in self.headers.items():
                    k = key.lower()
                    headers[k] = f"{headers[k]}, {value}" if k in headers else value
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20)) if length > 0 else b""
                try:
                    status, extra, payload = server._answer(self.command, self.path, headers, body)
                except Exception as e:  # a bug here should show up as a 500, not a hang
                    status, extra, payload = 500, {}, json.dumps({"error": repr(e)}).encode()
                server._record(TokenRequest(self.command, self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = _handle
            do_POST = _handle
            do_HEAD = _handle

        httpd = ThreadingHTTPServer((_LOOPBACK, 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
