"""Which forward proxy a download goes through: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``.

Read once at startup, as curl, containerd and huggingface_hub read them:

* ``https_proxy``/``HTTPS_PROXY`` for ``https://`` targets, ``http_proxy``/
  ``HTTP_PROXY`` for ``http://`` ones; the lowercase form wins when both are
  set (curl). A proxy is ``http://[user:password@]host[:port]`` (no scheme
  means ``http://``; no port means 80). Other proxy schemes (``https://``,
  ``socks5://``) are refused at startup rather than ignored.
* ``no_proxy``/``NO_PROXY``: comma-separated entries reached directly. ``*``
  is every host; an IP or a CIDR (``10.0.0.0/8``) matches addresses written
  in the URL; a name matches itself and every name below it, with or without
  a leading ``.`` or ``*.`` (``example.com``, ``.example.com`` and
  ``*.example.com`` all match ``example.com`` and ``a.example.com``, as in
  curl); ``host:port`` only that port. Loopback is not bypassed by itself
  (curl): list ``localhost,127.0.0.1`` to reach local sources directly.

The user and password of a proxy URL become ``Proxy-Authorization: Basic``
for that proxy only; :meth:`ProxyServer.redacted` is what logs and errors show.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import attrs


class ProxyConfigError(ValueError):
    """A proxy variable that cannot be used (the message names it)."""


@attrs.frozen
class ProxyServer:
    """One forward proxy: where it listens and, optionally, its credentials."""

    host: str
    port: int
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` value, or None without credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return b"Basic " + base64.b64encode(pair)

    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def redacted(self) -> str:
        """The proxy as logs and errors show it: the user, never the password."""
        user = f"{self.username}:REDACTED@" if self.username is not None else ""
        return f"http://{user}{self.netloc()}"

    def __repr__(self) -> str:
        return f"ProxyServer({self.redacted()})"


def parse_proxy(name: str, text: str) -> ProxyServer:
    """A proxy URL from variable ``name``; :class:`ProxyConfigError` if unusable."""
    value = text.strip()
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ProxyConfigError(f"{name}: not a proxy URL (http://host:port)") from None
    if parts.scheme.lower() != "http":
        raise ProxyConfigError(
            f"{name}: only http:// proxies are supported, not {parts.scheme}:// "
            "(an http:// proxy still carries https:// downloads, through CONNECT)"
        )
    if not parts.hostname:
        raise ProxyConfigError(f"{name}: the proxy URL has no host")
    return ProxyServer(
        host=parts.hostname,
        port=port or 80,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


@attrs.frozen
class NoProxyEntry:
    """One ``NO_PROXY`` entry: a network, or a name (and its subdomains), maybe with a port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    name: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> NoProxyEntry | None:
        entry = text.strip().lower()
        if not entry:
            return None
        try:
            return cls(network=ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            pass
        port: int | None = None
        host = entry
        if entry.startswith("["):  # [v6]:port
            host, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif entry.count(":") == 1:
            host, _, port_text = entry.partition(":")
            port = int(port_text) if port_text.isdigit() else None
        try:
            return cls(network=ipaddress.ip_network(host, strict=False), port=port)
        except ValueError:
            pass
        name = host.removeprefix("*").lstrip(".").rstrip(".")
        return cls(name=name, port=port) if name else None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        assert self.name is not None
        return host == self.name or host.endswith("." + self.name)


@attrs.frozen
class ProxyConfig:
    """The proxies of the environment; empty means every connection is direct."""

    http: ProxyServer | None = None
    https: ProxyServer | None = None
    no_proxy: tuple[NoProxyEntry, ...] = ()
    no_proxy_all: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProxyConfig:
        def first(name: str) -> tuple[str, str] | None:
            for var in (name.lower(), name.upper()):
                if environ.get(var, "").strip():
                    return var, environ[var]
            return None

        servers: dict[str, ProxyServer | None] = {}
        for scheme in ("http", "https"):
            found = first(f"{scheme}_proxy")
            servers[scheme] = parse_proxy(*found) if found is not None else None
        entries: list[NoProxyEntry] = []
        every = False
        found = first("no_proxy")
        for item in (found[1] if found else "").split(","):
            if item.strip() == "*":
                every = True
                continue
            entry = NoProxyEntry.parse(item)
            if entry is not None:
                entries.append(entry)
        return cls(servers["http"], servers["https"], tuple(entries), every)

    def proxy_for(self, scheme: str, host: str, port: int) -> ProxyServer | None:
        """The proxy a request to ``scheme://host:port`` goes through, or None (direct)."""
        server = self.https if scheme == "https" else self.http if scheme == "http" else None
        if server is None or self.no_proxy_all:
            return None
        name = host.lower().strip("[]").rstrip(".")
        if any(e.matches(name, port) for e in self.no_proxy):
            return None
        return server

    def describe(self) -> str | None:
        """One line for the startup log (credentials redacted), or None without proxies."""
        if self.http is None and self.https is None:
            return None
        parts = []
        if self.http is not None:
            parts.append(f"http:// through {self.http.redacted()}")
        if self.https is not None:
            parts.append(f"https:// through {self.https.redacted()} (CONNECT)")
        if self.no_proxy_all:
            parts.append("NO_PROXY=* (every host direct)")
        elif self.no_proxy:
            parts.append(f"{len(self.no_proxy)} NO_PROXY entries direct")
        return "downloads go " + "; ".join(parts)
