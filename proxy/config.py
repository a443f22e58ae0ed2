"""One attrs :class:`Config` from flags, then environment, then defaults.

The three options of the original binary keep their names and defaults
exactly (``--cache-dir``/``CACHE_DIR``, ``--address``/``NEKKO_ADDRESS``,
``--verbose``/``VERBOSE``); the rest follow ``DESIGN.md``. Every value is
validated here; a bad one raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from proxy.fetch.proxyenv import ProxyConfig, ProxyConfigError
from proxy.fetch.reach import check_allow_entry

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
    cache_dir: Path = Path(DEFAULT_CACHE_DIR)
    address: Address = Address("localhost", 8050)
    verbose: int = 0
    max_downloads: int = 4
    max_cache_size: SizeLimit | None = None
    low_watermark: float = 0.9  # eviction frees down to this share of the limit
    allow_upstream: frozenset[str] = frozenset()
    insecure_registries: frozenset[str] = frozenset()
    upstream: str | None = None
    mirror: bool = False
    allow_push: bool = False  # the /v2 push endpoints
    api_token: str | None = attrs.field(default=None, repr=False)
    protect_reads: bool = False
    manifest_ttl: float = 60.0
    registry_credentials: dict[str, str] = attrs.field(factory=dict, repr=False)
    idle_timeout: float = 60.0
    retries: int = 3
    retry_backoff: float = 0.5
    file_roots: tuple[Path, ...] = ()
    s3_addressing_style: str = "auto"
    log_format: str = "text"
    sync_commits: bool = False  # fsync each blob before its commit, not just after
    buffered_writes: bool = False  # write downloads through the page cache (no O_DIRECT)
    proxies: ProxyConfig = attrs.field(factory=ProxyConfig)  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY


# flag dest -> (environment variable, default as text)
ENV: dict[str, tuple[str, str]] = {
    "cache_dir": ("CACHE_DIR", DEFAULT_CACHE_DIR),
    "address": ("NEKKO_ADDRESS", DEFAULT_ADDRESS),
    "verbose": ("VERBOSE", "0"),
    "max_downloads": ("NEKKO_MAX_DOWNLOADS", "4"),
    "max_cache_size": ("NEKKO_MAX_CACHE_SIZE", ""),
    "cache_low_watermark": ("NEKKO_CACHE_LOW_WATERMARK", "90%"),
    "allow_upstream": ("NEKKO_ALLOW_UPSTREAM", ""),
    "insecure_registry": ("NEKKO_INSECURE_REGISTRIES", ""),
    "upstream": ("NEKKO_UPSTREAM", ""),
    "mirror": ("NEKKO_MIRROR", "0"),
    "allow_push": ("NEKKO_ALLOW_PUSH", "0"),
    "api_token": ("NEKKO_API_TOKEN", ""),
    "protect_reads": ("NEKKO_PROTECT_READS", "0"),
    "manifest_ttl": ("NEKKO_MANIFEST_TTL", "60"),
    "registry_credentials": ("NEKKO_REGISTRY_CREDENTIALS", ""),
    "idle_timeout": ("NEKKO_IDLE_TIMEOUT", "60"),
    "retries": ("NEKKO_RETRIES", "3"),
    "retry_backoff": ("NEKKO_RETRY_BACKOFF", "0.5"),
    "allow_file_import": ("NEKKO_ALLOW_FILE_IMPORT", ""),
    "s3_addressing_style": ("NEKKO_S3_ADDRESSING_STYLE", "auto"),
    "log_format": ("NEKKO_LOG_FORMAT", "text"),
    "sync_commits": ("NEKKO_SYNC_COMMITS", "0"),
    "buffered_writes": ("NEKKO_BUFFERED_WRITES", "0"),
}


def build(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Flags (None = not given) beat environment beat defaults."""
    env = os.environ if environ is None else environ

    def pick(dest: str) -> tuple[str, str]:
        var, default = ENV[dest]
        value = flags.get(dest)
        if value is not None:
            return f"--{dest.replace('_', '-')}", str(value)
        if env.get(var, "") != "":
            return var, env[var]
        return var, default

    def flag(dest: str) -> bool:
        name, text = pick(dest)
        if text.strip().lower() not in _BOOLS:
            raise ConfigError(f"{name} must be 1 or 0, not {text!r}")
        return text.strip().lower() in ("1", "true", "yes")

    name, cache_dir = pick("cache_dir")
    if not cache_dir.strip():
        raise ConfigError(f"{name} is empty")
    name, address = pick("address")
    try:
        addr = Address.parse(address)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    name, verbose = pick("verbose")
    name_md, max_downloads = pick("max_downloads")
    name_it, idle = pick("idle_timeout")
    try:
        idle_timeout = float(idle)
    except ValueError:
        raise ConfigError(f"{name_it} must be a number of seconds, not {idle!r}") from None
    if idle_timeout <= 0:
        raise ConfigError(f"{name_it} must be positive")
    name_r, retries = pick("retries")
    name_b, backoff_text = pick("retry_backoff")
    try:
        backoff = float(backoff_text)
    except ValueError:
        raise ConfigError(f"{name_b} must be a number of seconds, not {backoff_text!r}") from None
    if not 0 <= backoff <= 3600:
        raise ConfigError(f"{name_b} must be from 0 to 3600 seconds")
    api_token = pick("api_token")[1] or None
    protect_reads = flag("protect_reads")
    if protect_reads and api_token is None:
        name_p = pick("protect_reads")[0]
        raise ConfigError(f"{name_p} needs an API token (--api-token or NEKKO_API_TOKEN)")
    name_t, ttl_text = pick("manifest_ttl")
    try:
        ttl = float(ttl_text)
    except ValueError:
        raise ConfigError(f"{name_t} must be a number of seconds, not {ttl_text!r}") from None
    creds: dict[str, str] = {}
    for item in pick("registry_credentials")[1].split(","):
        if not item.strip():
            continue
        host, sep, secret = item.strip().partition("=")
        if not sep or not host or not secret:
            raise ConfigError("registry credentials are host=token or host=user:password, ...")
        creds[host.lower()] = secret
    name_f, roots_text = pick("allow_file_import")
    roots = []
    for item in roots_text.split(","):
        if not item.strip():
            continue
        root = Path(item.strip()).expanduser()
        if not root.is_absolute():
            raise ConfigError(f"{name_f}: {item.strip()!r} is not an absolute path")
        roots.append(root)
    name_s, style = pick("s3_addressing_style")
    if style.strip().lower() not in ("auto", "path", "virtual"):
        raise ConfigError(f"{name_s} must be auto, path or virtual, not {style!r}")
    name_c, size_text = pick("max_cache_size")
    limit = SizeLimit.parse(name_c, size_text)
    name_w, low_text = pick("cache_low_watermark")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", low_text)
    if m is None or not 0 < float(m.group(1)) <= 100:
        raise ConfigError(f"{name_w} is a share of --max-cache-size, e.g. 90%, not {low_text!r}")
    name_l, log_format = pick("log_format")
    if log_format.strip().lower() not in ("text", "json"):
        raise ConfigError(f"{name_l} must be text or json, not {log_format!r}")
    try:
        proxies = ProxyConfig.from_env(env)
    except ProxyConfigError as e:
        raise ConfigError(str(e)) from None
    return Config(
        # Absolute from here on: every path in answers, logs and output is.
        cache_dir=Path(os.path.abspath(Path(cache_dir).expanduser())),
        address=addr,
        verbose=min(_int(name, verbose), 2),
        max_downloads=_int(name_md, max_downloads, minimum=1),
        max_cache_size=limit,
        low_watermark=float(m.group(1)) / 100,
        allow_upstream=_allowed_hosts(*pick("allow_upstream")),
        insecure_registries=_hosts(pick("insecure_registry")[1]),
        upstream=pick("upstream")[1].strip().lower() or None,
        mirror=flag("mirror"),
        allow_push=flag("allow_push"),
        api_token=api_token,
        protect_reads=protect_reads,
        manifest_ttl=ttl,
        registry_credentials=creds,
        idle_timeout=idle_timeout,
        retries=_int(name_r, retries),
        retry_backoff=backoff,
        file_roots=tuple(roots),
        s3_addressing_style=style.strip().lower(),
        log_format=log_format.strip().lower(),
        sync_commits=flag("sync_commits"),
        buffered_writes=flag("buffered_writes"),
        proxies=proxies,
    )
