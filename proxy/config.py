"""One attrs :class:`Config` from flags, then environment, then defaults.

Every option is one row of :data:`OPTIONS`: its flag, its environment
variable, its default, its help text and the parser of its value. The
command line's flags (:mod:`proxy.cli`), the environment names, the defaults
and the README's configuration table (checked by a test) all come from it.

The three options of the original binary keep their names and defaults
exactly (``--cache-dir``/``CACHE_DIR``, ``--address``/``NEKKO_ADDRESS``,
``--verbose``/``VERBOSE``); the rest follow ``DESIGN.md``. Every value is
validated here; a bad one raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from proxy.fetch.proxyenv import ProxyConfig, ProxyConfigError
from proxy.fetch.reach import check_allow_entry
from proxy.service.membership import PeerSpec, PeerSpecError, is_loopback, parse_peers
from proxy.shared.location import InvalidLocation, StoreLocation, parse_location

DEFAULT_CACHE_DIR = "/var/lib/nekko/cache"
DEFAULT_ADDRESS = "localhost:8050"


class ConfigError(ValueError):
    """A flag or environment variable has a value this program cannot use."""


@attrs.frozen
class Address:
    """Where the API listens: TCP ``host:port`` or a Unix-domain socket path."""

    host: str = ""
    port: int = 0
    unix_path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip()
        if not text:
            raise ConfigError("address is empty")
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path:
                raise ConfigError("unix: address needs a socket path")
            return cls(unix_path=Path(path))
        if "/" in text:
            return cls(unix_path=Path(text))
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"address {text!r}: expected host:port or a socket path")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(f"address {text!r}: put an IPv6 host in brackets, [::1]:8050")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"address {text!r}: port must be a number from 0 to 65535")
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _int(name: str, text: str, minimum: int = 0) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


MAX_AUTO_WORKERS = 8  # --workers auto: one per core, up to this many


def _workers(name: str, text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))
    return _int(name, text, minimum=1)


_BOOLS = ("0", "1", "true", "false", "yes", "no", "")


def _hosts(text: str) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in text.split(",") if h.strip())


def _allowed_hosts(name: str, text: str) -> frozenset[str]:
    hosts = _hosts(text)
    for entry in sorted(hosts):
        problem = check_allow_entry(entry)
        if problem is not None:
            raise ConfigError(f"{name}: {problem}")
    return hosts


@attrs.frozen
class SizeLimit:
    """``--max-cache-size``: bytes, or a share of the cache's filesystem."""

    bytes: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, name: str, text: str) -> SizeLimit | None:
        text = text.strip()
        if not text or text.lower() in ("0", "none", "unlimited"):
            return None
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
        if m:
            pct = float(m.group(1))
            if not 0 < pct <= 100:
                raise ConfigError(f"{name}: a percentage is from 0 to 100, not {text!r}")
            return cls(percent=pct)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)?", text, re.IGNORECASE)
        if m is None:
            raise ConfigError(f"{name} is bytes (500M, 50G, 1.5T) or a share (80%), not {text!r}")
        factor = 1024 ** " KMGTP".index((m.group(2) or " ").upper())
        return cls(bytes=int(float(m.group(1)) * factor))

    def resolve(self, filesystem_bytes: int) -> int:
        if self.bytes is not None:
            return self.bytes
        assert self.percent is not None
        return int(filesystem_bytes * self.percent / 100)


@attrs.frozen
class Config:
    """The server's settings, built by :func:`build` from :data:`OPTIONS`
    (the defaults live there, once)."""

    cache_dir: Path
    address: Address
    verbose: int
    log_format: str
    max_downloads: int
    max_cache_size: SizeLimit | None
    low_watermark: float  # eviction frees down to this share of the limit
    allow_upstream: frozenset[str]
    upstream: str | None
    api_token: str | None = attrs.field(repr=False)
    protect_reads: bool
    mirror: bool
    allow_push: bool  # the /v2 push endpoints
    manifest_ttl: float
    registry_credentials: dict[str, str] = attrs.field(repr=False)
    insecure_registries: frozenset[str]
    idle_timeout: float
    retries: int
    file_roots: tuple[Path, ...]
    s3_addressing_style: str
    retry_backoff: float
    sync_commits: bool  # fsync each blob before its commit, not just after
    buffered_writes: bool  # write downloads through the page cache (no O_DIRECT)
    direct_writes: bool  # write downloads past the page cache (O_DIRECT), not through it
    peers: tuple[PeerSpec, ...]
    peer_fanout: int
    advertise_address: str | None
    cluster_token: str | None = attrs.field(repr=False)
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None
    tls_address: Address | None  # the HTTPS listener (None: none)
    shared_store: StoreLocation | None  # the cluster's shared second tier (None: none)

    @property
    def peer_tls(self) -> bool:
        """Peers are reached over HTTPS and verified against --tls-ca."""
        return self.tls_address is not None and self.tls_ca is not None

    proxies: ProxyConfig = attrs.field(factory=ProxyConfig)  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY
    workers: int = 1  # serving processes: one writer, workers - 1 readers (proxy.workers)


def _optional_path(name: str, text: str) -> Path | None:
    if not text.strip():
        return None
    return Path(os.path.abspath(Path(text.strip()).expanduser()))


def _peer_specs(name: str, text: str) -> tuple[PeerSpec, ...]:
    try:
        return parse_peers(text)
    except PeerSpecError as e:
        raise ConfigError(f"{name}: {e}") from None


def _seconds(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None


def _positive_seconds(name: str, text: str) -> float:
    value = _seconds(name, text)
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


def _backoff(name: str, text: str) -> float:
    value = _seconds(name, text)
    if not 0 <= value <= 3600:
        raise ConfigError(f"{name} must be from 0 to 3600 seconds")
    return value


def _switch(name: str, text: str) -> bool:
    if text.strip().lower() not in _BOOLS:
        raise ConfigError(f"{name} must be 1 or 0, not {text!r}")
    return text.strip().lower() in ("1", "true", "yes")


def _shared_store(name: str, text: str) -> StoreLocation | None:
    if not text.strip():
        return None
    try:
        return parse_location(text.strip())
    except InvalidLocation as e:
        raise ConfigError(f"{name}: {e.message}") from None


def _cache_dir(name: str, text: str) -> Path:
    if not text.strip():
        raise ConfigError(f"{name} is empty")
    # Absolute from here on: every path in answers, logs and output is.
    return Path(os.path.abspath(Path(text).expanduser()))


def _address(name: str, text: str) -> Address:
    try:
        return Address.parse(text)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def _watermark(name: str, text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    if m is None or not 0 < float(m.group(1)) <= 100:
        raise ConfigError(f"{name} is a share of --max-cache-size, e.g. 90%, not {text!r}")
    return float(m.group(1)) / 100


def _credentials(name: str, text: str) -> dict[str, str]:
    creds: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        host, sep, secret = item.strip().partition("=")
        if not sep or not host or not secret:
            raise ConfigError("registry credentials are host=token or host=user:password, ...")
        creds[host.lower()] = secret
    return creds


def _roots(name: str, text: str) -> tuple[Path, ...]:
    roots = []
    for item in text.split(","):
        if not item.strip():
            continue
        root = Path(item.strip()).expanduser()
        if not root.is_absolute():
            raise ConfigError(f"{name}: {item.strip()!r} is not an absolute path")
        roots.append(root)
    return tuple(roots)


def _one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        if text.strip().lower() not in choices:
            listed = ", ".join(choices[:-1]) + " or " + choices[-1]
            raise ConfigError(f"{name} must be {listed}, not {text!r}")
        return text.strip().lower()

    return parse


@attrs.frozen
class Option:
    """One option: ``--<flag>`` on the command line, ``env`` in the
    environment, ``default`` (text, as it would be written there) otherwise."""

    field: str  # the Config attribute it sets
    flag: str  # without the leading "--"
    env: str
    default: str
    help: str
    parse: Callable[[str, str], Any]  # (where it came from, text) -> value
    metavar: str | None = None  # None: a switch (the flag alone means 1)
    shown_default: str | None = None  # in --help, when the text is not what to show

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "cache_dir",
        "cache-dir",
        "CACHE_DIR",
        DEFAULT_CACHE_DIR,
        "cache directory",
        _cache_dir,
        "DIR",
    ),
    Option(
        "address",
        "address",
        "NEKKO_ADDRESS",
        DEFAULT_ADDRESS,
        "host:port, or unix:/path / a path with '/' for a Unix socket",
        _address,
        "ADDR",
    ),
    Option(
        "verbose",
        "verbose",
        "VERBOSE",
        "0",
        "log level: 0 info, 1 debug, 2 trace",
        lambda n, t: min(_int(n, t), 2),
        "N",
    ),
    Option(
        "log_format",
        "log-format",
        "NEKKO_LOG_FORMAT",
        "text",
        "text or json: one JSON object per line",
        _one_of("text", "json"),
        "FORMAT",
    ),
    Option(
        "max_downloads",
        "max-downloads",
        "NEKKO_MAX_DOWNLOADS",
        "4",
        "concurrent downloads",
        lambda n, t: _int(n, t, minimum=1),
        "N",
    ),
    Option(
        "workers",
        "workers",
        "NEKKO_WORKERS",
        "auto",
        "serving processes sharing the port: one writer (downloads, changes) and N-1 "
        "readers; auto: the number of cores, at most 8; 1: a single process",
        _workers,
        "N",
    ),
    Option(
        "max_cache_size",
        "max-cache-size",
        "NEKKO_MAX_CACHE_SIZE",
        "",
        "evict least recently used entries above this: bytes (500M, 50G) or a share "
        "of the filesystem (80%)",
        SizeLimit.parse,
        "SIZE",
        "unlimited",
    ),
    Option(
        "low_watermark",
        "cache-low-watermark",
        "NEKKO_CACHE_LOW_WATERMARK",
        "90%",
        "eviction frees space down to this share of --max-cache-size",
        _watermark,
        "PERCENT",
    ),
    Option(
        "allow_upstream",
        "allow-upstream",
        "NEKKO_ALLOW_UPSTREAM",
        "",
        "comma-separated hosts (host, host:port or *.domain) downloads, redirects and "
        "mirror fills may reach, loopback included",
        _allowed_hosts,
        "HOSTS",
        "any public host",
    ),
    Option(
        "upstream",
        "upstream",
        "NEKKO_UPSTREAM",
        "",
        "registry whose tags /v2 serves when a request names none with ?ns=",
        lambda n, t: t.strip().lower() or None,
        "REGISTRY",
        "none",
    ),
    Option(
        "api_token",
        "api-token",
        "NEKKO_API_TOKEN",
        "",
        "require this token for POST and DELETE on /content, as a Bearer token or the "
        "Basic password (prefer the environment)",
        lambda n, t: t or None,
        "TOKEN",
        "none",
    ),
    Option(
        "protect_reads",
        "protect-reads",
        "NEKKO_PROTECT_READS",
        "0",
        "with --api-token, every /content and /v2 request needs the token too",
        _switch,
    ),
    Option(
        "mirror",
        "mirror",
        "NEKKO_MIRROR",
        "0",
        "pull-through mirror: fill /v2 misses from the upstream registry",
        _switch,
    ),
    Option(
        "allow_push",
        "allow-push",
        "NEKKO_ALLOW_PUSH",
        "0",
        "accept pushes on /v2 (blob uploads, manifests), with --api-token only with the token",
        _switch,
    ),
    Option(
        "manifest_ttl",
        "manifest-ttl",
        "NEKKO_MANIFEST_TTL",
        "60",
        "mirror: how long a manifest by tag is served before it is revalidated",
        _seconds,
        "SECONDS",
    ),
    Option(
        "registry_credentials",
        "registry-credentials",
        "NEKKO_REGISTRY_CREDENTIALS",
        "",
        "mirror: credentials per upstream registry, a token or user:password (prefer the "
        "environment: flags show in ps)",
        _credentials,
        "HOST=SECRET,...",
        "none",
    ),
    Option(
        "insecure_registries",
        "insecure-registry",
        "NEKKO_INSECURE_REGISTRIES",
        "",
        "comma-separated registries (host or host:port) reached over plain HTTP; loopback "
        "always is",
        lambda n, t: _hosts(t),
        "HOSTS",
        "none",
    ),
    Option(
        "idle_timeout",
        "idle-timeout",
        "NEKKO_IDLE_TIMEOUT",
        "60",
        "abort a download whose body sends nothing this long",
        _positive_seconds,
        "SECONDS",
    ),
    Option(
        "retries",
        "retries",
        "NEKKO_RETRIES",
        "3",
        "retries of a failed transfer, resuming each time",
        _int,
        "N",
    ),
    Option(
        "file_roots",
        "allow-file-import",
        "NEKKO_ALLOW_FILE_IMPORT",
        "",
        "comma-separated directories that file:// URLs may import from (else file:// is refused)",
        _roots,
        "DIRS",
        "none",
    ),
    Option(
        "s3_addressing_style",
        "s3-addressing-style",
        "NEKKO_S3_ADDRESSING_STYLE",
        "auto",
        "s3://: auto, path (MinIO and most S3-compatible stores) or virtual",
        _one_of("auto", "path", "virtual"),
        "STYLE",
    ),
    Option(
        "retry_backoff",
        "retry-backoff",
        "NEKKO_RETRY_BACKOFF",
        "0.5",
        "pause before the first retry, doubled for each next one",
        _backoff,
        "SECONDS",
    ),
    Option(
        "sync_commits",
        "sync-commits",
        "NEKKO_SYNC_COMMITS",
        "0",
        "fsync each downloaded blob before it is committed and answered, not just after",
        _switch,
    ),
    Option(
        "buffered_writes",
        "buffered-writes",
        "NEKKO_BUFFERED_WRITES",
        "0",
        "write downloads and uploads through the page cache (the default; wins over "
        "--direct-writes)",
        _switch,
    ),
    Option(
        "direct_writes",
        "direct-writes",
        "NEKKO_DIRECT_WRITES",
        "0",
        "write downloads and uploads past the page cache (O_DIRECT) where the filesystem "
        "allows; by default they go through it (tests/bench model_ready: a model written "
        "past the page cache loads slower, first from the disk, then from the page cache)",
        _switch,
    ),
    Option(
        "peers",
        "peers",
        "NEKKO_PEERS",
        "",
        "the cache array: comma-separated host:port peers, or dns:<name>:<port> (every "
        "A/AAAA answer is a peer, re-resolved every 30 s); this node's own address is left out",
        _peer_specs,
        "PEERS",
        "none",
    ),
    Option(
        "peer_fanout",
        "peer-fanout",
        "NEKKO_PEER_FANOUT",
        "8",
        "how many peers this node streams one blob to at once; the next ones are redirected "
        "to a peer that holds it, so the array fans out as a tree",
        lambda n, t: _int(n, t, minimum=1),
        "N",
    ),
    Option(
        "advertise_address",
        "advertise-address",
        "NEKKO_ADVERTISE_ADDRESS",
        "",
        "how peers reach this node (host:port as the others list it), when it differs from "
        "--address",
        lambda n, t: t.strip() or None,
        "HOST:PORT",
        "--address",
    ),
    Option(
        "cluster_token",
        "cluster-token",
        "NEKKO_CLUSTER_TOKEN",
        "",
        "the token peers authenticate each other with (Bearer); without it, the peer routes "
        "answer loopback clients only (prefer the environment)",
        lambda n, t: t or None,
        "TOKEN",
        "none",
    ),
    Option(
        "tls_cert",
        "tls-cert",
        "NEKKO_TLS_CERT",
        "",
        "PEM certificate (chain) of a second listener that serves the same API over HTTPS, "
        "for peers and remote clients",
        _optional_path,
        "FILE",
        "none",
    ),
    Option(
        "tls_key",
        "tls-key",
        "NEKKO_TLS_KEY",
        "",
        "PEM private key of --tls-cert",
        _optional_path,
        "FILE",
        "none",
    ),
    Option(
        "tls_ca",
        "tls-ca",
        "NEKKO_TLS_CA",
        "",
        "PEM CA that peers' certificates are verified against",
        _optional_path,
        "FILE",
        "none",
    ),
    Option(
        "tls_address",
        "tls-address",
        "NEKKO_TLS_ADDRESS",
        "",
        "where the HTTPS listener listens (host:port)",
        lambda n, t: _address(n, t) if t.strip() else None,
        "ADDR",
        ":8443 with --tls-cert",
    ),
    Option(
        "shared_store",
        "shared-store",
        "NEKKO_SHARED_STORE",
        "",
        "the cluster's shared second tier: s3://bucket/prefix, gs://bucket/prefix or "
        "azure://account/container/prefix; blobs of known digest are read from it before the "
        "peers and the origin, and what this node fetches is written back to it",
        _shared_store,
        "URL",
        "none",
    ),
)
BY_DEST = {o.dest: o for o in OPTIONS}
# flag dest -> (environment variable, default as text)
ENV: dict[str, tuple[str, str]] = {o.dest: (o.env, o.default) for o in OPTIONS}


def help_text(option: Option) -> str:
    """An option's --help line: what it does, its variable, its default."""
    if option.metavar is None:
        where = f"env {option.env}=1; default off"
    else:
        default = option.shown_default or option.default
        where = f"env {option.env}, default {default}"
    return f"{option.help} ({where})".replace("%", "%%")


def _check_tls(values: dict[str, Any]) -> None:
    """--tls-cert and --tls-key come together; the listener defaults to :8443."""
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together (NEKKO_TLS_CERT, NEKKO_TLS_KEY)")
    if values["tls_cert"] is None:
        if values["tls_address"] is not None:
            raise ConfigError("--tls-address needs --tls-cert and --tls-key")
        return
    if values["tls_address"] is None:
        values["tls_address"] = Address("", 8443)


def _check_cluster(values: dict[str, Any], flags: Mapping[str, Any]) -> None:
    """Plain HTTP between peers only on loopback: peers elsewhere need TLS
    between nodes (--tls-cert, --tls-key, --tls-ca) and the cluster token. A
    dns: name may answer anything: it needs the cluster token, and without
    TLS only its loopback answers are taken (proxy.service.membership)."""
    tls = values["tls_address"] is not None and values["tls_ca"] is not None
    for spec in values["peers"]:
        if not spec.dns and not is_loopback(spec.address) and not tls:
            raise ConfigError(
                f"peer {spec} is not on loopback: peers on other hosts need TLS between "
                "nodes (--tls-cert, --tls-key, --tls-ca)"
            )
        if (spec.dns or not is_loopback(spec.address)) and values["cluster_token"] is None:
            raise ConfigError(
                f"peer {spec} may be another host: set the cluster token "
                "(--cluster-token or NEKKO_CLUSTER_TOKEN)"
            )
    advertised = values["advertise_address"]
    if advertised is not None:
        try:
            parse_peers(advertised)
        except PeerSpecError as e:
            raise ConfigError(f"--advertise-address: {e}") from None


def build(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Flags (None = not given) beat environment beat defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = flags.get(option.dest)
        if given is not None:
            name, text = f"--{option.flag}", str(given)
        elif env.get(option.env, "") != "":
            name, text = option.env, env[option.env]
        else:
            name, text = option.env, option.default
        values[option.field] = option.parse(name, text)
    if values["protect_reads"] and values["api_token"] is None:
        name = (
            "--protect-reads" if flags.get("protect_reads") is not None else "NEKKO_PROTECT_READS"
        )
        raise ConfigError(f"{name} needs an API token (--api-token or NEKKO_API_TOKEN)")
    _check_tls(values)
    _check_cluster(values, flags)
    try:
        values["proxies"] = ProxyConfig.from_env(env)
    except ProxyConfigError as e:
        raise ConfigError(str(e)) from None
    return Config(**values)
